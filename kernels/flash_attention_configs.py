"""Launch configurations of the flash-attention kernels (``scigpt.kernels.flash_attention``):
the autotune candidates for Hopper per kernel and element size, the ones that spill registers and
are never tried, the small config the interpreter runs, and the dot precision per dtype.
"""

from __future__ import annotations

import torch
import triton

from scigpt.kernels import config_subset

ConfigKey = tuple[int, int, int, int]  # (block rows, block cols, num_warps, num_stages)

# Autotune candidates for Hopper (H100/H200) as (rows, cols, num_warps, num_stages): BLOCK_M ×
# BLOCK_N (forward), BLOCK_M1 × BLOCK_N1 (dK/dV), BLOCK_M2 × BLOCK_N2 (dQ). The causal split needs
# BLOCK_M % BLOCK_N == 0, BLOCK_N1 % BLOCK_M1 == 0 and BLOCK_M2 % BLOCK_N2 == 0. Keyed by bytes
# per element: fp32 (3xTF32 dots: three MMAs on split operands) needs smaller tiles than 16-bit.
_CANDIDATES: dict[tuple[str, int], list[ConfigKey]] = {
    ("fwd", 2): [
        (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3), (128, 64, 4, 4),
        (128, 32, 4, 4), (64, 64, 4, 3), (64, 64, 4, 4), (64, 32, 4, 3), (64, 32, 4, 2),
        (64, 16, 4, 2),
    ],
    ("dkdv", 2): [
        (32, 128, 4, 3), (32, 128, 8, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 3),
        (64, 64, 4, 2), (16, 64, 4, 2),
    ],
    ("dq", 2): [
        (128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3),
        (64, 32, 4, 2), (64, 16, 4, 2),
    ],
    ("fwd", 4): [
        (128, 64, 8, 3), (64, 32, 4, 3), (64, 32, 4, 2), (64, 16, 4, 2), (32, 16, 4, 1),
        (16, 16, 4, 2),
    ],
    ("dkdv", 4): [(32, 128, 8, 3), (32, 64, 4, 3), (16, 64, 4, 2), (16, 16, 4, 2), (16, 16, 8, 2)],
    ("dq", 4): [
        (128, 32, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 32, 4, 2), (64, 16, 4, 2),
        (32, 16, 8, 2), (16, 16, 4, 2),
    ],
}  # fmt: skip

# Candidates never tried, per (kernel, bytes per element, head_dim): they spill registers on
# sm_90a (Triton 3.6.0; ``python -m scigpt.kernels.aot --report --full``, key padding mask on,
# causal on and off). fp32 at head_dim 128 spills with any tile of 32+ rows, so it gets tiny ones
# (no wgmma: mma.sync), which head dims 32/64 do not need.
_FP32_TINY = {"fwd": {(32, 16, 4, 1), (16, 16, 4, 2)}, "dkdv": {(16, 16, 4, 2), (16, 16, 8, 2)},
              "dq": {(32, 16, 8, 2), (16, 16, 4, 2)}}  # fmt: skip
_EXCLUDED: dict[tuple[str, int, int], set[ConfigKey]] = {
    ("dkdv", 2, 64): {(32, 128, 4, 3)},
    ("fwd", 2, 128): {(128, 64, 4, 3), (128, 64, 4, 4), (128, 32, 4, 4)},
    ("dkdv", 2, 128): {(32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (64, 64, 4, 2)},
    ("dq", 2, 128): {(128, 32, 4, 3)},
    **{(kind, 4, 32): set(tiny) for kind, tiny in _FP32_TINY.items()},
    ("fwd", 4, 64): {(128, 64, 8, 3), *_FP32_TINY["fwd"]},
    ("dkdv", 4, 64): {(32, 64, 4, 3), *_FP32_TINY["dkdv"]},
    ("dq", 4, 64): {(128, 64, 8, 3), *_FP32_TINY["dq"]},
    ("fwd", 4, 128): {(128, 64, 8, 3), (64, 32, 4, 3), (64, 32, 4, 2), (64, 16, 4, 2),
                      (32, 16, 4, 1)},
    ("dkdv", 4, 128): {(32, 128, 8, 3), (32, 64, 4, 3), (16, 64, 4, 2)},
    ("dq", 4, 128): {(128, 32, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3), (64, 32, 4, 2),
                     (64, 16, 4, 2)},
}  # fmt: skip

_NAMES = {
    "fwd": ("BLOCK_M", "BLOCK_N"),
    "dkdv": ("BLOCK_M1", "BLOCK_N1"),
    "dq": ("BLOCK_M2", "BLOCK_N2"),
}


def _config(kind: str, key: ConfigKey) -> triton.Config:
    rows, cols, warps, stages = key
    names = _NAMES[kind]
    return triton.Config({names[0]: rows, names[1]: cols}, num_warps=warps, num_stages=stages)


def config_key(cfg: triton.Config) -> ConfigKey:
    rows, cols = cfg.kwargs.values()
    return (rows, cols, cfg.num_warps, cfg.num_stages)


def _element_bytes(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def candidate_configs(kind: str, dtype: torch.dtype) -> list[triton.Config]:
    """Every config ``kind`` ("fwd", "dkdv", "dq") may try for ``dtype``, before pruning."""
    return [_config(kind, k) for k in _CANDIDATES[(kind, _element_bytes(dtype))]]


def shipped_configs(kind: str, dtype: torch.dtype, head_dim: int) -> list[triton.Config]:
    """The configs ``kind`` autotunes over for this dtype and head dim (no register spills)."""
    bad = _EXCLUDED.get((kind, _element_bytes(dtype), head_dim), set())
    return [c for c in candidate_configs(kind, dtype) if config_key(c) not in bad]


KINDS = tuple(_NAMES)


def all_configs(kind: str) -> list[triton.Config]:
    """What ``kind``'s autotuner holds: the union over dtypes; ``prune_for`` keeps the shipped
    ones per launch."""
    keys = dict.fromkeys(_CANDIDATES[(kind, 2)] + _CANDIDATES[(kind, 4)])
    return [_config(kind, k) for k in keys]


# The interpreter (TRITON_INTERPRET=1) would run every candidate; it gets one small config that
# still makes N = 37 cross block boundaries and end in a partial block.
_INTERPRET_KEYS: dict[str, ConfigKey] = {
    "fwd": (32, 16, 4, 1),
    "dkdv": (16, 32, 4, 1),
    "dq": (32, 16, 4, 1),
}


def interpret_configs(kind: str) -> list[triton.Config]:
    """The one config ``kind`` runs under the interpreter."""
    return [_config(kind, _INTERPRET_KEYS[kind])]


PREPROCESS_BLOCK_M = 64


def prune_for(kind: str):
    """The autotuner's ``early_config_prune`` for ``kind``: the shipped configs of the launch's
    dtype and head dim (the first only under ``SCIGPT_KERNEL_CONFIGS=first``)."""

    def prune(configs, named_args, **kwargs):
        shipped = shipped_configs(kind, named_args["Q"].dtype, kwargs["HEAD_DIM"])
        if config_subset() == "first":
            shipped = shipped[:1]
        keep = {config_key(c) for c in shipped}
        return [c for c in configs if config_key(c) in keep] or list(configs)

    return prune


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of the kernels' dots: 3xTF32 for fp32 (keeps fp32 accuracy)."""
    return "tf32x3" if dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs
