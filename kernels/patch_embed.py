"""Fused per-variable tubelet patch embedding (Triton), beside its PyTorch reference.

    out[b, v, n, :] = W[ids[v]] · tubelet(x[b, v], n) + bias[ids[v]]
                      (+ var_embed[ids[v]]) (+ pos[n])                      # (B, V, N, D)

``x`` is ``(B, V, T, H, W)`` with ``T == pt``; tubelet ``n = i·gw + j`` holds the ``K = pt·ph·pw``
values ``x[b, v, :, i·ph:(i+1)·ph, j·pw:(j+1)·pw]`` in ``(t, h, w)`` order, where H and W are
zero-padded at the bottom/right to multiples of ``(ph, pw)`` (``pad_to_multiple``). ``W`` is the
``(num_vars, D, pt, ph, pw)`` weight and ``bias`` the ``(num_vars, D)`` bias of the model's
``GridPatchEmbed``, used as they are, so checkpoints are interchangeable (DESIGN.md §4).

Kernels (one token tile × one D tile per program; tokens flattened over (B, N), so a small grid
of a big batch still fills whole tiles):

* ``_patch_embed_fwd_kernel``: gathers the tubelets of ``BLOCK_M`` tokens straight from ``x``
  with pointer arithmetic (out-of-field rows/columns masked to 0: the padding, never
  materialised), ``tl.dot`` with the ``(K, BLOCK_D)`` weight tile in fp32 accumulation (K padded
  to a power of two >= 16 with masked loads, looped in chunks of at most 64), adds bias, variable
  embedding and position embedding and stores in the output dtype — one read of ``x``, one write
  of the tokens, no unfold.
* ``_patch_embed_bwd_dx_kernel``: ``dx`` tile = ``dout (BLOCK_M, D) @ W[ids[v]] (D, K)``,
  scattered straight back into ``(B, V, T, H, W)`` (the padded part is dropped by the store
  mask; every element of ``x`` lies in exactly one tubelet, so each is written once).
* ``_patch_embed_bwd_dw_kernel``: ``dW[v] = Σ_tokens doutᵀ ⊗ tubelet`` and ``dbias[v] =
  Σ_tokens dout`` (a second dot, with ones): a reduction over the B·N tokens, split in
  ``SPLIT`` contiguous token chunks whose fp32 partials are summed by PyTorch (deterministic, no
  atomics) — with V·D/BLOCK_D programs alone a Hopper GPU would idle. Rows of ``var_ids`` are
  then scattered into the ``(num_vars, ...)`` gradients with ``index_add_``, so repeated ids
  sum correctly.
* ``dpos = Σ_{b,v} dout`` stays a PyTorch reduction: it is bandwidth-bound and PyTorch's reduce
  already runs at bandwidth; fusing it into the dx kernel would need a (b, v)-inner loop order
  that breaks dx's reduction over D.

fp32 inputs use ``tf32x3`` dots on the GPU (three TF32 products, ~fp32 accuracy on tensor
cores; the PyTorch reference does not use TF32 either) and exact fp32 in the interpreter.

``use_fused_patch_embed(model)`` routes a built model's ``GridPatchEmbed`` through this op by
patching the instance's ``forward`` (as activation checkpointing does): parameters and state-dict
keys do not change, and no model file imports Triton.

``TRITON_INTERPRET=1`` (read when a kernel is launched, not at import) runs the kernels in
Triton's interpreter on CPU tensors with one fixed configuration. Importing this module never
needs Triton; using ``impl="triton"`` without it raises ``RuntimeError``.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Literal

import torch
from torch import nn

from scigpt.kernels.aot import AotCase
from scigpt.kernels.patch_embed_kernels import (
    _KEY,  # noqa: F401  (tests reach it through this module)
    DW_CONFIGS,
    DX_CONFIGS,
    FWD_CONFIGS,
    INTERPRET_CONFIG,
    _autotuned,
    _configs,
    _dtype_class,
    _patch_embed_bwd_dw_kernel,
    _patch_embed_bwd_dx_kernel,
    _patch_embed_fwd_kernel,
    _shape,  # noqa: F401  (tests reach it through this module)
)

try:
    import triton
except ImportError:  # the reference path and the module swap work without Triton
    triton = None


Impl = Literal["triton", "reference"]
IMPLS: tuple[str, ...] = ("triton", "reference")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_BLOCK_K = 64


if triton is not None:
    _patch_embed_fwd_tuned = _autotuned(_patch_embed_fwd_kernel, FWD_CONFIGS, "x_ptr")
    _patch_embed_bwd_dx_tuned = _autotuned(_patch_embed_bwd_dx_kernel, DX_CONFIGS, "w_ptr")
    _patch_embed_bwd_dw_tuned = _autotuned(_patch_embed_bwd_dw_kernel, DW_CONFIGS, "x_ptr")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.cache
def _interpreted(kernel):
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction(kernel.fn)


def _launch(kernel, tuned, grid, *args, **constexprs) -> None:
    if _interpreting():
        _interpreted(kernel)[grid(INTERPRET_CONFIG)](*args, **constexprs, **INTERPRET_CONFIG)
    else:
        tuned[grid](*args, **constexprs)


# ------------------------------------------------------------------------------ host side


def _block_k(k: int) -> int:
    return min(max(16, triton.next_power_of_2(k)), _MAX_BLOCK_K)


def _precision() -> str:
    # for fp32 operands (ignored for 16-bit ones): tf32x3 on the GPU, exact in the interpreter
    return "ieee" if _interpreting() else "tf32x3"


def _geometry(x: torch.Tensor, patch: tuple[int, int, int]) -> dict[str, int]:
    b, _, _, h, w = x.shape
    _, ph, pw = patch
    gw = -(-w // pw)
    n = -(-h // ph) * gw
    m = b * n
    return dict(M=m, N=n, H=h, W=w, GW=gw, M_BUCKET=triton.next_power_of_2(max(m, 1)))


def _fwd(x, weight, bias, var_ids, patch, pos, var_embed, out_dtype) -> torch.Tensor:
    b, v = x.shape[:2]
    d = weight.shape[1]
    pt, ph, pw = patch
    k = pt * ph * pw
    geo = _geometry(x, patch)
    out = torch.empty((b, v, geo["N"], d), device=x.device, dtype=out_dtype)
    if out.numel() == 0:
        return out

    def grid(meta):
        return (triton.cdiv(geo["M"], meta["BLOCK_M"]), v, triton.cdiv(d, meta["BLOCK_D"]))

    # fmt: off
    _launch(
        _patch_embed_fwd_kernel, _patch_embed_fwd_tuned, grid,
        x, weight, bias,
        var_embed if var_embed is not None else bias,
        pos if pos is not None else bias,
        var_ids, out,
        geo["M"], geo["N"], geo["H"], geo["W"], geo["GW"], v, geo["M_BUCKET"],
        D=d, K=k, PT=pt, PH=ph, PW=pw, HAS_EMB=var_embed is not None, HAS_POS=pos is not None,
        PRECISION=_precision(), BLOCK_K=_block_k(k),
    )
    # fmt: on
    return out


def _dw_split(m: int, v: int, d: int, device: torch.device) -> tuple[int, int]:
    """(SPLIT, CHUNK): token chunks of the dW reduction, enough for ~4 programs per SM.

    CHUNK is a power of two (a constexpr: few compiled variants) and at least every
    configuration's BLOCK_M (128), so chunks are whole tiles; the last chunk is masked."""
    if _interpreting():
        # about two chunks: exercises the partial sums, costs the interpreter little
        chunk = max(INTERPRET_CONFIG["BLOCK_M"], triton.next_power_of_2(-(-m // 2)))
        return -(-m // chunk), chunk
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    split = max(1, -(-4 * sms // (v * -(-d // 128))))  # programs wanted per (v, D tile)
    chunk = max(128, triton.next_power_of_2(-(-m // split)))
    return -(-m // chunk), chunk


def _bwd_dx(dout, weight, var_ids, x_shape, x_dtype, patch) -> torch.Tensor:
    v = x_shape[1]
    d = weight.shape[1]
    pt, ph, pw = patch
    k = pt * ph * pw
    dx = torch.empty(x_shape, device=dout.device, dtype=x_dtype)
    geo = _geometry(dx, patch)
    if dx.numel() == 0:
        return dx
    block_k = _block_k(k)

    def grid(meta):
        return (triton.cdiv(geo["M"], meta["BLOCK_M"]), v, triton.cdiv(k, block_k))

    # fmt: off
    _launch(
        _patch_embed_bwd_dx_kernel, _patch_embed_bwd_dx_tuned, grid,
        dout, weight, var_ids, dx,
        geo["M"], geo["N"], geo["H"], geo["W"], geo["GW"], v, geo["M_BUCKET"],
        D=d, K=k, PT=pt, PH=ph, PW=pw, PRECISION=_precision(), BLOCK_K=block_k,
    )
    # fmt: on
    return dx


def _bwd_dw(dout, x, var_ids, d, patch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position v: dW (V, D, K) and dbias (V, D), fp32."""
    v = x.shape[1]
    pt, ph, pw = patch
    k = pt * ph * pw
    geo = _geometry(x, patch)
    if geo["M"] == 0:
        z = dout.new_zeros((v, d, k), dtype=torch.float32)
        return z, z[..., 0].clone()
    split, chunk = _dw_split(geo["M"], v, d, x.device)
    dw = torch.empty((split, v, d, k), device=x.device, dtype=torch.float32)
    db = torch.empty((split, v, d), device=x.device, dtype=torch.float32)
    block_k = _block_k(k)

    def grid(meta):
        return (split, v, triton.cdiv(d, meta["BLOCK_D"]) * triton.cdiv(k, block_k))

    # fmt: off
    _launch(
        _patch_embed_bwd_dw_kernel, _patch_embed_bwd_dw_tuned, grid,
        dout, x, dw, db,
        geo["M"], geo["N"], geo["H"], geo["W"], geo["GW"], v, geo["M_BUCKET"],
        D=d, K=k, CHUNK=chunk, PT=pt, PH=ph, PW=pw, PRECISION=_precision(), BLOCK_K=block_k,
    )
    # fmt: on
    return dw.sum(0), db.sum(0)


def _rows_to_table(rows: torch.Tensor, var_ids: torch.Tensor, meta) -> torch.Tensor:
    """Scatter per-position rows (V, ...) into a gradient of the (num_vars, ...) table whose
    (shape, dtype) is ``meta``; repeated ids add up, like the backward of ``table[var_ids]``."""
    shape, dtype = meta
    grad = torch.zeros(shape[0], *rows.shape[1:], device=rows.device, dtype=torch.float32)
    grad.index_add_(0, var_ids, rows)
    return grad.reshape(shape).to(dtype)


class _FusedPatchEmbed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, var_ids, pos, var_embed, patch, out_dtype):
        out = _fwd(x, weight, bias, var_ids, patch, pos, var_embed, out_dtype)
        ctx.save_for_backward(x, weight, var_ids)
        ctx.patch = patch
        # (shape, dtype) of the tensors not needed in backward, for their gradients
        ctx.bias_meta = (bias.shape, bias.dtype)
        ctx.pos_meta = None if pos is None else (pos.shape, pos.dtype)
        ctx.emb_meta = None if var_embed is None else (var_embed.shape, var_embed.dtype)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, var_ids = ctx.saved_tensors
        need_x, need_w, need_b, _, need_pos, need_emb, _, _ = ctx.needs_input_grad
        dout = dout.contiguous()  # (B, V, N, D)
        dx = dw = db = dpos = demb = None
        if need_x:
            dx = _bwd_dx(dout, weight, var_ids, x.shape, x.dtype, ctx.patch)
        if need_w or need_b or need_emb:
            rows_w, rows_b = _bwd_dw(dout, x, var_ids, weight.shape[1], ctx.patch)
            if need_w:
                dw = _rows_to_table(rows_w, var_ids, (weight.shape, weight.dtype))
            if need_b:
                db = _rows_to_table(rows_b, var_ids, ctx.bias_meta)
            if need_emb:
                demb = _rows_to_table(rows_b, var_ids, ctx.emb_meta)
        if need_pos:
            shape, dtype = ctx.pos_meta
            dpos = dout.sum((0, 1), dtype=torch.float32).reshape(shape).to(dtype)
        return dx, dw, db, None, dpos, demb, None, None


# ------------------------------------------------------------------------------- reference


def patch_embed_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    var_ids: torch.Tensor,
    patch: tuple[int, int, int],
    pos: torch.Tensor | None = None,
    var_embed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch: the math of ``GridPatchEmbed.forward`` (pad, unfold, einsum; this file
    imports no model code, the tests check the two agree) plus the optional embeddings."""
    _, ph, pw = patch
    b, v, t, h, w = x.shape
    gh, gw = -(-h // ph), -(-w // pw)
    x = nn.functional.pad(x, (0, gw * pw - w, 0, gh * ph - h))
    # (B, V, T, gh, ph, gw, pw) -> (B, V, gh, gw, T, ph, pw) -> (B, V, N, K)
    x = x.reshape(b, v, t, gh, ph, gw, pw).permute(0, 1, 3, 5, 2, 4, 6)
    x = x.reshape(b, v, gh * gw, t * ph * pw)
    tokens = torch.einsum("bvnk,vdk->bvnd", x, weight[var_ids].flatten(2))  # (B, V, N, D)
    tokens = tokens + bias[var_ids][None, :, None, :]
    if var_embed is not None:
        tokens = tokens + var_embed[var_ids][None, :, None, :]
    if pos is not None:
        tokens = tokens + pos.reshape(gh * gw, -1)  # (N, D) over (B, V)
    return tokens


# ------------------------------------------------------------------------------ public API


def _check(x, weight, bias, var_ids, patch, pos, var_embed, impl) -> None:
    """Clear errors for what the kernel cannot take (the reference gets the same checks, so
    switching ``impl`` never changes which inputs are accepted, except contiguity)."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {list(IMPLS)}")
    if len(patch) != 3 or any(int(p) < 1 for p in patch):
        raise ValueError(f"patch={tuple(patch)} must be three positive sizes (pt, ph, pw)")
    if x.dim() != 5:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected (B, V, T, H, W)")
    _, v, t, h, w = x.shape
    pt, ph, pw = patch
    if t != pt:
        raise ValueError(f"input has {t} time frames but the patch embedding expects {pt}")
    if weight.dim() != 5 or tuple(weight.shape[2:]) != (pt, ph, pw):
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}: expected (num_vars, D, {pt}, {ph}, {pw})"
        )
    num_vars, d = weight.shape[:2]
    if tuple(bias.shape) != (num_vars, d):
        raise ValueError(f"bias has shape {tuple(bias.shape)}: expected ({num_vars}, {d})")
    if var_embed is not None and tuple(var_embed.shape) != (num_vars, d):
        raise ValueError(
            f"var_embed has shape {tuple(var_embed.shape)}: expected the table "
            f"({num_vars}, {d}), indexed by var_ids like bias"
        )
    n = -(-h // ph) * -(-w // pw)
    if pos is not None and (
        pos.dim() < 2 or tuple(pos.shape[-2:]) != (n, d) or any(s != 1 for s in pos.shape[:-2])
    ):
        raise ValueError(f"pos has shape {tuple(pos.shape)}: expected ({n}, {d}) (N, D)")
    named = {"x": x, "weight": weight, "bias": bias, "pos": pos, "var_embed": var_embed}
    named = {k: t for k, t in named.items() if t is not None}
    for name, t in named.items():
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}: expected one of {list(_DTYPES)}")
    if x.dtype != weight.dtype:
        raise ValueError(
            f"x ({x.dtype}) and weight ({weight.dtype}) must have one dtype: cast the input, "
            "or run under torch.autocast"
        )
    if var_ids.dim() != 1 or var_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"var_ids must be a 1-D int32/int64 tensor, got {var_ids.dtype} {tuple(var_ids.shape)}"
        )
    if var_ids.numel() != v:
        raise ValueError(f"var_ids has {var_ids.numel()} ids for {v} variables in x")
    # var_ids may stay on the CPU (as for PyTorch indexing): checked there for free
    devices = {name: t.device for name, t in named.items()}
    if var_ids.device.type != "cpu":
        devices["var_ids"] = var_ids.device
    if len(set(devices.values())) > 1:
        raise ValueError(f"inputs are on different devices: {devices}")
    if var_ids.numel() and var_ids.device.type == "cpu":
        lo, hi = int(var_ids.min()), int(var_ids.max())
        if lo < 0 or hi >= num_vars:
            raise ValueError(
                f"var_ids range [{lo}, {hi}] is outside the {num_vars} variables of the weight"
            )
    elif var_ids.numel() and not var_ids.is_meta:
        # on the device, without a host sync: a device-side assert, like out-of-range indexing
        torch._assert_async(((var_ids >= 0) & (var_ids < num_vars)).all())
    if impl == "triton":
        if triton is None:
            raise RuntimeError(
                "impl='triton' needs Triton: pip install 'scigpt[kernels]' "
                "(or use impl='reference')"
            )
        if x.device.type != "cuda" and not _interpreting():
            raise RuntimeError(
                f"impl='triton' needs CUDA tensors, got {x.device.type}: move the inputs to a "
                "GPU, set TRITON_INTERPRET=1 (slow, for tests) or use impl='reference'"
            )
        for name, t in named.items():
            if not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous for impl='triton': call .contiguous()")


def fused_patch_embed(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    var_ids: torch.Tensor,
    patch: tuple[int, int, int],
    pos: torch.Tensor | None = None,
    var_embed: torch.Tensor | None = None,
    *,
    impl: Impl = "triton",
) -> torch.Tensor:
    """Per-variable tubelet patch embedding, (B, V, T, H, W) → (B, V, N, D), differentiable.

    ``weight`` (num_vars, D, pt, ph, pw) and ``bias`` (num_vars, D) are ``GridPatchEmbed``'s
    parameters; ``var_ids`` (V,) picks their rows (repeats allowed). Optional, added in the same
    pass: ``var_embed`` (num_vars, D), a per-variable table indexed by ``var_ids`` like ``bias``,
    and ``pos`` (N, D) (leading size-1 dims allowed), added to every (b, v).
    The output dtype is that of ``x`` promoted with the added embeddings' dtypes (as PyTorch's
    ``+`` gives for the reference). Under ``torch.autocast``, ``x`` and ``weight`` are cast to
    the autocast dtype first, like the reference's einsum. ``var_ids`` on the CPU (moved to
    the device here) is range-checked with a clear error; on the GPU it is checked without a
    host sync, by a device-side assert.
    """
    if x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type):
        dt = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dt), weight.to(dt)
    _check(x, weight, bias, var_ids, patch, pos, var_embed, impl)
    var_ids = var_ids.to(x.device, non_blocking=True)
    patch = tuple(int(p) for p in patch)
    if impl == "reference":
        return patch_embed_reference(x, weight, bias, var_ids, patch, pos, var_embed)
    out_dtype = x.dtype
    for t in (bias, pos, var_embed):
        if t is not None:
            out_dtype = torch.promote_types(out_dtype, t.dtype)
    with torch.autocast(x.device.type, enabled=False):
        return _FusedPatchEmbed.apply(x, weight, bias, var_ids, pos, var_embed, patch, out_dtype)


# ------------------------------------------------------------------------- module swap


def _is_grid_patch_embed(mod: nn.Module) -> bool:
    # Duck-typed: kernels import no model code (DESIGN.md §4). SeriesPatchEmbed has an int patch.
    patch, weight = getattr(mod, "patch", None), getattr(mod, "weight", None)
    return (
        isinstance(patch, tuple)
        and len(patch) == 3
        and isinstance(weight, nn.Parameter)
        and weight.dim() == 5
        and isinstance(getattr(mod, "bias", None), nn.Parameter)
    )


def _fused_forward(mod: nn.Module, x: torch.Tensor, var_ids: torch.Tensor, *, impl: Impl):
    """The swapped-in ``forward(x, var_ids)`` of a ``GridPatchEmbed`` instance."""
    if impl == "reference" or x.is_meta:
        return type(mod).forward(mod, x, var_ids)  # the module's own forward is the reference
    return fused_patch_embed(x.contiguous(), mod.weight, mod.bias, var_ids, mod.patch, impl=impl)


def _swapped(mod: nn.Module) -> bool:
    fn = mod.__dict__.get("forward")
    return isinstance(fn, functools.partial) and fn.func is _fused_forward


def use_fused_patch_embed(model: nn.Module, *, impl: Impl = "triton") -> list[str]:
    """Route every ``GridPatchEmbed`` in ``model`` (or ``model`` itself) through
    :func:`fused_patch_embed`, in place; returns the swapped modules' names.

    Only the instances' ``forward`` attributes change (as activation checkpointing does), so
    parameters, state-dict keys and shapes stay those of the model: checkpoints load either way.
    ``impl="reference"`` routes through the module's own forward. Applying it twice re-selects
    ``impl``; :func:`restore_patch_embed` undoes it.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {list(IMPLS)}")
    names = [name for name, mod in model.named_modules() if _is_grid_patch_embed(mod)]
    if not names:
        raise ValueError(
            f"{type(model).__name__} holds no GridPatchEmbed-like module (a 5-D weight "
            "(num_vars, D, pt, ph, pw), a bias and a (pt, ph, pw) patch)"
        )
    for name in names:
        mod = model.get_submodule(name)
        mod.forward = functools.partial(_fused_forward, mod, impl=impl)
    return names


def restore_patch_embed(model: nn.Module) -> list[str]:
    """Undo :func:`use_fused_patch_embed`; returns the restored modules' names."""
    names = [name for name, mod in model.named_modules() if _swapped(mod)]
    for name in names:
        del model.get_submodule(name).forward
    return names


def fused_patch_embed_impl(model: nn.Module) -> dict[str, str]:
    """Module name → selected impl, for every swapped ``GridPatchEmbed`` (empty if none)."""
    return {
        name: mod.__dict__["forward"].keywords["impl"]
        for name, mod in model.named_modules()
        if _swapped(mod)
    }


# ------------------------------------------------------------------ ahead-of-time compilation

_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def aot_cases() -> list:
    """What scigpt.kernels.aot compiles for sm_90a: every shipped config of the three kernels,
    specialised as a launch on fresh contiguous tensors gets (pointers 16-divisible; sizes
    arbitrary), for the model's default patch (K = 2·4·4 = 32, D = 1024) in bf16 (the module
    swap: no embeddings) and fp32 (tf32x3, embeddings added), and an odd fp16 patch (K = 72:
    two K chunks in the forward, two K tiles in the backward). A dot lowers to wgmma when its
    M side (tokens in fwd/dx, D in dw) is at least 64 rows; narrower configs are not checked."""
    ints = {a: "i32" for a in ("M", "N", "H", "W", "GW", "V", "M_BUCKET")}
    cases = []
    for dtype, patch, d, extras in (
        (torch.bfloat16, (2, 4, 4), 1024, False),
        (torch.float32, (2, 4, 4), 1024, True),
        (torch.float16, (2, 6, 6), 768, True),
    ):
        t = "*" + _TRITON_DTYPE[dtype]
        k = math.prod(patch)
        const = dict(
            D=d, K=k, PT=patch[0], PH=patch[1], PW=patch[2], BLOCK_K=_block_k(k),
            PRECISION="tf32x3",
        )  # fmt: skip
        fwd_sig = {
            "x_ptr": t, "w_ptr": t, "bias_ptr": t, "emb_ptr": t, "pos_ptr": t, "ids_ptr": "*i64",
            "out_ptr": t, **ints,
        }  # fmt: skip
        dx_sig = {"dout_ptr": t, "w_ptr": t, "ids_ptr": "*i64", "dx_ptr": t, **ints}
        dw_sig = {"dout_ptr": t, "x_ptr": t, "dw_ptr": "*fp32", "db_ptr": "*fp32", **ints}
        tag = f"{_TRITON_DTYPE[dtype]}_k{k}_d{d}"
        for kind, kernel, sig, configs, extra, m_side in (
            ("fwd", _patch_embed_fwd_kernel, fwd_sig, FWD_CONFIGS,
             dict(HAS_EMB=extras, HAS_POS=extras), 0),
            ("dx", _patch_embed_bwd_dx_kernel, dx_sig, DX_CONFIGS, {}, 0),
            ("dw", _patch_embed_bwd_dw_kernel, dw_sig, DW_CONFIGS, dict(CHUNK=1024), 1),
        ):  # fmt: skip
            shapes = configs[_dtype_class(dtype)]
            for wide in (True, False):
                picked = [c for c in shapes if (c[m_side] >= 64) == wide]
                if not picked:
                    continue
                cases.append(
                    AotCase(
                        name=f"patch_embed_{kind}_{tag}{'' if wide else '_narrow'}",
                        kernel=kernel,
                        signature=sig,
                        constexprs={**const, **extra},
                        configs=_configs(picked),
                        expect_wgmma=True if wide else None,
                        meta={"kind": kind, "dtype": _TRITON_DTYPE[dtype], "K": k, "D": d},
                    )
                )
    return cases


__all__ = [
    "DW_CONFIGS",
    "DX_CONFIGS",
    "FWD_CONFIGS",
    "IMPLS",
    "INTERPRET_CONFIG",
    "Impl",
    "aot_cases",
    "fused_patch_embed",
    "fused_patch_embed_impl",
    "patch_embed_reference",
    "restore_patch_embed",
    "use_fused_patch_embed",
]
