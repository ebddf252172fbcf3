"""The Triton kernels of the fused patch embedding (``scigpt.kernels.patch_embed`` launches them
and documents what each computes) and the tiles each is autotuned over.

The kernels are plain ``triton.JITFunction`` objects whatever ``TRITON_INTERPRET`` was at import;
without Triton they stay undecorated functions (the reference path needs none of this).
"""

from __future__ import annotations

import torch

from scigpt.kernels import config_subset

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference path and the module swap work without Triton
    triton = tl = None


def _jit(fn):
    # A compiled JITFunction whatever TRITON_INTERPRET was at import (``triton.jit`` decides at
    # decoration time): ahead-of-time compilation needs it, and the interpreter variant is made
    # from ``kernel.fn`` when launching under TRITON_INTERPRET=1 (``_launch``).
    return fn if triton is None else triton.JITFunction(fn)


# ----------------------------------------------------------------------------------- kernels
# Only builtins of triton.language here, no functions of its standard library (tl.zeros, tl.sum,
# tl.cdiv): those are decorated once per process, for the interpreter or for the compiler as
# TRITON_INTERPRET was when Triton was first imported, and would tie these kernels to that.


@_jit
def _patch_embed_fwd_kernel(
    x_ptr,  # (B, V, PT, H, W) contiguous
    w_ptr,  # (num_vars, D, K) contiguous
    bias_ptr,  # (num_vars, D)
    emb_ptr,  # (num_vars, D) variable embedding, read only if HAS_EMB
    pos_ptr,  # (N, D) position embedding, read only if HAS_POS
    ids_ptr,  # (V,) variable ids
    out_ptr,  # (B, V, N, D)
    # M = B·N tokens; GW = ceil(W / PW) tokens per grid row; M_BUCKET: autotune key only
    M, N, H, W, GW, V, M_BUCKET,
    # D and K are fixed per model: as constexprs they bound loops at compile time (the
    # interpreter of Triton 3.6 cannot run loops over runtime bounds with NumPy 2.4)
    D: tl.constexpr, K: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_EMB: tl.constexpr, HAS_POS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """out[m, :] = Σ_k tubelet[m, k] · W[vid, :, k] + bias[vid] (+ emb[vid]) (+ pos[n])."""
    pid_m = tl.program_id(0)
    v = tl.program_id(1)
    pid_d = tl.program_id(2)
    vid = tl.load(ids_ptr + v).to(tl.int64)

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # flat token index over (B, N)
    b = m // N
    n = m % N
    m_ok = m < M
    # tubelet (m, k) sits at x[b, v, t, r0 + kr, c0 + kc]: token part + k part of the offset
    r0 = n // GW * PH
    c0 = n % GW * PW
    tok = (b.to(tl.int64) * V + v) * (PT * H * W) + r0 * W + c0
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D

    acc = tl.full((BLOCK_M, BLOCK_D), 0.0, tl.float32)
    for k0 in tl.static_range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        kr = k % (PH * PW) // PW
        kc = k % PW
        k_off = (k // (PH * PW) * H + kr) * W + kc
        # the zero padding of pad_to_multiple: rows/cols past the field load 0
        ok = (
            m_ok[:, None] & k_ok[None, :]
            & (r0[:, None] + kr[None, :] < H) & (c0[:, None] + kc[None, :] < W)
        )  # fmt: skip
        xt = tl.load(x_ptr + tok[:, None] + k_off[None, :], mask=ok, other=0.0)  # (BM, BK)
        wt = tl.load(
            w_ptr + vid * D * K + d[None, :] * K + k[:, None],
            mask=k_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # (BLOCK_K, BLOCK_D)
        acc = tl.dot(xt, wt, acc, input_precision=PRECISION)

    acc += tl.load(bias_ptr + vid * D + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_EMB:
        acc += tl.load(emb_ptr + vid * D + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    tile_ok = m_ok[:, None] & d_ok[None, :]
    if HAS_POS:
        pos = tl.load(pos_ptr + n[:, None] * D + d[None, :], mask=tile_ok, other=0.0)
        acc += pos.to(tl.float32)
    out_row = (b.to(tl.int64) * V + v) * N + n  # row of out viewed as (B·V·N, D)
    tl.store(
        out_ptr + out_row[:, None] * D + d[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=tile_ok,
    )


@_jit
def _patch_embed_bwd_dx_kernel(
    dout_ptr,  # (B, V, N, D) contiguous
    w_ptr,  # (num_vars, D, K)
    ids_ptr,  # (V,)
    dx_ptr,  # (B, V, PT, H, W)
    M, N, H, W, GW, V, M_BUCKET,
    D: tl.constexpr, K: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """dtubelet[m, k] = Σ_d dout[m, d] · W[vid, d, k], stored into x's layout (padding dropped)."""
    pid_m = tl.program_id(0)
    v = tl.program_id(1)
    pid_k = tl.program_id(2)
    vid = tl.load(ids_ptr + v).to(tl.int64)

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    b = m // N
    n = m % N
    m_ok = m < M
    out_row = (b.to(tl.int64) * V + v) * N + n
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = k < K

    acc = tl.full((BLOCK_M, BLOCK_K), 0.0, tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        g = tl.load(
            dout_ptr + out_row[:, None] * D + d[None, :],
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # (BLOCK_M, BLOCK_D)
        wt = tl.load(
            w_ptr + vid * D * K + d[:, None] * K + k[None, :],
            mask=d_ok[:, None] & k_ok[None, :],
            other=0.0,
        )  # (BLOCK_D, BLOCK_K)
        acc = tl.dot(g.to(wt.dtype), wt, acc, input_precision=PRECISION)

    r0 = n // GW * PH
    c0 = n % GW * PW
    tok = (b.to(tl.int64) * V + v) * (PT * H * W) + r0 * W + c0
    kr = k % (PH * PW) // PW
    kc = k % PW
    k_off = (k // (PH * PW) * H + kr) * W + kc
    # the padded part of the tubelets has no place in x: dropped
    ok = (
        m_ok[:, None] & k_ok[None, :]
        & (r0[:, None] + kr[None, :] < H) & (c0[:, None] + kc[None, :] < W)
    )  # fmt: skip
    tl.store(
        dx_ptr + tok[:, None] + k_off[None, :],
        acc.to(dx_ptr.dtype.element_ty),
        mask=ok,
    )


@_jit
def _patch_embed_bwd_dw_kernel(
    dout_ptr,  # (B, V, N, D) contiguous
    x_ptr,  # (B, V, PT, H, W)
    dw_ptr,  # (SPLIT, V, D, K) fp32 partial sums
    db_ptr,  # (SPLIT, V, D) fp32 partial sums
    M, N, H, W, GW, V, M_BUCKET,
    D: tl.constexpr, K: tl.constexpr,
    CHUNK: tl.constexpr,  # tokens per split, a power of two >= BLOCK_M
    PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """dW[s, v, d, k] = Σ_{m in chunk s} dout[m, d] · tubelet[m, k]; db[s, v, d] = Σ dout[m, d]."""
    s = tl.program_id(0)
    v = tl.program_id(1)
    n_dt = (D + BLOCK_D - 1) // BLOCK_D
    pid_d = tl.program_id(2) % n_dt
    pid_k = tl.program_id(2) // n_dt

    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = k < K
    kr = k % (PH * PW) // PW
    kc = k % PW
    k_off = (k // (PH * PW) * H + kr) * W + kc

    acc = tl.full((BLOCK_D, BLOCK_K), 0.0, tl.float32)
    # dbias as a dot with ones (every column the same sum): no reduction from the standard
    # library (see above), and it rides on the tensor cores beside the dW dot
    acc_b = tl.full((BLOCK_D, 16), 0.0, tl.float32)
    ones = tl.full((BLOCK_M, 16), 1.0, dout_ptr.dtype.element_ty)
    for m0 in range(0, CHUNK, BLOCK_M):
        m = s * CHUNK + m0 + tl.arange(0, BLOCK_M)
        m_ok = m < M
        b = m // N
        n = m % N
        out_row = (b.to(tl.int64) * V + v) * N + n
        g = tl.load(
            dout_ptr + out_row[:, None] * D + d[None, :],
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # (BLOCK_M, BLOCK_D)
        r0 = n // GW * PH
        c0 = n % GW * PW
        tok = (b.to(tl.int64) * V + v) * (PT * H * W) + r0 * W + c0
        ok = (
            m_ok[:, None] & k_ok[None, :]
            & (r0[:, None] + kr[None, :] < H) & (c0[:, None] + kc[None, :] < W)
        )  # fmt: skip
        xt = tl.load(x_ptr + tok[:, None] + k_off[None, :], mask=ok, other=0.0)  # (BM, BK)
        g_t = tl.trans(g)  # (BLOCK_D, BLOCK_M)
        acc = tl.dot(g_t.to(xt.dtype), xt, acc, input_precision=PRECISION)
        acc_b = tl.dot(g_t, ones, acc_b, input_precision=PRECISION)

    part = s.to(tl.int64) * V + v
    tl.store(
        dw_ptr + (part * D + d[:, None]) * K + k[None, :],
        acc,
        mask=d_ok[:, None] & k_ok[None, :],
    )
    if pid_k == 0:
        col = tl.arange(0, 16)
        tl.store(
            db_ptr + part * D + d[:, None] + col[None, :] * 0,
            acc_b,
            mask=d_ok[:, None] & (col == 0)[None, :],
        )


# ------------------------------------------------------------------------- autotune configs


def _configs(shapes: list[tuple[int, int, int, int]]) -> list:
    """``triton.Config`` objects from (BLOCK_M, BLOCK_D, num_warps, num_stages) tuples."""
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_D": bd}, num_warps=nw, num_stages=ns)
        for bm, bd, nw, ns in shapes
    ]


# Tiles each kernel is tuned over, per dot operand dtype: (BLOCK_M, BLOCK_D, warps, stages).
# fp32 has its own, smaller list: a tf32x3 dot holds three times the operands, and the 16-bit
# tiles spill there. Every entry compiles for sm_90 without spilling (aot_cases: K=32, D=1024
# and K=72, D=768; scigpt.kernels.aot checks it); dots of 64+ rows lower to wgmma.
FWD_CONFIGS: dict[str, list[tuple[int, int, int, int]]] = {
    "16bit": [(64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 4, 3), (128, 128, 8, 3),
              (64, 256, 8, 3), (32, 128, 4, 2)],
    "fp32": [(64, 64, 4, 3), (64, 128, 8, 3), (128, 64, 8, 3), (32, 64, 4, 2)],
}  # fmt: skip
DX_CONFIGS: dict[str, list[tuple[int, int, int, int]]] = {
    "16bit": [(64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 4, 3), (128, 128, 8, 3),
              (32, 128, 4, 2)],
    "fp32": [(64, 64, 4, 3), (64, 128, 8, 3), (128, 64, 8, 3), (32, 64, 4, 2)],
}  # fmt: skip
DW_CONFIGS: dict[str, list[tuple[int, int, int, int]]] = {
    "16bit": [(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3), (128, 128, 8, 3),
              (32, 64, 4, 2)],
    "fp32": [(64, 64, 8, 3), (128, 64, 8, 3), (64, 128, 8, 3), (32, 64, 4, 2)],
}  # fmt: skip
# The interpreter's one configuration: small tiles so the tests exercise several token and D
# tiles and their masks on small shapes.
INTERPRET_CONFIG = {"BLOCK_M": 32, "BLOCK_D": 32}
_KEY = ["K", "D", "M_BUCKET"]  # the autotuner adds the tensors' dtypes


def _dtype_class(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def _shape(config) -> tuple[int, int, int, int]:
    return (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_D"], config.num_warps, config.num_stages)


def _autotuned(kernel, configs: dict[str, list], operand: str):
    """``kernel`` autotuned over the union of ``configs``, pruned to the list of the dtype of
    argument ``operand`` (a dot operand) at each launch."""
    union = list(dict.fromkeys(c for cs in configs.values() for c in cs))

    def prune(all_configs, named_args, **_):
        mine = configs[_dtype_class(named_args[operand].dtype)]
        mine = set(mine[:1] if config_subset() == "first" else mine)
        return [c for c in all_configs if _shape(c) in mine]

    return triton.autotune(
        _configs(union), key=_KEY, prune_configs_by={"early_config_prune": prune}
    )(kernel)
