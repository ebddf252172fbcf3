"""Throughput and MFU: the peak FLOP/s of the devices (the sinks are in callbacks.py).

MFU follows PaLM (Chowdhery et al. 2022, appendix B): achieved model FLOP/s over the peak of the
devices, with model FLOPs = 3 x forward matmul FLOPs (``forward_flops_per_token``) per token.
"""

from __future__ import annotations

import torch

from scigpt.rundir import read_metrics

# Dense bf16 peak TFLOP/s per device (vendor datasheets, without sparsity).
PEAK_TFLOPS_BF16 = {
    "H200": 989.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "MI250X": 191.5,  # per GCD (383 per package)
    "MI300X": 1307.0,
    "L40S": 362.0,
    "V100": 125.0,
}


# Dense fp32 peak TFLOP/s without tensor cores (vendor datasheets; AMD: FP32 matrix): the peak
# of fp32 matmuls unless TF32 is enabled, when they run on the tensor cores at half bf16's rate.
PEAK_TFLOPS_FP32 = {
    "H200": 67.0,
    "H100": 67.0,
    "GH200": 67.0,
    "A100": 19.5,
    "MI250X": 47.9,  # per GCD
    "MI300X": 163.4,
    "L40S": 91.6,
    "V100": 15.7,
}


def tf32_enabled() -> bool:
    """Whether fp32 matmuls may run as TF32 (``torch.backends.cuda.matmul.allow_tf32`` or a
    float32 matmul precision other than "highest")."""
    return bool(
        torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    )


def detect_peak_tflops(precision: str) -> float | None:
    """Peak TFLOP/s of the current CUDA device for ``precision``, or None (CPU / unknown → no
    MFU reported). fp32 counts the TF32 tensor-core peak (half bf16's) only when TF32 is
    enabled, and the plain fp32 peak otherwise, so MFU is never flattered by a peak the run
    cannot reach."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().upper()
    for key, peak in PEAK_TFLOPS_BF16.items():
        if key in name:
            if precision == "bf16":
                return peak
            return peak / 2 if tf32_enabled() else PEAK_TFLOPS_FP32[key]
    return None


__all__ = ["PEAK_TFLOPS_BF16", "detect_peak_tflops", "read_metrics"]
