"""Series forecast scores, baselines, the CF timeSeries netCDF and the plots (issue 26).

References: sklearn's ``mean_pinball_loss`` (pinball / WQL, to 1e-12), scoringrules' fair
``crps_ensemble`` (full and per-window ragged ensembles, to 1e-12), hand-derived numbers written
here (WQL, MASE, climatology pools), and the netCDF file read back by netCDF4 as well as xarray.
"""

from __future__ import annotations

import csv

import netCDF4
import numpy as np
import pytest
import scoringrules
import xarray as xr
from sklearn.metrics import mean_pinball_loss

from scigpt.eval.realization import timeseries_forecast_dataset, write_realizations
from scigpt.eval.series_forecast import (
    LEVELS,
    baselines,
    compare_table,
    crps_ragged,
    forecast_windows,
    mase_scale,
    noleap_dayofyear,
    pinball,
    plot_fan,
    plot_scores_by_lead,
    score,
    verdict,
    wql,
    write_tables,
)

TOL = 1e-12


# ---- pinball / WQL ---------------------------------------------------------------------------
def test_pinball_and_wql_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.gamma(2.0, 3.0, size=40)
    lv = np.asarray(LEVELS)
    q = y[:, None] + rng.normal(size=(40, lv.size)) * 2 + (lv - 0.5) * 3  # (N, Q)
    loss = pinball(y, q, lv)
    for k, tau in enumerate(lv):
        assert loss[:, k].mean() == pytest.approx(mean_pinball_loss(y, q[:, k], alpha=tau), abs=TOL)
    ref = np.mean([2 * y.size * mean_pinball_loss(y, q[:, k], alpha=t) for k, t in enumerate(lv)])
    assert wql(y, q, lv) == pytest.approx(ref / np.abs(y).sum(), rel=TOL)
    # NaN truth is left out: the same as scoring the valid subset
    y_nan = y.copy()
    y_nan[[3, 17]] = np.nan
    keep = np.isfinite(y_nan)
    assert wql(y_nan, q, lv) == pytest.approx(wql(y[keep], q[keep], lv), rel=TOL)


def test_wql_hand_example() -> None:
    # y = 1: ρ_0.1(1, 0) = 0.1, ρ_0.9(1, 2) = 0.1; y = 3: ρ_0.1(3, 3) = 0, ρ_0.9(3, 5) = 0.2.
    # Σ|y| = 4 → WQL = mean(2·0.1/4, 2·0.3/4) = 0.1
    q = np.array([[0.0, 2.0], [3.0, 5.0]])
    np.testing.assert_allclose(pinball(np.array([1.0, 3.0]), q, (0.1, 0.9)),
                               [[0.1, 0.1], [0.0, 0.2]], atol=TOL)  # fmt: skip
    assert wql(np.array([1.0, 3.0]), q, (0.1, 0.9)) == pytest.approx(0.1, abs=TOL)
    with pytest.raises(ValueError, match="levels"):
        pinball(np.ones(2), q, (0.1, 1.0))


# ---- CRPS ------------------------------------------------------------------------------------
def test_crps_full_and_ragged_match_scoringrules() -> None:
    rng = np.random.default_rng(1)
    n, h, s = 6, 4, 9
    obs = rng.normal(size=(n, h))
    ens = obs[..., None] + rng.normal(size=(n, h, s))
    ctx = rng.normal(size=(n, 20)).cumsum(axis=1)
    ref = scoringrules.crps_ensemble(obs, ens, m_axis=-1, estimator="fair")
    np.testing.assert_allclose(crps_ragged(obs, ens), ref, atol=TOL)
    np.testing.assert_allclose(score(obs, context=ctx, samples=ens)["crps"], ref.mean(0), atol=TOL)
    # ragged: each window keeps 1..s members, the rest NaN padding in shuffled positions
    rag = ens.copy()
    counts = rng.integers(1, s + 1, size=(n, h))
    for i in range(n):
        for j in range(h):
            rag[i, j, rng.permutation(s)[: s - counts[i, j]]] = np.nan
    got = crps_ragged(obs, rag)
    for i in range(n):
        for j in range(h):
            members = rag[i, j][np.isfinite(rag[i, j])]
            if members.size < 2:  # the fair estimator needs two members
                assert np.isnan(got[i, j])
            else:
                want = scoringrules.crps_ensemble(obs[i, j], members, estimator="fair")
                assert got[i, j] == pytest.approx(float(want), abs=TOL)
    # a plain (biased) per-window call on the NaN-padded array would differ: the test can fail
    assert np.isnan(scoringrules.crps_ensemble(obs, rag, m_axis=-1, estimator="fair")).any()


# ---- MASE and score --------------------------------------------------------------------------
def test_mase_scale_hand_example() -> None:
    ctx = np.array([[1.0, 2.0, 4.0, 4.0], [1.0, np.nan, 4.0, 5.0], [3.0, 3.0, 3.0, 3.0]])
    # |Δ| = 1, 2, 0 → 1; only (4, 5) is a valid pair → 1; constant → 0 → NaN (left out)
    np.testing.assert_allclose(mase_scale(ctx), [1.0, 1.0, np.nan], equal_nan=True)
    # season 2: |4 − 1|, |4 − 2| → 2.5; (1, 4) → 3; constant → NaN
    np.testing.assert_allclose(mase_scale(ctx, season=2), [2.5, 3.0, np.nan], equal_nan=True)
    with pytest.raises(ValueError, match="season"):
        mase_scale(ctx, season=4)


def test_score_point_and_samples_hand_example() -> None:
    ctx = np.array([[1.0, 2.0, 4.0, 4.0], [3.0, 3.0, 3.0, 3.0], [0.0, 2.0, 4.0, 6.0]])
    obs = np.array([[3.0], [10.0], [np.nan]])
    s = score(obs, context=ctx, point=np.array([[5.0], [9.0], [1.0]]))
    # window 2 has scale NaN (left out of MASE), window 3 has no truth (left out of everything)
    assert s["mase"][0] == pytest.approx(2.0, abs=TOL)  # |5 − 3| / 1
    assert s["crps"][0] == pytest.approx(1.5, abs=TOL)  # mean(|5 − 3|, |9 − 10|)
    assert s["wql"][0] == pytest.approx(3.0 / 13.0, abs=TOL)  # Σ|err| / Σ|y| for a point
    assert s["n"][0] == 2 and s["kind"] == "point"
    # samples: the median (here 5 and 9) is the point forecast for MASE
    samp = np.array([[[4.0, 5.0, 7.0]], [[8.0, 9.0, 9.5]], [[0.0, 1.0, 2.0]]])
    t = score(obs, context=ctx, samples=samp)
    assert t["mase"][0] == pytest.approx(2.0, abs=TOL) and t["kind"] == "samples"
    with pytest.raises(ValueError, match="exactly one"):
        score(obs, context=ctx)


def test_score_aggregates_and_nse_kge() -> None:
    rng = np.random.default_rng(2)
    n, h = 30, 10
    obs = rng.gamma(3.0, 2.0, size=(n, h))
    point = obs + rng.normal(size=(n, h)) * 0.5
    s = score(obs, context=rng.normal(size=(n, 15)), point=point)
    assert s["mase_lead1"] == s["mase"][0]
    assert s["crps_lead7plus"] == pytest.approx(s["crps"][6:].mean(), abs=TOL)
    # NSE at lead 3, written out: 1 − Σ(sim − obs)² / Σ(obs − mean)²
    o, p = obs[:, 2], point[:, 2]
    want = 1 - np.sum((p - o) ** 2) / np.sum((o - o.mean()) ** 2)
    assert s["nse"][2] == pytest.approx(want, abs=TOL)
    assert np.all(s["kge"] < 1) and np.all(s["kge"] > 0.5)
    short = score(obs[:, :3], context=rng.normal(size=(n, 15)), point=point[:, :3])
    assert np.isnan(short["mase_lead7plus"])


# ---- baselines -------------------------------------------------------------------------------
def _days(start: str, end: str) -> np.ndarray:
    return np.arange(np.datetime64(start), np.datetime64(end) + 1).astype("datetime64[ns]")


def test_noleap_dayofyear() -> None:
    t = np.array(["2004-02-28", "2004-02-29", "2004-03-01", "2003-03-01", "2004-12-31"],
                 dtype="datetime64[D]")  # fmt: skip
    np.testing.assert_array_equal(noleap_dayofyear(t), [59, 59, 60, 60, 365])


def test_persistence_and_seasonal_naive_indices() -> None:
    t = _days("2001-01-01", "2003-12-31")
    v = np.arange(t.size, dtype=np.float64)  # value = index: every lookup is visible
    issue = np.array([10, 400, 700])
    b = baselines(v, t, issue, 5, train_end="2001-12-31")
    lead = np.arange(1, 6)
    np.testing.assert_array_equal(b["persistence"], np.repeat(issue[:, None], 5, axis=1))
    want = (issue[:, None] + lead - 365).astype(float)
    want[0] = np.nan  # 10 + l − 365 < 0: before the series
    np.testing.assert_array_equal(b["seasonal_naive"], want)
    # a lead past one season would read a day after the issue day: refused as NaN
    long = baselines(v, t, np.array([400]), 367, train_end="2001-12-31")["seasonal_naive"]
    assert long[0, 364] == 400 and np.isnan(long[0, 365:]).all()
    with pytest.raises(ValueError, match="daily"):
        baselines(v[::2], t[::2], issue // 2, 5, train_end="2001-12-31")


def test_climatology_training_only_circular_feb29() -> None:
    t = _days("2003-01-01", "2005-12-31")
    doy = noleap_dayofyear(t).astype(np.float64)
    train = t <= np.datetime64("2004-12-31")
    # training days carry their day of year; the forecast period 1000 + doy, so a leak shows
    v = np.where(train, doy, 1000.0 + doy)
    v[t == np.datetime64("2004-02-29")] = 59.5  # Feb 29 counts as day 59, and is visible
    v[t == np.datetime64("2003-03-05")] = np.nan  # missing training days: not members
    v[t == np.datetime64("2003-01-05")] = np.nan
    i0 = int(np.flatnonzero(t == np.datetime64("2005-01-01"))[0])
    i1 = int(np.flatnonzero(t == np.datetime64("2005-02-28"))[0])
    b = baselines(v, t, np.array([i0, i1]), 3, train_end="2004-12-31", clim_halfwidth=7)
    clim = b["climatology"]  # (2, 3, M)
    assert np.nanmax(clim) < 1000  # nothing from after train_end
    # 2005-01-03 (lead 2, day 3): days 361..365 and 1..10 of 2003 and 2004 (circular), minus
    # the missing 2003-01-05
    got = np.sort(clim[0, 1][np.isfinite(clim[0, 1])])
    want = sorted([*range(1, 11), *range(1, 11), *range(361, 366), *range(361, 366)])
    want.remove(5)
    np.testing.assert_array_equal(got, want)
    # 2005-03-01 (lead 1 from Feb 28, day 60): days 53..67 of both years, plus Feb 29 2004,
    # minus the missing 2003-03-05 (day 64)
    got = np.sort(clim[1, 0][np.isfinite(clim[1, 0])])
    want = sorted([*range(53, 68), *range(53, 68), 59.5])
    want.remove(64)
    np.testing.assert_array_equal(got, want)
    # padded to the largest pool (30 here); the 29-member pool ends in NaN
    assert clim.shape[2] == 30 and np.isnan(clim[0, 1, -1])
    # the point forecast is the nanmedian: 29 members, the 15th smallest is 8
    assert np.nanmedian(clim[0, 1]) == 8.0


# ---- end to end, verdict, tables -------------------------------------------------------------
def _pipeline() -> tuple[dict, dict]:
    rng = np.random.default_rng(3)
    t = _days("2000-01-01", "2005-12-31")
    season = 10 + 5 * np.sin(2 * np.pi * noleap_dayofyear(t) / 365)
    v = season + np.convolve(rng.normal(size=t.size), np.ones(5) / 2, "same")
    issue = np.arange(np.flatnonzero(t >= np.datetime64("2004-01-01"))[0], t.size - 15, 20)
    ctx, obs = forecast_windows(v, issue, 60, 10)
    base = baselines(v, t, issue, 10, train_end="2003-12-31")
    model = obs[..., None] + rng.normal(size=(*obs.shape, 50)) * 0.3  # a near-perfect model
    scores = {
        "model": score(obs, context=ctx, samples=model),
        "persistence": score(obs, context=ctx, point=base["persistence"]),
        "seasonal_naive": score(obs, context=ctx, point=base["seasonal_naive"]),
        "climatology": score(obs, context=ctx, samples=base["climatology"]),
    }
    return scores, {"obs": obs, "ctx": ctx, "issue": issue, "v": v}


def test_forecast_windows_and_pipeline_verdict() -> None:
    scores, d = _pipeline()
    np.testing.assert_array_equal(d["ctx"][:, -1], d["v"][d["issue"]])
    np.testing.assert_array_equal(d["obs"][:, 0], d["v"][d["issue"] + 1])
    v = verdict(scores, "model")
    assert v["all"] is True and v["mase_vs_persistence_lead1"]["beats"] is True
    # persistence vs itself: not strictly better, so the verdict is false
    same = verdict({**scores, "model": scores["persistence"]}, "model")
    assert same["mase_vs_persistence_lead1"]["beats"] is False and same["all"] is False
    # the climatology entries read the lead >= 7 means
    c = same["crps_vs_climatology_lead7plus"]
    assert c["baseline"] == scores["climatology"]["crps_lead7plus"]


def test_verdict_logic_by_hand() -> None:
    def agg(mase1, crps1, mase7, crps7):
        return {"mase_lead1": mase1, "crps_lead1": crps1, "mase_lead7plus": mase7,
                "crps_lead7plus": crps7}  # fmt: skip

    scores = {"m": agg(0.5, 1.0, 2.0, np.nan), "persistence": agg(0.6, 0.9, 9, 9),
              "climatology": agg(9, 9, 2.5, 3.0)}  # fmt: skip
    v = verdict(scores, "m")
    assert v["mase_vs_persistence_lead1"] == {"beats": True, "model": 0.5, "baseline": 0.6}
    assert v["crps_vs_persistence_lead1"]["beats"] is False  # 1.0 > 0.9
    assert v["mase_vs_climatology_lead7plus"]["beats"] is True
    assert v["crps_vs_climatology_lead7plus"]["beats"] is False  # NaN never beats
    assert v["all"] is False
    with pytest.raises(ValueError, match="climatology"):
        verdict({"m": scores["m"], "persistence": scores["persistence"]}, "m")


def test_compare_table_and_write(tmp_path) -> None:
    scores, _ = _pipeline()
    rows = compare_table("01013500", "discharge", scores)
    assert len(rows) == 4 * 10
    paths = write_tables(rows, tmp_path)
    with open(paths["csv"]) as f:
        back = list(csv.DictReader(f))
    assert len(back) == 40 and back[0]["forecaster"] == "model" and back[0]["lead"] == "1"
    assert float(back[0]["crps"]) == scores["model"]["crps"][0]  # full precision
    md = paths["md"].read_text()
    assert md.startswith("| station |") and "climatology" in md


# ---- netCDF ----------------------------------------------------------------------------------
def test_timeseries_netcdf_cf(tmp_path) -> None:
    rng = np.random.default_rng(4)
    s, p, h = 5, 3, 7
    lv = (0.1, 0.25, 0.5, 0.75, 0.9)
    samples = rng.gamma(2.0, size=(s, p, h))
    quant = np.sort(rng.gamma(2.0, size=(len(lv), p, h)), axis=0)
    attrs = {"q": {"units": "mm d-1", "long_name": "streamflow",
                   "standard_name": "water_volume_transport_in_river_channel"}}  # fmt: skip
    ids, lat, lon = ["01013500", "01022500", "x"], [47.2, 44.6, -3.0], [-68.6, -67.9, 10.5]
    day = 86_400 * 10**9
    ds = timeseries_forecast_dataset(
        ids, lat, lon, "2010-05-01", day, {"q": samples}, {"q": quant}, lv, attrs,
        elevation=[250.0, 30.0, 0.0],
    )  # fmt: skip
    path = write_realizations(ds, tmp_path / "series.nc")
    with netCDF4.Dataset(path) as nc:
        assert nc.getncattr("featureType") == "timeSeries"
        assert nc.getncattr("Conventions") == "CF-1.8"
        assert "coordinates" not in nc.ncattrs()  # no global list: every coord is named
        assert nc["station_id"].cf_role == "timeseries_id"
        assert list(nc["station_id"][:]) == ids
        for k in ("q", "q_mean", "q_spread", "q_quantile"):
            assert {"lat", "lon", "station_id"} <= set(nc[k].coordinates.split())
        assert nc["q"].dimensions == ("realization", "station", "time")
        assert nc["q_quantile"].dimensions == ("quantile", "station", "time")
        assert nc["lat"].standard_name == "latitude" and nc["lat"].units == "degrees_north"
        assert nc["lon"].standard_name == "longitude" and nc["lon"].units == "degrees_east"
        np.testing.assert_array_equal(nc["quantile"][:], lv)
        assert nc["realization"].standard_name == "realization"
        assert nc["time"].standard_name == "time"
        assert nc["forecast_reference_time"].standard_name == "forecast_reference_time"
    r = xr.open_dataset(path)
    try:
        assert r.sizes["realization"] == s and r.sizes["station"] == p
        np.testing.assert_array_equal(r["q"].values, samples)
        np.testing.assert_array_equal(r["q_quantile"].values, quant)
        np.testing.assert_allclose(r["q_mean"].values, samples.mean(0), rtol=1e-14)
        np.testing.assert_allclose(r["lat"].values, lat)
        np.testing.assert_allclose(r["alt"].values, [250.0, 30.0, 0.0])
        np.testing.assert_array_equal(r["quantile"].values, lv)
        assert r["q"].attrs["standard_name"] == attrs["q"]["standard_name"]
        want_t = np.datetime64("2010-05-01", "ns") + np.arange(1, h + 1) * np.timedelta64(1, "D")
        np.testing.assert_array_equal(r["time"].values, want_t)
        np.testing.assert_array_equal(
            r["leadtime"].values, np.arange(1, h + 1) * np.timedelta64(1, "D")
        )
        assert r["forecast_reference_time"].values == np.datetime64("2010-05-01", "ns")
    finally:
        r.close()
    # a quantile head writes no realization dimension
    only_q = timeseries_forecast_dataset(ids, lat, lon, "2010-05-01", 86_400 * 10**9, {},
                                         {"q": quant}, lv, attrs)  # fmt: skip
    with netCDF4.Dataset(write_realizations(only_q, tmp_path / "q.nc")) as nc:
        assert "realization" not in nc.dimensions and "q_quantile" in nc.variables
    with pytest.raises(ValueError, match="units"):
        timeseries_forecast_dataset(ids, lat, lon, "2010-05-01", 1, {}, {"q": quant}, lv, {"q": {}})


# ---- plots -----------------------------------------------------------------------------------
def test_plots_write_png(tmp_path) -> None:
    scores, d = _pipeline()
    t = _days("2005-01-01", "2005-01-10")
    ct = _days("2004-11-02", "2004-12-31")
    lv = np.asarray(LEVELS)
    q = np.quantile(d["obs"][0][None, :] + np.random.default_rng(5).normal(size=(50, 10)), lv, 0)
    fan = plot_fan(t, d["obs"][0], ct, d["ctx"][0], q, lv, tmp_path / "fan.png", "station x")
    lead = plot_scores_by_lead(scores, "crps", tmp_path / "crps.png")
    for p in (fan, lead):
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="metric"):
        plot_scores_by_lead(scores, "rmse", tmp_path / "x.png")
