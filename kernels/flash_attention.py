"""Flash attention (forward + backward) in Triton, beside its pure-PyTorch reference.

    O = softmax(Q Kᵀ · s + mask) V,   s = 1/sqrt(head_dim) unless given

computed FlashAttention-2 style (Dao 2023, arXiv:2307.08691): each program owns a block of
queries and streams over blocks of keys with an online softmax (running max ``m`` and running sum
``l``, fp32), so no N×N matrix is ever in memory. The forward stores the log-sum-exp per query row
(base 2: ``lse = m + log2(l)``, in units of ``s·log2(e)``) so the backward can recompute
``P = exp2(Q Kᵀ · s·log2(e) − lse)`` block by block:

    delta = rowsum(dO ∘ O)         (_attn_bwd_preprocess_kernel)
    dV = Pᵀ dO,  dK = s · dSᵀ Q    (_attn_bwd_dkdv_kernel: per key block, loop over queries)
    dQ = s · dS K                  (_attn_bwd_dq_kernel: per query block, loop over keys)
    with dS = P ∘ (dO Vᵀ − delta)

Inputs are ``(B, heads, N, head_dim)`` in fp16/bf16/fp32 with any strides whose last one is 1
(e.g. the ``qkv.permute`` views the model makes), head_dim 32/64/128, any N. The optional
key-padding mask is ``(B, N)`` bool, True = keep. **A query row that sees no key** (every key of
its batch element masked) has output 0 and zero gradients — plain softmax would give NaN there;
``attention_reference`` implements the same definition.

fp32 inputs keep fp32 accuracy through 3xTF32 dots (``input_precision="tf32x3"``: three tensor
core MMAs on split operands), not plain TF32; use bf16/fp16 for speed.

Each loop is split into blocks that need no masking (no bounds or causal checks) and the few
blocks that do (the diagonal for ``causal``, the tail block when N is not a block multiple).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from scigpt.kernels import config_subset

SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# The interpreter (TRITON_INTERPRET=1: CPU tensors, numpy) runs every config of an autotuner, so
# it gets one small config; the real ones are still compiled ahead of time by kernels/aot.py.
# triton.jit reads the same knob when the kernels below are decorated.
INTERPRET = bool(triton.knobs.runtime.interpret)
if INTERPRET:
    from scigpt.kernels import interpreter_compat

    interpreter_compat()


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


# What each autotuner holds: the union over dtypes; ``_prune`` keeps the shipped ones per launch.
CONFIGS: dict[str, list[triton.Config]] = {
    kind: [_config(kind, k) for k in dict.fromkeys(_CANDIDATES[(kind, 2)] + _CANDIDATES[(kind, 4)])]
    for kind in _NAMES
}
# The interpreter (TRITON_INTERPRET=1) would run every candidate; it gets one small config that
# still makes N = 37 cross block boundaries and end in a partial block.
INTERPRET_CONFIGS: dict[str, list[triton.Config]] = {
    "fwd": [_config("fwd", (32, 16, 4, 1))],
    "dkdv": [_config("dkdv", (16, 32, 4, 1))],
    "dq": [_config("dq", (32, 16, 4, 1))],
}
PREPROCESS_BLOCK_M = 64


def _prune(kind: str):
    def prune(configs, named_args, **kwargs):
        shipped = shipped_configs(kind, named_args["Q"].dtype, kwargs["HEAD_DIM"])
        if config_subset() == "first":
            shipped = shipped[:1]
        keep = {config_key(c) for c in shipped}
        return [c for c in configs if config_key(c) in keep] or list(configs)

    return prune


def _configs(kind: str) -> list[triton.Config]:
    return INTERPRET_CONFIGS[kind] if INTERPRET else CONFIGS[kind]


# Autotune key: a bucketed length (next power of two, capped) so every N does not retune, the head
# dim, causal and masking; the autotuner adds the tensors' dtypes itself.
_KEY = ["N_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_MASK"]


def _n_bucket(n: int) -> int:
    return min(triton.next_power_of_2(n), 16384)


# ----------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q, k_base, v_base, m_base, stride_kn, stride_vn, stride_mn,
    offs_m, offs_d, lo, hi, qk_scale, N_CTX,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,  # bounds (and causal) checks needed in [lo, hi)
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        if MASKED:  # noqa: SIM108 (constexpr branches read better than ternaries in kernels)
            k = tl.load(k_ptrs, mask=offs_n[:, None] < N_CTX, other=0.0)  # (BLOCK_N, D)
        else:
            k = tl.load(k_ptrs)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            keep = offs_n[None, :] < N_CTX
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= offs_n[None, :])
            qk = tl.where(keep, qk, float("-inf"))
        if HAS_MASK:
            kp = tl.load(m_base + offs_n * stride_mn, mask=offs_n < N_CTX, other=0)  # (BLOCK_N,)
            qk = tl.where(kp[None, :] != 0, qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        if MASKED or HAS_MASK:  # noqa: SIM108
            # A row with no visible key so far keeps m = -inf; subtract 0 instead, so that
            # exp2(-inf - -inf) never makes a NaN (p and alpha are then 0).
            m_sub = tl.where(m_ij == float("-inf"), 0.0, m_ij)
        else:
            m_sub = m_ij
        p = tl.math.exp2(qk - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if MASKED:  # noqa: SIM108
            v = tl.load(v_ptrs, mask=offs_n[:, None] < N_CTX, other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_ij
    return acc, l_i, m_i


@triton.autotune(
    configs=_configs("fwd"), key=_KEY, prune_configs_by={"early_config_prune": _prune("fwd")}
)
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Out,
    Lse,  # (B, H, N) fp32, base-2 log-sum-exp of the scaled scores
    Mask,  # (B, N) uint8 key-padding mask (1 = keep); unused unless HAS_MASK
    qk_scale,  # sm_scale * log2(e)
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_mb, stride_mn,
    H, N_CTX,
    N_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """O = softmax(Q Kᵀ·s) V for one (batch, head, block of BLOCK_M queries)."""
    start_m = tl.program_id(0) * BLOCK_M
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    off_bh = off_b * H + off_h
    q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_base = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
    o_base = Out + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
    m_base = Mask + off_b.to(tl.int64) * stride_mb

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_CTX
    q_ptrs = q_base + offs_m[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, D)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Key blocks [0, lo) need no checks: in range, and (causal) strictly below the diagonal.
    if CAUSAL:
        lo = start_m
        hi = tl.minimum(start_m + BLOCK_M, N_CTX)
    else:
        lo = (N_CTX // BLOCK_N) * BLOCK_N
        hi = N_CTX
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, m_base, stride_kn, stride_vn, stride_mn, offs_m, offs_d,
        0, lo, qk_scale, N_CTX, BLOCK_N, False, CAUSAL, HAS_MASK, DOT_PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, m_base, stride_kn, stride_vn, stride_mn, offs_m, offs_d,
        lo, hi, qk_scale, N_CTX, BLOCK_N, True, CAUSAL, HAS_MASK, DOT_PRECISION,
    )  # fmt: skip

    # Rows that saw no key (l = 0): output 0 and lse = +inf, so the backward's P is 0 there.
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    acc = acc / l_safe[:, None]
    lse = tl.where(seen, m_i + tl.math.log2(l_safe), float("inf"))
    tl.store(Lse + off_bh.to(tl.int64) * N_CTX + offs_m, lse, mask=row_ok)
    o_ptrs = o_base + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=row_ok[:, None])


# ----------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _attn_bwd_preprocess_kernel(
    Out, DO, Delta,
    stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don,
    H, N_CTX,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(dO ∘ O), fp32, one value per query row."""
    off_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = off_m[:, None] < N_CTX
    o_base = Out + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
    do_base = DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
    o = tl.load(o_base + off_m[:, None] * stride_on + offs_d[None, :], mask=row_ok, other=0.0)
    do = tl.load(do_base + off_m[:, None] * stride_don + offs_d[None, :], mask=row_ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    off_bh = (off_b * H + off_h).to(tl.int64)
    tl.store(Delta + off_bh * N_CTX + off_m, delta, mask=off_m < N_CTX)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
    offs_n, offs_d, lo, hi, qk_scale, N_CTX,
    BLOCK_M1: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    offs_m0 = tl.arange(0, BLOCK_M1)
    for start_m in range(lo, hi, BLOCK_M1):
        offs_m = start_m + offs_m0
        q_ptrs = q_base + offs_m[:, None] * stride_qn + offs_d[None, :]
        do_ptrs = do_base + offs_m[:, None] * stride_don + offs_d[None, :]
        if MASKED:
            row_ok = offs_m < N_CTX
            q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # (BLOCK_M1, D)
            do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
            lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
            delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        else:
            q = tl.load(q_ptrs)
            do = tl.load(do_ptrs)
            lse = tl.load(lse_base + offs_m)
            delta = tl.load(delta_base + offs_m)
        # (BLOCK_N1, BLOCK_M1)
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        pT = tl.math.exp2(qkT - lse[None, :])
        if MASKED:
            keep = offs_m[None, :] < N_CTX
            if CAUSAL:
                keep = keep & (offs_m[None, :] >= offs_n[:, None])
            pT = tl.where(keep, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N1, BLOCK_M1)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.autotune(
    configs=_configs("dkdv"),
    key=_KEY,
    prune_configs_by={"early_config_prune": _prune("dkdv")},
)
@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, Lse, Delta, Mask, sm_scale, qk_scale,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
    stride_dkb, stride_dkh, stride_dkn,  # DK and DV share strides (both freshly allocated)
    stride_mb, stride_mn,
    H, N_CTX, N_BUCKET,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr,
):  # fmt: skip
    """dV = Pᵀ dO and dK = s·dSᵀ Q for one (batch, head, block of BLOCK_N1 keys)."""
    start_n = tl.program_id(0) * BLOCK_N1
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    off_bh = (off_b * H + off_h).to(tl.int64)
    q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_base = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
    do_base = DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
    dk_base = DK + off_b.to(tl.int64) * stride_dkb + off_h.to(tl.int64) * stride_dkh
    dv_base = DV + off_b.to(tl.int64) * stride_dkb + off_h.to(tl.int64) * stride_dkh

    offs_n = start_n + tl.arange(0, BLOCK_N1)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n < N_CTX
    k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
    k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)  # (BLOCK_N1, D), stays in registers
    v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N1, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N1, HEAD_DIM], dtype=tl.float32)

    # Query blocks: [lo, diag_hi) cross the diagonal (causal only), [diag_hi, full_hi) need no
    # checks, [full_hi, N) is the tail block.
    n_full = (N_CTX // BLOCK_M1) * BLOCK_M1
    if CAUSAL:
        lo = start_n
        diag_hi = tl.minimum(start_n + BLOCK_N1, N_CTX)
    else:
        lo = 0
        diag_hi = 0
    full_hi = tl.maximum(n_full, diag_hi)
    lse_base = Lse + off_bh * N_CTX
    delta_base = Delta + off_bh * N_CTX
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don, offs_n, offs_d,
        lo, diag_hi, qk_scale, N_CTX, BLOCK_M1, True, CAUSAL, DOT_PRECISION,
    )  # fmt: skip
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don, offs_n, offs_d,
        diag_hi, full_hi, qk_scale, N_CTX, BLOCK_M1, False, CAUSAL, DOT_PRECISION,
    )  # fmt: skip
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don, offs_n, offs_d,
        full_hi, N_CTX, qk_scale, N_CTX, BLOCK_M1, True, CAUSAL, DOT_PRECISION,
    )  # fmt: skip

    if HAS_MASK:
        # P was not masked per key above: a padded key's row of dK/dV is simply 0.
        m_ptrs = Mask + off_b.to(tl.int64) * stride_mb + offs_n * stride_mn
        kp = tl.load(m_ptrs, mask=key_ok, other=0)
        dk = tl.where(kp[:, None] != 0, dk, 0.0)
        dv = tl.where(kp[:, None] != 0, dv, 0.0)
    dk = dk * sm_scale
    out_offs = offs_n[:, None] * stride_dkn + offs_d[None, :]
    tl.store(dk_base + out_offs, dk.to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(dv_base + out_offs, dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _attn_bwd_dq_inner(
    dq, q, do, lse, delta, k_base, v_base, m_base, stride_kn, stride_vn, stride_mn,
    offs_m, offs_d, lo, hi, qk_scale, N_CTX,
    BLOCK_N2: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    offs_n0 = tl.arange(0, BLOCK_N2)
    for start_n in range(lo, hi, BLOCK_N2):
        offs_n = start_n + offs_n0
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        if MASKED:
            k = tl.load(k_ptrs, mask=offs_n[:, None] < N_CTX, other=0.0)  # (BLOCK_N2, D)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < N_CTX, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        # (BLOCK_M2, BLOCK_N2)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(qk - lse[:, None])
        if MASKED:
            keep = offs_n[None, :] < N_CTX
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= offs_n[None, :])
            p = tl.where(keep, p, 0.0)
        if HAS_MASK:
            kp = tl.load(m_base + offs_n * stride_mn, mask=offs_n < N_CTX, other=0)
            p = tl.where(kp[None, :] != 0, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M2, BLOCK_N2)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(
    configs=_configs("dq"), key=_KEY, prune_configs_by={"early_config_prune": _prune("dq")}
)
@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, DQ, Lse, Delta, Mask, sm_scale, qk_scale,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
    stride_dqb, stride_dqh, stride_dqn, stride_mb, stride_mn,
    H, N_CTX, N_BUCKET,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
):  # fmt: skip
    """dQ = s·dS K for one (batch, head, block of BLOCK_M2 queries)."""
    start_m = tl.program_id(0) * BLOCK_M2
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    off_bh = (off_b * H + off_h).to(tl.int64)
    q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_base = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
    do_base = DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
    dq_base = DQ + off_b.to(tl.int64) * stride_dqb + off_h.to(tl.int64) * stride_dqh
    m_base = Mask + off_b.to(tl.int64) * stride_mb

    offs_m = start_m + tl.arange(0, BLOCK_M2)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_CTX
    q_ptrs = q_base + offs_m[:, None] * stride_qn + offs_d[None, :]
    do_ptrs = do_base + offs_m[:, None] * stride_don + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # (BLOCK_M2, D)
    do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
    lse = tl.load(Lse + off_bh * N_CTX + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + off_bh * N_CTX + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M2, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        lo = start_m
        hi = tl.minimum(start_m + BLOCK_M2, N_CTX)
    else:
        lo = (N_CTX // BLOCK_N2) * BLOCK_N2
        hi = N_CTX
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_base, v_base, m_base, stride_kn, stride_vn, stride_mn, offs_m,
        offs_d, 0, lo, qk_scale, N_CTX, BLOCK_N2, False, CAUSAL, HAS_MASK, DOT_PRECISION,
    )  # fmt: skip
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_base, v_base, m_base, stride_kn, stride_vn, stride_mn, offs_m,
        offs_d, lo, hi, qk_scale, N_CTX, BLOCK_N2, True, CAUSAL, HAS_MASK, DOT_PRECISION,
    )  # fmt: skip
    dq = dq * sm_scale
    dq_ptrs = dq_base + offs_m[:, None] * stride_dqn + offs_d[None, :]
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


# ----------------------------------------------------------------------------------------------
# reference, checks, launch, autograd
# ----------------------------------------------------------------------------------------------


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    *,
    causal: bool = False,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """softmax(Q Kᵀ·s + mask) V in fp32 (differentiable), cast back to q's dtype.

    The model registry's ``math_attention`` with two additions the kernel shares: ``causal``,
    and a defined result for query rows that see no key (output 0, gradients 0; softmax alone
    would make them NaN).
    """
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    n = q.shape[-2]
    s = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale  # (B, h, N, N)
    keep = torch.ones(n, n, dtype=torch.bool, device=q.device)  # (N, N) query × key
    if causal:
        keep = torch.tril(keep)
    keep = keep.expand(q.shape[0], 1, n, n)  # (B, 1, N, N)
    if key_padding_mask is not None:
        keep = keep & key_padding_mask[:, None, None, :]
    seen = keep.any(dim=-1, keepdim=True)  # (B, 1, N, 1): the row has at least one key
    # Rows without a key get an all-visible softmax (finite) that the 0 factor then discards.
    s = s.masked_fill(~(keep | ~seen), float("-inf"))
    p = torch.softmax(s, dim=-1) * seen
    return torch.einsum("bhqk,bhkd->bhqd", p, v.float()).to(q.dtype)


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None
) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"flash_attention: {name} must be a torch.Tensor, got {type(t).__name__}"
            )
        if t.dim() != 4:
            raise ValueError(
                f"flash_attention: {name} must be (B, heads, N, head_dim), got "
                f"shape {tuple(t.shape)}"
            )
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            "flash_attention: q, k and v must have the same shape (self-attention), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"flash_attention: dtype {q.dtype} is not supported; use one of "
            f"{[str(d) for d in SUPPORTED_DTYPES]}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"flash_attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(
            "flash_attention: q, k, v must be on one device, got "
            f"{q.device}, {k.device}, {v.device}"
        )
    head_dim = q.shape[-1]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"flash_attention: head_dim {head_dim} is not supported by the Triton kernel; use one "
            f"of {SUPPORTED_HEAD_DIMS} (or impl='reference')"
        )
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            got = getattr(key_padding_mask, "dtype", type(key_padding_mask).__name__)
            raise TypeError(
                f"flash_attention: key_padding_mask must be a bool tensor (True = keep), got {got}"
            )
        want = (q.shape[0], q.shape[2])
        if tuple(key_padding_mask.shape) != want:
            raise ValueError(
                f"flash_attention: key_padding_mask must be (B, N) = {want}, got "
                f"{tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(
                f"flash_attention: key_padding_mask is on {key_padding_mask.device}, "
                f"q on {q.device}"
            )
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            f"flash_attention: impl='triton' needs CUDA tensors, got {q.device}; use "
            "impl='reference' on CPU (or TRITON_INTERPRET=1 to run the kernels in the interpreter)"
        )


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    # The kernels take any batch/head/sequence strides (qkv.permute views need no copy) but
    # address head_dim with stride 1.
    return t if t.stride(-1) == 1 else t.contiguous()


def _dot_precision(dtype: torch.dtype) -> str:
    return "tf32x3" if dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs


def _mask_args(mask: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    if mask is None:
        return like, 0, 0  # never read (HAS_MASK=False)
    m = mask.view(torch.uint8)  # (B, N), same bytes as bool
    return m, m.stride(0), m.stride(1)


def _flash_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    sm_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, n, d = q.shape
    o = torch.empty((b, h, n, d), dtype=q.dtype, device=q.device)  # (B, h, N, D)
    lse = torch.empty((b, h, n), dtype=torch.float32, device=q.device)  # (B, h, N)
    m, smb, smn = _mask_args(mask, q)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]), h, b)

    _attn_fwd_kernel[grid](
        q, k, v, o, lse, m, sm_scale * math.log2(math.e),
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], smb, smn,
        h, n, _n_bucket(n),
        HEAD_DIM=d, CAUSAL=causal, HAS_MASK=mask is not None,
        DOT_PRECISION=_dot_precision(q.dtype),
    )  # fmt: skip
    return o, lse


def _flash_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    sm_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, h, n, d = q.shape
    do = _last_dim_contiguous(do)
    delta = torch.empty_like(lse)  # (B, h, N) fp32
    _attn_bwd_preprocess_kernel[(triton.cdiv(n, PREPROCESS_BLOCK_M), h, b)](
        o, do, delta, *o.stride()[:3], *do.stride()[:3], h, n,
        HEAD_DIM=d, BLOCK_M=PREPROCESS_BLOCK_M,
    )  # fmt: skip
    dq = torch.empty((b, h, n, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((b, h, n, d), dtype=q.dtype, device=q.device)
    dv = torch.empty((b, h, n, d), dtype=q.dtype, device=q.device)
    m, smb, smn = _mask_args(mask, q)
    qk_scale = sm_scale * math.log2(math.e)
    prec = _dot_precision(q.dtype)
    has_mask = mask is not None

    def grid_dkdv(meta):
        return (triton.cdiv(n, meta["BLOCK_N1"]), h, b)

    _attn_bwd_dkdv_kernel[grid_dkdv](
        q, k, v, do, dk, dv, lse, delta, m, sm_scale, qk_scale,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3],
        smb, smn, h, n, _n_bucket(n),
        HEAD_DIM=d, CAUSAL=causal, HAS_MASK=has_mask, DOT_PRECISION=prec,
    )  # fmt: skip

    def grid_dq(meta):
        return (triton.cdiv(n, meta["BLOCK_M2"]), h, b)

    _attn_bwd_dq_kernel[grid_dq](
        q, k, v, do, dq, lse, delta, m, sm_scale, qk_scale,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
        smb, smn, h, n, _n_bucket(n),
        HEAD_DIM=d, CAUSAL=causal, HAS_MASK=has_mask, DOT_PRECISION=prec,
    )  # fmt: skip
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: Triton forward, Triton backward (recomputes P from the stored lse)."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, causal, sm_scale):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        o, lse = _flash_fwd(q, k, v, key_padding_mask, causal, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse, key_padding_mask)
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, mask = ctx.saved_tensors
        dq, dk, dv = _flash_bwd(do, q, k, v, o, lse, mask, ctx.causal, ctx.sm_scale)
        return dq, dk, dv, None, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    *,
    causal: bool = False,
    sm_scale: float | None = None,
    impl: str = "triton",
) -> torch.Tensor:
    """softmax(Q Kᵀ·s + mask) V for ``(B, heads, N, head_dim)`` inputs.

    ``key_padding_mask`` is ``(B, N)`` bool, True = keep; a query row with no visible key returns
    0. ``sm_scale`` defaults to ``head_dim ** -0.5``. ``impl="reference"`` runs
    ``attention_reference`` (any device, any head dim).
    """
    if impl not in ("triton", "reference"):
        raise ValueError(f"flash_attention: impl={impl!r}; choose 'triton' or 'reference'")
    scale = q.shape[-1] ** -0.5 if sm_scale is None else float(sm_scale)
    if impl == "reference":
        return attention_reference(q, k, v, key_padding_mask, causal=causal, sm_scale=scale)
    _check_inputs(q, k, v, key_padding_mask)
    if q.numel() == 0:  # nothing to launch; keeps autograd shapes right
        return attention_reference(q, k, v, key_padding_mask, causal=causal, sm_scale=scale)
    return FlashAttentionFunction.apply(q, k, v, key_padding_mask, bool(causal), scale)


# ----------------------------------------------------------------------------------------------
# ahead-of-time compilation cases (kernels/aot.py)
# ----------------------------------------------------------------------------------------------

_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _strides(*names: str) -> dict[str, str]:
    return {f"stride_{n}{a}": "i32" for n in names for a in ("b", "h", "n")}


def aot_cases(full: bool = False) -> list:
    """What kernels/aot.py compiles for sm_90a, with the specialisation a launch on contiguous
    (B, h, N, D) tensors gets (pointers and B/h/N strides 16-divisible, N arbitrary).

    Default: every shipped config of the forward and backward kernels for fp16 (head dim 64,
    causal), bf16 (128 with causal + key padding mask; 32) and fp32 (32 and 128, mask), which
    together compile every shipped config at least once. ``full``: every
    *candidate* config for bf16 and fp32 at each head dim, mask and causal on — the measurement
    behind ``_EXCLUDED``. A dot lowers to Hopper ``wgmma`` (fp32: through 3xTF32) when its tile
    has at least 64 rows (one warpgroup's M), else to ``mma.sync``.
    """
    from scigpt.kernels.aot import AotCase

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
            "DOT_PRECISION": _dot_precision(dtype),
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
            ("fwd", _attn_fwd_kernel, fwd_sig, "BLOCK_M"),  # Q Kᵀ and P V: BLOCK_M rows
            ("dkdv", _attn_bwd_dkdv_kernel, dkdv_sig, "BLOCK_N1"),  # K Qᵀ, Pᵀ dO, V dOᵀ, dSᵀ Q
            ("dq", _attn_bwd_dq_kernel, dq_sig, "BLOCK_M2"),  # Q Kᵀ, dO Vᵀ, dS K
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
                kernel=_attn_bwd_preprocess_kernel,
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
