"""MODIS HDF4-EOS reader and generic HDF5 grid reader against independent references.

References: values read directly with pyhdf (SD) or h5py and decoded here by hand; geolocation
against PROJ (rasterio.warp.transform) and against the parent-tile metadata the file keeps.
Derived files (edited HDF4 copies, HDF5 rewrites) are built in tmp_path from the real samples.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from pyhdf.SD import SD, SDC
from rasterio.crs import CRS
from rasterio.warp import transform

from scigpt.data_pipeline.ingest.base import GridArray, ReaderError, get_reader
from scigpt.data_pipeline.ingest.hdf5_grid import read_hdf5_grid
from scigpt.data_pipeline.ingest.modis import (
    MODIS_SPHERE_RADIUS,
    hdf4_attributes,
    read_modis_hdf4,
    sinusoidal_inverse,
)

MOD09 = "MOD09A1.A2017193.h18v04.006.2017202035302.hdf"
MCD15 = "MCD15A2.A2002185.h00v08.005.2007172150237.hdf"
MODIS_SINU = "+proj=sinu +R=6371007.181 +nadgrids=@null +wktext"
TILE = 1111950.519667  # m, side of a MODIS sinusoidal tile (10° of latitude on the sphere)


@pytest.fixture(scope="module")
def mod09(shared_data: Path) -> Path:
    return shared_data / "modis" / MOD09


@pytest.fixture(scope="module")
def mcd15(shared_data: Path) -> Path:
    return shared_data / "modis" / MCD15


@pytest.fixture(scope="module")
def mod09_grid(mod09: Path) -> GridArray:
    [grid] = read_modis_hdf4([mod09])
    return grid


def _sds(path: Path, name: str) -> tuple[np.ndarray, dict]:
    """Raw values and attributes of one SDS, straight from pyhdf."""
    sd = SD(str(path), SDC.READ)
    try:
        sds = sd.select(name)
        return np.asarray(sds.get()), sds.attributes()
    finally:
        sd.end()


def _sds_names(path: Path) -> list[str]:
    sd = SD(str(path), SDC.READ)
    try:
        info = sd.datasets()
        return sorted(info, key=lambda n: info[n][3])
    finally:
        sd.end()


def _copy_hdf4(
    src: Path,
    dst: Path,
    *,
    edit: Callable[[str, np.ndarray], np.ndarray] | None = None,
    rename_attrs: dict[str, str | None] | None = None,
    sds_attrs: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Derived HDF4 file: ``src`` rewritten with pyhdf, SDS data edited, global attrs renamed
    (``None`` drops one), SDS attribute values replaced (``sds_attrs[sds][attr]``, same type).
    Types, dimension names and all other attributes are copied as they are."""
    rename_attrs = rename_attrs or {}
    sds_attrs = sds_attrs or {}
    dst.parent.mkdir(parents=True, exist_ok=True)
    s = SD(str(src), SDC.READ)
    d = SD(str(dst), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    try:
        for key, (value, _, typ, _) in s.attributes(full=1).items():
            new = rename_attrs.get(key, key)
            if new is not None:
                d.attr(new).set(typ, value)
        info = s.datasets()
        for name in sorted(info, key=lambda n: info[n][3]):
            dims, shape, typ, _ = info[name]
            si = s.select(name)
            data = si.get()
            if edit is not None:
                data = edit(name, data.copy())
            o = d.create(name, typ, tuple(shape))
            for j, dim in enumerate(dims):
                o.dim(j).setname(dim)
            for key, (value, _, atyp, _) in si.attributes(full=1).items():
                o.attr(key).set(atyp, sds_attrs.get(name, {}).get(key, value))
            o[:] = data
            o.endaccess()
            si.endaccess()
    finally:
        d.end()
        s.end()
    return dst


def _decode_hdf4(raw: np.ndarray, attrs: dict, valid_range: bool = True) -> np.ndarray:
    """Reference decoding: HDF4 calibration value = scale * (raw - offset), masked."""
    values = attrs["scale_factor"] * (raw.astype(np.float64) - attrs["add_offset"])
    values = values.astype(np.float32)
    bad = raw == attrs["_FillValue"]
    if valid_range:
        lo, hi = attrs["valid_range"]
        bad |= (raw < lo) | (raw > hi)
    values[bad] = np.nan
    return values


# --------------------------------------------------------------------------- geolocation


def test_hdf4_attributes_equal_pyhdf(mod09: Path, mcd15: Path) -> None:
    """The one-copy attribute read gives exactly pyhdf's attributes() (text, ints, floats,
    scalars and lists), file-level and per SDS, on both real samples. ~0.1 s."""
    for path in (mod09, mcd15):
        sd = SD(str(path), SDC.READ)
        try:
            assert hdf4_attributes(sd, sd.info()[1]) == sd.attributes()
            for name in sd.datasets():
                sds = sd.select(name)
                got = hdf4_attributes(sds, sds.info()[4])
                want = sds.attributes()
                assert got == want and [type(v) for v in got.values()] == [
                    type(v) for v in want.values()
                ], name
                sds.endaccess()
        finally:
            sd.end()


def test_sinusoidal_inverse_matches_proj() -> None:
    rng = np.random.default_rng(0)
    # Points over the whole map, including both map edges and off-map corners near the dateline.
    x = rng.uniform(-2.05e7, 2.05e7, 4000)
    y = rng.uniform(-1.0e7, 1.0e7, 4000)
    lat, lon = sinusoidal_inverse(x, y)
    on_map = np.abs(x) <= np.pi * MODIS_SPHERE_RADIUS * np.cos(y / MODIS_SPHERE_RADIUS)
    assert 0 < (~on_map).sum() < on_map.sum()
    ref_lon, ref_lat = transform(CRS.from_proj4(MODIS_SINU), "EPSG:4326", x[on_map], y[on_map])
    np.testing.assert_allclose(lat[on_map], ref_lat, rtol=0, atol=1e-9)
    np.testing.assert_allclose(lon[on_map], ref_lon, rtol=0, atol=1e-9)
    # PROJ wraps off-map points to the far side of the globe; they are no place on Earth.
    assert np.isnan(lat[~on_map]).all() and np.isnan(lon[~on_map]).all()

    # Non-zero central meridian and false easting/northing (GCTP ProjParams[4], [6], [7]).
    lat, lon = sinusoidal_inverse(
        x[:500], y[:500], lon0=-100.0, false_easting=1000.0, false_northing=-2000.0
    )
    crs = CRS.from_proj4(f"{MODIS_SINU} +lon_0=-100 +x_0=1000 +y_0=-2000")
    ok = np.isfinite(lon)
    ref_lon, ref_lat = transform(crs, "EPSG:4326", x[:500][ok], y[:500][ok])
    np.testing.assert_allclose(lat[ok], ref_lat, rtol=0, atol=1e-9)
    np.testing.assert_allclose(lon[ok], ref_lon, rtol=0, atol=1e-9)


def test_mod09a1_subset_geolocation(mod09: Path, mod09_grid: GridArray) -> None:
    g = mod09_grid
    assert g.lat.shape == g.lon.shape == (73, 66)
    # The subset's own StructMetadata.0 is used, not the parent tile's OldStructMetadata.0.
    assert g.attrs["struct_metadata"] == "StructMetadata.0"
    # Every pixel centre against PROJ.
    dx, dy = g.attrs["pixel_size_m"]
    x0, y0 = g.attrs["upper_left_m"]
    xx, yy = np.meshgrid(x0 + (np.arange(66) + 0.5) * dx, y0 - (np.arange(73) + 0.5) * dy)
    ref_lon, ref_lat = transform(CRS.from_proj4(MODIS_SINU), "EPSG:4326", xx.ravel(), yy.ravel())
    np.testing.assert_allclose(g.lat.ravel(), ref_lat, rtol=0, atol=1e-9)
    np.testing.assert_allclose(g.lon.ravel(), ref_lon, rtol=0, atol=1e-9)
    # PROVENANCE.md: the Italian Alps near Lake Iseo, ~46.15–45.85°N, 9.78–10.12°E (the upper-
    # left and lower-right corners); pixel centres lie within half a 463 m pixel of them.
    half = 0.5 * 463.3 / 111_000 / np.cos(np.radians(46))  # degrees, generous in longitude
    assert g.lat[0, 0] == pytest.approx(46.15, abs=0.01) and g.lat[-1, -1] == pytest.approx(
        45.85, abs=0.01
    )
    assert g.lon[0, 0] == pytest.approx(9.78, abs=0.01 + half)
    assert g.lon[-1, -1] == pytest.approx(10.12, abs=0.01 + half)
    assert np.all(np.diff(g.lat, axis=0) < 0) and np.all(np.diff(g.lon, axis=1) > 0)
    # The subset lies exactly on the parent tile h18v04's pixel grid, as the parent's metadata
    # (kept in OldStructMetadata.0, parsed here independently) says: 2400 px of TILE/2400 m.
    sd = SD(str(mod09), SDC.READ)
    old = sd.attributes()["OldStructMetadata.0"]
    sd.end()
    ulx, uly = map(float, re.search(r"UpperLeftPointMtrs=\(([^,]+),([^)]+)\)", old).groups())
    # h18v04 sits 0 tiles east of lon 0 (h 18 - 18) and 5 tiles north of the equator (9 - 4)
    assert (ulx, uly) == (0.0, pytest.approx(5 * TILE, abs=1e-2))
    size = TILE / 2400
    assert dx == pytest.approx(size, rel=1e-9) and dy == pytest.approx(size, rel=1e-9)
    col, row = (x0 - ulx) / size, (uly - y0) / size
    assert col == pytest.approx(1626, abs=1e-6) and row == pytest.approx(923, abs=1e-6)


def test_full_tile_structure_and_off_map_pixels(mcd15: Path) -> None:
    [g] = read_modis_hdf4([mcd15], variables=["FparLai_QC"], qc=False)
    assert g.attrs["struct_metadata"] == "StructMetadata.0" and g.attrs["tile"] == "h00v08"
    assert g.lat.shape == (1200, 1200)
    size = TILE / 1200
    # h00v08: x from -20 015 109 m (the antimeridian at the equator), lat 10°N … 0°.
    assert g.lat[0, -1] == pytest.approx(10 - 0.5 * size / MODIS_SPHERE_RADIUS * 180 / np.pi)
    assert np.isnan(g.lat[0, 0])  # the tile's upper-left corner lies beyond the antimeridian
    assert np.nanmin(g.lat) > 0 and np.nanmax(g.lat) < 10
    x = -20015109.354 + (np.arange(1200) + 0.5) * size
    y = TILE - (np.arange(1200) + 0.5) * size
    off = (
        np.abs(x)[None, :] > np.pi * MODIS_SPHERE_RADIUS * np.cos(y / MODIS_SPHERE_RADIUS)[:, None]
    )
    assert g.attrs["off_map_pixels"] == off.sum() > 0
    assert np.array_equal(np.isnan(g.lon), off) and np.array_equal(np.isnan(g.lat), off)
    raw, _ = _sds(mcd15, "FparLai_QC")
    assert np.array_equal(g.values[0, 0][~off], raw[~off].astype(np.float32))
    assert np.isnan(g.values[0, 0][off]).all()
    sample = (slice(None, None, 37), slice(None, None, 41))
    ref_lon, ref_lat = transform(
        CRS.from_proj4(MODIS_SINU),
        "EPSG:4326",
        np.broadcast_to(x[None, :], off.shape)[sample][~off[sample]],
        np.broadcast_to(y[:, None], off.shape)[sample][~off[sample]],
    )
    np.testing.assert_allclose(g.lon[sample][~off[sample]], ref_lon, rtol=0, atol=1e-9)
    np.testing.assert_allclose(g.lat[sample][~off[sample]], ref_lat, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- values


def test_mod09a1_values_match_pyhdf(mod09: Path, mod09_grid: GridArray) -> None:
    g = mod09_grid
    expected_units = {f"sur_refl_b0{b}": "1" for b in range(1, 8)}
    expected_units |= {"sur_refl_szen": "degree", "sur_refl_vzen": "degree"}
    expected_units |= {"sur_refl_raz": "degree", "sur_refl_day_of_year": "1"}
    science = list(expected_units)
    qc = ["sur_refl_qc_500m_bits00_15", "sur_refl_qc_500m_bits16_31", "sur_refl_state_500m"]
    assert g.names == science + qc
    assert g.attrs["qc_variables"] == qc
    assert g.values.shape == (1, 14, 73, 66) and g.values.dtype == np.float32
    assert np.array_equal(g.time, np.array(["2017-07-12"], dtype="datetime64[ns]"))
    for v, name in enumerate(science):
        raw, attrs = _sds(mod09, name)
        assert g.variables[v].units == expected_units[name], name
        # sur_refl_day_of_year has no packing attributes
        packed = "scale_factor" in attrs
        expected = _decode_hdf4(raw, attrs) if packed else raw.astype(np.float32)
        assert np.array_equal(g.values[0, v], expected, equal_nan=True), name
    # PROVENANCE.md: every pixel of this subset is valid.
    assert not np.isnan(g.values).any()
    assert 0 < np.mean(g.values[0, 1]) < 1  # reflectance is a fraction
    # 32-bit QC word: split into exact 16-bit planes, reassembled bit for bit.
    raw, _ = _sds(mod09, "sur_refl_qc_500m")
    lo, hi = g.values[0, 11].astype(np.uint64), g.values[0, 12].astype(np.uint64)
    assert np.array_equal(hi * 65536 + lo, raw.astype(np.uint64))
    assert g.variables[11].units == "1" and g.variables[11].long_name.startswith("QC raw")
    raw, _ = _sds(mod09, "sur_refl_state_500m")
    assert np.array_equal(g.values[0, 13], raw.astype(np.float32))


def test_fill_and_valid_range_masking(mod09: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    flat = rng.permutation(73 * 66)
    fill, high, low = flat[:10], flat[10:15], flat[15:18]
    qc_fill, qc_low_bits = flat[18], flat[19]

    def edit(name: str, data: np.ndarray) -> np.ndarray:
        if name == "sur_refl_b01":
            data.flat[fill] = -28672
            data.flat[high] = 20000  # > valid max 16000
            data.flat[low] = -500  # < valid min -100
        if name == "sur_refl_qc_500m":
            data.flat[qc_fill] = 4294967295
            data.flat[qc_low_bits] = 2**30 + 2**21 + 1  # lost by a plain float32 cast
        return data

    # A non-zero add_offset tells the HDF4 calibration scale * (raw - offset) from CF's.
    offset = {"sur_refl_b01": {"add_offset": 250.0}}
    path = _copy_hdf4(mod09, tmp_path / MOD09, edit=edit, sds_attrs=offset)
    [g] = read_modis_hdf4([path], variables=["sur_refl_b01"])
    b01 = g.values[0, 0]
    assert np.isnan(b01).sum() == 18
    assert np.isnan(b01.flat[np.concatenate([fill, high, low])]).all()
    raw, attrs = _sds(path, "sur_refl_b01")
    assert attrs["add_offset"] == 250.0
    assert np.array_equal(b01, _decode_hdf4(raw, attrs), equal_nan=True)
    qc_lo, qc_hi = g.values[0, 1], g.values[0, 2]
    assert g.names[1:3] == ["sur_refl_qc_500m_bits00_15", "sur_refl_qc_500m_bits16_31"]
    assert np.isnan(qc_lo).sum() == np.isnan(qc_hi).sum() == 1 and np.isnan(qc_lo.flat[qc_fill])
    assert (qc_hi.flat[qc_low_bits], qc_lo.flat[qc_low_bits]) == (2**14 + 2**5, 1)

    [g] = read_modis_hdf4([path], variables=["sur_refl_b01"], qc=False, apply_valid_range=False)
    assert g.names == ["sur_refl_b01"] and np.isnan(g.values).sum() == 10
    assert np.all(g.values[0, 0].flat[high] == np.float32(1e-4 * (20000 - 250)))
    assert np.all(g.values[0, 0].flat[low] == np.float32(1e-4 * (-500 - 250)))


def test_all_fill_tile_is_refused_naming_variables(mcd15: Path) -> None:
    # h00v08 is open Pacific: LAI/FPAR and their std devs hold 254 (water) everywhere, outside
    # valid_range 0–100; FparExtra_QC holds its fill 255. Only FparLai_QC carries values.
    with pytest.raises(ReaderError) as err:
        read_modis_hdf4([mcd15])
    assert err.value.path == str(mcd15)
    found = re.search(r"variables (\[.*?\])", err.value.reason).group(1)
    assert found == str(["fpar_1km", "lai_1km", "fparstddev_1km", "laistddev_1km", "fparextra_qc"])
    with pytest.raises(ReaderError, match="lai_1km"):
        read_modis_hdf4([mcd15], variables=["Lai_1km"], qc=False)


def test_lai_fpar_decoding_on_derived_land_block(mcd15: Path, tmp_path: Path) -> None:
    block = (slice(100, 110), slice(1100, 1110))  # on the map (east part of the tile)
    codes = np.arange(100, dtype=np.uint8).reshape(10, 10)
    codes[0, :7] = [249, 250, 251, 252, 253, 254, 255]  # land-cover / fill codes

    def edit(name: str, data: np.ndarray) -> np.ndarray:
        if name in ("Fpar_1km", "Lai_1km", "FparStdDev_1km", "LaiStdDev_1km"):
            data[block] = codes
        if name == "FparExtra_QC":
            data[block] = 0  # land
        return data

    path = _copy_hdf4(mcd15, tmp_path / MCD15, edit=edit)
    [g] = read_modis_hdf4([path])
    assert g.names[:4] == ["fpar_1km", "lai_1km", "fparstddev_1km", "laistddev_1km"]
    assert [v.units for v in g.variables] == ["1"] * 6
    valid = codes <= 100
    for v, (name, scale) in enumerate([("Fpar_1km", 0.01), ("Lai_1km", 0.1)]):
        raw, attrs = _sds(path, name)
        assert attrs["scale_factor"] == scale
        expected = _decode_hdf4(raw, attrs)
        assert np.array_equal(g.values[0, v], expected, equal_nan=True)
        assert np.isfinite(g.values[0, v]).sum() == valid.sum()
    # FPAR is labelled "Percent" but scale_factor 0.01 already makes it a 0–1 fraction: it must
    # not be divided by 100 again.
    assert np.nanmax(g.values[0, 0]) == np.float32(0.99)
    assert np.nanmax(g.values[0, 1]) == np.float32(9.9)  # LAI m²/m², unchanged


# --------------------------------------------------------------------------- metadata and time


def test_time_from_metadata_and_file_name(mod09: Path, mcd15: Path, tmp_path: Path) -> None:
    [g] = read_modis_hdf4([mcd15], variables=["FparLai_QC"], qc=False)
    assert g.time[0] == np.datetime64("2002-07-04T00:00", "ns")  # A2002185 = 4 July
    assert g.attrs["time_source"] == "CoreMetadata.0"
    assert g.attrs["time_end"].startswith("2002-07-11T23:59:59")
    [g] = read_modis_hdf4([mod09], variables=["sur_refl_b01"], qc=False)
    assert g.attrs["time_source"] == "OldCoreMetadata.0"  # the subset has no CoreMetadata.0

    renamed = tmp_path / "tile.hdf"  # no .AYYYYDDD.: the metadata alone gives the time
    shutil.copyfile(mod09, renamed)
    [g] = read_modis_hdf4([renamed], variables=["sur_refl_b01"], qc=False)
    assert g.time[0] == np.datetime64("2017-07-12", "ns") and g.attrs["tile"] is None

    wrong = tmp_path / MOD09.replace("A2017193", "A2017201")
    shutil.copyfile(mod09, wrong)
    with pytest.raises(ReaderError, match="disagrees with the file name date 2017-07-20"):
        read_modis_hdf4([wrong])

    # No core metadata at all: the file name's year + day of year is the composite start.
    bare = _copy_hdf4(mod09, tmp_path / "bare" / MOD09, rename_attrs={"OldCoreMetadata.0": None})
    [g] = read_modis_hdf4([bare], variables=["sur_refl_b01"], qc=False)
    assert g.time[0] == np.datetime64("2017-07-12", "ns")
    assert g.attrs["time_source"].startswith("file name")


def test_struct_metadata_fallback(mod09: Path, mcd15: Path, tmp_path: Path) -> None:
    # Only the parent tile's metadata left: it describes 2400×2400 px, the SDS are 73×66.
    no_struct = _copy_hdf4(mod09, tmp_path / MOD09, rename_attrs={"StructMetadata.0": None})
    with pytest.raises(ReaderError, match=r"OldStructMetadata\.0 gives grid .* as 2400×2400"):
        read_modis_hdf4([no_struct])
    # Where the old metadata does fit the data it is used, with the same geolocation.
    moved = _copy_hdf4(
        mcd15, tmp_path / "bare" / MCD15, rename_attrs={"StructMetadata.0": "OldStructMetadata.0"}
    )
    [a] = read_modis_hdf4([mcd15], variables=["FparLai_QC"], qc=False)
    [b] = read_modis_hdf4([moved], variables=["FparLai_QC"], qc=False)
    assert b.attrs["struct_metadata"] == "OldStructMetadata.0"
    assert np.array_equal(a.lat, b.lat, equal_nan=True)
    assert np.array_equal(a.lon, b.lon, equal_nan=True)
    no_meta = _copy_hdf4(
        mod09,
        tmp_path / "x.hdf",
        rename_attrs={"StructMetadata.0": None, "OldStructMetadata.0": None},
    )
    with pytest.raises(ReaderError, match="not an HDF-EOS2 grid"):
        read_modis_hdf4([no_meta])


def test_variable_selection_and_registry(mod09: Path) -> None:
    assert get_reader("modis_hdf4").__wrapped__ is read_modis_hdf4
    assert get_reader("hdf5_grid").__wrapped__ is read_hdf5_grid
    [g] = read_modis_hdf4([mod09], variables=["sur_refl_b04", "SUR_REFL_B01"], qc=False)
    assert g.names == ["sur_refl_b04", "sur_refl_b01"]
    [g] = read_modis_hdf4([mod09], variables=["sur_refl_state_500m"], qc=False)
    assert g.names == ["sur_refl_state_500m"]
    with pytest.raises(ReaderError, match="'sur_refl_b08' is not in the file"):
        read_modis_hdf4([mod09], variables=["sur_refl_b08"])
    with pytest.raises(ValueError, match="single path"):
        read_modis_hdf4(str(mod09))  # type: ignore[arg-type]


def test_truncated_and_foreign_hdf4_files(mod09: Path, tmp_path: Path) -> None:
    data = mod09.read_bytes()
    for frac in (0.5, 0.95):
        cut = tmp_path / f"cut{frac}.hdf"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(ReaderError) as err:
            read_modis_hdf4([cut])
        assert err.value.path == str(cut) and "truncated" in err.value.reason
    text = tmp_path / "notes.hdf"
    text.write_text("not HDF")
    with pytest.raises(ReaderError, match="cannot open as HDF4"):
        read_modis_hdf4([text])


# --------------------------------------------------------------------------- HDF5


@pytest.fixture
def modis_like_h5(mod09: Path, mod09_grid: GridArray, tmp_path: Path) -> Path:
    """Derived file: the real MOD09A1 tile rewritten as HDF5 — the same raw SDS (dtype, values,
    attributes) at the root, plus the 2-D lat/lon of read_modis_hdf4 and a CF time dataset."""
    path = tmp_path / MOD09.replace(".hdf", ".h5")
    with h5py.File(path, "w") as f:
        for name in _sds_names(mod09):
            raw, attrs = _sds(mod09, name)
            ds = f.create_dataset(name, data=raw)
            for key, value in attrs.items():
                if key in ("_FillValue", "valid_range"):
                    value = np.asarray(value, dtype=raw.dtype)  # typed like the data, as in HDF4
                ds.attrs[key] = value
        f.create_dataset("lat", data=mod09_grid.lat).attrs["units"] = "degrees_north"
        f.create_dataset("lon", data=mod09_grid.lon).attrs["units"] = "degrees_east"
        f.create_dataset("time", data=np.array([192.0])).attrs["units"] = "days since 2017-01-01"
    return path


def test_hdf5_rewrite_equals_hdf4_reader(
    mod09: Path, mod09_grid: GridArray, modis_like_h5: Path
) -> None:
    # In the HDF4 reader's order: science SDS in file order, then the QC layers.
    qc = ("sur_refl_qc_500m", "sur_refl_state_500m")
    names = sorted(_sds_names(mod09), key=lambda n: n in qc)
    [h] = read_hdf5_grid([modis_like_h5], variables=names, scale_convention="hdf4")
    assert h.variables == mod09_grid.variables
    assert np.array_equal(h.values, mod09_grid.values, equal_nan=True)
    assert np.array_equal(h.lat, mod09_grid.lat) and np.array_equal(h.lon, mod09_grid.lon)
    assert np.array_equal(h.time, mod09_grid.time)
    assert h.attrs["qc_variables"] == mod09_grid.attrs["qc_variables"]
    # time=None: the file name's .A2017193. date.
    [n] = read_hdf5_grid([modis_like_h5], variables=["sur_refl_b01"], time=None)
    assert np.array_equal(n.time, mod09_grid.time)


def test_hdf5_cf_convention(mod09: Path, tmp_path: Path) -> None:
    """Derived CF file: MOD09A1 b01/b02 raw counts as two time steps of one packed variable with
    a non-zero add_offset, 1-D lat/lon, some fill and out-of-range values."""
    b01, _ = _sds(mod09, "sur_refl_b01")
    b02, _ = _sds(mod09, "sur_refl_b02")
    raw = np.stack([b01[:20, :30], b02[:20, :30]]).astype(np.int16)  # (T, H, W)
    raw[0, 0, :4] = -32767  # fill
    raw[1, 5, 5] = 12000  # > valid_max
    lat = np.linspace(46.15, 46.06, 20)
    lon = np.linspace(9.78, 9.92, 30)
    path = tmp_path / "cf_derived.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("grp/refl", data=raw)
        ds.attrs.update(
            scale_factor=1e-4, add_offset=0.25, _FillValue=np.int16(-32767), valid_max=10000
        )
        ds.attrs["units"] = "1"
        ds.attrs["long_name"] = "derived reflectance"
        f["latitude"] = lat
        f["longitude"] = lon
        f.create_dataset("t", data=np.array([0, 24], dtype=np.int32))
        f["t"].attrs["units"] = "hours since 2017-07-12 00:00:00"
    [g] = read_hdf5_grid([path], variables=["grp/refl"], lat="latitude", lon="longitude", time="t")
    expected = (raw.astype(np.float64) * 1e-4 + 0.25).astype(np.float32)
    expected[(raw == -32767) | (raw > 10000)] = np.nan
    assert g.names == ["refl"] and g.values.shape == (2, 1, 20, 30)
    assert np.array_equal(g.values[:, 0], expected, equal_nan=True)
    assert np.isnan(g.values).sum() == 5
    assert np.array_equal(g.lat, lat) and np.array_equal(g.lon, lon)
    assert np.array_equal(g.time, np.array(["2017-07-12", "2017-07-13"], dtype="datetime64[ns]"))
    # The convention matters once add_offset != 0: HDF4 reads scale * (raw - offset).
    [h] = read_hdf5_grid(
        [path], variables=["grp/refl"], lat="latitude", lon="longitude", time="t",
        scale_convention="hdf4",
    )  # fmt: skip
    hdf4 = (1e-4 * (raw.astype(np.float64) - 0.25)).astype(np.float32)
    hdf4[np.isnan(expected)] = np.nan
    assert np.array_equal(h.values[:, 0], hdf4, equal_nan=True)
    assert not np.allclose(h.values, g.values, equal_nan=True)


def test_hdf5_time_epoch_before_1678(tmp_path: Path) -> None:
    """CF epochs before 1678 ('days since 0001-01-01', common in model output) lie outside
    numpy's nanosecond datetimes: decoded in microseconds, checked against cftime. A pre-1582
    epoch in the mixed Julian/Gregorian (standard) calendar was read as proleptic Gregorian on
    7c47fe5 (days off); it is refused."""
    import cftime

    days = np.array([735234, 735265], dtype=np.float64)
    path = tmp_path / "old_epoch.h5"
    with h5py.File(path, "w") as f:
        f["v"] = np.ones((2, 2, 3), dtype=np.float32)
        f["v"].attrs["units"] = "K"
        f["lat"], f["lon"] = np.array([1.0, 0.0]), np.array([0.0, 1.0, 2.0])
        f["time"] = days
        f["time"].attrs.update(units="days since 0001-01-01", calendar="proleptic_gregorian")
    [g] = read_hdf5_grid([path], variables=["v"])
    dates = cftime.num2date(
        days,
        "days since 0001-01-01",
        "proleptic_gregorian",
        only_use_cftime_datetimes=False,
        only_use_python_datetimes=True,
    )
    assert np.array_equal(g.time, np.array(dates, dtype="datetime64[ns]"))
    assert str(g.time[0])[:10] == "2014-01-02"
    with h5py.File(path, "r+") as f:
        f["time"].attrs["calendar"] = "standard"
    with pytest.raises(ReaderError, match="before 1582-10-15, in the mixed Julian/Gregorian"):
        read_hdf5_grid([path], variables=["v"])


def test_hdf5_bad_files(modis_like_h5: Path, tmp_path: Path) -> None:
    data = modis_like_h5.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError) as err:
        read_hdf5_grid([cut], variables=["sur_refl_b01"])
    assert err.value.path == str(cut)
    with pytest.raises(ReaderError, match="dataset 'nope' is not in the file"):
        read_hdf5_grid([modis_like_h5], variables=["nope"])
    with pytest.raises(ReaderError, match="no lat dataset 'latitude'"):
        read_hdf5_grid([modis_like_h5], variables=["sur_refl_b01"], lat="latitude")
    with pytest.raises(ValueError, match="needs variables"):
        read_hdf5_grid([modis_like_h5], variables=[])
