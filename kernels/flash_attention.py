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

from scigpt.kernels import interpreter_compat
from scigpt.kernels.flash_attention_aot import attention_aot_cases
from scigpt.kernels.flash_attention_configs import (
    KINDS,
    PREPROCESS_BLOCK_M,
    ConfigKey,
    all_configs,
    candidate_configs,
    config_key,
    dot_precision,
    interpret_configs,
    prune_for,
    shipped_configs,
)
from scigpt.kernels.flash_attention_reference import (
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    attention_reference,
    check_inputs,
)

__all__ = [
    "CONFIGS",
    "INTERPRET",
    "INTERPRET_CONFIGS",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "ConfigKey",
    "FlashAttentionFunction",
    "aot_cases",
    "attention_reference",
    "candidate_configs",
    "config_key",
    "flash_attention",
    "shipped_configs",
]

# The interpreter (TRITON_INTERPRET=1: CPU tensors, numpy) runs every config of an autotuner, so
# it gets one small config; the real ones are still compiled ahead of time by kernels/aot.py.
# triton.jit reads the same knob when the kernels below are decorated.
INTERPRET = bool(triton.knobs.runtime.interpret)
if INTERPRET:
    interpreter_compat()

# Fresh config objects per import of this module (the tests import it afresh under the
# interpreter); their values live in flash_attention_configs.
CONFIGS: dict[str, list[triton.Config]] = {kind: all_configs(kind) for kind in KINDS}
INTERPRET_CONFIGS: dict[str, list[triton.Config]] = {
    kind: interpret_configs(kind) for kind in KINDS
}
_prune = prune_for
_dot_precision = dot_precision


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
# launch, autograd
# ----------------------------------------------------------------------------------------------


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    # The kernels take any batch/head/sequence strides (qkv.permute views need no copy) but
    # address head_dim with stride 1.
    return t if t.stride(-1) == 1 else t.contiguous()


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
    check_inputs(q, k, v, key_padding_mask, interpret=INTERPRET)
    if q.numel() == 0:  # nothing to launch; keeps autograd shapes right
        return attention_reference(q, k, v, key_padding_mask, causal=causal, sm_scale=scale)
    return FlashAttentionFunction.apply(q, k, v, key_padding_mask, bool(causal), scale)


def aot_cases(full: bool = False) -> list:
    """What kernels/aot.py compiles for sm_90a (``flash_attention_aot.attention_aot_cases``),
    with this module's kernels."""
    kernels = {
        "fwd": _attn_fwd_kernel,
        "dkdv": _attn_bwd_dkdv_kernel,
        "dq": _attn_bwd_dq_kernel,
        "preprocess": _attn_bwd_preprocess_kernel,
    }
    return attention_aot_cases(kernels, full)
