"""Multimodal model: shapes per modality, masking, aggregation symmetry, adding variables,
objectives, and overfitting one small real batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scigpt.config import ModelConfig
from scigpt.models.build import build_model, materialise
from scigpt.models.objectives import (
    Objectives,
    forecast_loss,
    masked_loss,
    pooled_loss,
    total_loss,
)
from scigpt.models.vit import ModelSpec

CFG = ModelConfig(patch_size=4, embed_dim=32, depth=2, heads=4, series_patch=10)
HOUR = 3_600_000_000_000


def _model(num_vars=8, targets=2, seed=0, **kw):
    cfg = CFG.model_copy(update=kw)
    return materialise(build_model(cfg, ModelSpec(num_vars, 2, targets)), "cpu", seed=seed)


def _grid(b=3, var_ids=(4, 0, 2), h=13, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = len(var_ids)
    return {
        "fields": torch.randn(b, v, 2, h, w, generator=g),
        "target": torch.randn(b, v, h, w, generator=g),
        "mask": torch.ones(b, v, h, w, dtype=torch.bool),
        "var_ids": torch.tensor(var_ids),
        "modality_id": 0,
        "lat": torch.linspace(60, 30, h),
        "lon": torch.linspace(-5, 20, w),
        "times": torch.arange(b, dtype=torch.int64) * HOUR,
    }


def _series(b=3, var_ids=(5, 6, 7), length=60, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = len(var_ids)
    return {
        "fields": torch.randn(b, c, length, generator=g),
        "mask": torch.ones(b, c, length, dtype=torch.bool),
        "var_ids": torch.tensor(var_ids),
        "modality_id": 1,
        "lat": torch.tensor([-22.0, 35.0, 47.3])[:b],
        "lon": torch.tensor([-69.0, -106.5, 7.7])[:b],
        "depth": torch.zeros(b),
        "times": torch.arange(b, dtype=torch.int64) * HOUR,
        "step_ns": 50_000_000,
        "targets": torch.randn(b, 2, generator=g),
    }


def test_shapes_for_every_modality_and_a_mixture():
    m = _model()
    grid, series = _grid(), _series()
    assert m(grid).shape == (3, 3, 13, 10)
    assert m.encode(grid).shape == (3, 4 * 3, 32)  # 13x10 padded to 16x12: 4x3 tokens
    x = m.encode(series)
    assert x.shape == (3, 6, 32)  # 60 samples / 10 per token
    assert m.reconstruct(x, series["var_ids"], grid=False).shape == (3, 3, 6, 10)
    assert m.reconstruct(m.encode(grid), grid["var_ids"], grid=True).shape == (3, 3, 12, 32)
    assert m.pooled(x).shape == (3, 2)
    # micro-batches of different sources through one model, gradients accumulated across them
    obj = Objectives(forecast=1.0, masked=0.5, pooled=0.2)
    total = 0.0
    for batch in (grid, series, grid):
        loss, parts = total_loss(m, batch, obj, torch.Generator().manual_seed(0))
        loss.backward()
        total += float(loss.detach())
        assert set(parts) <= {"forecast", "masked", "pooled"} and parts
    assert np.isfinite(total)
    assert m.tokenizer.series_embed.weight.grad is not None
    assert m.tokenizer.embed.weight.grad is not None
    with pytest.raises(ValueError, match="forward\\(\\) forecasts grids"):
        m(series)


def test_masked_tokens_do_not_see_their_input():
    m = _model()
    batch = _series()
    n = 6
    token_mask = torch.zeros(3, n, dtype=torch.bool)
    token_mask[:, [1, 4]] = True
    ref = m.encode(batch, token_mask)
    assert torch.equal(m.encode(batch, torch.zeros_like(token_mask)), m.encode(batch))
    # changing the values inside masked patches changes nothing
    poked = {**batch, "fields": batch["fields"].clone()}
    poked["fields"][:, :, 10:20] += 100.0  # token 1
    poked["fields"][:, :, 40:50] -= 50.0  # token 4
    assert torch.equal(m.encode(poked, token_mask), ref)
    assert not torch.equal(m.encode(poked), m.encode(batch))


def test_masked_loss_only_counts_masked_patches():
    m = _model()
    batch = _series()
    obj = Objectives(mask_ratio=0.5)
    loss = masked_loss(m, batch, obj, torch.Generator().manual_seed(3))
    # the same draw of masked tokens, so the same loss; the rate is exact: 3 of 6 tokens
    again = masked_loss(m, batch, obj, torch.Generator().manual_seed(3))
    assert torch.equal(loss, again) and loss > 0
    scores = torch.rand(3, 6, generator=torch.Generator().manual_seed(3))
    token_mask = scores.argsort(1).argsort(1) < 3
    assert int(token_mask.sum()) == 9
    x = m.encode(batch, token_mask)
    pred = m.reconstruct(x, batch["var_ids"], grid=False)
    target = batch["fields"].reshape(3, 3, 6, 10)
    w = token_mask[:, None, :, None].expand_as(pred)
    want = ((pred - target) ** 2 * w).sum() / w.sum()
    torch.testing.assert_close(loss, want)


def test_aggregation_is_invariant_to_variable_order():
    m = _model()
    batch = _grid()
    perm = torch.tensor([2, 0, 1])
    permuted = {**batch, "fields": batch["fields"][:, perm], "var_ids": batch["var_ids"][perm]}
    torch.testing.assert_close(m.encode(permuted), m.encode(batch), rtol=1e-5, atol=1e-6)


def test_adding_a_variable_keeps_outputs():
    m = _model(num_vars=8)
    batch = _grid()
    before_grid, before_series = m(batch), m.encode(_series())
    (new,) = m.add_variables(1)
    assert new == 8 and m.tokenizer.embed.weight.shape[0] == 9
    assert float(m.tokenizer.aggregate.gate[new]) == 0.0
    # absent from the input: identical outputs
    assert torch.equal(m(batch), before_grid)
    assert torch.equal(m.encode(_series()), before_series)
    # present, gate closed: identical outputs for the old variables (to rounding)
    g = torch.Generator().manual_seed(9)
    with_new = {
        **batch,
        "fields": torch.cat([batch["fields"], torch.randn(3, 1, 2, 13, 10, generator=g)], 1),
        "target": torch.cat([batch["target"], torch.randn(3, 1, 13, 10, generator=g)], 1),
        "mask": torch.ones(3, 4, 13, 10, dtype=torch.bool),
        "var_ids": torch.tensor([4, 0, 2, new]),
    }
    torch.testing.assert_close(m.encode(with_new), m.encode(batch), rtol=0, atol=1e-6)
    torch.testing.assert_close(m(with_new)[:, :3], before_grid, rtol=0, atol=1e-6)
    # and training can open the gate
    loss, _ = total_loss(m, with_new, Objectives())
    m.head.weight.data.normal_(std=0.02)  # a zero head passes no gradient upstream
    loss, _ = total_loss(m, with_new, Objectives())
    loss.backward()
    assert m.tokenizer.aggregate.gate.grad[new] != 0


def test_forecast_loss_latitude_weighting_by_hand():
    batch = _grid(b=2, var_ids=(0, 1), h=5, w=4)
    batch["lat"] = torch.tensor([60.0, 30.0, 0.0, -30.0, -60.0])
    pred = torch.zeros_like(batch["target"])
    obj = Objectives(variable_weights={1: 3.0})
    got = forecast_loss(pred, batch, obj)
    cos = np.cos(np.deg2rad([60.0, 30.0, 0.0, -30.0, -60.0]))
    w = (cos / cos.mean())[None, None, :, None] * np.array([1.0, 3.0])[None, :, None, None]
    w = np.broadcast_to(w, pred.shape)
    err = batch["target"].numpy() ** 2
    assert float(got) == pytest.approx(float((w * err).sum() / w.sum()), rel=1e-6)
    flat = forecast_loss(pred, batch, Objectives(geographic=False))
    assert float(flat) == pytest.approx(float(err.mean()), rel=1e-6)


def test_pooled_regression_ignores_missing_targets():
    """The pooled loss by hand (numpy): the squared error of the head's outputs over the
    targets that are present; a missing target adds nothing."""
    m = _model()
    batch = _series()
    batch["targets"][0, 1] = float("nan")
    loss, parts = total_loss(m, batch, Objectives(forecast=0, pooled=1.0))
    assert np.isfinite(float(loss.detach())) and set(parts) == {"pooled"}
    with torch.no_grad():
        out = m.pooled(m.encode(batch)).double().numpy()
    y = batch["targets"].double().numpy()
    ok = np.isfinite(y)
    assert float(loss.detach()) == pytest.approx(float(((out - y)[ok] ** 2).mean()), rel=1e-6)
    assert float(pooled_loss(m, batch, Objectives(pooled=1.0)).detach()) == float(loss.detach())


def test_heads_against_hand_computations():
    """Each head against its formula with the layer norm written out (float64 numpy): the
    forecast head puts variable v's row of decoded pixels at its patch; the reconstruction head
    decodes each variable's patch values with that variable's row; the pooled head reads the
    mean token."""
    m = _model()
    g = torch.Generator().manual_seed(5)
    for p in m.parameters():
        p.data.normal_(generator=g)  # no zero head, no unit norm: every parameter shows
    x = torch.randn(2, 12, 32, generator=g, dtype=torch.float32)  # (B, N, D): 4 x 3 tokens

    def ln(t, mod):
        t = t.double().numpy()
        mu, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
        w, b = mod.weight.detach().double().numpy(), mod.bias.detach().double().numpy()
        return (t - mu) / np.sqrt(var + mod.eps) * w + b

    var_ids = torch.tensor([4, 0, 2])
    with torch.no_grad():
        rec = m.reconstruct(x, var_ids, grid=True).double().numpy()  # (B, V, N, K)
        fc = m.head(x, var_ids, 13, 10).double().numpy()  # (B, V, H, W)
        pooled = m.pooled(x).double().numpy()  # (B, targets)
    xn = ln(x, m.reconstruct.norm)
    wr, br = m.reconstruct.grid.detach().double(), m.reconstruct.grid_bias.detach().double()
    for j, v in enumerate(var_ids.tolist()):
        want = xn @ wr[v].numpy().T + br[v].numpy()  # (B, N, K)
        np.testing.assert_allclose(rec[:, j], want, rtol=1e-4, atol=1e-4)
    xf = ln(x, m.head.norm)
    wf, bf = m.head.weight.detach().double(), m.head.bias.detach().double()
    for j, v in enumerate(var_ids.tolist()):
        pix = xf @ wf[v].numpy().T + bf[v].numpy()  # (B, N, p*p)
        for n in range(12):
            r, c = divmod(n, 3)
            block = pix[:, n].reshape(2, 4, 4)[:, : 13 - 4 * r, : 10 - 4 * c]
            np.testing.assert_allclose(
                fc[:, j, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4], block, rtol=1e-4, atol=1e-4
            )
    xp = ln(x.mean(1), m.pooled.norm)
    want = xp @ m.pooled.proj.weight.detach().double().numpy().T
    np.testing.assert_allclose(pooled, want + m.pooled.proj.bias.detach().numpy(), rtol=1e-4,
                               atol=1e-4)  # fmt: skip


def test_tiny_model_overfits_one_real_batch(sample_era5_dir: Path, tmp_path: Path):
    """Four real ERA5 samples; the model (no residual) must cut the loss at least 10x."""
    from scigpt.data_pipeline.ingest.netcdf import read_netcdf
    from scigpt.data_pipeline.loader import ForecastDataset, collate_forecast
    from scigpt.data_pipeline.shards import write_grid_store
    from scigpt.data_pipeline.store import GridStore

    torch.manual_seed(0)
    grid = read_netcdf(sorted(sample_era5_dir.glob("*.nc")), ["u10", "v10", "sp", "d2m"])
    write_grid_store(grid, tmp_path)
    with GridStore(tmp_path) as store:
        ds = ForecastDataset(store, time_range=(store.time[0], store.time[-1]))
        batch = collate_forecast([ds[i] for i in range(4)])
    cfg = ModelConfig(patch_size=4, embed_dim=64, depth=2, heads=4, residual=False)
    m = materialise(build_model(cfg, ModelSpec(4, 2)), "cpu", 0)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0)
    losses = []
    for _ in range(120):
        loss, _ = total_loss(m, batch, Objectives())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
