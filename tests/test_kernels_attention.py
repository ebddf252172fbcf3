"""Triton flash attention (forward and backward) against its PyTorch reference (DESIGN.md §4).

Without CUDA the kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set
only while this module's tests run, with one small block config so tails and several blocks are
exercised); fp16 and fp32 only there, because the interpreter's bf16 ``tl.dot`` is broken. Where
CUDA exists the same cases run compiled and autotuned, bf16 included, plus larger shapes.

Errors are ``‖kernel − ref‖ / max(‖ref‖, 1)`` against the reference evaluated in float64 (the
floor makes it absolute for the exactly-zero gradients of N = 1). Tolerances per dtype, with the
worst error measured in the interpreter over these cases (out / dq / dk / dv):

* fp32 1e-5 (3e-7 / 1e-6 / 1e-6 / 4e-7: summation order only)
* fp16 2e-3 (3e-4 / 4e-4 / 4e-4 / 3e-4: fp16 rounding of P, dS and the outputs)
* bf16 1.6e-2 (compiled on CUDA only)
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

from scigpt.models.attention import get_attention, math_attention, sdpa_attention

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
MODULE = "scigpt.kernels.flash_attention"

# Without CUDA, tests/conftest.py imports Triton first under TRITON_INTERPRET=1, so its own
# library (tl.sum, tl.max) is decorated for the interpreter that these kernels run in.

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

BF16 = pytest.param(
    torch.bfloat16,
    marks=pytest.mark.cuda,  # the interpreter's bf16 tl.dot is broken; bf16 runs compiled
)
DTYPES = [torch.float32, torch.float16, BF16]


@pytest.fixture(scope="module")
def fa():
    """The kernel module, decorated for this machine: interpreter on CPU, compiled on CUDA.

    triton.jit reads TRITON_INTERPRET when a kernel is decorated, so the module is imported
    afresh under the setting and dropped afterwards (nothing leaks into other test files).
    """
    saved = os.environ.get("TRITON_INTERPRET")
    if CUDA:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = "1"
    sys.modules.pop(MODULE, None)
    try:
        mod = importlib.import_module(MODULE)
        assert mod.INTERPRET is (not CUDA)
        if not CUDA:
            from triton.runtime.interpreter import InterpretedFunction

            assert isinstance(sys.modules["triton.language.standard"].sum, InterpretedFunction), (
                "Triton was imported without TRITON_INTERPRET=1 before this file was collected; "
                "its tl.sum/tl.max cannot run in the interpreter (run this file on its own)"
            )
        yield mod
    finally:
        sys.modules.pop(MODULE, None)
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out.double() - ref.double()).norm().item()
    return diff / max(ref.double().norm().item(), 1.0)


def make_qkv(b, h, n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(DEVICE, dtype) for _ in range(3)]


def padding_mask(lengths: list[int], n: int) -> torch.Tensor:
    """(B, N) bool, True for the first ``lengths[b]`` keys of each batch element."""
    return (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).to(DEVICE)


def check_against_reference(fa, q, k, v, mask=None, causal=False):
    """Forward and dq/dk/dv of the kernel vs the float64 reference; returns the errors."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fa.flash_attention(q, k, v, mask, causal=causal)
    assert out.dtype == q.dtype and out.shape == q.shape
    g = torch.Generator().manual_seed(1)
    do = torch.randn(out.shape, generator=g).to(DEVICE, q.dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = fa.attention_reference(q64, k64, v64, mask, causal=causal)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), do.double())

    errs = {"out": rel_err(out, ref)}
    errs.update({n: rel_err(a, r) for n, a, r in zip("qkv", grads, ref_grads, strict=True)})
    tol = TOL[q.dtype]
    assert all(e <= tol for e in errs.values()), f"{q.dtype} errors {errs} exceed {tol}"
    for t in (out, *grads):
        assert torch.isfinite(t).all()
    return errs


# (B, heads, N, head_dim): N = 1, block multiples and not (the interpreter's blocks are 16/32)
SHAPES = [(1, 1, 1, 32), (1, 2, 37, 64), (1, 3, 130, 32), (2, 1, 32, 128)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_backward_match_reference(fa, dtype, shape, causal):
    check_against_reference(fa, *make_qkv(*shape, dtype), causal=causal)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_key_padding_mask(fa, dtype, causal):
    """A padded batch: one full element, one half padded, one with a single key."""
    q, k, v = make_qkv(3, 2, 37, 32, dtype, seed=2)
    check_against_reference(fa, q, k, v, padding_mask([37, 17, 1], 37), causal)


def test_padded_keys_do_not_matter(fa):
    """Changing k, v at masked positions changes neither the output nor the other gradients."""
    q, k, v = make_qkv(2, 2, 37, 64, torch.float32, seed=3)
    mask = padding_mask([37, 20], 37)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 20:] = 1e3
    v2[1, :, 20:] = -7.0
    a = fa.flash_attention(q, k, v, mask)
    b = fa.flash_attention(q, k2, v2, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_row_without_keys_is_zero(fa):
    """Every key of batch element 1 masked: output and all its gradients are 0, never NaN."""
    q, k, v = make_qkv(2, 2, 37, 32, torch.float16, seed=4)
    mask = padding_mask([37, 0], 37)
    errs = check_against_reference(fa, q, k, v, mask)
    assert errs["out"] < TOL[torch.float16]
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = fa.flash_attention(q, k, v, mask)
    out.sum().backward()
    assert out[1].abs().max() == 0
    for t in (q, k, v):
        assert t.grad[1].abs().max() == 0
    ref = fa.attention_reference(q.double(), k.double(), v.double(), mask)
    assert ref[1].abs().max() == 0  # the reference defines the same result


def test_strided_views_from_fused_qkv(fa):
    """The model's layout: q, k, v are permuted views of one (B, N, 3, h, D) tensor."""
    b, n, h, d = 2, 37, 2, 32
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(b, n, 3, h, d, generator=g).to(DEVICE).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, h, N, D), not contiguous, last stride 1
    assert not q.is_contiguous()
    check_against_reference(fa, q, k, v, padding_mask([37, 30], n))
    # head_dim not the innermost dimension: copied to contiguous, same numbers
    qt = q.contiguous().transpose(-1, -2).contiguous().transpose(-1, -2)
    assert qt.stride(-1) != 1
    torch.testing.assert_close(fa.flash_attention(qt, k, v), fa.flash_attention(q, k, v))


def test_reference_agrees_with_model_attention(fa):
    """The reference is the registry's math attention (and SDPA) wherever both are defined."""
    q, k, v = make_qkv(2, 3, 37, 32, torch.float64, seed=6)
    mask = padding_mask([37, 11], 37)
    ref = fa.flash_attention(q, k, v, mask, impl="reference")
    torch.testing.assert_close(ref, math_attention(q, k, v, mask))
    # SDPA's CPU kernels do not keep full float64 accuracy (differences ~1e-6)
    torch.testing.assert_close(ref, sdpa_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)
    causal = fa.attention_reference(q, k, v, causal=True)
    expect = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(causal, expect, rtol=1e-5, atol=1e-5)


def test_registry_entry_runs_the_kernel(fa):
    import scigpt.kernels
    import scigpt.parallel.parallelize  # puts the kernels into the registry
    from scigpt.models.vit import Attention

    fn = get_attention("triton")
    assert fn is scigpt.kernels.triton_attention
    q, k, v = make_qkv(2, 2, 37, 32, torch.float32, seed=7)
    mask = padding_mask([37, 9], 37)
    torch.testing.assert_close(fn(q, k, v, mask), fa.flash_attention(q, k, v, mask))

    # the model's attention layer with model.attention: triton, against math, with gradients
    torch.manual_seed(0)
    layer = Attention(64, 2, "triton").to(DEVICE)
    x = torch.randn(2, 37, 64, device=DEVICE, requires_grad=True)
    out = layer(x)
    out.square().sum().backward()
    got = (out.detach(), x.grad.clone(), layer.qkv.weight.grad.clone())
    x.grad = None
    layer.zero_grad()
    layer.attn_fn = get_attention("math")
    out = layer(x)
    out.square().sum().backward()
    expect = (out.detach(), x.grad, layer.qkv.weight.grad)
    for a, b in zip(got, expect, strict=True):
        assert rel_err(a, b) < 1e-5


def test_registry_entry_without_triton(fa, monkeypatch):
    """No Triton installed: selecting it fails with the install command, importing does not."""
    import scigpt.kernels

    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.delitem(sys.modules, MODULE)
    q, k, v = make_qkv(1, 1, 4, 32, torch.float32)
    with pytest.raises(RuntimeError, match=r"pip install 'scigpt\[gpu\]'"):
        scigpt.kernels.triton_attention(q, k, v)


def _bad_inputs():
    q = torch.zeros(2, 2, 8, 32)
    mask = torch.ones(2, 8, dtype=torch.bool)
    return [
        ("not a tensor", dict(q=q.numpy()), TypeError, "must be a torch.Tensor"),
        ("3-D", dict(q=q[0], k=q[0], v=q[0]), ValueError, r"must be \(B, heads, N, head_dim\)"),
        ("shapes differ", dict(k=q[:, :, :7]), ValueError, "same shape"),
        ("float64", dict(q=q.double(), k=q.double(), v=q.double()), TypeError, "not supported"),
        ("int", dict(q=q.int(), k=q.int(), v=q.int()), TypeError, "not supported"),
        ("mixed dtypes", dict(k=q.half()), TypeError, "share one dtype"),
        ("devices differ", dict(k=q.to("meta")), ValueError, "one device"),
        ("head_dim 48", {n: torch.zeros(2, 2, 8, 48) for n in "qkv"}, ValueError, "head_dim 48"),
        ("mask not bool", dict(mask=mask.float()), TypeError, "bool tensor"),
        ("mask shape", dict(mask=mask[:, :7]), ValueError, r"\(B, N\) = \(2, 8\)"),
        ("mask device", dict(mask=mask.to("meta")), ValueError, "key_padding_mask is on meta"),
        ("impl", dict(impl="cuda"), ValueError, "impl='cuda'"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [pytest.param(kw, e, m, id=i) for i, kw, e, m in _bad_inputs()],
)
def test_input_errors(fa, kwargs, error, match):
    q = torch.zeros(2, 2, 8, 32, device=DEVICE)
    args = {"q": q, "k": q, "v": q, "mask": None, "impl": "triton"}
    args.update({n: t.to(DEVICE) if isinstance(t, torch.Tensor) and t.device.type == "cpu" else t
                 for n, t in kwargs.items()})  # fmt: skip
    with pytest.raises(error, match=match):
        fa.flash_attention(args["q"], args["k"], args["v"], args["mask"], impl=args["impl"])


def test_cpu_tensors_need_the_interpreter(fa, monkeypatch):
    monkeypatch.setattr(fa, "INTERPRET", False)
    q = torch.zeros(1, 1, 8, 32)
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors.*impl='reference'"):
        fa.flash_attention(q, q, q)
    fa.flash_attention(q, q, q, impl="reference")  # the reference runs anywhere


@pytest.mark.cuda  # compiled kernels, real autotuned configs
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_gpu_larger_shapes(fa, dtype, head_dim, causal):
    q, k, v = make_qkv(2, 3, 1000, head_dim, dtype, seed=8)
    check_against_reference(fa, q, k, v, padding_mask([1000, 613], 1000), causal)


def test_config_constraints(fa):
    """The causal split assumes query blocks are whole numbers of key blocks (and vice versa)."""
    for kind, configs in {
        **fa.CONFIGS,
        **{f"interp_{k}": v for k, v in fa.INTERPRET_CONFIGS.items()},
    }.items():
        for c in configs:
            rows, cols = c.kwargs.values()
            big, small = (cols, rows) if kind.endswith("dkdv") else (rows, cols)
            assert big % small == 0 and small >= 16, (kind, c)


def test_config_switches_route_the_model_through_the_kernels(fa, monkeypatch):
    """``model.attention: triton`` and ``model.patch_embed: triton`` build the same model (same
    parameters, same state-dict keys) whose forward matches the PyTorch paths (fp32, 1e-5).

    The forecast head is zero-initialised (the model starts as persistence), which would make
    both forecasts exactly the input whatever attention returned: it is randomised first, and
    the forecast's change must be far from zero (tests/test_sensitivity.py replaces the kernels
    with zeros and noise and checks that this test then fails)."""
    from scigpt.config import ModelConfig
    from scigpt.models.build import build_model, materialise
    from scigpt.models.vit import ModelSpec
    from scigpt.parallel.parallelize import apply_kernels  # and registers "triton" attention

    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # the patch-embedding kernel reads it at launch
    spec = ModelSpec(num_vars=6, history=2)
    base = dict(patch_size=4, embed_dim=64, depth=1, heads=2)  # head_dim 32
    ref = materialise(build_model(ModelConfig(**base), spec), DEVICE, seed=3)
    fused_cfg = ModelConfig(**base, attention="triton", patch_embed="triton")
    fused = apply_kernels(materialise(build_model(fused_cfg, spec), DEVICE, seed=3), fused_cfg)
    assert ref.state_dict().keys() == fused.state_dict().keys()
    for (name, a), b in zip(ref.state_dict().items(), fused.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    g = torch.Generator().manual_seed(1)
    head = torch.randn(ref.head.weight.shape, generator=g).to(DEVICE)  # not zero: see above
    with torch.no_grad():
        ref.head.weight.copy_(head)
        fused.head.weight.copy_(head)
    g = torch.Generator().manual_seed(0)
    batch = {
        "fields": torch.randn(2, 3, 2, 13, 10, generator=g).to(DEVICE),
        "var_ids": torch.tensor([4, 0, 2], device=DEVICE),
        "lat": torch.linspace(60, 30, 13, device=DEVICE),
        "lon": torch.linspace(-5, 20, 10, device=DEVICE),
        "times": torch.arange(2, dtype=torch.int64, device=DEVICE) * 3_600_000_000_000,
    }
    with torch.no_grad():
        out, want = fused(batch), ref(batch)
    delta = out - batch["fields"][:, :, -1]
    want_delta = want - batch["fields"][:, :, -1]
    # the change the model forecasts is of the order of the inputs, not a rounding residue
    assert want_delta.norm() > 0.1 * batch["fields"][:, :, -1].norm(), want_delta.norm()
    assert rel_err(delta, want_delta) < 1e-5
