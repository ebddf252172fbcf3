"""Model sizing: analytic parameter counts and FLOPs against the built model and FlopCounterMode.

The references are independent of scigpt.models.sizing: ``sum(p.numel())`` of the model built on
the meta device, and ``torch.utils.flop_counter.FlopCounterMode`` (which counts every mm/bmm/addmm
and attention kernel the real forward and backward dispatch, from the tensor shapes).

Attention on real CPU tensors uses the model's ``math`` reference: the CPU SDPA kernel
(``_scaled_dot_product_flash_attention_for_cpu``) has no FLOP formula in torch's registry, so
FlopCounterMode would see no attention at all. On the meta device SDPA decomposes into the same
two bmms, so the meta runs keep the default ``sdpa``.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scigpt.config import ModelConfig
from scigpt.config_loader import load_config, shipped_config
from scigpt.models.build import build_model, materialise
from scigpt.models.encodings import POS_FEATURES, TIME_FEATURES
from scigpt.models.sizing import (
    config_of,
    flops_breakdown,
    flops_per_token,
    forward_flops_per_token,
    grid_tokens,
    param_count,
    series_tokens,
)
from scigpt.models.tokenizer import SERIES
from scigpt.models.vit import _PER_VARIABLE, ModelSpec

PRESETS = ["vit-tiny", "vit-100m", "vit-300m", "vit-1b", "vit-3b", "vit-10b", "vit-30b"]
REF_SPEC = ModelSpec(num_vars=100, history=2)  # the spec the preset comments are computed for


def _numel(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _grid_batch(b: int, v: int, t: int, h: int, w: int, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "fields": torch.randn(b, v, t, h, w, generator=g).to(device),
        "var_ids": torch.arange(v).flip(0).to(device),  # any order of registry rows
        "lat": torch.linspace(60, 30, h, device=device),
        "lon": torch.linspace(-5, 20, w, device=device),
        "times": torch.arange(b, dtype=torch.int64, device=device) * 3_600_000_000_000,
    }


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _preset(name: str) -> ModelConfig:
    run = shipped_config("runs/demo.yaml")
    return load_config(run, [f"model.preset={name}"]).config.model


# ---- parameters ---------------------------------------------------------------------------------

CONFIGS = [
    (ModelConfig(), ModelSpec(14, 2)),  # vit-tiny with the demo's variables
    (ModelConfig(), ModelSpec(1, 1)),
    (ModelConfig(embed_dim=36, depth=2, heads=3, mlp_ratio=2.5, patch_size=3), ModelSpec(7, 3)),
    # int(50 * 2.67) = 133: the MLP width rounds down, as vit.Block builds it
    (
        ModelConfig(embed_dim=50, depth=1, heads=5, mlp_ratio=2.67, series_patch=7),
        ModelSpec(3, 2, 5),
    ),
    (ModelConfig(embed_dim=64, depth=4, heads=8, patch_size=2), ModelSpec(250, 4, num_targets=1)),
]


@pytest.mark.parametrize(("cfg", "spec"), CONFIGS)
def test_param_count_matches_the_built_model_part_by_part(cfg, spec):
    model = build_model(cfg, spec)  # meta: shapes only
    got = param_count(cfg, spec)
    assert got["total"] == _numel(model)
    assert got["tokenizer"] == _numel(model.tokenizer)
    assert got["blocks"] == _numel(model.blocks)
    assert got["blocks_matmul"] == sum(p.numel() for p in model.blocks.parameters() if p.dim() == 2)
    assert got["forecast_head"] == _numel(model.head)
    assert got["reconstruct_head"] == _numel(model.reconstruct)
    assert got["pooled_head"] == _numel(model.pooled)
    assert (model.pooled is None) == (spec.num_targets == 0)
    # the series head is optional (ModelSpec.bins / quantiles): absent here
    per_var = sum(
        getattr(model.get_submodule(m), a).numel()
        for m, a in _PER_VARIABLE
        if getattr(model, m.split(".")[0]) is not None
    )
    assert got["per_variable"] == per_var


@pytest.mark.parametrize(("cfg", "spec"), CONFIGS)
def test_config_of_recovers_the_widths_of_a_built_model(cfg, spec):
    model = build_model(cfg, spec)
    cfg2, spec2 = config_of(model)
    assert spec2 == spec
    assert param_count(cfg2, spec2) == param_count(cfg, spec)
    n = 77
    assert forward_flops_per_token(model, n) == flops_per_token(cfg, spec, n, training=False)


# ---- FLOPs against FlopCounterMode --------------------------------------------------------------


def test_grid_flops_match_flop_counter_on_the_real_tiny_model():
    cfg = ModelConfig(attention="math")  # vit-tiny widths
    spec = ModelSpec(num_vars=7, history=2)
    model = materialise(build_model(cfg, spec), "cpu", seed=0)
    b, v, h, w = 2, 5, 30, 34  # 5 of 7 registered variables; odd grid: padded to 8 x 9 patches
    batch = _grid_batch(b, v, 2, h, w)
    n = grid_tokens(cfg, h, w)
    assert n == model.num_tokens(h, w) == 72
    parts = flops_breakdown(cfg, spec, n, num_vars=v)
    d = cfg.embed_dim

    fwd = _count(lambda: model(batch))
    # The only gap: the model shares the position linear across the batch (one row per grid
    # position) and the time linear across a sample's tokens; the formula charges every token.
    shared = 2 * POS_FEATURES * d * n * (b - 1) + 2 * TIME_FEATURES * d * (b * n - b)
    assert fwd == b * n * parts["forward"] - shared
    assert fwd == pytest.approx(b * n * parts["forward"], rel=5e-3)  # 0.4 % here

    def train():
        model(batch).square().mean().backward()

    both = _count(train)
    # Backward = 2x forward for every matmul, except the embedding and encoding linears whose
    # inputs need no gradient (weight gradient only).
    no_input_grad = b * n * parts["embed"] + 2 * POS_FEATURES * d * n + 2 * TIME_FEATURES * d * b
    assert both == 3 * fwd - no_input_grad
    # PaLM's 3x overcounts by exactly that: a few % here, as the tubelet embedding is a large
    # share of a 96-wide model.
    palm = b * n * flops_per_token(cfg, spec, n, num_vars=v)
    assert both == pytest.approx(palm, rel=0.04)


def test_series_flops_with_reconstruct_and_pooled_heads_match_flop_counter():
    cfg = ModelConfig(attention="math", series_patch=10)
    spec = ModelSpec(num_vars=4, history=2, num_targets=3)
    model = materialise(build_model(cfg, spec), "cpu", seed=0)
    b, c, length = 3, 3, 160
    batch = {
        "fields": torch.randn(b, c, length),
        "var_ids": torch.tensor([3, 0, 1]),
        "lat": torch.tensor([10.0, 20.0, 30.0]),
        "lon": torch.tensor([0.0, 5.0, 9.0]),
        "times": torch.zeros(b, dtype=torch.int64),
        "step_ns": 10_000_000,
        "modality_id": SERIES,
    }
    n = series_tokens(cfg, length)
    assert n == model.tokenizer.num_tokens(batch) == 16

    def run():
        x = model.encode(batch)
        model.reconstruct(x, batch["var_ids"], grid=False)
        model.pooled(x)

    got = _count(run)
    kw = {"num_vars": c, "modality": "series"}
    rec = flops_breakdown(cfg, spec, n, head="reconstruct", **kw)
    pooled = flops_breakdown(cfg, spec, n, head="pooled", **kw)["head"]
    shared = 2 * POS_FEATURES * cfg.embed_dim * (b * n - b)  # one station position per sample
    assert got == pytest.approx(b * n * (rec["forward"] + pooled) - shared, abs=1e-6)


def _cpu_forward_flops(cfg: ModelConfig, spec: ModelSpec, batch: dict) -> int:
    # Values do not change FLOPs: zeros instead of init_weights (4 s of trunc_normal on 2 cores).
    model = build_model(cfg, spec).to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        return _count(lambda: model(batch))


def test_100m_flops_match_flop_counter():
    """vit-100m widths: a real CPU forward (1 sample, 32x32) and forward+backward on meta."""
    cfg = _preset("vit-100m").model_copy(update={"attention": "math"})
    spec = ModelSpec(num_vars=4, history=2)
    n = grid_tokens(cfg, 32, 32)
    expected = n * flops_breakdown(cfg, spec, n)["forward"]
    time_shared = 2 * TIME_FEATURES * cfg.embed_dim * (n - 1)

    fwd = _cpu_forward_flops(cfg, spec, _grid_batch(1, 4, 2, 32, 32))
    assert fwd == expected - time_shared
    assert fwd == pytest.approx(expected, rel=1e-4)

    meta = build_model(cfg.model_copy(update={"attention": "sdpa"}), spec)
    batch = _grid_batch(1, 4, 2, 32, 32, device="meta")
    assert _count(lambda: meta(batch)) == fwd  # meta + SDPA counts what the CPU run counted
    both = _count(lambda: meta(batch).square().mean().backward())
    palm = n * flops_per_token(cfg, spec, n)
    assert both == pytest.approx(palm, rel=2e-3)


# ---- large presets on the meta device -----------------------------------------------------------


def _rss_bytes() -> int:
    # Linux, like every machine this suite runs on (CI and clusters).
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(("name", "target"), [("vit-10b", 10e9), ("vit-30b", 30e9)])
def test_large_presets_build_on_meta_without_memory(name, target):
    cfg = _preset(name)
    rss0, t0 = _rss_bytes(), time.perf_counter()
    model = build_model(cfg, REF_SPEC)
    seconds, grown = time.perf_counter() - t0, _rss_bytes() - rss0
    assert all(p.is_meta for p in model.parameters())
    assert grown < 200e6, f"building {name} on meta grew RSS by {grown / 1e6:.0f} MB"
    assert seconds < 10, f"building {name} on meta took {seconds:.1f} s"
    total = _numel(model)
    assert total == param_count(cfg, REF_SPEC)["total"]
    assert abs(total / target - 1) < 0.15, f"{name}: {total / 1e9:.2f}B parameters"
    # The formula holds at this scale too (forward on meta: shapes only).
    n = grid_tokens(cfg, 64, 64)
    fwd = _count(lambda: model(_grid_batch(1, 100, 2, 64, 64, device="meta")))
    assert fwd == pytest.approx(n * flops_per_token(cfg, REF_SPEC, n, training=False), rel=1e-4)


# ---- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*PRESETS, "vit-small", "vit-base", "vit-large"])
def test_presets_validate_and_their_comments_state_the_computed_numbers(name):
    cfg = _preset(name)  # demo.yaml + --set model.preset=NAME: ModelConfig validation passes
    assert cfg.embed_dim % cfg.heads == 0
    if name != "vit-tiny":
        assert cfg.embed_dim % 64 == 0  # tensor-core friendly widths
    text = " ".join(
        line.lstrip("# ").strip()
        for line in shipped_config(f"models/{name}.yaml").read_text().splitlines()
        if line.startswith("#")
    )
    m = re.search(r"([\d.]+)([MB]) parameters at num_vars=100, history=2", text)
    f = re.search(r"([\d.]+) GFLOP/token training at 256 tokens", text)
    assert m and f, f"{name}.yaml: first comment must state parameters and GFLOP/token"

    def close(stated: str, unit: float, value: float) -> bool:  # to the printed precision
        decimals = len(stated.split(".")[1]) if "." in stated else 0
        return abs(float(stated) * unit - value) <= 0.5 * 10**-decimals * unit

    total = param_count(cfg, REF_SPEC)["total"]
    assert close(m[1], 1e9 if m[2] == "B" else 1e6, total), (name, m[0], total)
    assert close(f[1], 1e9, flops_per_token(cfg, REF_SPEC, 256)), (name, f[0])


def test_vit_tiny_keeps_the_demo_numbers():
    cfg = _preset("vit-tiny")
    widths = (cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.heads, cfg.mlp_ratio)
    assert widths == (4, 96, 3, 4, 4.0)


def test_preset_ladder_grows():
    totals = [param_count(_preset(p), REF_SPEC)["total"] for p in PRESETS]
    assert totals == sorted(totals)
    for name, target in zip(PRESETS[1:], [1e8, 3e8, 1e9, 3e9, 1e10, 3e10], strict=True):
        total = param_count(_preset(name), REF_SPEC)["total"]
        assert abs(total / target - 1) < 0.15, f"{name}: {total:.3g}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 0}, "seq_len=0"),
        ({"modality": "video"}, "modality='video'"),
        ({"head": "linear"}, "head='linear'"),
        ({"modality": "series"}, "forecast head decodes grids"),
        ({"head": "pooled"}, "num_targets"),
        ({"num_vars": 0}, "num_vars=0"),
    ],
)
def test_flops_reject_impossible_arguments(kwargs, message):
    args = {"seq_len": 16, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        flops_breakdown(ModelConfig(), ModelSpec(3, 2), **args)
