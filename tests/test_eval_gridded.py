"""WeatherBench-2 scores against hand computations, climatologies against xarray, rollouts
against calling the model by hand, and `scigpt evaluate` end to end (tables, plots, card)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

from scigpt.eval.gridded import (
    Climatology,
    ClimatologyError,
    acc,
    bias,
    evaluate_rollouts,
    rmse,
    rmse_sqrt_then_mean,
)
from tests.conftest import job_env

# --- scores by hand ---------------------------------------------------------------------------

# two forecasts (N), one variable, a 2×1 grid with row weights 1.5 and 0.5
W = np.array([1.5, 0.5])
PRED = np.array([[[[1.0], [2.0]]], [[[0.0], [4.0]]]])  # (2, 1, 2, 1)
TRUTH = np.array([[[[0.0], [2.0]]], [[[3.0], [0.0]]]])


def test_rmse_is_mean_then_sqrt_and_differs_from_sqrt_then_mean():
    # squared errors: t0 (1, 0), t1 (9, 16); weighted: t0 1.5·1 + 0.5·0 = 1.5 over 2,
    # t1 1.5·9 + 0.5·16 = 21.5 over 2
    wb2 = math.sqrt((1.5 + 21.5) / 4)
    other = (math.sqrt(1.5 / 2) + math.sqrt(21.5 / 2)) / 2
    assert rmse(PRED, TRUTH, W)[0] == pytest.approx(wb2, rel=1e-15)
    assert rmse_sqrt_then_mean(PRED, TRUTH, W)[0] == pytest.approx(other, rel=1e-15)
    assert abs(wb2 - other) > 0.1  # 2.3979 vs 2.0724: the convention matters


def test_bias_and_missing_truth():
    # errors t0 (1, 0), t1 (-3, 4): Σw e = 1.5 + 0 - 4.5 + 2 = -1, Σw = 4
    assert bias(PRED, TRUTH, W)[0] == pytest.approx(-0.25, rel=1e-15)
    truth = TRUTH.copy()
    truth[1, 0, 1, 0] = np.nan  # a missing truth value leaves the sums
    assert rmse(PRED, truth, W)[0] == pytest.approx(math.sqrt((1.5 + 13.5) / 3.5), rel=1e-15)


def _acc_by_hand(f, o, c, w):
    vals = []
    for t in range(f.shape[0]):
        fa = [f[t, 0, i, 0] - c[t, 0, i, 0] for i in range(2)]
        oa = [o[t, 0, i, 0] - c[t, 0, i, 0] for i in range(2)]
        num = sum(w[i] * fa[i] * oa[i] for i in range(2))
        den = math.sqrt(sum(w[i] * fa[i] ** 2 for i in range(2)) *
                        sum(w[i] * oa[i] ** 2 for i in range(2)))  # fmt: skip
        vals.append(num / den)
    return sum(vals) / len(vals)


def test_acc_cases():
    clim = np.array([[[[0.5], [1.0]]], [[[1.0], [1.0]]]])
    assert acc(PRED, TRUTH, clim, W)[0] == pytest.approx(_acc_by_hand(PRED, TRUTH, clim, W),
                                                         rel=1e-14)  # fmt: skip
    assert acc(TRUTH, TRUTH, clim, W)[0] == pytest.approx(1.0, rel=1e-14)  # perfect
    mirror = 2 * clim - TRUTH  # anomalies of the opposite sign
    assert acc(mirror, TRUTH, clim, W)[0] == pytest.approx(-1.0, rel=1e-14)
    # a forecast equal to the climatology has no anomaly: undefined, left out of the mean
    f = PRED.copy()
    f[0] = clim[0]
    want = _acc_by_hand(PRED[1:], TRUTH[1:], clim[1:], W)
    assert acc(f, TRUTH, clim, W)[0] == pytest.approx(want, rel=1e-14)


# --- climatology ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clim_store(tmp_path_factory):
    """Three years of 6-hourly 2-m temperature on a 3×4 grid, ingested into a store."""
    from scigpt.data_pipeline.prepare import SourceSpec, prepare_store
    from scigpt.data_pipeline.store import GridStore

    root = tmp_path_factory.mktemp("clim")
    six = np.timedelta64(6, "h")
    times = np.concatenate([
        np.arange(np.datetime64(f"{y}-01-01T00"), np.datetime64(f"{y}-01-03T00"), six)
        for y in (2018, 2019, 2020)
    ])  # fmt: skip
    rng = np.random.default_rng(0)
    values = 270 + rng.normal(size=(len(times), 3, 4)).astype(np.float32)
    values[5, 1, 2] = np.nan
    ds = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values, {"units": "K"})},
        coords={"time": times, "latitude": [50.0, 49.0, 48.0], "longitude": [0.0, 1, 2, 3]},
    )
    ds.to_netcdf(root / "t2m.nc")
    prepare_store([SourceSpec("t", "netcdf", [root / "t2m.nc"])], root / "store", progress=False)
    return GridStore(root / "store", source="t"), root / "t2m.nc"


def test_climatology_by_dayofyear_and_hour_matches_xarray(clim_store, tmp_path):
    store, nc = clim_store
    t0, t1 = np.datetime64("2018-01-01T00", "ns"), np.datetime64("2020-12-31T00", "ns")
    clim = Climatology.from_store(store, (t0, t1), ["t2m"])
    raw = xr.open_dataset(nc)["t2m"].load()
    for d in (1, 2):
        for h in (0, 6, 12, 18):
            sel = raw.where((raw.time.dt.dayofyear == d) & (raw.time.dt.hour == h), drop=True)
            want = sel.mean("time", skipna=True).values.astype(np.float64)
            got = clim.ds["t2m"].sel(dayofyear=d, hour=h).values
            np.testing.assert_allclose(got, want, rtol=1e-6)  # float32 storage
    # saved and supplied again: the same lookup
    path = clim.save(tmp_path / "clim.nc")
    again = Climatology.open(path)
    times = np.array(["2021-01-02T06", "2021-01-01T18"], dtype="datetime64[ns]")
    a = clim.lookup(times, ["t2m"], store.lat, store.lon)
    np.testing.assert_array_equal(a, again.lookup(times, ["t2m"], store.lat, store.lon))
    assert a.shape == (2, 1, 3, 4)


def test_acc_against_a_computed_climatology(clim_store):
    """ACC of 2020 'forecasts' against the 2018-2019 climatology, by hand per forecast."""
    store, _ = clim_store
    clim = Climatology.from_store(
        store, (np.datetime64("2018-01-01T00", "ns"), np.datetime64("2019-12-31T00", "ns"))
    )
    idx = np.flatnonzero(store.time >= np.datetime64("2020-01-01T00"))
    truth = store.read(int(idx[0]), int(idx[-1]) + 1).astype(np.float64)  # (8, 1, 3, 4)
    rng = np.random.default_rng(1)
    pred = truth + rng.normal(scale=0.7, size=truth.shape)
    c = clim.lookup(store.time[idx], ["t2m"], store.lat, store.lon)
    w = np.cos(np.deg2rad(store.lat.astype(np.float64)))
    w = w / w.mean()
    per = []
    for t in range(len(idx)):
        ok = np.isfinite(truth[t, 0])
        ww = np.broadcast_to(w[:, None], ok.shape)[ok]
        fa, oa = (pred[t, 0] - c[t, 0])[ok], (truth[t, 0] - c[t, 0])[ok]
        per.append((ww * fa * oa).sum() / np.sqrt((ww * fa**2).sum() * (ww * oa**2).sum()))
    assert acc(pred, truth, c, w)[0] == pytest.approx(np.mean(per), rel=1e-12)
    assert 0.2 < np.mean(per) < 1.0  # a noisy but related forecast


def test_climatology_refuses_uncovered_times_variables_and_grids(clim_store, tmp_path):
    store, _ = clim_store
    clim = Climatology.from_store(
        store, (np.datetime64("2018-01-01T00", "ns"), np.datetime64("2018-01-01T12", "ns"))
    )  # day 1, hours 0/6/12 only
    with pytest.raises(ClimatologyError, match=r"does not cover 2 .*day 1 hour 18.*day 2 hour"):
        clim.lookup(np.array(["2020-01-01T18", "2020-01-02T00"], dtype="datetime64[ns]"), ["t2m"])
    with pytest.raises(ClimatologyError, match="has no"):
        clim.lookup(np.array(["2020-01-01T00"], dtype="datetime64[ns]"), ["u10"])
    with pytest.raises(ClimatologyError, match="another grid"):
        clim.lookup(np.array(["2020-01-01T00"], dtype="datetime64[ns]"), ["t2m"],
                    store.lat + 1, store.lon)  # fmt: skip
    xr.Dataset({"t2m": (("time",), [1.0])}).to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(ClimatologyError, match="dayofyear and hour"):
        Climatology.open(tmp_path / "bad.nc")


# --- rollouts and the command -----------------------------------------------------------------


def test_rollout_equals_calling_the_model_by_hand(demo_package, sample_era5_dir, tmp_path):
    from scigpt import load_pretrained
    from scigpt.data_pipeline.prepare import SourceSpec, prepare_store
    from scigpt.data_pipeline.store import GridStore

    pm = load_pretrained(demo_package)
    paths = sorted(sample_era5_dir.glob("*.nc"))
    prepare_store([SourceSpec("era5", "netcdf", paths, options={"variables": pm.var_names},
                              unit="all")], tmp_path / "store", progress=False)  # fmt: skip
    store = GridStore(tmp_path / "store", source="era5")
    rng = (np.datetime64("2020-01-01T18", "ns"), np.datetime64("2020-01-01T23", "ns"))
    res = evaluate_rollouts(pm, store, rng, horizon=3)
    assert res["leads"] == [1, 2, 3] and res["n_forecasts"] == 3  # anchors 18, 19, 20 h
    names = res["variables"]
    # by hand: anchor 18 h, frames 17..21 h, three model calls feeding forecasts back
    i18 = int(np.flatnonzero(store.time == np.datetime64("2020-01-01T18"))[0])
    frames = store.read(i18 - 1, i18 + 4)  # (5, V, H, W) physical
    x = pm.normalise(torch.from_numpy(frames[:2].transpose(1, 0, 2, 3))[None], names)
    errs = []
    for k in range(3):
        t = np.array([np.datetime64("2020-01-01T18", "ns") + np.timedelta64(k, "h")])
        with torch.no_grad():
            y = pm.model(pm.batch(x, names, store.lat, store.lon, t))
        f = pm.denormalise(y, names).double().numpy()
        errs.append(f - frames[2 + k][None])
        x = torch.cat([x[:, :, 1:], y[:, :, None]], dim=2)
    # the first forecast's error enters the lead-k RMSE: compare one anchor's own RMSE
    one = evaluate_rollouts(pm, store, (rng[0], np.datetime64("2020-01-01T21", "ns")), horizon=3)
    w = torch.cos(torch.deg2rad(torch.as_tensor(store.lat, dtype=torch.float64)))
    w = (w / w.mean()).numpy()[None, None, :, None]
    for k, lead in enumerate(one["leads"]):
        want = np.sqrt((w * errs[k] ** 2).sum(axis=(0, 2, 3)) / (w.sum() * errs[k].shape[-1]))
        got = [r["rmse"] for r in one["rows"] if r["lead_steps"] == lead]
        np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.slow
def test_evaluate_command_writes_tables_plots_and_the_card(
    demo_package, tmp_path, torch_extensions_dir
):
    from scigpt import load_pretrained

    pkg = tmp_path / "pkg"
    shutil.copytree(demo_package, pkg)
    cmd = [sys.executable, "-m", "scigpt", "evaluate", str(pkg), "runs/demo.yaml",
           "--set", "eval.horizon=2"]  # fmt: skip
    env = job_env(torch_extensions_dir)
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    # the training split (00-19 h) has no climatology for the test split's later hours
    assert refused.returncode == 2 and "does not cover" in refused.stderr, refused.stderr[-2000:]
    # supply one covering every hour: the day's mean field (a file in the WB2 layout)
    from scigpt.data_pipeline.store import GridStore

    store = GridStore(pkg.parent / "pkg-eval" / "store", source="era5-rhine")
    mean = np.nanmean(store.read(0, len(store)), axis=0)  # (V, H, W)
    dims = ("dayofyear", "hour", "latitude", "longitude")
    xr.Dataset(
        {n: (dims, np.broadcast_to(mean[i], (1, 24, *mean.shape[1:]))) for i, n in
         enumerate(store.names)},
        coords={"dayofyear": [1], "hour": np.arange(24), "latitude": store.lat,
                "longitude": store.lon},
    ).to_netcdf(clim := tmp_path / "clim.nc")  # fmt: skip
    ok = subprocess.run([*cmd, "--set", f"eval.climatology={clim}"], env=env,
                        capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    out = pkg.parent / "pkg-eval"
    for name in ("metrics.csv", "metrics.md", "skill_vs_lead.png", "error_map_d2m.png",
                 "eval.json"):  # fmt: skip
        assert (out / name).is_file(), name
    data = json.loads((out / "eval.json").read_text())
    rows = data["gridded"]
    assert {r["lead_steps"] for r in rows} == {1, 2} and len(rows) == 2 * 14
    assert all(np.isfinite(r["acc"]) and -1 <= r["acc"] <= 1 for r in rows)
    card = (pkg / "MODEL_CARD.md").read_text()
    assert "WeatherBench-2 scores" in card and "| d2m | K | 1 |" in card
    load_pretrained(pkg)  # checksums were updated with the card
