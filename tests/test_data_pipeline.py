"""Data layer: ingest, units, grid store and forecast loader (statistics: test_running_stats.py).

Every check compares against an independent reference: xarray / netCDF4 for the reader, the
original shared files for the shipped sample, numpy for the statistics, h5py/hashlib for the
store, and arrays normalised by hand for the loader.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr

from scigpt.data_pipeline import shards
from scigpt.data_pipeline.ingest.base import GridArray
from scigpt.data_pipeline.ingest.netcdf import read_netcdf
from scigpt.data_pipeline.loader import ForecastDataset, collate_forecast, denormalise
from scigpt.data_pipeline.shards import write_grid_store
from scigpt.data_pipeline.store import GridStore
from scigpt.data_pipeline.units import to_canonical
from scigpt.data_pipeline.variables import VariableInfo, canonical_name
from tests.conftest import corrupt_copy

KEPT_LEVELS = [500, 700, 850]
PL_SHORT = ["q", "u", "v"]
SL_SHORT = ["d2m", "sp", "tcw", "u10", "v10"]


def _sample_paths(sample_dir: Path) -> list[Path]:
    return sorted(sample_dir.glob("*.nc"))


@pytest.fixture(scope="module")
def grid(sample_era5_dir: Path) -> GridArray:
    return read_netcdf(_sample_paths(sample_era5_dir))


def _xarray_reference(paths: list[Path]) -> dict[str, np.ndarray]:
    """name → (T, H, W) float32, decoded by xarray alone, level names built by hand."""
    ref: dict[str, np.ndarray] = {}
    for path in paths:
        with xr.open_dataset(path) as ds:
            for name, da in ds.data_vars.items():
                if "level" in da.dims:
                    for lev in ds["level"].values:
                        values = da.sel(level=lev).transpose("time", "latitude", "longitude")
                        ref[f"{name}{int(lev)}"] = values.values.astype(np.float32)
                else:
                    ref[str(name)] = da.transpose("time", "latitude", "longitude").values.astype(
                        np.float32
                    )
    return ref


# --------------------------------------------------------------------------------------------
# ingest


def test_read_netcdf_matches_xarray(grid: GridArray, sample_era5_dir: Path) -> None:
    paths = _sample_paths(sample_era5_dir)
    ref = _xarray_reference(paths)
    expected_names = ["d2m"]
    expected_names += [f"{s}{lev}" for s in PL_SHORT for lev in KEPT_LEVELS]
    expected_names += ["sp", "tcw", "u10", "v10"]
    assert grid.names == expected_names  # path order (sorted), then levels as stored
    assert grid.values.shape == (24, 14, 41, 41)
    assert grid.values.dtype == np.float32
    for v, name in enumerate(grid.names):
        assert np.array_equal(grid.values[:, v], ref[name], equal_nan=True), name
    assert grid.mask.all()  # the ERA5 sample has no missing values

    u850 = grid.variables[grid.names.index("u850")]
    assert u850 == VariableInfo("u850", "m s**-1", "grid", 850.0, "U component of wind", "pressure")
    assert grid.variables[grid.names.index("sp")].level is None
    with xr.open_dataset(paths[0]) as ds:
        assert np.array_equal(grid.lat, ds["latitude"].values.astype(np.float64))
        assert np.array_equal(grid.lon, ds["longitude"].values.astype(np.float64))
        assert np.array_equal(grid.time, ds["time"].values)
    assert grid.lat[0] == 55.0 and grid.lat[-1] == 45.0  # descending, as in the file
    assert grid.time.dtype == np.dtype("datetime64[ns]")
    assert grid.time[0] == np.datetime64("2020-01-01T00:00")
    assert grid.time[-1] == np.datetime64("2020-01-01T23:00")
    assert grid.source == "era5-netcdf:era5_rhine_2020-01-01"


def test_read_netcdf_packed_values_match_netcdf4(grid: GridArray, sample_era5_dir: Path) -> None:
    path = sample_era5_dir / "ERA5_2020-01-01_pl_q.nc"
    with netCDF4.Dataset(path) as ds:
        ds.set_auto_maskandscale(False)
        var = ds.variables["q"]
        raw = var[:]  # (T, level, H, W) int16, undecoded
        assert raw.dtype == np.int16
        decoded = raw.astype(np.float64) * var.scale_factor + var.add_offset
        decoded[(raw == var._FillValue) | (raw == var.missing_value)] = np.nan
        levels = list(ds.variables["level"][:])
    for lev in KEPT_LEVELS:
        k = levels.index(lev)
        got = grid.values[:, grid.names.index(f"q{lev}")]
        assert np.array_equal(got, decoded[:, k].astype(np.float32), equal_nan=True)


def test_read_netcdf_selects_in_order(grid: GridArray, sample_era5_dir: Path) -> None:
    sel = read_netcdf(_sample_paths(sample_era5_dir), ["sp", "u850", "q500"])
    assert sel.names == ["sp", "u850", "q500"]
    for v, name in enumerate(sel.names):
        assert np.array_equal(sel.values[:, v], grid.values[:, grid.names.index(name)])


def test_read_netcdf_unknown_variable_lists_available(sample_era5_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"\['t850'\] are not in the files") as err:
        read_netcdf(_sample_paths(sample_era5_dir), ["sp", "t850"])
    assert "'u850'" in str(err.value) and "'sp'" in str(err.value)


def test_read_netcdf_refuses_unreadable_file(tmp_path: Path, sample_era5_dir: Path) -> None:
    broken = tmp_path / "broken.nc"
    broken.write_bytes(b"this is not a netCDF file")
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        read_netcdf([sample_era5_dir / "ERA5_2020-01-01_sp.nc", broken])


def test_read_netcdf_time_mismatch_names_both_files(tmp_path: Path, sample_era5_dir: Path) -> None:
    shifted = tmp_path / "ERA5_2020-01-01_sp.nc"
    shutil.copyfile(sample_era5_dir / "ERA5_2020-01-01_sp.nc", shifted)
    with netCDF4.Dataset(shifted, "a") as ds:
        ds.variables["time"][:] = ds.variables["time"][:] + 1  # one hour later
    first = sample_era5_dir / "ERA5_2020-01-01_d2m.nc"
    with pytest.raises(ValueError, match="different time axes") as err:
        read_netcdf([first, shifted])
    assert str(first) in str(err.value) and str(shifted) in str(err.value)


def test_read_netcdf_plev_in_pa_and_unit_conversion(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    t_degc = rng.normal(0.0, 10.0, size=(2, 2, 3, 2))  # (time, plev, lat, lon)
    sp_hpa = rng.normal(1000.0, 10.0, size=(2, 3, 2))
    ds = xr.Dataset(
        {
            "t": (("time", "plev", "lat", "lon"), t_degc, {"units": "degC"}),
            "sp": (("time", "lat", "lon"), sp_hpa, {"units": "hPa"}),
            "foo": (("time", "lat", "lon"), sp_hpa, {"units": "1"}),
        },
        coords={
            "time": np.array(["2021-06-01T00", "2021-06-01T06"], dtype="datetime64[ns]"),
            "plev": ("plev", [85000.0, 50000.0], {"units": "Pa"}),
            "lat": [10.0, 5.0, 0.0],
            "lon": [0.0, 1.0],
        },
    )
    path = tmp_path / "cmip_style.nc"
    ds.to_netcdf(path)
    # "all variables" must not silently skip one the ERA5 table does not know.
    with pytest.raises(ValueError, match="foo"):
        read_netcdf([path])
    got = read_netcdf([path], ["t850", "t500", "sp"])
    assert got.names == ["t850", "t500", "sp"]
    assert [v.level for v in got.variables] == [850.0, 500.0, None]
    assert got.variables[0].units == "K" and got.variables[2].units == "Pa"
    assert np.array_equal(got.values[:, 0], (t_degc[:, 0] + 273.15).astype(np.float32))
    assert np.array_equal(got.values[:, 1], (t_degc[:, 1] + 273.15).astype(np.float32))
    assert np.array_equal(got.values[:, 2], (sp_hpa * 100.0).astype(np.float32))
    assert np.array_equal(got.lat, [10.0, 5.0, 0.0])


def test_canonical_name() -> None:
    assert canonical_name("u", 850) == "u850"
    assert canonical_name("u", 850.0) == "u850"
    assert canonical_name("10u", None) == "u10"
    assert canonical_name("sp", None) == "sp"
    with pytest.raises(ValueError, match="unknown ERA5 short name 'xyz'"):
        canonical_name("xyz", None)
    info = VariableInfo("q500", "kg kg**-1", "grid", 500.0, "Specific humidity")
    assert VariableInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    with pytest.raises(ValueError, match="unknown keys"):
        VariableInfo.from_dict({**info.to_dict(), "colour": "red"})


# --------------------------------------------------------------------------------------------
# the shipped sample is the original data at the kept levels


def test_shipped_sample_equals_shared_originals(sample_era5_dir: Path, shared_data: Path) -> None:
    original = shared_data / "era5" / "rhine_2020-01-01_pl"
    for short in SL_SHORT:
        name = f"ERA5_2020-01-01_{short}.nc"
        assert filecmp.cmp(sample_era5_dir / name, original / name, shallow=False), name
    for short in PL_SHORT:
        name = f"ERA5_2020-01-01_pl_{short}.nc"
        with (
            xr.open_dataset(original / name) as full,
            xr.open_dataset(sample_era5_dir / name) as sub,
        ):
            assert list(sub["level"].values) == KEPT_LEVELS
            kept = full[short].sel(level=KEPT_LEVELS)
            assert np.array_equal(sub[short].values, kept.values, equal_nan=True), name
            assert sub[short].attrs == full[short].attrs
            for key in ("dtype", "scale_factor", "add_offset", "_FillValue", "missing_value"):
                assert sub[short].encoding[key] == full[short].encoding[key], (name, key)
            assert sub.attrs["Licence"] == full.attrs["Licence"]
            assert sub.attrs["history"].endswith(full.attrs["history"])
    total = sum(p.stat().st_size for p in sample_era5_dir.glob("*.nc"))
    assert total < 10 * 2**20


def test_sample_provenance_lists_every_file_hash(sample_era5_dir: Path) -> None:
    text = (sample_era5_dir.parent / "PROVENANCE.md").read_text()
    files = _sample_paths(sample_era5_dir)
    assert len(files) == 8
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        assert f"| {path.name} |" in text and digest in text, path.name


# --------------------------------------------------------------------------------------------
# units


def test_units_conversions() -> None:
    x = np.array([0.0, 25.0, -40.0])
    assert np.allclose(to_canonical(x, "degC", "K", where="w"), [273.15, 298.15, 233.15])
    assert np.allclose(to_canonical(x, "°C", "K", where="w"), x + 273.15)
    assert np.allclose(to_canonical(np.array([273.15]), "K", "degC", where="w"), [0.0])
    assert np.allclose(to_canonical(np.array([850.0]), "millibars", "Pa", where="w"), [85000.0])
    assert np.allclose(to_canonical(np.array([85000.0]), "Pa", "hPa", where="w"), [850.0])
    assert np.allclose(to_canonical(np.array([0.5]), "(0 - 1)", "%", where="w"), [50.0])
    assert np.allclose(to_canonical(np.array([2.0]), "g kg**-1", "kg kg**-1", where="w"), [2e-3])
    assert np.allclose(to_canonical(np.array([3.0]), "mm", "m", where="w"), [3e-3])
    f32 = np.array([1.5, np.nan], dtype=np.float32)
    assert to_canonical(f32, "degC", "K", where="w").dtype == np.float32
    # Same unit under another spelling: returned unchanged, bit for bit.
    for spelling in ("m s**-1", "m s-1", "m/s", "m s^-1"):
        assert to_canonical(f32, spelling, "m s**-1", where="w") is f32
    assert to_canonical(f32, "kg m-2", "kg m**-2", where="w") is f32
    assert to_canonical(f32, "m2 s-2", "m**2 s**-2", where="w") is f32
    assert to_canonical(f32, "dimensionless", "1", where="w") is f32
    assert to_canonical(f32, "m of water equivalent", "m", where="w") is f32


def test_units_errors_name_where_and_fix() -> None:
    x = np.zeros(2)
    with pytest.raises(ValueError, match=r"a\.nc:t2m: unknown units 'furlongs'.*Fix"):
        to_canonical(x, "furlongs", "K", where="a.nc:t2m")
    with pytest.raises(ValueError, match=r"b\.nc:sp: units 'K' \(temperature\).*'Pa'.*Fix"):
        to_canonical(x, "K", "Pa", where="b.nc:sp")
    with pytest.raises(ValueError, match="mass_ratio"):  # humidity is not a plain fraction
        to_canonical(x, "kg kg**-1", "1", where="c.nc:q")


# --------------------------------------------------------------------------------------------
# grid store (the patch store seen as one time series of grids)

STATS_END = 15  # stats over times [0, 15] only


@pytest.fixture(scope="module")
def store_dir(grid: GridArray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store")
    write_grid_store(
        grid,
        out,
        steps_per_shard=5,
        stats_time_range=(grid.time[0], grid.time[STATS_END]),
        producer={"command": "pytest", "inputs": ["era5_rhine_2020-01-01"]},
    )
    return out


def test_store_round_trip_and_manifest(grid: GridArray, store_dir: Path) -> None:
    with GridStore(store_dir) as store:
        assert np.array_equal(store.read(0, 24), grid.values, equal_nan=True)
        assert np.array_equal(store.read(3, 17), grid.values[3:17])  # spans 4 shards
        assert store.read(7, 7).shape == (0, 14, 41, 41)
        assert store.variables == grid.variables
        assert np.array_equal(store.lat, grid.lat) and np.array_equal(store.lon, grid.lon)
        assert np.array_equal(store.time, grid.time)
        ref = grid.values[: STATS_END + 1].astype(np.float64)
        # Statistics merged across 4 units vs numpy on the concatenated data: rtol 1e-12.
        np.testing.assert_allclose(store.mean, np.nanmean(ref, axis=(0, 2, 3)), rtol=1e-12)
        np.testing.assert_allclose(store.std, np.nanstd(ref, axis=(0, 2, 3)), rtol=1e-12)
        raw = (store_dir / "manifest.json").read_bytes()
        assert store.manifest_sha256 == hashlib.sha256(raw).hexdigest()
        # Each shard file is opened once and cached.
        store.read(0, 24)
        handles = dict(store._store._files)
        store.read(0, 24)
        assert len(handles) == 5 and all(store._store._files[p] is h for p, h in handles.items())
        with pytest.raises(IndexError):
            store.read(20, 25)

    m = json.loads(raw)
    assert m["format"] == "scigpt-patch-store" and m["format_version"] == 2
    src = m["sources"]["grid"]
    # layout 2 recorded per array: a 41 x 41 field is far below a tile, all 14 variables share it
    assert {(a["layout"], tuple(a["tile"])) for u in src["units"] for a in u["arrays"]} == {
        (2, (14, 11, 11))
    }
    assert [v["name"] for v in src["variables"]] == grid.names
    assert m["stats_time_range"] == ["2020-01-01T00:00:00", "2020-01-01T15:00:00"]
    assert src["stats"]["sp"]["count"] == 16 * 41 * 41
    assert src["n_samples"] == 24 and m["rejects"] == []
    assert m["producer"] == {"command": "pytest", "inputs": ["era5_rhine_2020-01-01"]}
    assert [u["arrays"][0]["times"][0][11:13] for u in src["units"]] == [
        "00",
        "05",
        "10",
        "15",
        "20",
    ]
    for u in src["units"]:
        assert u["sha256"] == hashlib.sha256((store_dir / u["shard"]).read_bytes()).hexdigest()
    with h5py.File(store_dir / "shards" / "grid" / "grid-00004.h5", "r") as f:
        fields = f["a0/fields"]
        # layout 2: the frames (N·pt, V, H, W), 4 samples of 1 frame, 14 variables, 41 x 41
        assert fields.shape == (4, 14, 41, 41) and fields.dtype == np.float32
        assert fields.chunks == (1, 14, 41, 41)  # small grid: one chunk per sample
        assert fields.compression == "lzf" and fields.shuffle
        assert np.array_equal(fields[...], grid.values[20:], equal_nan=True)
        assert np.array_equal(f["a0/time"][...], grid.time[20:].astype(np.int64))
    assert sorted(str(p.relative_to(store_dir)) for p in store_dir.rglob("*") if p.is_file()) == [
        "manifest.json",
        *[f"shards/grid/grid-0000{i}.h5" for i in range(5)],
        *[f"units/grid/grid-0000{i}.json" for i in range(5)],
    ]


def test_store_detects_modified_shard(store_dir: Path, tmp_path: Path) -> None:
    """A flipped byte: opening is cheap (no hashing), the first read of THAT shard fails naming
    it and `scigpt verify`, the other shards still read; verify=True hashes all at open."""
    copy = corrupt_copy(store_dir, tmp_path / "copy", "shards/grid/grid-00002.h5")
    bad = r"grid-00002\.h5.*sha256.*re-run `scigpt prepare`.*scigpt verify"
    with GridStore(copy) as store:
        assert store._store._verified == {"shards/grid/grid-00000.h5"}  # lat/lon come from it
        assert store.read(0, 10).shape == (10, 14, 41, 41)  # shards 0, 1
        with pytest.raises(RuntimeError, match=bad):
            store.read(10, 11)
        assert np.array_equal(store.read(15, 24), read_ok(store_dir, 15, 24), equal_nan=True)
        with pytest.raises(RuntimeError, match=bad):  # still refused on a second try
            store.read(12, 13)
    with pytest.raises(RuntimeError, match=bad):
        GridStore(copy, verify=True)
    GridStore(copy, verify=False).close()  # opening without verification is allowed
    (copy / "shards/grid/grid-00003.h5").write_bytes(b"short")  # a size change fails at open
    with pytest.raises(RuntimeError, match=r"grid-00003\.h5.*has 5 bytes, the manifest says"):
        GridStore(copy)


def read_ok(store_dir: Path, t0: int, t1: int) -> np.ndarray:
    with GridStore(store_dir, verify=True) as store:
        return store.read(t0, t1)


def test_store_bytes_are_reproducible(grid: GridArray, tmp_path: Path) -> None:
    small = GridArray(
        grid.values[:6, :3], grid.variables[:3], grid.lat, grid.lon, grid.time[:6], "t"
    )
    write_grid_store(small, tmp_path / "a", steps_per_shard=4)
    time.sleep(1.1)  # HDF5 timestamps have 1 s resolution; make any leak visible
    write_grid_store(small, tmp_path / "b", steps_per_shard=4)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
    assert files_a == files_b and len(files_a) == 5
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def _crash_on_second_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shards._write_grid
    calls = []

    def flaky(g, *args: object):
        calls.append(g)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")  # the process dies mid-write
        return real(g, *args)

    monkeypatch.setattr(shards, "_write_grid", flaky)


def test_store_crash_leaves_no_manifest_or_temp_files(
    grid: GridArray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = GridArray(
        grid.values[:6, :2], grid.variables[:2], grid.lat, grid.lon, grid.time[:6], "t"
    )
    fresh = tmp_path / "fresh"
    with monkeypatch.context() as mp:
        _crash_on_second_unit(mp)
        with pytest.raises(RuntimeError, match="simulated crash"):
            write_grid_store(small, fresh, steps_per_shard=2)
    assert sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file()) == [
        "shards/grid/grid-00000.h5",
        "units/grid/grid-00000.json",
    ]
    with pytest.raises(FileNotFoundError, match="run `scigpt prepare` again"):
        GridStore(fresh)

    # Rewriting a complete store: a crash must not leave the old manifest over mixed shards.
    existing = tmp_path / "existing"
    write_grid_store(small, existing, steps_per_shard=2)
    with monkeypatch.context() as mp:
        _crash_on_second_unit(mp)
        with pytest.raises(RuntimeError, match="simulated crash"):
            write_grid_store(small, existing, steps_per_shard=2)
    assert not (existing / "manifest.json").exists()
    assert not [p for p in existing.rglob("*") if p.name.startswith(".")]
    # A later complete write with fewer units leaves exactly the shards it lists.
    write_grid_store(small, existing, steps_per_shard=4)
    assert sorted(p.name for p in (existing / "shards" / "grid").iterdir()) == [
        "grid-00000.h5",
        "grid-00001.h5",
    ]
    with GridStore(existing) as store:
        assert np.array_equal(store.read(0, 6), small.values)


# --------------------------------------------------------------------------------------------
# forecast loader

NAN_T, NAN_V, NAN_Y, NAN_X = 6, 2, 3, 4


@pytest.fixture(scope="module")
def holey_store(grid: GridArray, tmp_path_factory: pytest.TempPathFactory) -> GridStore:
    values = grid.values.copy()
    values[NAN_T, NAN_V, NAN_Y, NAN_X] = np.nan  # one missing value, to check masking
    holey = GridArray(values, grid.variables, grid.lat, grid.lon, grid.time, grid.source)
    out = tmp_path_factory.mktemp("holey")
    write_grid_store(holey, out, steps_per_shard=7)
    store = GridStore(out)
    yield store
    store.close()


def _normalised(values: np.ndarray, store: GridStore) -> np.ndarray:
    """By hand, in float32 (the loader's and the DALI path's arithmetic): (x - mean) / std,
    NaN → 0; and within 1e-6 of the same in float64 (the rounding of float32 arithmetic)."""
    mean = store.mean[:, None, None].astype(np.float32)
    std = store.std[:, None, None].astype(np.float32)
    out = (values.astype(np.float32) - mean) / std
    ref64 = (values.astype(np.float64) - store.mean[:, None, None]) / store.std[:, None, None]
    ok = ~np.isnan(ref64)
    assert np.allclose(out[ok], ref64[ok], rtol=0, atol=1e-5 * (1 + np.abs(ref64[ok]).max()))
    return np.where(np.isnan(out), np.float32(0), out)


def test_forecast_dataset_values(grid: GridArray, holey_store: GridStore) -> None:
    t = grid.time
    ds = ForecastDataset(holey_store, time_range=(t[2], t[20]), history=3, lead=2)
    # Anchors and targets inside the range; history frames may precede it.
    assert len(ds) == (20 - 2) - 2 + 1
    raw = grid.values.copy()
    raw[NAN_T, NAN_V, NAN_Y, NAN_X] = np.nan
    for i in (0, 2, len(ds) - 1):
        anchor = 2 + i  # the first anchor is the range start (frames 0, 1 precede it)
        assert ds.anchor_index(i) == anchor
        item = ds[i]
        fields = _normalised(raw[anchor - 2 : anchor + 1], holey_store).transpose(1, 0, 2, 3)
        assert item["fields"].dtype == torch.float32
        assert np.array_equal(item["fields"].numpy(), fields)  # (V, T, H, W)
        assert np.array_equal(item["target"].numpy(), _normalised(raw[anchor + 2], holey_store))
        assert np.array_equal(item["mask"].numpy(), ~np.isnan(raw[anchor + 2]))
        assert int(item["time"]) == t[anchor].astype(np.int64)
    # Sample 2's target is the frame with the hole; sample 4 has it as its last input frame.
    assert not ds[2]["mask"][NAN_V, NAN_Y, NAN_X] and ds[2]["mask"].sum() == 14 * 41 * 41 - 1
    assert ds[2]["target"][NAN_V, NAN_Y, NAN_X] == 0
    assert ds[4]["fields"][NAN_V, 2, NAN_Y, NAN_X] == 0
    with pytest.raises(IndexError):
        ds[len(ds)]

    plain = ForecastDataset(holey_store, time_range=(t[0], t[23]), normalise=False)
    assert len(plain) == 24 - 2 - 1 + 1
    assert np.array_equal(plain[5]["target"].numpy(), np.nan_to_num(raw[7], nan=0.0))


def _assert_close_to_scale(
    got: np.ndarray, want: np.ndarray, store: GridStore, ids: list[int] | None = None
) -> None:
    ids = list(range(len(store.variables))) if ids is None else ids
    scale = (np.abs(store.mean[ids]) + store.std[ids])[:, None, None]  # (V, 1, 1)
    valid = ~np.isnan(want)
    assert np.all(np.abs(got - want)[valid] <= (4e-7 * scale * np.ones_like(want))[valid])


def test_forecast_batch_and_denormalise(grid: GridArray, holey_store: GridStore) -> None:
    t = grid.time
    ds = ForecastDataset(holey_store, time_range=(t[0], t[12]))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_forecast)
    batch = next(iter(loader))
    assert batch["fields"].shape == (4, 14, 2, 41, 41)
    assert batch["target"].shape == (4, 14, 41, 41)
    assert batch["mask"].shape == (4, 14, 41, 41) and batch["mask"].dtype == torch.bool
    assert batch["times"].dtype == torch.int64
    assert batch["times"].tolist() == t[1:5].astype(np.int64).tolist()
    assert batch["var_ids"].dtype == torch.long and batch["var_ids"].tolist() == list(range(14))
    assert batch["modality_id"] == 0
    assert batch["lat"].dtype == torch.float32 and batch["lat"].shape == (41,)
    assert np.array_equal(batch["lon"].numpy(), grid.lon.astype(np.float32))

    # float32 round trip: error within a few ulps of the field's scale (mean and std).
    target = denormalise(batch["target"], holey_store)  # (B, V, H, W)
    _assert_close_to_scale(target[0].numpy(), grid.values[2], holey_store)
    fields = denormalise(batch["fields"].numpy(), holey_store, var_axis=-4)  # (B, V, T, H, W)
    assert fields.dtype == np.float32
    _assert_close_to_scale(fields[1, :, 0], grid.values[1], holey_store)

    sub = ForecastDataset(holey_store, time_range=(t[0], t[12]), variables=["sp", "u850"])
    sub_batch = collate_forecast([sub[0], sub[1]])
    ids = [grid.names.index("sp"), grid.names.index("u850")]
    assert sub_batch["var_ids"].tolist() == ids
    assert torch.equal(sub_batch["fields"], batch["fields"][:2, ids])
    back = denormalise(sub_batch["target"], holey_store, var_ids=sub_batch["var_ids"])
    _assert_close_to_scale(back[0].numpy(), grid.values[2, ids], holey_store, ids)
    with pytest.raises(ValueError, match="one source"):
        collate_forecast([sub[0], ds[0]])


def test_forecast_dataset_skips_gaps_and_rejects_short_ranges(
    grid: GridArray, tmp_path: Path
) -> None:
    keep = [i for i in range(24) if i != 10]  # 09:00 → 11:00 is a 2 h step
    gappy = GridArray(
        grid.values[keep, :2], grid.variables[:2], grid.lat, grid.lon, grid.time[keep], "gappy"
    )
    write_grid_store(gappy, tmp_path, steps_per_shard=24)
    with GridStore(tmp_path) as store:
        full = ForecastDataset(store, time_range=(grid.time[0], grid.time[23]))
        # anchors 1..22 minus those whose frames (a-1, a, a+1) span the missing 10:00:
        # anchors 9 (target 10), 11 (history 10) — and 10 itself does not exist
        anchors = [int(store.time[full.anchor_index(i)].astype("datetime64[h]").astype(int) % 24)
                   for i in range(len(full))]  # fmt: skip
        assert anchors == [a for a in range(1, 23) if a not in (9, 10, 11)]
        ok = ForecastDataset(store, time_range=(grid.time[0], grid.time[9]))
        assert len(ok) == 10 - 2 - 1 + 1
        with pytest.raises(ValueError, match="no sample has its anchor"):
            ForecastDataset(store, time_range=(grid.time[0], grid.time[1]))


@pytest.mark.parametrize("dim", ["hybrid", "level"])
def test_read_netcdf_model_levels(sample_era5_dir: Path, tmp_path: Path, dim: str) -> None:
    """Derived: the sample's u on 3 pressure levels relabelled as model levels 60/100/137."""
    with xr.open_dataset(sample_era5_dir / "ERA5_2020-01-01_pl_u.nc") as ds:
        ml = ds.load()
    ml = ml.rename({"level": dim}) if dim != "level" else ml
    ml = ml.assign_coords({dim: ("hybrid" if dim == "hybrid" else "level", [60, 100, 137])})
    ml = ml.rename({ml[dim].dims[0]: dim}) if ml[dim].dims[0] != dim else ml
    ml[dim].attrs = {"long_name": "model_level_number", "units": "1"}
    path = tmp_path / f"ml_{dim}.nc"
    ml.to_netcdf(path)
    grid = read_netcdf([path])
    assert grid.names == ["u_ml60", "u_ml100", "u_ml137"]
    assert [v.level_type for v in grid.variables] == ["model"] * 3
    assert [v.level for v in grid.variables] == [60.0, 100.0, 137.0]
    ref = xr.open_dataset(path)["u"].values.astype(np.float32)  # (T, L, H, W)
    assert np.array_equal(grid.values, ref)
    plev = read_netcdf([sample_era5_dir / "ERA5_2020-01-01_pl_u.nc"])
    assert plev.names == ["u500", "u700", "u850"] and plev.variables[0].level_type == "pressure"
