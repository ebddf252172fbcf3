"""``scigpt.eval.predict``: forecasts from input files to CF-1.8 netCDF, checked against
forecasts computed directly from xarray-read inputs with the package's own model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from scigpt.eval.predict import parse_lead, predict
from scigpt.export.package import PackageError, load_pretrained

HOUR = 3600 * 10**9
INIT = np.datetime64("2020-01-01T12:00", "ns")


@pytest.fixture(scope="module")
def pkg_dir(demo_package) -> Path:
    """A real package: the session's 6-step demo run exported with ``scigpt export``."""
    return demo_package


@pytest.fixture(scope="module")
def pm(pkg_dir):
    return load_pretrained(pkg_dir)


@pytest.fixture(scope="module")
def inputs(sample_era5_dir) -> list[Path]:
    return sorted(sample_era5_dir.glob("*.nc"))


def _xarray_fields(inputs: list[Path], variables: list[dict], end: np.datetime64, hist: int):
    """(V, hist, H, W) float32 physical fields of ``variables`` read with plain xarray (packed
    int16 decoded by xarray), frames ending at ``end``; lat, lon of the first file."""
    times = end - np.arange(hist - 1, -1, -1) * np.timedelta64(HOUR, "ns")
    out = []
    for var in variables:
        stem = var["name"] if var["level"] is None else var["name"][: -len(f"{var['level']:g}")]
        path = next(p for p in inputs if p.stem.split("_")[-1] == stem)  # ERA5_<date>_[pl_]<v>
        with xr.open_dataset(path) as ds:
            da = ds[stem]
            # the files carry the canonical unit spellings: no conversion on the reader's side
            assert da.attrs["units"] == var["units"], (var["name"], da.attrs["units"])
            if var["level"] is not None:
                da = da.sel(level=int(var["level"]))
            da = da.sel(time=times).transpose("time", "latitude", "longitude")
            out.append(np.asarray(da.values, dtype=np.float64).astype(np.float32))
    with xr.open_dataset(inputs[0]) as ds:
        lat, lon = ds.latitude.values.copy(), ds.longitude.values.copy()
    return np.stack(out), lat, lon


def _assert_close(got: np.ndarray, ref: np.ndarray, variables: list[dict]) -> None:
    for v, var in enumerate(variables):
        np.testing.assert_allclose(
            got[v], ref[v], rtol=1e-5, atol=1e-6 * var["std"], err_msg=var["name"]
        )


# ---- leads ----------------------------------------------------------------------------------
def test_parse_lead_formats_and_errors():
    assert parse_lead("6h", HOUR) == 6
    assert parse_lead("90min", 30 * 60 * 10**9) == 3
    assert parse_lead("2d", HOUR) == 48
    assert parse_lead("PT6H", HOUR) == 6
    assert parse_lead("P1DT6H", HOUR) == 30
    assert parse_lead("pt30m", 30 * 60 * 10**9) == 1
    assert parse_lead("3", HOUR) == 3  # bare integer: time steps
    assert parse_lead("12h", HOUR, model_lead=6) == 12
    with pytest.raises(ValueError, match=r"6h, 12h, 18h"):
        parse_lead("3h", HOUR, model_lead=6)
    with pytest.raises(ValueError, match=r"step counts 6, 12, 18"):
        parse_lead("4", HOUR, model_lead=6)
    with pytest.raises(ValueError, match="whole number of time steps"):
        parse_lead("90min", HOUR)
    with pytest.raises(ValueError, match="unknown unit"):
        parse_lead("5 parsecs", HOUR)
    with pytest.raises(ValueError, match="positive"):
        parse_lead("0", HOUR)
    with pytest.raises(ValueError, match="no fixed length"):
        parse_lead("P1M", HOUR)
    with pytest.raises(ValueError, match="not a duration"):
        parse_lead("soon", HOUR)


# ---- output ---------------------------------------------------------------------------------
def test_netcdf_is_cf_and_matches_package_forecast(pkg_dir, pm, inputs, tmp_path):
    out = predict(pkg_dir, inputs, tmp_path / "fc.nc", leads=["PT2H", "1h", "60min"],
                  init="2020-01-01T12:00")  # fmt: skip
    assert out == tmp_path / "fc.nc"
    assert [p.name for p in tmp_path.iterdir()] == ["fc.nc"]  # no temp file left behind
    variables = json.loads((pkg_dir / "variables.json").read_text())["variables"]
    with xr.open_dataset(out) as ds, xr.open_dataset(inputs[0]) as src:
        # coordinates: the input's grid (its latitude order), the init, the leads
        np.testing.assert_array_equal(ds.latitude.values, src.latitude.values)
        np.testing.assert_array_equal(ds.longitude.values, src.longitude.values)
        assert ds.latitude.attrs["units"] == "degrees_north" and ds.latitude.attrs["axis"] == "Y"
        assert ds.longitude.attrs["units"] == "degrees_east" and ds.longitude.attrs["axis"] == "X"
        assert ds.time.values.tolist() == [INIT.astype(int)]
        leads = np.array([1, 2], dtype="timedelta64[h]").astype("timedelta64[ns]")
        np.testing.assert_array_equal(ds.prediction_timedelta.values, leads)
        assert ds.prediction_timedelta.attrs["standard_name"] == "forecast_period"
        assert ds.prediction_timedelta.encoding["units"] == "hours"
        np.testing.assert_array_equal(ds.valid_time.values, (INIT + leads)[None])
        assert ds.valid_time.dims == ("time", "prediction_timedelta")
        assert ds.valid_time.attrs["standard_name"] == "time"
        # variables: the package's, with its units and long names
        assert list(ds.data_vars) == [v["name"] for v in variables]
        for var in variables:
            da = ds[var["name"]]
            assert da.dims == ("time", "prediction_timedelta", "latitude", "longitude")
            assert da.dtype == np.float32
            assert da.attrs["units"] == var["units"]
            assert da.attrs["long_name"] == var["long_name"]
        assert ds.u10.attrs["standard_name"] == "eastward_wind"
        assert ds.v850.attrs["standard_name"] == "northward_wind"
        assert ds.q500.attrs["standard_name"] == "specific_humidity"
        assert ds.sp.attrs["standard_name"] == "surface_air_pressure"
        assert ds.q850.attrs["level_hPa"] == 850.0
        # global attributes: CF and provenance
        assert ds.attrs["Conventions"] == "CF-1.8"
        assert ds.attrs["institution"] == "SciGPT"
        for key in ("title", "source", "history", "references"):
            assert ds.attrs[key]
        prov = json.loads((pkg_dir / "provenance.json").read_text())
        weights = hashlib.sha256((pkg_dir / "model.safetensors").read_bytes()).hexdigest()
        assert ds.attrs["scigpt_package_sha256"] == weights
        assert ds.attrs["scigpt_git_sha"] == prov["git_sha"]
        assert ds.attrs["scigpt_source_run"] == "r"
        assert all(p.name in ds.attrs["scigpt_input_files"] for p in inputs)
        got = np.stack([ds[v["name"]].values[0, 0] for v in variables])  # lead 1h
    # reference: the package's forecast of inputs read with plain xarray (one model call)
    fields, lat, lon = _xarray_fields(inputs, variables, INIT, pm.history)
    names = [v["name"] for v in variables]
    ref = pm.forecast(fields, names, lat, lon, np.array([INIT])).numpy()
    _assert_close(got, ref, variables)


def test_two_step_rollout_equals_two_model_calls(pkg_dir, pm, inputs, tmp_path):
    out = predict(pkg_dir, inputs, tmp_path / "fc.nc", leads=["2"])  # default init: last time
    variables = pm.variables
    names = pm.var_names
    with xr.open_dataset(inputs[0]) as src:
        last = src.time.values[-1].astype("datetime64[ns]")
    with xr.open_dataset(out) as ds:
        assert ds.time.values.tolist() == [last.astype(int)]
        assert ds.prediction_timedelta.values.tolist() == [2 * HOUR]
        got = np.stack([ds[n].values[0, 0] for n in names])
    fields, lat, lon = _xarray_fields(inputs, variables, last, pm.history)
    with torch.no_grad():
        x = pm.normalise(torch.from_numpy(fields)[None], names)  # (1, V, T, H, W)
        y1 = pm.model(pm.batch(x, names, lat, lon, np.array([last])))
        x2 = torch.cat([x[:, :, 1:], y1[:, :, None]], dim=2)
        later = last + np.timedelta64(HOUR, "ns")
        y2 = pm.model(pm.batch(x2, names, lat, lon, np.array([later])))
        ref = pm.denormalise(y2, names)[0].numpy()
    _assert_close(got, ref, variables)
    # and it is not simply the one-call forecast
    one = pm.forecast(fields, names, lat, lon, np.array([last])).numpy()
    assert not np.allclose(got, one, rtol=1e-5, atol=0)


def test_variable_subset_is_refused_unless_allowed_and_then_recorded(pkg_dir, pm, inputs,
                                                                     tmp_path):  # fmt: skip
    subset = {"variables": ["u10", "v10", "sp"]}
    with pytest.raises(ValueError, match=r"lack 11 of the package's 14 variables: \['d2m', 'tcw'"):
        predict(pkg_dir, inputs, tmp_path / "fc.nc", leads=["1h"], init=str(INIT),
                options=subset)  # fmt: skip
    assert not (tmp_path / "fc.nc").exists()
    with pytest.warns(UserWarning, match=r"lack package variables \['d2m', 'tcw'"):
        out = predict(pkg_dir, inputs, tmp_path / "fc.nc", leads=["1h"], init=str(INIT),
                      options=subset, allow_missing=True)  # fmt: skip
    with xr.open_dataset(out) as ds:
        assert list(ds.data_vars) == ["sp", "u10", "v10"]  # the package's order
        missing = [n for n in pm.var_names if n not in ("sp", "u10", "v10")]
        assert ds.attrs["scigpt_missing_variables"] == ", ".join(missing)
        assert ds.attrs["scigpt_model_variables"] == ", ".join(pm.var_names)
        got = np.stack([ds[n].values[0, 0] for n in ds.data_vars])
    variables = [v for v in pm.variables if v["name"] in ("sp", "u10", "v10")]
    fields, lat, lon = _xarray_fields(inputs, variables, INIT, pm.history)
    ref = pm.forecast(fields, ["sp", "u10", "v10"], lat, lon, np.array([INIT])).numpy()
    _assert_close(got, ref, variables)


# ---- errors ---------------------------------------------------------------------------------
def test_unknown_suffix_needs_format(pkg_dir, tmp_path):
    odd = tmp_path / "era5.dat"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match="--format"):
        predict(pkg_dir, [odd], tmp_path / "fc.nc", leads=["1h"])


def test_lead_not_a_multiple(pkg_dir, inputs, tmp_path):
    with pytest.raises(ValueError, match=r"multiples of the model's forecast step 1h.*1h, 2h, 3h"):
        predict(pkg_dir, inputs, tmp_path / "fc.nc", leads=["1h", "90min"])
    assert not (tmp_path / "fc.nc").exists()


def test_init_without_history(pkg_dir, inputs, tmp_path):
    with pytest.raises(ValueError, match=r"history=2 consecutive frames.*2020-01-01T00:00:00"):
        predict(pkg_dir, inputs, tmp_path / "fc.nc", leads=["1h"], init="2020-01-01T00:00")
    with pytest.raises(ValueError, match=r"not an input time.*2020-01-01T23:00:00"):
        predict(pkg_dir, inputs, tmp_path / "fc.nc", leads=["1h"], init="2020-01-02T05:00")
    assert not (tmp_path / "fc.nc").exists()


def test_missing_package_file(pkg_dir, inputs, tmp_path):
    broken = tmp_path / "pkg"
    shutil.copytree(pkg_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(PackageError, match=r"model\.safetensors"):
        predict(broken, inputs, tmp_path / "fc.nc", leads=["1h"])
    assert not (tmp_path / "fc.nc").exists()


def test_multi_step_model_rollout_limits(pkg_dir, inputs, tmp_path, monkeypatch):
    """A package forecasting 2 steps per call from 2 frames: one call works, a rollout is
    refused; without a recorded time step, the inputs' spacing is used."""
    import scigpt.eval.predict as predict_module

    def fake_load(path, device="cpu", **kw):
        m = load_pretrained(path, device=device, **kw)
        m.config["data"] = {**m.config["data"], "lead": 2, "time_step_ns": None}
        return m

    monkeypatch.setattr(predict_module, "load_pretrained", fake_load)
    out = predict(pkg_dir, inputs, tmp_path / "fc.nc", leads=["2h"], init=str(INIT))
    with xr.open_dataset(out) as ds:
        assert ds.prediction_timedelta.values.tolist() == [2 * HOUR]
    with pytest.raises(ValueError, match="cannot be fed back"):
        predict(pkg_dir, inputs, tmp_path / "fc2.nc", leads=["4h"], init=str(INIT))
    with pytest.raises(ValueError, match=r"forecast step 2h.*2h, 4h, 6h"):
        predict(pkg_dir, inputs, tmp_path / "fc2.nc", leads=["1h"], init=str(INIT))


def test_cli_writes_the_netcdf(pkg_dir, inputs, tmp_path):
    from scigpt.cli import main

    out = tmp_path / "cli.nc"
    code = main(["predict", str(pkg_dir), *map(str, inputs), "--lead", "1h", "--lead", "2",
                 "--out", str(out), "--init", "2020-01-01T12:00"])  # fmt: skip
    assert code == 0
    with xr.open_dataset(out) as ds:
        assert ds.attrs["history"].split(": ", 1)[1].startswith(f"scigpt predict {pkg_dir} ")
        assert list(ds["prediction_timedelta"].values) == [
            np.timedelta64(1, "h"),
            np.timedelta64(2, "h"),
        ]
        assert ds["time"].values[0] == INIT
    assert main(["predict", str(pkg_dir), *map(str, inputs), "--lead", "90min",
                 "--out", str(tmp_path / "x.nc")]) == 2  # fmt: skip
    with xr.open_dataset(out) as ds:
        assert ds.attrs["scigpt_missing_variables"] == ""  # every variable given


def test_cli_refuses_inputs_missing_variables(pkg_dir, pm, inputs, tmp_path, capsys):
    """Inputs holding 1 of the package's 14 variables: exit 2 naming the 13 missing ones and no
    file; --allow-missing forecasts and records them in the netCDF's global attributes."""
    from scigpt.cli import main

    one = [p for p in inputs if p.name.endswith("_u10.nc")]
    out = tmp_path / "one.nc"
    args = ["predict", str(pkg_dir), *map(str, one), "--lead", "1h", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    missing = [n for n in pm.var_names if n != "u10"]
    assert len(missing) == 13 and f"lack 13 of the package's 14 variables: {missing}" in err
    assert "--allow-missing" in err and not out.exists()
    with pytest.warns(UserWarning, match="lack package variables"):
        assert main([*args, "--allow-missing"]) == 0
    with xr.open_dataset(out) as ds:
        assert list(ds.data_vars) == ["u10"]
        assert ds.attrs["scigpt_missing_variables"].split(", ") == missing
        assert "--allow-missing" in ds.attrs["history"]
