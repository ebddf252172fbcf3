"""Activation checkpointing: bitwise the same training as without it, names unchanged, and the
recomputation it promises (and only that) actually happens in backward."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scigpt.config import ModelConfig
from scigpt.models.build import build_model, materialise
from scigpt.models.objectives import Objectives
from scigpt.models.vit import ModelSpec
from scigpt.parallel.checkpointing import apply_activation_checkpointing, checkpointed_blocks

# dropout > 0 so recomputation must replay the same random masks to match
CFG = ModelConfig(patch_size=4, embed_dim=32, depth=3, heads=4, dropout=0.1)
SPEC = ModelSpec(5, 2)
B, V, T, H, W = 3, 5, 2, 13, 10
TOKENS = B * 4 * 3  # 13x10 grid padded to 16x12, patch 4
STEPS = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors here are tiny: a second intra-op thread only adds contention (10x slower on a busy
    2-core CI runner)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fields": torch.randn(B, V, T, H, W, generator=g),
        "target": torch.randn(B, V, H, W, generator=g),
        "var_ids": torch.tensor([4, 0, 2, 1, 3]),
        "lat": torch.linspace(60, 30, H),
        "lon": torch.linspace(-5, 20, W),
        "times": torch.arange(B, dtype=torch.int64) * 3_600_000_000_000,
    }


def _model(mode: str = "none", every: int = 1, attention: str = "sdpa"):
    # Checkpointing applied on the meta device, before materialising, as the parallel layer does.
    model = build_model(CFG.model_copy(update={"attention": attention}), SPEC)
    model = materialise(apply_activation_checkpointing(model, mode, every=every), "cpu", seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # heads start at zero, which would block every gradient upstream
        torch.nn.init.normal_(model.head.weight, std=0.02, generator=g)
        torch.nn.init.normal_(model.reconstruct.grid, std=0.02, generator=g)
    return model


def _train(model, objectives: Objectives):
    """AdamW steps; returns per-step losses and gradients, and the final state dict."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses, grads = [], []
    for step in range(STEPS):
        torch.manual_seed(100 + step)  # dropout and the masked objective draw from it
        loss, _ = model(_batch(step), objectives=objectives)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
    return losses, grads, model.state_dict()


# forecast (weight 1) and MAE-style masked reconstruction, through model(batch, objectives=...)
OBJECTIVES = Objectives(masked=0.5)


@functools.cache
def _reference(attention: str):
    losses, grads, state = _train(_model("none", attention=attention), OBJECTIVES)
    for name in ("blocks.0.attn.qkv.weight", "blocks.2.mlp.fc1.weight", "tokenizer.var_embed"):
        assert grads[-1][name].abs().sum() > 0, name  # the comparison below is not vacuous
    return losses, grads, state


@pytest.mark.parametrize(
    "mode, every, attention",
    [("full", 1, "sdpa"), ("full", 2, "sdpa"), ("selective", 1, "sdpa"), ("selective", 2, "math")],
)
def test_training_is_bitwise_unchanged(mode, every, attention):
    ref_losses, ref_grads, ref_state = _reference(attention)
    losses, grads, state = _train(_model(mode, every, attention), OBJECTIVES)
    for step in range(STEPS):
        assert torch.equal(losses[step], ref_losses[step]), (step, losses[step], ref_losses[step])
        assert grads[step].keys() == ref_grads[step].keys()
        for name, g in grads[step].items():
            assert torch.equal(g, ref_grads[step][name]), (step, name)
    assert list(state) == list(ref_state)
    for name, t in state.items():
        assert torch.equal(t, ref_state[name]), name


def _autocast_step(mode: str, objectives: Objectives):
    model = _model(mode)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model(_batch(0), objectives=objectives)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("masked", [0.0, 0.5])
def test_bf16_autocast(mode, masked):
    """Bitwise under autocast too, with one exception. When the model runs twice in one autocast
    region (forecast and masked objectives), the selective MLP region casts its weights per call
    instead of reusing autocast's cached cast (which selective recomputation cannot replay), so
    the two uses' gradients sum in fp32 rather than in bf16: only fc1/fc2 gradients differ, by
    bf16 rounding (2**-8)."""
    objectives = Objectives(masked=masked)
    ref_loss, ref_grads = _autocast_step("none", objectives)
    loss, grads = _autocast_step(mode, objectives)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        if mode == "selective" and masked and ".mlp.fc" in name:
            torch.testing.assert_close(g, ref_grads[name], rtol=0, atol=2**-8 * g.abs().max())
        else:
            assert torch.equal(g, ref_grads[name]), name


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_parameter_and_state_dict_names_unchanged(mode):
    plain = build_model(CFG, SPEC)
    patched = apply_activation_checkpointing(build_model(CFG, SPEC), mode)
    assert list(patched.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in patched.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert [n for n, _ in patched.named_modules()] == [n for n, _ in plain.named_modules()]
    # and a checkpoint saved without checkpointing loads strictly into a checkpointed model
    patched.load_state_dict(plain.state_dict(), strict=True, assign=True)


def _count_forward_calls(model, names: list[str]) -> dict[str, list[int]]:
    calls: dict[str, list[int]] = {}
    for name in names:
        calls[name] = counter = [0]
        model.get_submodule(name).register_forward_hook(
            lambda *_, counter=counter: counter.__setitem__(0, counter[0] + 1)
        )
    return calls


def _count_attention_calls(model) -> list[int]:
    """Wrap each block's injected attention function in a call counter (before checkpointing,
    so recomputation calls it again)."""
    calls = [0] * len(model.blocks)
    for i, blk in enumerate(model.blocks):

        def counted(*args, fn=blk.attn.attn_fn, i=i):
            calls[i] += 1
            return fn(*args)

        blk.attn.attn_fn = counted
    return calls


@pytest.mark.parametrize("mode", ["none", "full", "selective"])
@pytest.mark.parametrize("every", [1, 2])
def test_backward_recomputes_what_the_mode_promises(mode, every):
    model = materialise(build_model(CFG, SPEC), "cpu", seed=0)
    attn_calls = _count_attention_calls(model)
    apply_activation_checkpointing(model, mode, every=every)
    per_block = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.act", "mlp.fc2", "norm1")
    calls = _count_forward_calls(model, [f"blocks.{i}.{n}" for i in range(3) for n in per_block])

    loss, _ = model(_batch(0), objectives=Objectives())
    assert all(c == [1] for c in calls.values()) and attn_calls == [1, 1, 1]
    with FlopCounterMode(display=False) as flops:
        loss.backward()

    wrapped = [0, 2] if every == 2 else [0, 1, 2]
    assert sorted(checkpointed_blocks(model)) == ([] if mode == "none" else wrapped)
    for i in range(3):
        again = 2 if i in wrapped and mode != "none" else 1
        assert attn_calls[i] == again, (i, attn_calls)
        assert calls[f"blocks.{i}.mlp.act"] == [again]
        for name in ("attn.qkv", "attn.proj", "norm1"):  # outside the selective regions
            assert calls[f"blocks.{i}.{name}"] == [again if mode == "full" else 1], (i, name)
    # Matmuls of the forward (addmm: linear with bias) run again in backward only for "full":
    # the selective MLP region re-enters fc1/fc2 but takes their outputs from its cache.
    d, hidden = CFG.embed_dim, int(CFG.embed_dim * CFG.mlp_ratio)
    block_linear = 2 * TOKENS * (d * 3 * d + d * d + 2 * d * hidden)
    recomputed = flops.get_flop_counts()["Global"].get(torch.ops.aten.addmm, 0)
    assert recomputed == (len(wrapped) * block_linear if mode == "full" else 0)


def test_applying_twice_is_refused_and_bad_arguments_are_named():
    model = apply_activation_checkpointing(build_model(CFG, SPEC), "selective", every=2)
    for mode in ("full", "selective"):
        with pytest.raises(RuntimeError, match=r"already applied to blocks \[0, 2\]"):
            apply_activation_checkpointing(model, mode)
    assert apply_activation_checkpointing(model, "none") is model  # "none" changes nothing
    assert checkpointed_blocks(model) == {0: "selective", 2: "selective"}
    with pytest.raises(ValueError, match="mode='partial'"):
        apply_activation_checkpointing(build_model(CFG, SPEC), "partial")
    for every in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="every="):
            apply_activation_checkpointing(build_model(CFG, SPEC), "full", every=every)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_deepcopy_recomputes_its_own_parameters(mode):
    """The patched forwards are bound to their block, so a copy (EMA, evaluation) must not run
    the original's blocks."""
    model = apply_activation_checkpointing(_model(), mode)
    twin = copy.deepcopy(model)
    loss, _ = twin(_batch(0), objectives=Objectives())
    loss.backward()
    assert twin.blocks[1].mlp.fc1.weight.grad is not None
    assert all(p.grad is None for p in model.parameters())
    assert checkpointed_blocks(twin) == checkpointed_blocks(model)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_evaluation_without_grad_matches(mode):
    ref, model = _model().eval(), apply_activation_checkpointing(_model(), mode).eval()
    with torch.inference_mode():
        assert torch.equal(model(_batch(0)), ref(_batch(0)))
