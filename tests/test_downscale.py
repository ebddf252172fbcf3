"""Downscaling (super-resolution) as a training task: degradations, config checks, the untrained
model equals bicubic, training beats bicubic on 3 seeds (ERA5 x4, Navier–Stokes x8), package
round trip, ``scigpt evaluate`` against bicubic and the CNN baseline.

One module fixture trains the 6 tiny runs in one subprocess (~35 s at OMP_NUM_THREADS=1, plus
DeepSpeed's CPU op build when its cache is cold); everything else reads them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scigpt.config_loader import ConfigError, load_config
from scigpt.data_pipeline.degrade import (
    bicubic_downsample,
    bicubic_upsample,
    block_mean,
    degrade,
    sample_generator,
)
from scigpt.data_pipeline.downscale import block_dataset
from scigpt.data_pipeline.loader import collate_forecast
from scigpt.data_pipeline.store import GridStore
from scigpt.eval import superres
from scigpt.models.build import build_model, materialise
from scigpt.models.vit import ModelSpec
from tests.conftest import job_env

CONFIGS = {"era5": "runs/downscale-era5-x4.yaml", "ns": "runs/downscale-ns-x8.yaml"}
SEEDS = (0, 1, 2)
MIN_GAIN = 0.05  # the bar: >= 5 % lower RFNE than bicubic, on every seed

_TRAIN = """
import json, sys
import numpy as np
from pathlib import Path
from scigpt.config_loader import load_config
from scigpt.train.trainer import train
root, configs, seeds = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
for key, path in configs.items():
    for seed in seeds:
        r = train(load_config(path, [f"seed={seed}"]), run_name=f"{key}-{seed}", root=root)
        t = r.test
        np.savez(root / f"{key}-{seed}.npz", pred=t["pred"].numpy(), truth=t["truth"].numpy(),
                 bicubic=t["current"].numpy())
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, torch_extensions_dir) -> Path:
    root = tmp_path_factory.mktemp("downscale")
    out = subprocess.run(
        [sys.executable, "-c", _TRAIN, str(root), json.dumps(CONFIGS), json.dumps(SEEDS)],
        env=job_env(torch_extensions_dir), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return root


# ---------------------------------------------------------------- degradations (no training)


def test_block_mean_conserves_every_block_mean():
    fine = torch.randn(2, 3, 12, 8, dtype=torch.float64)
    coarse = block_mean(fine, 4)
    assert coarse.shape == (2, 3, 3, 2)
    for i in range(3):  # an independent loop over the blocks: each coarse cell is its mean
        for j in range(2):
            ref = fine[..., 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].sum((-2, -1)) / 16
            torch.testing.assert_close(coarse[..., i, j], ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(coarse.mean((-2, -1)), fine.mean((-2, -1)), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="multiple of the factor"):
        block_mean(torch.zeros(10, 10), 4)


def test_bicubic_is_torchs_and_superres_baseline():
    fine = torch.randn(2, 16, 24)
    ref = F.interpolate(fine[:, None], size=(4, 6), mode="bicubic", antialias=True,
                        align_corners=False)[:, 0]  # fmt: skip
    assert torch.equal(bicubic_downsample(fine, 4), ref)
    # up-sampling: the evaluation's bicubic baseline (float64) to float32 round-off
    up = bicubic_upsample(ref, 4)
    np.testing.assert_allclose(up.numpy(), superres.bicubic_upsample(ref.numpy(), 4), atol=1e-5)


def test_noise_is_seeded_per_sample():
    fine = torch.randn(3, 16, 16)

    def noisy(seed: int, i: int) -> torch.Tensor:
        return degrade(fine, 4, "bicubic+noise", noise=0.1, generator=sample_generator(seed, i))

    assert torch.equal(noisy(0, 5), noisy(0, 5))  # the same sample: the same draw, any order
    assert not torch.equal(noisy(0, 5), noisy(0, 6))
    assert not torch.equal(noisy(0, 5), noisy(1, 5))
    eps = (noisy(0, 5) - bicubic_downsample(fine, 4)) / 0.1
    assert 0.6 < float(eps.std()) < 1.4  # 48 standard normal draws


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.downscale.crop=[38, 38]"], r"crop to \[36, 36\]"),
        (["data.downscale.noise=0.1"], "bicubic\\+noise only"),
        (["data.downscale.degradation=bicubic+noise"], "needs noise > 0"),
        (["data.history=2"], "set data.history: 1"),
        (["data.task=forecast"], "go together"),
        (["data.downscale.factor=1"], "greater than or equal to 2"),
    ],
)
def test_config_errors_name_the_fix(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS["era5"], overrides)


# ---------------------------------------------------------------- models on the trained runs


def _test_batch(run: Path, cfg) -> tuple[dict, object]:
    store = GridStore(run / "store", source=cfg.data.sources[0].name)
    ds = block_dataset(store, cfg.data.downscale, cfg.data.splits, "test", seed=cfg.seed,
                       patch_size=cfg.model.patch_size)  # fmt: skip
    return collate_forecast([ds[i] for i in range(len(ds))]), ds


def test_untrained_model_is_bicubic_exactly(runs):
    cfg = load_config(CONFIGS["era5"]).config
    batch, ds = _test_batch(runs / "era5-0", cfg)
    model = materialise(build_model(cfg.model, ModelSpec(len(ds.variables), 1)), "cpu", 0)
    with torch.no_grad():
        out = model(batch)
    coarse = torch.stack([ds[i]["coarse"] for i in range(len(ds))])
    assert torch.equal(out, batch["fields"][:, :, -1])  # bitwise: the head starts at zero
    assert torch.equal(out, bicubic_upsample(coarse, 4))


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_finetune_beats_bicubic_on_three_seeds(runs, key):
    """RFNE per channel (normalised units: the fields the model is trained and selected on),
    mean over channels; the tested checkpoint is the best on validation (eval.every)."""
    for seed in SEEDS:
        r = np.load(runs / f"{key}-{seed}.npz")
        v = r["truth"].shape[1]
        model = np.mean([superres.rfne(r["pred"][:, c], r["truth"][:, c]) for c in range(v)])
        bic = np.mean([superres.rfne(r["bicubic"][:, c], r["truth"][:, c]) for c in range(v)])
        assert 1 - model / bic >= MIN_GAIN, (key, seed, model, bic)
        rec = [json.loads(x) for x in (runs / f"{key}-{seed}" / "metrics.jsonl").open()]
        test = next(x for x in rec if x["kind"] == "test")
        vals = {x["step"]: x["model_mse"] for x in rec if x["kind"] == "val"}
        assert test["checkpoint_step"] == min(vals, key=vals.get)  # chosen on val, not test


def test_package_round_trip_and_evaluate(runs, tmp_path, torch_extensions_dir):
    """export (best checkpoint) → load gives the run's test predictions bitwise; ``scigpt
    evaluate RUN`` scores model, bicubic and the CNN with SuperBench's metrics."""
    from scigpt.export.loader import load_pretrained
    from scigpt.export.writer import export_run

    run = runs / "era5-0"
    pm = load_pretrained(export_run(run, tmp_path / "pkg", best=True))
    cfg = load_config(CONFIGS["era5"]).config
    batch, _ = _test_batch(run, cfg)
    with torch.no_grad():
        got = pm.model(batch)
    assert torch.equal(got, torch.from_numpy(np.load(runs / "era5-0.npz")["pred"]))

    out = subprocess.run(
        [sys.executable, "-m", "scigpt", "evaluate", str(run), CONFIGS["era5"], "--out",
         str(tmp_path / "ev")], env=job_env(torch_extensions_dir), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    s = json.loads((tmp_path / "ev" / "superres.json").read_text())
    methods = {(r["variable"], r["method"]) for r in s["rows"]}
    assert methods == {(v, m) for v in ("d2m", "sp", "tcw", "u10", "v10")
                       for m in ("model", "bicubic", "cnn")}  # fmt: skip
    assert {p["method"] for p in s["physics"]} == {"model", "bicubic", "cnn"}  # u10/v10
    assert s["rfne_gain"] >= MIN_GAIN  # physical units too
    assert 1000 < s["cnn"]["params"] < 10000
    assert (tmp_path / "ev" / "superres_spectra.png").is_file()
    assert "cnn" in out.stdout and "bicubic" in out.stdout
