"""Grid readers: GRIB (cfgrib), Zarr (ARCO/WB2 style) and GeoTIFF (rasterio).

References: GRIB against cfgrib+xarray and raw ecCodes messages; Zarr against the netCDF reader
on the same (converted) data; GeoTIFF against the packed counts written by the fixture, the
original ERA5 grid, rasterio.warp.transform of pixel centres and a meridian-arc formula.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import eccodes
import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from affine import Affine
from rasterio.warp import transform as warp_transform

from scigpt.data_pipeline.ingest.base import GridArray, ReaderError, get_reader
from scigpt.data_pipeline.ingest.geotiff import read_geotiff
from scigpt.data_pipeline.ingest.grib import read_grib
from scigpt.data_pipeline.ingest.netcdf import read_netcdf
from scigpt.data_pipeline.ingest.zarr_store import WB2_ALIASES, read_zarr

GRIB_NAME = "era5-levels-members.grib"


@pytest.fixture(scope="module")
def grib_path(shared_data: Path) -> Path:
    return shared_data / "era5" / "grib" / GRIB_NAME


@pytest.fixture(scope="module")
def grib_split(grib_path: Path) -> list[GridArray]:
    return read_grib([grib_path])


@pytest.fixture(scope="module")
def grib_xr(grib_path: Path) -> xr.Dataset:
    """The reference: cfgrib through xarray, no reader code involved."""
    ds = xr.open_dataset(grib_path, engine="cfgrib", backend_kwargs={"indexpath": ""})
    return ds.load()


def _messages(path: Path) -> list[dict]:
    """Every message of a GRIB file through ecCodes: keys and decoded values."""
    out = []
    with open(path, "rb") as f:
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            keys = ("shortName", "level", "number", "dataDate", "dataTime", "Ni", "Nj")
            msg = {k: eccodes.codes_get(h, k) for k in keys}
            msg["lat0"] = eccodes.codes_get(h, "latitudeOfFirstGridPointInDegrees")
            msg["values"] = eccodes.codes_get_values(h)  # float64, scan order
            msg["bytes"] = eccodes.codes_get_message(h)
            eccodes.codes_release(h)
            out.append(msg)
    return out


# --------------------------------------------------------------------------------------------
# GRIB


def test_grib_split_members_match_cfgrib(grib_split: list[GridArray], grib_xr: xr.Dataset) -> None:
    assert [g.attrs["member"] for g in grib_split] == list(range(10))
    for g in grib_split:
        assert g.names == ["z850", "z500", "t850", "t500"]  # file order, levels as stored
        assert g.values.shape == (4, 4, 61, 120) and g.values.dtype == np.float32
        k = g.attrs["member"]
        for v, name in enumerate(g.names):
            short, level = name[0], int(name[1:])
            ref = grib_xr[short].sel(number=k, isobaricInhPa=level)
            assert np.array_equal(g.values[:, v], ref.values), (k, name)
    g = grib_split[0]
    assert g.variables[g.names.index("t850")].units == "K"
    assert g.variables[g.names.index("z500")].level == 500.0
    assert np.array_equal(g.lat, grib_xr["latitude"].values)
    assert g.lat[0] == 90.0 and g.lat[-1] == -90.0  # descending, as in the file
    assert g.lon[0] == 0.0 and g.lon[-1] == 357.0
    assert np.array_equal(g.time, grib_xr["valid_time"].values)
    assert g.time.dtype == np.dtype("datetime64[ns]")
    assert g.time[-1] == np.datetime64("2017-01-02T12:00")
    assert g.source == "era5-grib:grib"


def test_grib_matches_raw_eccodes_message(grib_split: list[GridArray], grib_path: Path) -> None:
    msgs = _messages(grib_path)
    assert len(msgs) == 160
    msg = next(
        m
        for m in msgs
        if (m["shortName"], m["level"], m["number"], m["dataDate"], m["dataTime"])
        == ("t", 500, 7, 20170102, 1200)
    )
    field = msg["values"].reshape(msg["Nj"], msg["Ni"])  # (H, W), north row first
    g = grib_split[7]
    got = g.values[list(g.time).index(np.datetime64("2017-01-02T12:00")), g.names.index("t500")]
    assert np.array_equal(got, field.astype(np.float32))
    assert g.lat[0] == msg["lat0"]


@pytest.fixture(scope="module")
def small_grib(grib_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Derived: the messages of the first time step only (40 of 160), to keep reads quick."""
    path = tmp_path_factory.mktemp("grib") / "first_step.grib"
    msgs = [
        m["bytes"] for m in _messages(grib_path) if (m["dataDate"], m["dataTime"]) == (20170101, 0)
    ]
    path.write_bytes(b"".join(msgs))
    return path


def test_grib_member_mean_and_pick(small_grib: Path, grib_xr: xr.Dataset) -> None:
    first = grib_xr.isel(time=[0])
    (mean,) = read_grib([small_grib], variables=["t850", "z500"], members="mean")
    assert mean.names == ["t850", "z500"] and mean.attrs["member"] == "mean"
    assert mean.attrs["members"] == list(range(10))
    ref = first["t"].sel(isobaricInhPa=850).values.astype(np.float64).mean(axis=0)
    assert np.array_equal(mean.values[:, 0], ref.astype(np.float32))
    assert not np.array_equal(mean.values[:, 0], first["t"].sel(number=0, isobaricInhPa=850))

    (three,) = read_grib([small_grib], variables=["z500"], members=3)
    assert three.attrs["member"] == 3
    assert np.array_equal(three.values[:, 0], first["z"].sel(number=3, isobaricInhPa=500).values)
    with pytest.raises(ReaderError, match=r"member 12 is not in the files"):
        read_grib([small_grib], variables=["z500"], members=12)
    with pytest.raises(ReaderError, match=r"\['q700'\] are not in the files") as err:
        read_grib([small_grib], variables=["t850", "q700"])
    assert err.value.path == str(small_grib)


def _write(path: Path, messages: list[bytes]) -> Path:
    path.write_bytes(b"".join(messages))
    return path


def _surface_pressure(msg: dict) -> bytes:
    """A derived sp message (typeOfLevel surface) cloned from a t message; values made up."""
    h = eccodes.codes_new_from_message(msg["bytes"])
    eccodes.codes_set(h, "paramId", 134)
    eccodes.codes_set(h, "typeOfLevel", "surface")
    eccodes.codes_set(h, "level", 0)
    eccodes.codes_set_values(h, msg["values"] * 400.0)  # K * 400 ≈ 1e5: a Pa-sized field
    data = eccodes.codes_get_message(h)
    eccodes.codes_release(h)
    return data


def test_grib_several_files_hypercubes_and_time_split(
    tmp_path: Path, grib_path: Path, grib_split: list[GridArray]
) -> None:
    msgs = _messages(grib_path)
    t_msgs = [m["bytes"] for m in msgs if m["shortName"] == "t"]
    z500 = [m["bytes"] for m in msgs if m["shortName"] == "z" and m["level"] == 500]
    sp = [_surface_pressure(m) for m in msgs if m["shortName"] == "t" and m["level"] == 850]
    a = _write(tmp_path / "t.grib", t_msgs)
    b = _write(tmp_path / "z500_and_sp.grib", z500 + sp)  # two hypercubes in one file
    got = read_grib([a, b])
    assert got[0].names == ["t850", "t500", "z500", "sp"]
    sp_ref = {(m["number"], m["dataDate"], m["dataTime"]): m for m in _messages(b)}
    for g, whole in zip(got, grib_split, strict=True):
        for name in ("t850", "t500", "z500"):
            assert np.array_equal(
                g.values[:, g.names.index(name)], whole.values[:, whole.names.index(name)]
            )
        k = g.attrs["member"]
        for ti, when in enumerate(g.time):
            day = int(str(when)[:10].replace("-", ""))
            m = sp_ref[(k, day, int(str(when)[11:13]) * 100)]
            field = m["values"].reshape(m["Nj"], m["Ni"]).astype(np.float32)
            assert np.array_equal(g.values[ti, 3], field)
    assert got[0].variables[3].units == "Pa" and got[0].variables[3].level is None

    # Time-split downloads of one variable are concatenated in time order, whatever the order.
    early = [m["bytes"] for m in msgs if m["shortName"] == "t" and m["dataDate"] == 20170101]
    late = [m["bytes"] for m in msgs if m["shortName"] == "t" and m["dataDate"] == 20170102]
    split = read_grib(
        [_write(tmp_path / "late.grib", late), _write(tmp_path / "early.grib", early)],
        variables=["t500"],
        members=5,
    )[0]
    assert np.array_equal(split.time, grib_split[5].time)
    assert np.array_equal(split.values[:, 0], grib_split[5].values[:, 3])
    with pytest.raises(ReaderError, match="is also in"):
        read_grib([tmp_path / "early.grib", tmp_path / "early.grib"], members=0)


def test_grib_bad_input_is_refused(tmp_path: Path, grib_path: Path) -> None:
    msgs = _messages(grib_path)
    data = b"".join(m["bytes"] for m in msgs[:8])
    truncated = tmp_path / "truncated.grib"
    truncated.write_bytes(data[: len(data) - 500])  # cuts the last message short
    with pytest.raises(ReaderError, match="truncated") as err:
        read_grib([truncated])
    assert err.value.path == str(truncated)
    junk = tmp_path / "junk.grib"
    junk.write_bytes(b"not grib at all" * 64)
    with pytest.raises(ReaderError, match="cannot read as GRIB"):
        read_grib([junk])
    with pytest.raises(ReaderError, match="no such GRIB file"):
        read_grib([tmp_path / "absent.grib"])

    h = eccodes.codes_new_from_message(msgs[0]["bytes"])
    eccodes.codes_set(h, "paramId", 31)  # sea-ice cover: not in the ERA5 table
    unknown = _write(tmp_path / "ci.grib", [eccodes.codes_get_message(h)])
    eccodes.codes_release(h)
    with pytest.raises(ReaderError, match=r"not in the ERA5 table") as err:
        read_grib([unknown])
    assert "paramId 31" in str(err.value)
    assert not list(grib_path.parent.glob("*.idx"))  # nothing written next to the input


def test_readers_are_registered() -> None:
    assert get_reader("grib").__wrapped__ is read_grib
    assert get_reader("zarr").__wrapped__ is read_zarr
    assert get_reader("geotiff").__wrapped__ is read_geotiff


# --------------------------------------------------------------------------------------------
# Zarr


@pytest.fixture(scope="module")
def netcdf_grid(sample_era5_dir: Path) -> GridArray:
    return read_netcdf(sorted(sample_era5_dir.glob("*.nc")))


def _wb2_store(sample_dir: Path, out: Path, zarr_format: int) -> Path:
    """Derived from the shipped ERA5 sample: a WeatherBench-2 style store (long names, float32,
    one chunk per time step), with dims stored in several orders."""
    long = {short: name for name, short in WB2_ALIASES.items()}
    ds = xr.merge([xr.load_dataset(p) for p in sorted(sample_dir.glob("*.nc"))])
    ds = ds.rename({v: long[str(v)] for v in ds.data_vars})
    for name in ds.data_vars:
        ds[name] = ds[name].astype(np.float32)
        ds[name].encoding = {}  # drop the netCDF int16 packing
    ds["10m_u_component_of_wind"] = ds["10m_u_component_of_wind"].transpose(
        "latitude", "longitude", "time"
    )
    ds["specific_humidity"] = ds["specific_humidity"].transpose(
        "time", "latitude", "longitude", "level"
    )
    ds["geopotential_at_surface"] = ds["surface_pressure"].isel(time=0, drop=True) * 0
    ds["geopotential_at_surface"].attrs = {"units": "m**2 s**-2"}
    encoding = {
        name: {"chunks": tuple(1 if d == "time" else n for d, n in da.sizes.items())}
        for name, da in ds.data_vars.items()
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr v3 warns that consolidated metadata is not spec
        ds.to_zarr(out, zarr_format=zarr_format, encoding=encoding, consolidated=True)
    return out


@pytest.fixture(scope="module")
def wb2_store(sample_era5_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _wb2_store(sample_era5_dir, tmp_path_factory.mktemp("zarr") / "wb2.zarr", 2)


def _chunk_file(store: Path, name: str, coords: tuple[int, ...]) -> Path:
    arr = zarr.open_array(store=str(store), path=name, mode="r")
    return store / name / arr.metadata.encode_chunk_key(coords)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_equals_netcdf(
    zarr_format: int, netcdf_grid: GridArray, sample_era5_dir: Path, tmp_path: Path
) -> None:
    store = _wb2_store(sample_era5_dir, tmp_path / "wb2.zarr", zarr_format)
    names = netcdf_grid.names
    (got,) = read_zarr([store], variables=names)
    assert got.names == names
    assert np.array_equal(got.values, netcdf_grid.values)
    assert got.variables == netcdf_grid.variables
    assert np.array_equal(got.lat, netcdf_grid.lat) and np.array_equal(got.lon, netcdf_grid.lon)
    assert np.array_equal(got.time, netcdf_grid.time)
    with pytest.raises(ReaderError, match=r"geopotential_at_surface \(static"):
        read_zarr([store])  # variables=None must not skip fields silently


def test_zarr_time_slice_and_split_stores(
    wb2_store: Path, netcdf_grid: GridArray, tmp_path: Path
) -> None:
    (got,) = read_zarr(
        [wb2_store], variables=["sp", "q850"], time_slice=("2020-01-01T06", "2020-01-01T11")
    )
    assert np.array_equal(got.time, netcdf_grid.time[6:12])
    for v, name in enumerate(got.names):
        assert np.array_equal(
            got.values[:, v], netcdf_grid.values[6:12, netcdf_grid.names.index(name)]
        )
    (day,) = read_zarr([wb2_store], variables=["sp"], time_slice=("2020-01-01", "2020-01-01"))
    assert len(day.time) == 24  # a partial date covers its whole day, as in xarray's .sel
    with pytest.raises(ReaderError, match="selects no times"):
        read_zarr([wb2_store], variables=["sp"], time_slice=("2021-01-01", "2021-01-02"))

    # Two stores, one per variable group (as WB2 ships them): combined variable-wise.
    with xr.open_zarr(wb2_store, chunks=None) as ds:
        ds[["surface_pressure"]].to_zarr(tmp_path / "a.zarr", zarr_format=2)
        ds[["u_component_of_wind"]].to_zarr(tmp_path / "b.zarr", zarr_format=2)
    (both,) = read_zarr([tmp_path / "a.zarr", tmp_path / "b.zarr"])
    assert both.names == ["sp", "u500", "u700", "u850"]
    for v, name in enumerate(both.names):
        assert np.array_equal(
            both.values[:, v], netcdf_grid.values[:, netcdf_grid.names.index(name)]
        )


def test_zarr_corrupt_and_missing_chunks(
    wb2_store: Path, tmp_path: Path, netcdf_grid: GridArray
) -> None:
    store = tmp_path / "damaged.zarr"
    shutil.copytree(wb2_store, store)
    # specific_humidity is stored (time, latitude, longitude, level): chunk (20, 0, 0, 0).
    _chunk_file(store, "specific_humidity", (20, 0, 0, 0)).write_bytes(b"garbage" * 100)
    _chunk_file(store, "surface_pressure", (3, 0, 0)).unlink()

    # Lazy: a window that avoids both damaged chunks reads fine.
    (ok,) = read_zarr(
        [store], variables=["q700", "sp"], time_slice=("2020-01-01T05", "2020-01-01T19")
    )
    assert np.array_equal(
        ok.values[:, 0], netcdf_grid.values[5:20, netcdf_grid.names.index("q700")]
    )

    # Values are decoded lazily (LazyGrid): a corrupt chunk is refused when it is read.
    with pytest.raises(ReaderError, match="specific_humidity") as err:
        np.asarray(read_zarr([store], variables=["q700"])[0].values)
    assert err.value.path == str(store)
    with pytest.raises(ReaderError, match=r"chunk\(s\) .* missing") as err:
        read_zarr([store], variables=["sp"])
    assert err.value.path == str(store) and "surface_pressure" in str(err.value)
    (filled,) = read_zarr([store], variables=["sp"], missing_chunks="fill")
    assert np.isnan(filled.values[3]).all() and not np.isnan(filled.values[[2, 4]]).any()

    with pytest.raises(ReaderError, match="no such Zarr store"):
        read_zarr([tmp_path / "absent.zarr"])
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ReaderError, match="cannot open as a Zarr store"):
        read_zarr([tmp_path / "empty.zarr"])


def test_zarr_custom_level_dim(wb2_store: Path, tmp_path: Path, netcdf_grid: GridArray) -> None:
    store = tmp_path / "isobaric.zarr"
    with xr.open_zarr(wb2_store, chunks=None) as ds:
        sub = ds[["v_component_of_wind"]].load().rename({"level": "isobaric"})
    sub["isobaric"] = sub["isobaric"] * 100  # in Pa, as its units say
    sub["isobaric"].attrs = {"units": "Pa"}
    sub.to_zarr(store, zarr_format=2)
    with pytest.raises(ReaderError, match=r"has dims .*isobaric"):
        read_zarr([store])
    (got,) = read_zarr([store], level_names=["isobaric"])
    assert got.names == ["v500", "v700", "v850"]
    for v, name in enumerate(got.names):
        assert np.array_equal(
            got.values[:, v], netcdf_grid.values[:, netcdf_grid.names.index(name)]
        )


def test_zarr_wrong_units_named(wb2_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "units.zarr"
    with xr.open_zarr(wb2_store, chunks=None) as ds:
        sub = ds[["surface_pressure"]].load()
    sub["surface_pressure"].attrs["units"] = "K"
    sub.to_zarr(store, zarr_format=2)
    with pytest.raises(ReaderError, match=r"surface_pressure: units 'K' \(temperature\)") as err:
        read_zarr([store])
    assert err.value.path == str(store)


# --------------------------------------------------------------------------------------------
# GeoTIFF

GEO_VARS = ["d2m", "u10", "v10"]
GEO_UNITS = ["K", "m s**-1", "m s**-1"]
GEO_SCALE, GEO_NODATA = 0.01, -32768
UTM_RES, UTM_X0, UTM_Y0, UTM_H, UTM_W = 10_000.0, 345_000.0, 5_500_000.0, 40, 30
UTM_SCALE, UTM_NODATA = 0.001, -9999


def _era5(sample_dir: Path) -> xr.Dataset:
    return xr.merge([xr.load_dataset(sample_dir / f"ERA5_2020-01-01_{n}.nc") for n in GEO_VARS])


@pytest.fixture(scope="module")
def geo_dir(sample_era5_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Derived from the shipped ERA5 sample: two EPSG:4326 multiband GeoTIFFs (steps 3 and 9;
    d2m, u10, v10 as int16 counts with GDAL scale/offset, band units, nodata in a corner) and
    HLS-style single-band UTM 32N files (u10 → B01, v10 → B02; nearest ERA5 cell of each
    pixel centre, int16 with scale_factor tags, nodata outside the ERA5 domain)."""
    out = tmp_path_factory.mktemp("geotiff")
    era5 = _era5(sample_era5_dir)
    lat, lon = era5["latitude"].values, era5["longitude"].values
    geo = Affine(0.25, 0, float(lon[0]) - 0.125, 0, -0.25, float(lat[0]) + 0.125)
    for step in (9, 3):  # written out of time order on purpose
        when = str(era5["time"].values[step])[:16].replace("-", "").replace(":", "")
        counts = []
        for name in GEO_VARS:
            x = era5[name].isel(time=step).values.astype(np.float64)
            offset = float(np.floor(x.min()))
            c = np.round((x - offset) / GEO_SCALE).astype(np.int16)
            c[:3, :2] = GEO_NODATA
            counts.append((c, offset))
        profile = dict(driver="GTiff", height=len(lat), width=len(lon), count=3, dtype="int16")
        with rasterio.open(
            out / f"era5_{when}.tif",
            "w",
            crs="EPSG:4326",
            transform=geo,
            nodata=GEO_NODATA,
            **profile,
        ) as dst:
            for i, (c, _) in enumerate(counts, start=1):
                dst.write(c, i)
                dst.set_band_description(i, GEO_VARS[i - 1])
                dst.set_band_unit(i, GEO_UNITS[i - 1])
            dst.scales = (GEO_SCALE,) * 3
            dst.offsets = tuple(o for _, o in counts)

    utm = Affine(UTM_RES, 0, UTM_X0, 0, -UTM_RES, UTM_Y0)
    cols, rows = np.meshgrid(np.arange(UTM_W) + 0.5, np.arange(UTM_H) + 0.5)
    xs, ys = UTM_X0 + UTM_RES * cols, UTM_Y0 - UTM_RES * rows
    plon, plat = (
        np.asarray(a).reshape(UTM_H, UTM_W)
        for a in warp_transform("EPSG:32632", "EPSG:4326", xs.ravel(), ys.ravel())
    )
    i = np.round((lat[0] - plat) / 0.25).astype(int)
    j = np.round((plon - lon[0]) / 0.25).astype(int)
    inside = (i >= 0) & (i < len(lat)) & (j >= 0) & (j < len(lon))
    for step, doy_time in ((10, "2020001T100000"), (16, "2020001T160000")):
        for band, name in (("B01", "u10"), ("B02", "v10")):
            field = era5[name].isel(time=step).values
            c = np.full((UTM_H, UTM_W), UTM_NODATA, dtype=np.int16)
            c[inside] = np.round(field[i[inside], j[inside]] / UTM_SCALE).astype(np.int16)
            path = out / f"HLS.L30.T32TMT.{doy_time}.v2.0.{band}.tif"
            with rasterio.open(
                path,
                "w",
                driver="GTiff",
                height=UTM_H,
                width=UTM_W,
                count=1,
                dtype="int16",
                crs="EPSG:32632",
                transform=utm,
                nodata=UTM_NODATA,
            ) as dst:
                dst.write(c, 1)
                dst.update_tags(1, scale_factor=str(UTM_SCALE), add_offset="0")
    return out


def test_geotiff_geographic_multiband(geo_dir: Path, sample_era5_dir: Path) -> None:
    paths = sorted(geo_dir.glob("era5_*.tif"), reverse=True)
    (g,) = read_geotiff(paths, units=GEO_UNITS, time_from_name=r"era5_(\d{8}T\d{4})")
    era5 = _era5(sample_era5_dir)
    assert g.names == GEO_VARS  # from the band descriptions
    assert [v.units for v in g.variables] == GEO_UNITS
    assert np.array_equal(g.time, era5["time"].values[[3, 9]])  # sorted by time
    assert g.lat.ndim == 1 and np.array_equal(g.lat, era5["latitude"].values.astype(np.float64))
    assert np.array_equal(g.lon, era5["longitude"].values.astype(np.float64))
    for ti, path in enumerate(sorted(paths)):
        with rasterio.open(path) as src:
            for v in range(3):
                raw = src.read(v + 1)
                expected = raw * GEO_SCALE + src.offsets[v]
                expected[raw == GEO_NODATA] = np.nan
                assert np.array_equal(g.values[ti, v], expected.astype(np.float32), equal_nan=True)
    assert np.isnan(g.values[:, :, :3, :2]).all() and g.mask.sum() == g.values.size - 2 * 3 * 6
    # Unpacked values reproduce ERA5 to half a count.
    orig = np.stack([era5[n].values[[3, 9]] for n in GEO_VARS], axis=1)
    ok = g.mask
    assert np.abs(g.values[ok] - orig[ok]).max() <= GEO_SCALE / 2 + 1e-4

    (raw,) = read_geotiff(
        paths,
        units=GEO_UNITS,
        time_from_name=r"era5_(\d{8}T\d{4})",
        nodata_to_nan=False,
        apply_scale=False,
    )
    assert raw.values[0, 0, 0, 0] == GEO_NODATA and raw.mask.all()
    with pytest.raises(ReaderError, match=r"says units 'K', the option says '1'") as err:
        read_geotiff(paths[:1], time="2020-01-01T03:00")
    assert err.value.path == str(paths[0])
    with pytest.raises(ReaderError, match=r"variable 'd2m': unknown units 'furlong'"):
        read_geotiff(paths[:1], units=["furlong", "m/s", "m/s"], time="2020-01-01")


def _meridian_lat(northing: float) -> float:
    """Latitude on the UTM central meridian (WGS84, k0 = 0.9996) from the meridian arc series."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    phi = np.radians(np.linspace(40, 60, 200_001))
    arc = a * (
        (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256) * phi
        - (3 * e2 / 8 + 3 * e2**2 / 32 + 45 * e2**3 / 1024) * np.sin(2 * phi)
        + (15 * e2**2 / 256 + 45 * e2**3 / 1024) * np.sin(4 * phi)
        - (35 * e2**3 / 3072) * np.sin(6 * phi)
    )
    return float(np.degrees(np.interp(northing / k0, arc, phi)))


def test_geotiff_utm_per_band_files(geo_dir: Path, sample_era5_dir: Path) -> None:
    paths = sorted(geo_dir.glob("HLS.*.tif"))
    (g,) = read_geotiff(
        paths,
        band_names=["B02", "B01"],
        variables=["v10", "u10"],
        units="m s**-1",
        time_from_name=r"\.(\d{7}T\d{6})\.",
    )
    assert g.names == ["v10", "u10"]
    assert np.array_equal(g.time, np.array(["2020-01-01T10", "2020-01-01T16"], "datetime64[ns]"))
    assert g.lat.shape == g.lon.shape == (UTM_H, UTM_W)

    # Pixel centres computed here, projected by rasterio.warp.
    cols, rows = np.meshgrid(np.arange(UTM_W), np.arange(UTM_H))
    xs, ys = UTM_X0 + UTM_RES * (cols + 0.5), UTM_Y0 - UTM_RES * (rows + 0.5)
    lon, lat = warp_transform("EPSG:32632", "EPSG:4326", xs.ravel(), ys.ravel())
    assert np.allclose(g.lat, np.reshape(lat, (UTM_H, UTM_W)), rtol=0, atol=1e-9)
    assert np.allclose(g.lon, np.reshape(lon, (UTM_H, UTM_W)), rtol=0, atol=1e-9)
    # Independently of PROJ: column 15 lies on the central meridian (9°E), where northing is
    # the scaled meridian arc.
    assert np.allclose(g.lon[:, 15], 9.0, atol=1e-9)
    for r in (0, 17, UTM_H - 1):
        assert abs(g.lat[r, 15] - _meridian_lat(UTM_Y0 - UTM_RES * (r + 0.5))) < 1e-6
    assert g.lat[0, 0] > g.lat[-1, 0]  # north row first

    era5 = _era5(sample_era5_dir)
    for ti, doy in enumerate(("2020001T100000", "2020001T160000")):
        for v, band in enumerate(("B02", "B01")):
            with rasterio.open(geo_dir / f"HLS.L30.T32TMT.{doy}.v2.0.{band}.tif") as src:
                raw = src.read(1)
            expected = np.where(raw == UTM_NODATA, np.nan, raw * UTM_SCALE).astype(np.float32)
            assert np.array_equal(g.values[ti, v], expected, equal_nan=True)
        # Each valid pixel holds the ERA5 value of the cell nearest to its reported lat/lon.
        i = np.round((55.0 - g.lat) / 0.25).astype(int)
        j = np.round(g.lon / 0.25).astype(int)
        ok = g.mask[ti, 0]
        assert 0 < ok.sum() < ok.size  # the east edge leaves the ERA5 domain: nodata there
        ref = era5["v10"].isel(time=[10, 16][ti]).values[i[ok], j[ok]]
        assert np.abs(g.values[ti, 0][ok] - ref).max() <= UTM_SCALE / 2 + 1e-5


def test_geotiff_bad_input_is_refused(geo_dir: Path, tmp_path: Path) -> None:
    b01 = sorted(geo_dir.glob("HLS.*B01.tif"))
    with pytest.raises(ReaderError, match="differs from"):
        read_geotiff([b01[0], next(geo_dir.glob("era5_*.tif"))], time="2020-01-01")
    with pytest.raises(ReaderError, match=r"no band named 'B07'"):
        read_geotiff(b01, band_names=["B07"], time_from_name=r"\.(\d{7}T\d{6})\.")
    with pytest.raises(ReaderError, match="no descriptions"):
        read_geotiff(b01, time_from_name=r"\.(\d{7}T\d{6})\.")
    with pytest.raises(ReaderError, match="does not match the file name"):
        read_geotiff(b01, variables=["u10"], time_from_name=r"_(\d{8})_")
    truncated = tmp_path / "truncated.tif"
    data = b01[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError) as err:
        read_geotiff([truncated], variables=["u10"], time="2020-01-01")
    assert err.value.path == str(truncated)
    with pytest.raises(ValueError, match="exactly one of time"):
        read_geotiff(b01, variables=["u10"])
