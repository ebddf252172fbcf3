"""Fused Triton patch embedding against its reference, the model's ``GridPatchEmbed``.

CPU tensors run the kernels in Triton's interpreter (TRITON_INTERPRET=1, set per test); the
GPU-only checks (compiled kernels, bf16, every autotune configuration, the model under bf16
autocast) are collected only where CUDA exists. Tolerances are relative norm
errors ``|a - b| / |b|`` against the module evaluated in fp32 on the same (rounded) inputs:

* fp32: 1e-5 (measured ~1e-7 in the interpreter: the only difference is summation order)
* fp16: 2e-3 (measured ~2e-4: fp16 rounding of the output and of the fp16 dot operands)
* bf16 (GPU only; the interpreter's bf16 ``tl.dot`` is broken): 1.6e-2
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch  # does not import Triton

# Without CUDA, tests/conftest.py imports Triton first under TRITON_INTERPRET=1; Triton is a
# test dependency (the kernels extra), so a missing install fails here rather than skipping.
import triton  # noqa: F401

from scigpt.config import ModelConfig
from scigpt.kernels import patch_embed as pe
from scigpt.kernels.patch_embed import (
    fused_patch_embed,
    fused_patch_embed_impl,
    patch_embed_reference,
    restore_patch_embed,
    use_fused_patch_embed,
)
from scigpt.models.build import build_model, materialise
from scigpt.models.patch_embed import GridPatchEmbed
from scigpt.models.vit import ModelSpec

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
GPU = pytest.mark.cuda  # collected only where CUDA exists (tests/conftest.py)


@pytest.fixture(autouse=True)
def _interpreter(request, monkeypatch):
    """The kernel module reads TRITON_INTERPRET at each launch: interpreter for the CPU tests,
    compiled kernels for the GPU ones, whatever other test files left behind."""
    if request.node.name.startswith("test_gpu_"):
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # compiled kernels
    else:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


NAMES = ["x", "weight", "bias"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# (B, V, T, H, W), patch (pt, ph, pw), D, num_vars, var_ids, with pos, with var_embed
CASES = {
    "padded-13x10": ((3, 3, 2, 13, 10), (2, 4, 4), 64, 5, [4, 0, 2], True, True),
    "one-var-one-frame": ((1, 1, 1, 13, 10), (1, 4, 4), 32, 2, [1], False, False),
    "no-padding": ((1, 3, 2, 8, 12), (2, 4, 4), 32, 5, [4, 0, 2], True, False),
    "K=6<16": ((2, 2, 1, 5, 7), (1, 2, 3), 32, 3, [2, 0], False, True),
    "K=72>64": ((1, 2, 2, 7, 9), (2, 6, 6), 32, 3, [1, 2], True, True),
    "repeated-ids": ((2, 3, 1, 6, 6), (1, 3, 3), 32, 2, [1, 1, 0], True, True),
}


def _inputs(case, dtype, device="cpu", seed=0):
    shape, patch, d, num_vars, ids, with_pos, with_emb = case
    g = torch.Generator().manual_seed(seed)
    emb = GridPatchEmbed(num_vars, d, patch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        emb.init_weights()
    with torch.no_grad():
        emb.bias.normal_(generator=g)
    emb = emb.to(device=device, dtype=dtype)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    n = emb.grid_shape(*shape[-2:])
    n = n[0] * n[1]
    pos = torch.randn(n, d, generator=g).to(device=device, dtype=dtype) if with_pos else None
    var_embed = (
        torch.randn(num_vars, d, generator=g).to(device=device, dtype=dtype) if with_emb else None
    )
    return emb, x, torch.tensor(ids, device=device), pos, var_embed


def _module_reference(emb, x, var_ids, pos, var_embed):
    """The model's module in fp32 on the same values, + the embeddings added in PyTorch."""
    ref = GridPatchEmbed(emb.num_vars, emb.dim, emb.patch).to(x.device)
    ref.load_state_dict({k: v.float() for k, v in emb.state_dict().items()})
    leaves = {"x": x, "pos": pos, "var_embed": var_embed}
    leaves = {k: t.detach().float().requires_grad_() for k, t in leaves.items() if t is not None}
    out = ref(leaves["x"], var_ids)
    if var_embed is not None:
        out = out + leaves["var_embed"][var_ids][None, :, None, :]
    if pos is not None:
        out = out + leaves["pos"]
    return out, {**leaves, "weight": ref.weight, "bias": ref.bias}


def _check_against_module(case, dtype, device="cpu", impl="triton") -> dict[str, float]:
    """Forward and every gradient against the module; returns the relative errors."""
    emb, *inputs = _inputs(case, dtype, device)
    x, var_ids, pos, var_embed = inputs
    leaves = {"x": x, "weight": emb.weight, "bias": emb.bias, "pos": pos, "var_embed": var_embed}
    leaves = {k: t.detach().requires_grad_() for k, t in leaves.items() if t is not None}
    out = fused_patch_embed(
        leaves["x"], leaves["weight"], leaves["bias"], var_ids, emb.patch,
        leaves.get("pos"), leaves.get("var_embed"), impl=impl,
    )  # fmt: skip
    ref, ref_leaves = _module_reference(emb, x, var_ids, pos, var_embed)
    assert out.shape == ref.shape and out.dtype == dtype
    errors = {"out": rel_err(out, ref)}
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
    grads = torch.autograd.grad(out, list(leaves.values()), g.to(dtype))
    ref_grads = torch.autograd.grad(ref, [ref_leaves[k] for k in leaves], g)
    for (name, leaf), ga, gb in zip(leaves.items(), grads, ref_grads, strict=True):
        assert ga.shape == leaf.shape and ga.dtype == leaf.dtype, name
        errors[name] = rel_err(ga, gb)
    bad = {k: e for k, e in errors.items() if not e < TOL[dtype]}
    assert not bad, f"relative errors above {TOL[dtype]}: {bad}"
    return errors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fused_matches_module(case, dtype):
    _check_against_module(case, dtype)


def test_reference_impl_is_the_module():
    case = CASES["padded-13x10"]
    emb, x, var_ids, pos, var_embed = _inputs(case, torch.float32)
    out = patch_embed_reference(x, emb.weight, emb.bias, var_ids, emb.patch, pos, var_embed)
    want = emb(x, var_ids) + var_embed[var_ids][None, :, None, :] + pos
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    _check_against_module(case, torch.float32, impl="reference")


def test_autocast_matches_module():
    """fp32 parameters under fp16 autocast: the fused op casts x and W like the module's einsum,
    adds the fp32 bias in fp32 and returns fp32, with fp32 gradients of the same precision."""
    emb, x, var_ids, _, _ = _inputs(CASES["padded-13x10"], torch.float32)
    x = x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        out = fused_patch_embed(x, emb.weight, emb.bias, var_ids, emb.patch)
        want = emb(x, var_ids)
    assert out.dtype == want.dtype == torch.float32
    assert rel_err(out, want) < TOL[torch.float16]
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    leaves = [x, emb.weight, emb.bias]
    for name, a, b in zip(
        NAMES,
        torch.autograd.grad(out, leaves, g),
        torch.autograd.grad(want, leaves, g),
        strict=True,
    ):
        assert a.dtype == torch.float32, name
        assert rel_err(a, b) < TOL[torch.float16], name


# ------------------------------------------------------------------------- module swap


CFG = ModelConfig(patch_size=4, embed_dim=32, depth=1, heads=4)


def _batch(b=2, h=13, w=10):
    g = torch.Generator().manual_seed(3)
    return {
        "fields": torch.randn(b, 3, 2, h, w, generator=g),
        "var_ids": torch.tensor([4, 0, 2]),
        "lat": torch.linspace(60, 30, h),
        "lon": torch.linspace(-5, 20, w),
        "times": torch.arange(b, dtype=torch.int64) * 3_600_000_000_000,
    }


def _model(seed=0):
    model = materialise(build_model(CFG, ModelSpec(num_vars=5, history=2)), "cpu", seed=seed)
    g = torch.Generator().manual_seed(seed)
    torch.nn.init.normal_(model.head.weight, std=0.02, generator=g)  # a zero head hides tokens
    return model


def test_swap_keeps_state_dict_and_loads_checkpoints_across():
    plain, fused = _model(seed=0), _model(seed=1)
    before = {k: (v.shape, v.dtype) for k, v in fused.state_dict().items()}
    assert use_fused_patch_embed(fused) == ["tokenizer.embed"]
    assert fused_patch_embed_impl(fused) == {"tokenizer.embed": "triton"}
    after = fused.state_dict()
    assert {k: (v.shape, v.dtype) for k, v in after.items()} == before
    fused.load_state_dict(plain.state_dict())  # plain checkpoint → fused model (strict)
    for k, v in fused.state_dict().items():
        assert torch.equal(v, plain.state_dict()[k]), k
    other = _model(seed=2)
    other.load_state_dict(fused.state_dict())  # and back
    assert torch.equal(other.tokenizer.embed.weight, plain.tokenizer.embed.weight)
    assert restore_patch_embed(fused) == ["tokenizer.embed"]
    assert fused_patch_embed_impl(fused) == {}
    assert "forward" not in fused.tokenizer.embed.__dict__


def test_model_forward_and_gradients_match_with_fused_embedding():
    ref, fused = _model(), _model()
    use_fused_patch_embed(fused)
    batch = _batch()
    out_ref, out = ref(batch), fused(batch)
    assert rel_err(out, out_ref) < 1e-5
    out_ref.square().mean().backward()
    out.square().mean().backward()
    for name in ("tokenizer.embed.weight", "tokenizer.embed.bias", "tokenizer.var_embed"):
        a = fused.get_parameter(name).grad
        b = ref.get_parameter(name).grad
        assert rel_err(a, b) < 1e-5, name


def test_swap_reference_impl_and_errors():
    model = _model()
    use_fused_patch_embed(model, impl="reference")
    assert fused_patch_embed_impl(model) == {"tokenizer.embed": "reference"}
    torch.testing.assert_close(model(_batch()), _model()(_batch()), rtol=0, atol=0)
    with pytest.raises(ValueError, match="impl='cuda' is not one of"):
        use_fused_patch_embed(model, impl="cuda")
    with pytest.raises(ValueError, match="no GridPatchEmbed-like module"):
        use_fused_patch_embed(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------- input checks


def _good():
    emb, x, var_ids, pos, var_embed = _inputs(CASES["padded-13x10"], torch.float32)
    return dict(
        x=x, weight=emb.weight.detach(), bias=emb.bias.detach(), var_ids=var_ids,
        patch=emb.patch, pos=pos, var_embed=var_embed,
    )  # fmt: skip


# input to change → how, and the error it must give
BAD = {
    "x-float64": ("x", lambda t: t.double(), "x has dtype torch.float64"),
    "weight-dtype": (
        "weight",
        lambda t: t.half(),
        r"x \(torch.float32\) and weight \(torch.float16\)",
    ),
    "device": ("bias", lambda t: t.to("meta"), "inputs are on different devices"),
    "contiguity": ("x", lambda t: t.transpose(-1, -2), "x must be contiguous"),
    "frames": ("x", lambda t: t[:, :, :1], "input has 1 time frames but .* expects 2"),
    "x-dims": ("x", lambda t: t[0], r"expected \(B, V, T, H, W\)"),
    "id-too-big": (
        "var_ids",
        lambda t: torch.tensor([4, 0, 5]),
        r"var_ids range \[0, 5\] is outside the 5",
    ),
    "id-negative": ("var_ids", lambda t: torch.tensor([4, -1, 2]), r"var_ids range \[-1, 4\]"),
    "id-dtype": ("var_ids", lambda t: t.float(), "var_ids must be a 1-D int32/int64"),
    "id-count": ("var_ids", lambda t: t[:2], "var_ids has 2 ids for 3 variables"),
    "patch": ("patch", lambda p: (2, 4, 5), r"weight has shape \(5, 64, 2, 4, 4\)"),
    "bias-shape": ("bias", lambda t: t[:, :32], r"bias has shape \(5, 32\): expected \(5, 64\)"),
    "pos-shape": ("pos", lambda t: t[:-1], r"pos has shape \(11, 64\): expected \(12, 64\)"),
    "var-embed-shape": ("var_embed", lambda t: t[:3], r"var_embed has shape \(3, 64\)"),
}


@pytest.mark.parametrize("arg, change, match", BAD.values(), ids=BAD.keys())
def test_input_errors(arg, change, match):
    kw = _good()
    kw[arg] = change(kw[arg])
    with pytest.raises(ValueError, match=match):
        fused_patch_embed(**kw)


def test_impl_errors(monkeypatch):
    with pytest.raises(ValueError, match="impl='cuda' is not one of"):
        fused_patch_embed(**_good(), impl="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors, got cpu"):
        fused_patch_embed(**_good())
    monkeypatch.setattr(pe, "triton", None)
    with pytest.raises(RuntimeError, match="needs Triton"):
        fused_patch_embed(**_good())
    fused_patch_embed(**_good(), impl="reference")  # the reference needs neither


def test_import_and_reference_without_triton():
    """Importing, the reference and the module swap need no Triton; the kernel path says so."""
    code = """
import sys, torch
sys.modules["triton"] = None  # import triton -> ImportError
from scigpt.kernels.patch_embed import fused_patch_embed, use_fused_patch_embed
from scigpt.models.patch_embed import GridPatchEmbed
emb = GridPatchEmbed(3, 16, (1, 2, 2)); emb.init_weights()
x, ids = torch.randn(1, 2, 1, 5, 5), torch.tensor([2, 0])
want = emb(x, ids)
use_fused_patch_embed(emb, impl="reference")
assert torch.equal(emb(x, ids), want)
try:
    fused_patch_embed(x, emb.weight, emb.bias, ids, emb.patch)
except RuntimeError as e:
    assert "needs Triton" in str(e), e
else:
    raise AssertionError("no error without Triton")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_aot_cases_cover_every_kernel_argument():
    """The specialisations handed to scigpt.kernels.aot name every argument of their kernel
    and every shipped config (compiling them is the AOT test's job)."""
    cases = pe.aot_cases()
    kernels = {c.kernel for c in cases}
    assert kernels == {
        pe._patch_embed_fwd_kernel, pe._patch_embed_bwd_dx_kernel, pe._patch_embed_bwd_dw_kernel
    }  # fmt: skip
    for c in cases:
        for config in c.configs:
            given = {*c.signature, *c.constexprs, *config.kwargs}
            assert given == set(c.kernel.arg_names), c.name
    for kernel, configs in (
        (pe._patch_embed_fwd_kernel, pe.FWD_CONFIGS),
        (pe._patch_embed_bwd_dx_kernel, pe.DX_CONFIGS),
        (pe._patch_embed_bwd_dw_kernel, pe.DW_CONFIGS),
    ):
        for dtype in ("bf16", "fp32"):
            shipped = configs["fp32" if dtype == "fp32" else "16bit"]
            compiled = [
                pe._shape(cfg)
                for c in cases
                if c.kernel is kernel and c.meta["dtype"] == dtype
                for cfg in c.configs
            ]
            assert sorted(compiled) == sorted(shipped), (kernel.fn.__name__, dtype)


# ------------------------------------------------------------------------------ GPU only


@GPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gpu_matches_module(case, dtype):
    _check_against_module(case, dtype, device="cuda")


@GPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_every_config_matches(dtype, monkeypatch):
    """Each autotune configuration, not only the one the tuner picks on this GPU."""
    case = ((2, 4, 2, 33, 47), (2, 4, 4), 192, 6, [5, 0, 3, 1], True, True)
    tuned = {
        "_patch_embed_fwd_tuned": pe.FWD_CONFIGS,
        "_patch_embed_bwd_dx_tuned": pe.DX_CONFIGS,
        "_patch_embed_bwd_dw_tuned": pe.DW_CONFIGS,
    }
    for name, configs in tuned.items():
        tuner = getattr(pe, name)
        for config in configs[pe._dtype_class(dtype)]:
            one = pe.triton.autotune(pe._configs([config]), key=pe._KEY)(tuner.fn)
            monkeypatch.setattr(pe, name, one)
            _check_against_module(case, dtype, device="cuda")
        monkeypatch.setattr(pe, name, tuner)


@GPU
def test_gpu_model_under_bf16_autocast():
    ref, fused = _model().cuda(), _model().cuda()
    use_fused_patch_embed(fused)
    batch = {k: v.cuda() for k, v in _batch(b=3, h=37, w=50).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = fused(batch), ref(batch)
    assert a.dtype == b.dtype
    assert rel_err(a, b) < TOL[torch.bfloat16]
