"""Model: meta-device build, deterministic init, persistence at step 0, references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scigpt.config import ModelConfig
from scigpt.eval.metrics import weighted_rmse_per_channel
from scigpt.models.attention import get_attention, math_attention, sdpa_attention
from scigpt.models.build import build_model, count_params, materialise
from scigpt.models.encodings import patch_centres
from scigpt.models.losses import lat_weights, weighted_mse
from scigpt.models.patch_embed import GridPatchEmbed
from scigpt.models.vit import ModelSpec


def _batch(b=3, v=5, t=2, h=13, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "fields": torch.randn(b, v, t, h, w, generator=g),
        "var_ids": torch.tensor([4, 0, 2, 1, 3])[:v],
        "lat": torch.linspace(60, 30, h),
        "lon": torch.linspace(-5, 20, w),
        "times": torch.arange(b, dtype=torch.int64) * 3_600_000_000_000,
    }


CFG = ModelConfig(patch_size=4, embed_dim=32, depth=2, heads=4)


def test_build_on_meta_allocates_nothing():
    model = build_model(CFG, ModelSpec(num_vars=5, history=2))
    assert all(p.is_meta for p in model.parameters())
    big = build_model(ModelConfig(embed_dim=4096, depth=48, heads=32), ModelSpec(500, 2))
    assert count_params(big) > 9e9  # a 10B model costs no memory on the meta device


def test_materialise_is_deterministic_and_complete():
    a = materialise(build_model(CFG, ModelSpec(5, 2)), "cpu", seed=7)
    b = materialise(build_model(CFG, ModelSpec(5, 2)), "cpu", seed=7)
    c = materialise(build_model(CFG, ModelSpec(5, 2)), "cpu", seed=8)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.isfinite(pa).all(), n
        assert torch.equal(pa, pb), n
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_residual_model_starts_as_persistence():
    model = materialise(build_model(CFG, ModelSpec(5, 2)), "cpu", seed=0)
    batch = _batch()
    out = model(batch)
    assert out.shape == (3, 5, 13, 10)  # odd grid: padded inside, cropped back
    assert torch.equal(out, batch["fields"][:, :, -1])


def test_gradients_reach_every_parameter():
    model = materialise(build_model(CFG, ModelSpec(5, 2)), "cpu", seed=0)
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head blocks upstream gradients
    model(_batch()).square().mean().backward()
    used = {4, 0, 2, 1, 3}
    # the forecast objective trains everything but the other objectives' parts
    other = ("mask_token", "tokenizer.series_embed", "reconstruct", "pooled")
    for name, p in model.named_parameters():
        if name.startswith(other):
            continue
        assert p.grad is not None, name
        if name in ("tokenizer.embed.weight", "tokenizer.var_embed", "head.weight"):
            assert all(p.grad[i].abs().sum() > 0 for i in used), name


def test_patch_embed_matches_conv3d_per_variable():
    """Reference: one Conv3d per variable with that variable's weight row."""
    emb = GridPatchEmbed(num_vars=3, dim=8, patch=(2, 3, 3))
    torch.manual_seed(0)
    emb.init_weights()
    torch.nn.init.normal_(emb.bias)
    x = torch.randn(2, 2, 2, 7, 8)  # (B, V, T, H, W), H and W not multiples of 3
    var_ids = torch.tensor([2, 0])
    out = emb(x, var_ids)  # (B, V, N, D)
    xp = torch.nn.functional.pad(x, (0, 1, 0, 2))
    for j, vid in enumerate(var_ids.tolist()):
        w = emb.weight[vid : vid + 1].transpose(0, 1)  # (D, 1, pt, ph, pw)
        ref = torch.nn.functional.conv3d(xp[:, j : j + 1], w, emb.bias[vid], stride=(2, 3, 3))
        # ref: (B, D, 1, gh, gw)
        ref = ref.flatten(2).transpose(1, 2)  # (B, N, D)
        torch.testing.assert_close(out[:, j], ref, rtol=1e-5, atol=1e-5)


def test_attention_registry_sdpa_matches_math_reference():
    q, k, v = (torch.randn(2, 3, 17, 16) for _ in range(3))
    mask = torch.ones(2, 17, dtype=torch.bool)
    mask[1, 11:] = False
    torch.testing.assert_close(sdpa_attention(q, k, v, mask), math_attention(q, k, v, mask))
    assert get_attention("sdpa") is sdpa_attention
    with pytest.raises(ValueError, match=r"model\.attention='nope' is not registered"):
        get_attention("nope")


def test_patch_centres_extrapolate_padding():
    lat = torch.linspace(55, 45, 41)  # 0.25 degree spacing, descending
    c = patch_centres(lat, 4)
    assert c.shape == (11,)
    torch.testing.assert_close(c[0], torch.tensor(55 - 0.375))
    torch.testing.assert_close(c[-1], torch.tensor(55 - 0.25 * 41.5))


def test_lat_weighted_metrics_against_numpy():
    g = torch.Generator().manual_seed(1)
    pred, truth = torch.randn(4, 3, 5, 6, generator=g), torch.randn(4, 3, 5, 6, generator=g)
    lat = torch.tensor([60.0, 30.0, 0.0, -30.0, -60.0])
    w = lat_weights(lat)
    assert float(w.mean()) == pytest.approx(1.0)
    wn = np.cos(np.deg2rad(lat.numpy()))[None, None, :, None]
    err = (pred.numpy() - truth.numpy()) ** 2
    wsum = np.broadcast_to(wn, err.shape).sum(axis=(0, 2, 3))
    ref = np.sqrt((err * wn).sum(axis=(0, 2, 3)) / wsum)
    np.testing.assert_allclose(weighted_rmse_per_channel(pred, truth, w).numpy(), ref, rtol=1e-6)
    ref_mse = (err * wn).sum() / np.broadcast_to(wn, err.shape).sum()
    assert float(weighted_mse(pred, truth, w)) == pytest.approx(float(ref_mse), rel=1e-5)
