"""ERA5 as users download it: one variable per file over days (and longer periods), grouped by
time, against xarray's own decode of the same files.

The files are generated here: CF netCDF4, int16-packed (scale_factor/add_offset/_FillValue),
hourly, on a small grid: ``t2m`` and ``sp`` one file per day, ``u`` (two pressure levels) one
file for all three days (a monthly download beside daily ones). The reference is xarray
(``mask_and_scale``) per file, concatenated along time with numpy, rounded to float32 once:
the readers must equal it to 1e-12 (i.e. exactly, after packing). Also a Zarr store with one
array per variable (ARCO layout), split over two stores in time. ~10 s in all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from scigpt.data_pipeline.ingest.base import LazyGrid
from scigpt.data_pipeline.ingest.netcdf import read_netcdf
from scigpt.data_pipeline.ingest.zarr_store import read_zarr
from scigpt.data_pipeline.prepare import SourceSpec, plan_units, prepare_store
from scigpt.data_pipeline.store import GridStore

DAYS = ("2020-01-01", "2020-01-02", "2020-01-03")
LAT = np.linspace(50.0, 46.0, 9)
LON = np.linspace(5.0, 10.5, 12)
LEVELS = [850.0, 500.0]
NAMES = ["t2m", "sp", "u850", "u500"]  # the canonical order of the reads below


def _hours(day: str) -> np.ndarray:
    return np.datetime64(day, "h") + np.arange(24)


def _field(rng: np.random.Generator, shape: tuple[int, ...], mean: float, amp: float):
    return mean + amp * rng.standard_normal(shape)


def _write(path: Path, name: str, data: np.ndarray, times: np.ndarray, units: str) -> Path:
    dims = ("time", "latitude", "longitude")
    coords = {"time": times.astype("datetime64[ns]"), "latitude": LAT, "longitude": LON}
    if data.ndim == 4:
        dims = ("time", "level", "latitude", "longitude")
        coords["level"] = ("level", LEVELS, {"units": "millibars"})
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    scale = (hi - lo) / 60000.0
    ds = xr.Dataset({name: (dims, data, {"units": units})}, coords=coords)
    enc = {
        name: {"dtype": "int16", "scale_factor": scale, "add_offset": (hi + lo) / 2,
               "_FillValue": np.int16(-32767)},
        "time": {"units": "hours since 1900-01-01", "calendar": "gregorian"},
    }  # fmt: skip
    ds.to_netcdf(path, format="NETCDF4", encoding=enc)
    return path


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """CDS-style downloads: t2m and sp per day, u (2 levels) for the three days at once."""
    d = tmp_path_factory.mktemp("era5_downloads")
    rng = np.random.default_rng(22)
    files: dict[str, list[Path]] = {"t2m": [], "sp": [], "u": []}
    for day in DAYS:
        t2m = _field(rng, (24, 9, 12), 275.0, 8.0)
        t2m[3, 2, 4] = np.nan  # a missing value: _FillValue in the file, NaN after decoding
        files["t2m"].append(_write(d / f"t2m_{day}.nc", "t2m", t2m, _hours(day), "K"))
        sp = _field(rng, (24, 9, 12), 98000.0, 900.0)
        files["sp"].append(_write(d / f"sp_{day}.nc", "sp", sp, _hours(day), "Pa"))
    u = _field(rng, (72, 2, 9, 12), 5.0, 10.0)
    times = np.concatenate([_hours(day) for day in DAYS])
    files["u"].append(_write(d / "u_2020-01.nc", "u", u, times, "m s**-1"))
    return files


def _reference(files: dict[str, list[Path]]) -> np.ndarray:
    """(72, 4, 9, 12) float32: each file decoded by xarray, concatenated along time."""

    def decode(paths: list[Path], var: str, level: int | None) -> np.ndarray:
        parts = []
        for p in paths:
            with xr.open_dataset(p, mask_and_scale=True) as ds:
                da = ds[var] if level is None else ds[var].isel(level=level)
                parts.append(np.asarray(da.values, dtype=np.float64))
        return np.concatenate(parts)

    cols = [decode(files["t2m"], "t2m", None), decode(files["sp"], "sp", None),
            decode(files["u"], "u", 0), decode(files["u"], "u", 1)]  # fmt: skip
    return np.stack(cols, axis=1).astype(np.float32)


def _all(files: dict[str, list[Path]]) -> list[Path]:
    return [*files["t2m"], *files["sp"], *files["u"]]


def test_one_variable_per_file_equals_xarray(downloads: dict[str, list[Path]]) -> None:
    ref = _reference(downloads)
    # Any order of the files: the times order them.
    grid = read_netcdf(list(reversed(_all(downloads))), variables=NAMES)
    assert isinstance(grid.values, LazyGrid)
    assert grid.values.shape == (72, 4, 9, 12) and grid.names == NAMES
    assert np.array_equal(grid.time, np.concatenate([_hours(d) for d in DAYS]).astype("M8[ns]"))
    # Block reads across the file boundaries (steps 20..50 span three t2m files).
    np.testing.assert_allclose(grid.values[20:50], ref[20:50], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(grid.values), ref, rtol=0, atol=1e-12, equal_nan=True)
    assert np.isnan(ref).sum() == 3 and np.isnan(ref[3, 0, 2, 4])  # one per t2m file
    # A window of one unit (what time-grouped units pass the reader).
    day2 = read_netcdf(_all(downloads), NAMES, ("2020-01-02T00:00:00", "2020-01-02T23:00:00"))
    np.testing.assert_allclose(np.asarray(day2.values), ref[24:48], rtol=0, atol=1e-12)


def test_zarr_one_array_per_variable_split_in_time(
    downloads: dict[str, list[Path]], tmp_path: Path
) -> None:
    """ARCO layout: one array per variable, chunks of one time step × the full field; the
    period split over two stores (days 1–2, day 3), joined in time."""
    parts, encoding = {}, {}
    for name in ("t2m", "sp", "u"):
        raw = [xr.open_dataset(p).load() for p in downloads[name]]
        enc = raw[0][name].encoding
        # The files' int16 packing again (re-encoding the decoded values restores the integers).
        encoding[name] = {
            "dtype": "int16",
            "chunks": (1, *raw[0][name].shape[1:]),
            **{k: enc[k] for k in ("scale_factor", "add_offset", "_FillValue")},
        }
        parts[name] = xr.concat([r[name] for r in raw], dim="time")
    ds = xr.Dataset(parts)
    for name in parts:
        ds[name].encoding = {}
    for store, steps in (("a.zarr", slice(0, 48)), ("b.zarr", slice(48, 72))):
        ds.isel(time=steps).to_zarr(tmp_path / store, zarr_format=2, encoding=encoding)
    # Reference: xarray's decode of the stores (one packing for all days now, so not the files').
    cols = []
    for name, level in (("t2m", None), ("sp", None), ("u", 0), ("u", 1)):
        col = []
        for store in ("a.zarr", "b.zarr"):
            with xr.open_zarr(tmp_path / store, chunks=None) as z:
                da = z[name] if level is None else z[name].isel(level=level)
                col.append(np.asarray(da.values, dtype=np.float64))
        cols.append(np.concatenate(col))
    zref = np.stack(cols, axis=1).astype(np.float32)
    (grid,) = read_zarr([tmp_path / "b.zarr", tmp_path / "a.zarr"], variables=NAMES)
    assert grid.values.shape == (72, 4, 9, 12)
    np.testing.assert_allclose(np.asarray(grid.values), zref, rtol=0, atol=1e-12, equal_nan=True)


def test_units_grouped_by_time_and_ingested(
    downloads: dict[str, list[Path]], tmp_path: Path
) -> None:
    """unit: file with a variables list groups the one-variable files per day (3 units, the
    monthly u file read a day at a time), as unit: time does; unit: month makes one unit; the
    store equals the reference."""
    ref = _reference(downloads)
    spec = SourceSpec("era5", "netcdf", sorted(_all(downloads)), options={"variables": NAMES})
    units = plan_units([spec])
    assert [len(u.paths) for u in units] == [3, 3, 3]
    assert units[1].options["time_slice"] == ("2020-01-02T00:00:00", "2020-01-02T23:00:00")
    monthly = SourceSpec("era5", "netcdf", spec.paths, options=spec.options, unit="month")
    assert [len(u.paths) for u in plan_units([monthly])] == [7]
    # Without a variables list, unit: file stays one unit per file; unit: time groups.
    per_file = SourceSpec("era5", "netcdf", spec.paths)
    assert [len(u.paths) for u in plan_units([per_file])] == [1] * 7
    by_time = SourceSpec("era5", "netcdf", spec.paths, unit="time")
    assert [u.paths for u in plan_units([by_time])] == [u.paths for u in units]

    manifest = prepare_store([spec], tmp_path / "store", progress=False, isolate=False)
    assert manifest is not None and not manifest["rejects"], manifest["rejects"]
    with GridStore(tmp_path / "store") as store:
        assert store.names == NAMES and len(store) == 72
        np.testing.assert_allclose(store.read(0, 72), ref, rtol=0, atol=1e-12, equal_nan=True)


def test_misaligned_times_are_refused_naming_the_files(
    downloads: dict[str, list[Path]], tmp_path: Path
) -> None:
    """sp lacks 05:00 on 2 January: the read names the variables' files and the missing hour,
    and says how to fix it; through prepare, that day's unit is rejected, the others kept."""
    gap = tmp_path / "sp_2020-01-02.nc"
    with xr.open_dataset(downloads["sp"][1], mask_and_scale=False) as ds:
        cut = ds.drop_isel(time=5).load()
    cut.to_netcdf(gap, encoding={"time": {"units": "hours since 1900-01-01"}})
    files = [*downloads["t2m"], downloads["sp"][0], gap, downloads["sp"][2], *downloads["u"]]
    with pytest.raises(ValueError, match="different time axes") as err:
        read_netcdf(files, variables=NAMES)
    msg = str(err.value)
    assert "sp (71 of 72 steps, missing 1: 2020-01-02T05:00:00" in msg
    assert str(gap) in msg and str(downloads["t2m"][1]) in msg and "Fix:" in msg

    spec = SourceSpec("era5", "netcdf", files, options={"variables": NAMES})
    manifest = prepare_store([spec], tmp_path / "store", progress=False, isolate=False)
    assert manifest is not None
    (reject,) = manifest["rejects"]
    assert reject["unit"] == "era5-00001" and str(gap) in reject["reason"]
    assert manifest["sources"]["era5"]["n_samples"] == 48
