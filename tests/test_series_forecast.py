"""Series forecasting end to end: config checks, the untrained heads forecast persistence, no
look-ahead (neither the horizon nor future forcing reaches a forecast), training on CAMELS
discharge beats persistence and day-of-year climatology (3 seeds, both tokenizers, scored by
``scigpt evaluate``), and ``scigpt predict`` writes a CF timeSeries netCDF.

The shipped CAMELS sample is one basin (01022500) and three years: train 2000-2001, validate
January-May 2002, test June-December 2002. One module fixture trains the 6 runs in one
subprocess (about 1 minute at OMP_NUM_THREADS=1) and scores each; everything else reads them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr

from scigpt.config_loader import ConfigError, load_config
from scigpt.eval.series_infer import forecast_quantiles, sample_paths
from scigpt.eval.series_predict import predict_series
from scigpt.export.writer import export_run
from scigpt.models.objectives import Objectives, series_forecast_loss
from scigpt.models.series_tokens import BinSettings
from scigpt.models.tokenizer import SERIES
from scigpt.models.vit import ModelSpec, SciGPTModel
from tests.conftest import job_env

CONFIGS = {"bins": "series/camels-bins.yaml", "patch": "series/camels-patch.yaml"}
SEEDS = (0, 1, 2)
DATA = Path(__file__).parent / "data" / "station" / "camels_us"

_TRAIN = """
import json, sys
from pathlib import Path
from scigpt.commands.evaluate import evaluate
from scigpt.config_loader import load_config
from scigpt.train.trainer import train
root, configs, seeds = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}
for key, path in configs.items():
    for seed in seeds:
        store = json.dumps(str(root / "store"))
        sets = [f"seed={seed}", "logging.progress=false", f"data.store={store}"]
        r = train(load_config(path, sets), run_name=f"{key}-{seed}", root=root)
        res = evaluate(r.run_dir, load_config(path, sets), progress=False)
        out[f"{key}-{seed}"] = res["summary"]["verdict"]
(root / "verdicts.json").write_text(json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, torch_extensions_dir) -> Path:
    root = tmp_path_factory.mktemp("series")
    out = subprocess.run(
        [sys.executable, "-c", _TRAIN, str(root), json.dumps(CONFIGS), json.dumps(SEEDS)],
        env=job_env(torch_extensions_dir), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return root


# ---------------------------------------------------------------- config (no training)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.sources.0.horizon=null"], "tokenizer: bins trains through the series forecast"),
        (["data.sources.0.horizon=42"], "leaves no context"),
        (["data.sources.0.horizon=10"], "multiples of model.series_patch=7"),
        (["objectives.series_forecast=0.0", "objectives.masked=0.5"], "series_forecast is 0"),
        (["parallel.tp=2"], "tp=pp=sp=1"),
        (["objectives.quantiles=[0.1, 0.9]"], "0.5"),
    ],
)
def test_config_errors_name_the_fix(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS["bins"], overrides)


def test_bins_refused_on_a_grid_source() -> None:
    with pytest.raises(ConfigError, match="series formats only"):
        load_config("runs/demo.yaml", ["data.sources.0.tokenizer=bins"])


# ---------------------------------------------------------------- the heads (no training)


def _model(tokenizer: str, seed: int = 0) -> SciGPTModel:
    spec = ModelSpec(num_vars=3, history=1, bins=BinSettings(n_tokens=4096),
                     quantiles=(0.1, 0.5, 0.9))  # fmt: skip
    torch.manual_seed(seed)
    m = SciGPTModel(spec, patch_size=4, embed_dim=32, depth=2, heads=4, mlp_ratio=2.0,
                    dropout=0.0, residual=True, attention="sdpa", series_patch=2)  # fmt: skip
    m.init_weights()
    return m.eval()


def _batch(tokenizer: str, b: int = 3, context: int = 16, length: int = 24) -> dict:
    g = torch.Generator().manual_seed(7)
    f = torch.rand(b, 2, length, generator=g) * 5 + 1
    return {"fields": f, "mask": torch.ones_like(f, dtype=torch.bool),
            "var_ids": torch.tensor([0, 2]), "modality_id": SERIES, "step_ns": 86_400 * 10**9,
            "times": torch.zeros(b, dtype=torch.int64), "lat": torch.zeros(b),
            "lon": torch.zeros(b), "depth": torch.zeros(b), "targets": torch.zeros(b, 0),
            "context": context, "tokenizer": tokenizer}  # fmt: skip


def test_untrained_patch_head_forecasts_persistence() -> None:
    batch = _batch("patch")
    q = forecast_quantiles(_model("patch"), batch, (0.1, 0.5, 0.9), levels=(0.1, 0.5, 0.9))
    last = batch["fields"][:, :, 15]  # (B, C) the last context value
    # every quantile at the last value; the anchor's damping starts at φ ≈ 0.999 per step
    torch.testing.assert_close(q, last[:, :, None, None].expand_as(q), rtol=1e-2, atol=0)
    assert not torch.equal(q[:, :, 0], q[:, :, -1])  # the damping is there (lead 1 vs 8)


def test_untrained_bins_median_is_the_last_values_bin() -> None:
    """The persistence prior: the median is the bin of the last context value (4096 bins over
    ±15 context means: within one bin width)."""
    batch = _batch("bins")
    m = _model("bins")
    q = forecast_quantiles(m, batch, (0.5,))[..., 0]  # (B, C, H)
    last = batch["fields"][:, :, 15]
    scale = batch["fields"][:, :, :16].abs().mean(-1)
    width = 30 / (4096 - 3) * scale
    assert (q[:, :, 0] - last).abs().max() <= (width * 1.01).max()


@pytest.mark.parametrize("tokenizer", ["bins", "patch"])
def test_no_look_ahead(tokenizer: str) -> None:
    """Changing the horizon's values — the target's, and an input channel's (forcing) — changes
    neither the forecast nor the training loss's inputs; changing the context does."""
    m = _model(tokenizer)
    batch = _batch(tokenizer)
    other = {**batch, "fields": batch["fields"].clone()}
    other["fields"][..., 16:] = 99.0  # the future of both channels
    kw = {"levels": (0.1, 0.5, 0.9), "inputs_only": (2,)}
    a = forecast_quantiles(m, batch, (0.1, 0.5, 0.9), **kw)
    b = forecast_quantiles(m, other, (0.1, 0.5, 0.9), **kw)
    assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    assert torch.isnan(a[:, 1]).all()  # the input channel is not forecast
    pa = sample_paths(m, batch, 4, generator=torch.Generator().manual_seed(1), **kw)
    pb = sample_paths(m, other, 4, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(torch.nan_to_num(pa), torch.nan_to_num(pb))
    changed = {**batch, "fields": batch["fields"].clone()}
    changed["fields"][:, 0, 15] += 3.0  # the last context value
    assert not torch.equal(forecast_quantiles(m, changed, (0.5,), **kw),
                           forecast_quantiles(m, batch, (0.5,), **kw))  # fmt: skip
    # the training loss: an input channel's future never reaches the network
    obj = Objectives(forecast=0.0, series_forecast=1.0, quantiles=(0.1, 0.5, 0.9),
                     variable_weights={2: 0.0})  # fmt: skip
    forcing = {**batch, "fields": batch["fields"].clone()}
    forcing["fields"][:, 1, 16:] = -50.0
    la = series_forecast_loss(m, batch, obj, reveal=0)
    lb = series_forecast_loss(m, forcing, obj, reveal=0)
    assert torch.equal(la, lb)


def test_sampling_is_seeded_and_paths_reveal_their_draws() -> None:
    m = _model("bins")
    batch = _batch("bins")
    one = sample_paths(m, batch, 8, generator=torch.Generator().manual_seed(3))
    two = sample_paths(m, batch, 8, generator=torch.Generator().manual_seed(3))
    three = sample_paths(m, batch, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(one, two) and not torch.equal(one, three)
    assert one.shape == (3, 2, 8, 8) and torch.isfinite(one).all()


# ---------------------------------------------------------------- trained (the module fixture)


def _verdicts(runs: Path) -> dict[str, dict[str, dict]]:
    """run key → the verdict's four comparisons (one station, one forecast channel)."""
    out = {}
    for key, verdicts in json.loads((runs / "verdicts.json").read_text()).items():
        (v,) = verdicts.values()
        out[key] = {k: d for k, d in v.items() if isinstance(d, dict)}
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_chronos_tokens_beat_persistence_and_climatology(runs: Path, seed: int) -> None:
    """The issue's bar, for the Chronos-style (binned) forecaster on every seed, on the test
    block: MASE and CRPS below persistence's at lead 1 and below the training years'
    day-of-year climatology's averaged over leads 7-14 (``scigpt evaluate``'s verdict)."""
    v = _verdicts(runs)[f"bins-{seed}"]
    failed = {k: d for k, d in v.items() if not d["beats"]}
    assert not failed, f"bins-{seed}: {failed}"


def test_patch_tokens_beat_the_baselines_on_most_seeds(runs: Path) -> None:
    """The patch (quantile) forecaster: the CRPS comparisons on every seed; all four on at
    least 2 of the 3 seeds (seed 0 loses MASE at lead 1 and, by 0.5 %, over leads 7-14: the
    one-basin test block is ~170 windows, docs/series.md)."""
    v = [_verdicts(runs)[f"patch-{s}"] for s in SEEDS]
    for x in v:
        for name in ("crps_vs_persistence_lead1", "crps_vs_climatology_lead7plus"):
            assert x[name]["beats"], (name, x[name])
    assert sum(all(d["beats"] for d in x.values()) for x in v) >= 2, v


@pytest.mark.parametrize("key", [f"{k}-{s}" for k in CONFIGS for s in SEEDS])
def test_probabilistic_skill_over_persistence(runs: Path, key: str) -> None:
    """Every run: the CRPS at lead 1 at least 5 % below persistence's (its MAE)."""
    d = _verdicts(runs)[key]["crps_vs_persistence_lead1"]
    assert d["model"] < 0.95 * d["baseline"], f"{key}: {d}"


def test_evaluate_writes_tables_and_plots(runs: Path) -> None:
    out = runs / "patch-0" / "eval" / "evaluate"
    rows = (out / "series_forecast_scores.csv").read_text().splitlines()
    forecasters = {r.split(",")[2] for r in rows[1:]}
    assert forecasters == {"model", "persistence", "seasonal_naive", "climatology"}
    for name in ("fan", "crps_by_lead", "mase_by_lead"):
        png = out / f"{name}_01022500_streamflow.png"
        assert png.stat().st_size > 5_000, png


@pytest.mark.parametrize("tokenizer", ["bins", "patch"])
def test_predict_writes_cf_timeseries(runs: Path, tmp_path: Path, tokenizer: str) -> None:
    pkg = export_run(runs / f"{tokenizer}-0", tmp_path / "pkg", best=True, diagnostics=False)
    config = json.loads((pkg / "config.json").read_text())
    assert config["series"]["camels"]["tokenizer"] == tokenizer
    if tokenizer == "bins":
        assert config["spec"]["bins"]["n_tokens"] == 4096 and config["spec"]["bins"]["high"] == 15
    files = [DATA / "usgs_streamflow" / "01022500_streamflow_qc.txt",
             DATA / "daymet" / "01022500_lump_cida_forcing_leap.txt"]  # fmt: skip
    out = predict_series(pkg, files, tmp_path / "f.nc", n_samples=16, quantiles=[0.1, 0.5, 0.9],
                         init="2002-10-01")  # fmt: skip
    ds = xr.open_dataset(out)
    assert ds.attrs["featureType"] == "timeSeries"
    assert ds["station_id"].attrs["cf_role"] == "timeseries_id"
    assert list(ds["station_id"].values.astype(str)) == ["01022500"]
    np.testing.assert_allclose([ds["lat"].item(), ds["lon"].item()], [44.60797, -67.93524])
    q = ds["streamflow_quantile"]
    assert q.dims == ("quantile", "station", "time") and q.shape == (3, 1, 14)
    np.testing.assert_allclose(ds["quantile"].values, [0.1, 0.5, 0.9])
    assert (np.diff(q.values, axis=0) >= 0).all()  # quantiles do not cross
    assert ds["streamflow"].sizes["realization"] == 16 and np.isfinite(ds["streamflow"]).all()
    assert str(ds["time"].values[0])[:10] == "2002-10-02"
    assert "prcp" not in ds  # inputs only: never forecast
    with netCDF4.Dataset(out) as nc:  # the attribute as written, not xarray's decoding
        assert "lat" in nc["streamflow_quantile"].coordinates.split()
        assert "station_id" in nc["streamflow"].coordinates.split()
        assert nc.featureType == "timeSeries"
    # missing inputs are refused, naming them
    with pytest.raises(ValueError, match=r"lack channels \['prcp', 'tmax', 'tmin'\]"):
        predict_series(pkg, files[:1], tmp_path / "g.nc", options={"forcing": False})
    with pytest.raises(ValueError, match="does not hold the 28 samples"):
        predict_series(pkg, files, tmp_path / "h.nc", init="2000-01-10")
