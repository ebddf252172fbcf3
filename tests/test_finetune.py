"""Fine-tuning building blocks: new variables, frozen backbones, new heads, LoRA (merge and
re-adapt). Tiny in-process models; every "unchanged" claim is checked bitwise."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from scigpt.config import ModelConfig
from scigpt.finetune.adapt import (
    add_lead_head,
    add_pooled_head,
    extend_variables,
    freeze_backbone,
    modality_parameters,
    train_new_variable_rows,
    use_lead_head,
)
from scigpt.finetune.lora import (
    LoRALinear,
    apply_lora,
    base_state_dict,
    load_base_state_dict,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)
from scigpt.models.build import build_model, materialise
from scigpt.models.objectives import Objectives, total_loss
from scigpt.models.tokenizer import GRID, SERIES
from scigpt.models.vit import ModelSpec

CFG = ModelConfig(patch_size=4, embed_dim=32, depth=2, heads=4, series_patch=10)
HOUR = 3_600_000_000_000
VARS = [f"v{i}" for i in range(6)]


def _model(num_vars=6, targets=0, seed=0):
    return materialise(build_model(CFG, ModelSpec(num_vars, 2, targets)), "cpu", seed=seed)


def _grid(var_ids=(4, 0, 2), b=3, h=13, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = len(var_ids)
    return {
        "fields": torch.randn(b, v, 2, h, w, generator=g),
        "target": torch.randn(b, v, h, w, generator=g),
        "mask": torch.ones(b, v, h, w, dtype=torch.bool),
        "var_ids": torch.tensor(var_ids),
        "modality_id": GRID,
        "lat": torch.linspace(60, 30, h),
        "lon": torch.linspace(-5, 20, w),
        "times": torch.arange(b, dtype=torch.int64) * HOUR,
        "targets": torch.randn(b, 2, generator=g),
    }


def _series(var_ids=(1, 3), b=4, length=60, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = len(var_ids)
    return {
        "fields": torch.randn(b, c, length, generator=g),
        "mask": torch.ones(b, c, length, dtype=torch.bool),
        "var_ids": torch.tensor(var_ids),
        "modality_id": SERIES,
        "lat": torch.linspace(-40, 40, b),
        "lon": torch.linspace(-100, 100, b),
        "depth": torch.zeros(b),
        "times": torch.arange(b, dtype=torch.int64) * HOUR,
        "step_ns": 50_000_000,
        "targets": torch.randint(0, 3, (b, 1), generator=g).float(),
    }


def _train(model, batch, obj, steps=5, lr=1e-2, opt="adamw"):
    params = [p for p in model.parameters() if p.requires_grad]
    if opt == "sgd":
        optim = torch.optim.SGD(params, lr=lr)
    else:
        optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for i in range(steps):
        optim.zero_grad()
        loss, _ = total_loss(model, batch, obj, torch.Generator().manual_seed(i))
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    return losses


def _f64(v):
    return v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v


def _pretrained(seed=0):
    """A tiny model standing in for a pretrained one: its forecast head is not zero (a zero head
    passes no gradient upstream, so a frozen-head fine-tune could not move anything)."""
    m = _model(seed=seed)
    with torch.no_grad():
        m.head.weight.normal_(std=0.02, generator=torch.Generator().manual_seed(seed))
    return m


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --- variables ------------------------------------------------------------------------------


def test_seeded_extension_and_adapters_are_reproducible():
    a, b = _pretrained(), _pretrained()
    for m, global_seed in ((a, 100), (b, 200)):
        torch.manual_seed(global_seed)  # the global RNG differs; the seeded draws do not
        extend_variables(m, VARS, ["snow"], seed=3)
        apply_lora(m, rank=2, seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_extend_variables_registry_and_ids():
    m = _model()
    names, ids = extend_variables(m, VARS, ["v2", "new_a", "v0", "new_b", "new_a"])
    assert names == [*VARS, "new_a", "new_b"] and ids == [6, 7]
    assert m.spec.num_vars == 8 and m.tokenizer.aggregate.gate.shape == (8,)
    assert extend_variables(m, names, ["v1"]) == (names, [])
    with pytest.raises(ValueError, match="6 variables but the model has 8"):
        extend_variables(m, VARS, ["x"])


def test_new_variable_absent_or_present_leaves_outputs_unchanged():
    m = _model()
    batch = _grid()
    with torch.no_grad():
        ref, ref_x = m(batch), m.encode(batch)
    _, ids = extend_variables(m, VARS, ["v0", "snow"])
    with torch.no_grad():
        assert torch.equal(m(batch), ref)  # absent: not in var_ids
        present = {**batch, "var_ids": torch.tensor([4, 0, 2, ids[0]])}
        g = torch.Generator().manual_seed(9)
        extra = torch.randn(3, 1, 2, 13, 10, generator=g)
        present["fields"] = torch.cat([batch["fields"], extra], 1)
        present["target"] = torch.cat([batch["target"], extra[:, :, -1]], 1)
        present["mask"] = torch.ones(3, 4, 13, 10, dtype=torch.bool)
        # gate 0: the new variable's softmax weight is exactly 0; what remains is the rounding
        # of the softmax's max shift (the new score can be the max): ~1e-7 relative in fp32 ...
        torch.testing.assert_close(m.encode(present), ref_x, rtol=0, atol=1e-6)
        torch.testing.assert_close(m(present)[:, :3], ref, rtol=0, atol=1e-6)
        # ... and ~1e-16 in fp64: the outputs are mathematically unchanged
        d = {k: _f64(v) for k, v in present.items()}
        d_old = {**d, "var_ids": batch["var_ids"]}
        for k in ("fields", "target", "mask"):
            d_old[k] = d[k][:, :3]
        m64 = m.double()
        torch.testing.assert_close(m64(d)[:, :3], m64(d_old), rtol=0, atol=1e-12)
        m.float()
    assert m.tokenizer.aggregate.gate[ids[0]].item() == 0.0
    _train(m, present, Objectives(forecast=1.0), steps=3)
    assert m.tokenizer.aggregate.gate[ids[0]].item() != 0.0  # training opened the gate


def test_train_new_variable_rows_only_touches_new_rows():
    m = _model()
    _, ids = extend_variables(m, VARS, ["snow"])
    add_lead_head(m, "h6", activate=False)
    freeze_backbone(m, train=("head",))
    marked = train_new_variable_rows(m, ids)
    assert all(dict(m.named_parameters())[n].no_weight_decay for n in marked)
    before = _snapshot(m)
    batch = _grid(var_ids=(4, 0, ids[0]))
    _train(m, batch, Objectives(forecast=1.0, masked=0.5), steps=3)
    gate = m.tokenizer.aggregate.gate
    assert torch.equal(gate[:6], before["tokenizer.aggregate.gate"][:6])
    assert float(gate[6].detach()) != 0.0
    w = m.tokenizer.embed.weight
    assert torch.equal(w[:6], before["tokenizer.embed.weight"][:6])
    assert not torch.equal(w[6], before["tokenizer.embed.weight"][6])
    assert torch.equal(m.blocks[0].attn.qkv.weight, before["blocks.0.attn.qkv.weight"])


# --- freezing and heads -----------------------------------------------------------------------


def test_frozen_backbone_only_head_moves():
    m = _model()
    trainable = freeze_backbone(m, train=("head",))
    assert set(trainable) == {"head.norm.weight", "head.norm.bias", "head.weight", "head.bias"}
    before = _snapshot(m)
    _train(m, _grid(), Objectives(forecast=1.0), steps=4)
    after = _snapshot(m)
    for n in before:
        same = torch.equal(before[n], after[n])
        assert same != n.startswith("head."), n
    with pytest.raises(ValueError, match="names no parameter"):
        freeze_backbone(m, train=("heads",))


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_new_pooled_head_trains(kind):
    m = _model()
    head = add_pooled_head(m, 3 if kind == "classification" else 2, kind)
    assert m.pooled is head and m.spec.num_targets == head.proj.out_features
    freeze_backbone(m, train=("pooled",))
    batch = _series() if kind == "classification" else _grid()
    obj = Objectives(forecast=0.0, pooled=1.0, pooled_kind=kind)
    losses = _train(m, batch, obj, steps=20, lr=0.1, opt="sgd")
    assert losses[-1] < 0.7 * losses[0], losses
    with pytest.raises(ValueError, match="kind"):
        add_pooled_head(m, 2, "ranking")


def test_lead_head_starts_at_persistence_and_trains():
    m = _model()
    batch = {**_grid(), "lead_ns": 6 * HOUR}
    head = add_lead_head(m, "h6")
    with torch.no_grad():
        assert torch.equal(m(batch), batch["fields"][:, :, -1])  # persistence
    freeze_backbone(m, train=("lead_heads",))
    before = m.head.weight.detach().clone()
    losses = _train(m, batch, Objectives(forecast=1.0), steps=5)
    assert losses[-1] < losses[0] and head.weight.abs().sum() > 0
    assert torch.equal(m.head.weight, before)
    with torch.no_grad():
        routed = m(batch)
    assert not torch.equal(routed, batch["fields"][:, :, -1])
    use_lead_head(m, None)  # back to the pretrained head (zero in this fresh model)
    assert m.forecast.__func__ is type(m).forecast
    with torch.no_grad():
        assert torch.equal(m(batch), batch["fields"][:, :, -1])
    with pytest.raises(ValueError, match="exists already"):
        add_lead_head(m, "h6")


def test_new_modality_parameters_train_on_series():
    m = _model()
    names = modality_parameters(m, SERIES)
    assert "tokenizer.series_embed.weight" in names and "reconstruct.series" in names
    assert not any(n.startswith(("tokenizer.embed.", "blocks.", "head.")) for n in names)
    freeze_backbone(m, train=names)
    before = _snapshot(m)
    losses = _train(m, _series(), Objectives(forecast=0.0, masked=1.0), steps=10)
    assert losses[-1] < losses[0]
    after = _snapshot(m)
    assert torch.equal(before["blocks.0.mlp.fc1.weight"], after["blocks.0.mlp.fc1.weight"])
    assert not torch.equal(
        before["tokenizer.series_embed.weight"], after["tokenizer.series_embed.weight"]
    )


def test_series_of_only_new_variables_is_finite_and_opens_gates():
    """A new modality's channels are all new (all gates 0): without the fallback the
    aggregation's softmax is 0/0 = NaN. Its tokens start at the aggregation's bias, the gates
    get gradients, and the pretrained variables' outputs are bitwise those of before."""
    m = _pretrained()
    grid = _grid()
    with torch.no_grad():
        ref = m(grid)
    _, ids = extend_variables(m, VARS, [*VARS, "w0", "w1"])
    batch = _series(var_ids=tuple(ids))
    x = m.encode(batch)
    assert torch.isfinite(x).all()
    x.square().sum().backward()
    gate_grad = m.tokenizer.aggregate.gate.grad
    assert torch.isfinite(gate_grad).all() and (gate_grad[ids] != 0).all()
    with torch.no_grad():
        assert torch.equal(m(grid), ref)  # the fallback leaves open-gate positions untouched


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"first_series": True}, "series source without a horizon"),
        ({"objectives": {"forecast": 1.0}}, "objectives.masked or objectives.pooled"),
        (
            {"objectives": {"pooled": 1.0, "pooled_kind": "classification",
                            "pooled_targets": ["c"]}},
            "pooled_classes",
        ),
        ({"finetune": {"package": "p", "lead_head": True}, "parallel": {"zero_stage": 3}},
         "finetune.lead_head needs"),
    ],
)  # fmt: skip
def test_series_source_and_head_config_refusals(change, message):
    from scigpt.config import RunConfig

    grid = {"name": "g", "format": "netcdf", "path": "x.nc"}
    series = {"name": "s", "format": "seisbench", "path": "w.hdf5"}
    change = dict(change)
    sources = [series, grid] if change.pop("first_series", False) else [grid, series]
    day = lambda d: {"start": f"2020-01-0{d}T00:00", "end": f"2020-01-0{d + 1}T00:00"}  # noqa: E731
    raw = {
        "name": "r",
        "data": {"sources": sources, "splits": {"train": day(1), "test": day(2)}},
        "objectives": {"forecast": 1.0, "masked": 1.0},
        **change,
    }  # fmt: skip
    from scigpt.trainable import check_trainable

    with pytest.raises(ValueError, match=message):  # at load, or (sources) when training starts
        check_trainable(RunConfig.model_validate_json(json.dumps(raw)))


# --- LoRA -------------------------------------------------------------------------------------


def test_lora_keys_init_training_and_merge():
    m = _pretrained()
    plain_keys = list(m.state_dict())
    base_sd = {k: v.clone() for k, v in m.state_dict().items()}
    batch = _grid()
    with torch.no_grad():
        ref = m(batch)
    names = apply_lora(m, rank=4, alpha=8)
    assert len(names) == 2 * 4 * 2 and "blocks.1.mlp.fc2.lora_B" in names
    assert isinstance(m.blocks[0].attn.qkv, LoRALinear)
    assert list(base_state_dict(m)) == plain_keys
    assert set(lora_state_dict(m)) == set(names)
    load_base_state_dict(m, base_sd)  # a plain pretrained state dict loads as it is
    with torch.no_grad():
        assert torch.equal(m(batch), ref)  # B = 0: bitwise the base model
    trainable = freeze_backbone(m, train=("head",))
    assert set(names) <= set(trainable)
    before = _snapshot(m)
    _train(m, batch, Objectives(forecast=1.0), steps=4)
    after = _snapshot(m)
    for n in before:
        if n.startswith("blocks."):
            assert torch.equal(before[n], after[n]) == ("lora" not in n), n
    assert all(p.abs().sum() > 0 for p in lora_parameters(m))
    with torch.no_grad():
        adapted = m(batch)
        x_adapted = m.encode(batch)
    merge_lora(m)
    assert not any(isinstance(x, LoRALinear) for x in m.modules())
    assert all(type(b.attn.qkv) is nn.Linear for b in m.blocks)
    assert list(m.state_dict()) == plain_keys
    with torch.no_grad():
        torch.testing.assert_close(m.encode(batch), x_adapted, rtol=0, atol=1e-6)
        torch.testing.assert_close(m(batch), adapted, rtol=0, atol=1e-6)
    # the merged model is a plain model: its state dict loads into a fresh build
    fresh = _model(seed=1)
    fresh.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(batch), m(batch))


def test_finetune_merge_then_finetune_again():
    m = _pretrained()
    batch = _grid()
    obj = Objectives(forecast=1.0)
    for rnd in range(2):
        apply_lora(m, rank=2, alpha=4, targets=("attn.qkv", "mlp.fc1"))
        freeze_backbone(m, train=())
        with torch.no_grad():
            start = m(batch)
        base = m.blocks[0].attn.qkv.weight.detach().clone()
        losses = _train(m, batch, obj, steps=4)
        assert losses[-1] < losses[0], (rnd, losses)
        assert torch.equal(m.blocks[0].attn.qkv.weight, base)
        merge_lora(m)
        with torch.no_grad():
            assert not torch.equal(m(batch), start)
        for p in m.parameters():
            p.requires_grad_(True)


def test_lora_refusals():
    m = _pretrained()
    apply_lora(m, targets=("mlp.fc1",))
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        apply_lora(m, targets=("mlp.fc1",))
    with pytest.raises(ValueError, match="no such module"):
        apply_lora(m, targets=("mlp.nope",))


def test_lora_refuses_tensor_parallel_linears(monkeypatch):
    import scigpt.parallel.tensor_parallel as tp

    m = _pretrained()
    monkeypatch.setattr(tp, "_layout", lambda group: (0, 1))
    m.blocks[0].mlp.fc1 = tp.ColumnParallelLinear(m.blocks[0].mlp.fc1, group=None)
    with pytest.raises(ValueError, match="tensor-parallel"):
        apply_lora(m)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_lora_under_activation_checkpointing_is_exact(mode):
    from scigpt.parallel.checkpointing import apply_activation_checkpointing

    models = []
    for ac in (True, False):
        m = _pretrained()
        if ac:
            apply_activation_checkpointing(m, mode)
        torch.manual_seed(5)
        apply_lora(m, rank=2)
        freeze_backbone(m, train=())
        with torch.no_grad():
            for p in lora_parameters(m):
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(p.numel()))
        models.append(m)
    grads = []
    for m in models:
        loss, _ = total_loss(m, _grid(), Objectives())
        loss.backward()
        grads.append([p.grad for p in lora_parameters(m)])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
