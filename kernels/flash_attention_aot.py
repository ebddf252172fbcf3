"""The ahead-of-time compilation cases of the flash-attention kernels (``kernels/aot.py``
compiles them for sm_90a): signatures and constants as a launch on contiguous tensors gets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from scigpt.kernels.aot import AotCase
from scigpt.kernels.flash_attention_configs import (
    PREPROCESS_BLOCK_M,
    candidate_configs,
    dot_precision,
    shipped_configs,
)
from scigpt.kernels.flash_attention_reference import SUPPORTED_HEAD_DIMS

_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _strides(*names: str) -> dict[str, str]:
    return {f"stride_{n}{a}": "i32" for n in names for a in ("b", "h", "n")}


def attention_aot_cases(kernels: Mapping[str, Any], full: bool = False) -> list[AotCase]:
    """What kernels/aot.py compiles for sm_90a, with the specialisation a launch on contiguous
    (B, h, N, D) tensors gets (pointers and B/h/N strides 16-divisible, N arbitrary).

    Default: every shipped config of the forward and backward kernels for fp16 (head dim 64,
    causal), bf16 (128 with causal + key padding mask; 32) and fp32 (32 and 128, mask), which
    together compile every shipped config at least once. ``full``: every
    *candidate* config for bf16 and fp32 at each head dim, mask and causal on — the measurement
    behind ``_EXCLUDED`` (``flash_attention_configs``). A dot lowers to Hopper ``wgmma`` (fp32:
    through 3xTF32) when its tile has at least 64 rows (one warpgroup's M), else to
    ``mma.sync``. ``kernels``: the Triton kernels by kind ("fwd", "dkdv", "dq", "preprocess"), as
    the caller's import decorated them.
    """
    if full:
        variants = [
            (dtype, d, True, True)
            for dtype in (torch.bfloat16, torch.float32)
            for d in SUPPORTED_HEAD_DIMS
        ]
    else:
        variants = [
            (torch.float16, 64, False, True),
            (torch.bfloat16, 128, True, True),
            (torch.bfloat16, 32, False, False),
            (torch.float32, 32, True, False),
            (torch.float32, 128, True, False),
        ]
    cases = []
    for dtype, head_dim, has_mask, causal in variants:
        t = "*" + _TRITON_DTYPE[dtype]
        const = {
            "HEAD_DIM": head_dim,
            "CAUSAL": causal,
            "HAS_MASK": has_mask,
            "DOT_PRECISION": dot_precision(dtype),
            "stride_mn": 1,  # the runtime specialises an int argument equal to 1 as a constant
        }
        ints = {"H": "i32", "N_CTX": "i32", "N_BUCKET": "i32", "stride_mb": "i32"}
        tag = f"{_TRITON_DTYPE[dtype]}_d{head_dim}{'_mask' if has_mask else ''}"
        tag += "_causal" if causal else ""
        fwd_sig = {
            "Q": t, "K": t, "V": t, "Out": t, "Lse": "*fp32", "Mask": "*u8", "qk_scale": "fp32",
            **_strides("q", "k", "v", "o"), **ints,
        }  # fmt: skip
        dkdv_sig = {
            "Q": t, "K": t, "V": t, "DO": t, "DK": t, "DV": t, "Lse": "*fp32", "Delta": "*fp32",
            "Mask": "*u8", "sm_scale": "fp32", "qk_scale": "fp32",
            **_strides("q", "k", "v", "do", "dk"), **ints,
        }  # fmt: skip
        dq_sig = {
            "Q": t, "K": t, "V": t, "DO": t, "DQ": t, "Lse": "*fp32", "Delta": "*fp32",
            "Mask": "*u8", "sm_scale": "fp32", "qk_scale": "fp32",
            **_strides("q", "k", "v", "do", "dq"), **ints,
        }  # fmt: skip
        pre_sig = {"Out": t, "DO": t, "Delta": "*fp32", **_strides("o", "do")}
        pre_sig.update(H="i32", N_CTX="i32")
        meta = {"dtype": _TRITON_DTYPE[dtype], "head_dim": head_dim, "full": full}
        for kind, kernel, sig, mma_rows in (
            ("fwd", kernels["fwd"], fwd_sig, "BLOCK_M"),  # Q Kᵀ and P V: BLOCK_M rows
            ("dkdv", kernels["dkdv"], dkdv_sig, "BLOCK_N1"),  # K Qᵀ, Pᵀ dO, V dOᵀ, dSᵀ Q
            ("dq", kernels["dq"], dq_sig, "BLOCK_M2"),  # Q Kᵀ, dO Vᵀ, dS K
        ):
            cases.append(
                AotCase(
                    name=f"attn_{kind}_{tag}",
                    kernel=kernel,
                    signature=sig,
                    constexprs=const,
                    configs=(candidate_configs if full else _shipped_for(head_dim))(kind, dtype),
                    expect_wgmma=lambda cfg, rows=mma_rows: cfg.kwargs[rows] >= 64,
                    divisible_by_16=_divisible(sig),
                    meta={"kind": kind, **meta},
                )
            )
        cases.append(
            AotCase(
                name=f"attn_bwd_preprocess_{tag}",
                kernel=kernels["preprocess"],
                signature=pre_sig,
                constexprs={"HEAD_DIM": head_dim, "BLOCK_M": PREPROCESS_BLOCK_M},
                expect_wgmma=False,  # no dot
                divisible_by_16=_divisible(pre_sig),
                meta={"kind": "preprocess", **meta},
            )
        )
    return cases


def _shipped_for(head_dim: int):
    return lambda kind, dtype: shipped_configs(kind, dtype, head_dim)


def _divisible(sig: dict[str, str]) -> tuple[str, ...]:
    return tuple(k for k, v in sig.items() if v.startswith("*") or k.startswith("stride_"))
