"""The non-GRIB real-file corpus (tests/data/{netcdf,hdf5,geotiff,seismic/...}, PROVENANCE.md).

Each file covers a convention or code path no other file does; every valid value a reader
returns is compared with an independent read of the same file, after the unit conversion the
reader documents (floats to 1e-6 relative, integers exactly, missing points NaN on both sides):

* netCDF and netCDF-4/HDF5 grids: the netCDF-C library through ``netCDF4`` (its own CF unpacking
  and masking; the readers use xarray and h5py), times through ``cftime``;
* GeoTIFF: rasterio's masked read, pixel centres from ``DatasetReader.xy`` (not the reader's own
  affine arithmetic) taken to latitude/longitude by GDAL/PROJ;
* SEG-Y IBM floats: the raw trace words through ``ibm2ieee`` (the IBM reference), bit for bit;
* miniSEED: libmseed 3 through ``pymseed`` (the reader decodes with obspy's libmseed 2);
* SAC: the binary layout read with numpy (header words and float32 samples), not obspy.

Files a reader must refuse are refused with the reason named (the fix is in the message).
"""

from __future__ import annotations

import struct
from pathlib import Path

import cftime
import ibm2ieee
import netCDF4
import numpy as np
import pymseed
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from scigpt.data_pipeline.ingest.base import ReaderError, get_reader
from scigpt.data_pipeline.prepare import SourceSpec, prepare_store

RTOL = 1e-6  # floats: the readers round float64 to float32 once


def _assert_values(got: np.ndarray, ref: np.ndarray, what: str, *, exact: bool = False) -> int:
    """Same missing points, and the valid values equal (exactly or to RTOL); returns the count."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.ma.filled(np.ma.asarray(ref, dtype=np.float64), np.nan)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    missing = np.isnan(ref)
    assert np.array_equal(np.isnan(got), missing), f"{what}: missing points differ"
    if exact:
        np.testing.assert_array_equal(got[~missing], ref[~missing], err_msg=what)
    else:
        np.testing.assert_allclose(got[~missing], ref[~missing], rtol=RTOL, atol=0, err_msg=what)
    return int((~missing).sum())


def _nc_times(var: netCDF4.Variable) -> np.ndarray:
    dates = cftime.num2date(
        np.ravel(var[:]),
        var.units,
        getattr(var, "calendar", "standard"),
        only_use_cftime_datetimes=False,
        only_use_python_datetimes=True,
    )
    return np.array(dates, dtype="datetime64[ns]")


# --- netCDF (xarray reader) against netCDF-C -------------------------------------------------


def test_netcdf_64bit_offset_packed_int16_levels(shared_data: Path) -> None:
    """sub.nc: CDF-2 (64-bit offset), int16 u/v with scale_factor/add_offset and both
    _FillValue and missing_value, levels in 'millibars', latitudes descending."""
    path = shared_data / "netcdf" / "sub.nc"
    [arr] = get_reader("netcdf")([path])
    with netCDF4.Dataset(path) as nc:
        assert nc.data_model == "NETCDF3_64BIT_OFFSET"
        levels = [int(v) for v in nc["level"][:]]
        assert arr.names == [f"{n}{lev}" for n in ("u", "v") for lev in levels]
        np.testing.assert_array_equal(arr.lat, nc["latitude"][:])
        np.testing.assert_array_equal(arr.lon, nc["longitude"][:])
        assert np.all(np.diff(arr.lat) < 0)
        np.testing.assert_array_equal(arr.time, _nc_times(nc["time"]))
        checked = 0
        for name in ("u", "v"):
            assert nc[name].dtype == np.int16 and hasattr(nc[name], "scale_factor")
            for k, lev in enumerate(levels):
                ref = nc[name][:, k, :, :]  # netCDF-C unpacks and masks (_FillValue)
                checked += _assert_values(arr.values[:, arr.names.index(f"{name}{lev}")], ref, name)
    assert checked == 10 * 4 * 81


def test_netcdf_oisst_singleton_depth_celsius_0_360(shared_data: Path) -> None:
    """reduced.nc (NOAA OISST v2, regridded): sst(time, zlev=1, lat, lon) int16 in 'degree_C'
    with land as _FillValue, longitudes 0..358. Refused on 7c47fe5 for the length-1 zlev dim
    (and 'degree_C' was an unknown unit); now zlev is dropped and recorded."""
    path = shared_data / "netcdf" / "reduced.nc"
    [arr] = get_reader("netcdf")([path], variables=["sst"])
    assert arr.names == ["sst"] and arr.variables[0].units == "K"
    assert arr.attrs["decoding"]["sst"]["squeezed"] == {"zlev": 0.0}
    with netCDF4.Dataset(path) as nc:
        assert nc["sst"].dimensions == ("time", "zlev", "lat", "lon")
        assert nc["sst"].units == "degree_C"
        np.testing.assert_array_equal(arr.lon, nc["lon"][:])
        assert arr.lon.min() == 0 and arr.lon.max() > 180
        ref = nc["sst"][:, 0, :, :].astype(np.float64) + 273.15  # degree_C -> K (units.py)
        n = _assert_values(arr.values[:, 0], ref, "sst")
        assert 0 < n < ref.size  # land points are missing
        np.testing.assert_array_equal(arr.time, _nc_times(nc["time"]))


def test_netcdf_360_day_calendar_is_refused_naming_it(shared_data: Path) -> None:
    """A regional-model file (CORDEX) in the 360_day calendar: its dates have no datetime64."""
    path = shared_data / "netcdf" / "tas_mod2_hist_rectilin_grid_2D.nc"
    with netCDF4.Dataset(path) as nc:
        assert nc["time"].calendar == "360_day"
    with pytest.raises(ValueError, match=r"is in the '360_day' calendar .*convert_calendar"):
        get_reader("netcdf")([path])


# --- netCDF-4 / HDF5 grids (h5py reader) against netCDF-C ------------------------------------


def test_hdf5_polar_stereographic_2d_coordinates(shared_data: Path) -> None:
    """toa_brightness_stereographic.nc (MSG SEVIRI 10.8 µm): netCDF-4, 2-D lat/lon of a polar
    stereographic grid, float32 _FillValue, a scalar float32 time."""
    path = shared_data / "hdf5" / "toa_brightness_stereographic.nc"
    [arr] = get_reader("hdf5_grid")([path], variables=["data"], lat="lat", lon="lon")
    with netCDF4.Dataset(path) as nc:
        assert nc.data_model == "NETCDF4" and nc["lat"].ndim == 2
        np.testing.assert_array_equal(arr.lat, nc["lat"][:])
        np.testing.assert_array_equal(arr.lon, nc["lon"][:])
        n = _assert_values(arr.values[0, 0], nc["data"][:], "data")
        assert 0 < n < nc["data"].size
        np.testing.assert_array_equal(arr.time, _nc_times(nc["time"]))
    assert arr.variables[0].units == "K"


def test_hdf5_rotated_pole_coordinates_are_refused(shared_data: Path) -> None:
    """rotated_pole.nc: grid_latitude/grid_longitude are rotated-pole coordinates. Read on
    7c47fe5 as if they were latitude/longitude (every value misplaced, exit 0)."""
    path = shared_data / "hdf5" / "rotated_pole.nc"
    with netCDF4.Dataset(path) as nc:
        assert nc["grid_latitude"].standard_name == "grid_latitude"
        assert nc["rotated_latitude_longitude"].grid_north_pole_latitude == 37.5
    with pytest.raises(ReaderError, match=r"standard_name 'grid_latitude': rotated-pole grid"):
        get_reader("hdf5_grid")(
            [path],
            variables=["air_pressure_at_sea_level"],
            lat="grid_latitude",
            lon="grid_longitude",
        )


def test_hdf5_360_day_time_is_refused_not_read_as_gregorian(shared_data: Path) -> None:
    """NEMO ORCA2 monthly SST (netCDF-4 classic, 360_day). On 7c47fe5 its time was read as
    Gregorian: 2013-05-22 instead of 2015-01-16 (cftime), exit 0."""
    path = shared_data / "hdf5" / "nemo_1m_20150101-20150201_grid-T.nc"
    with netCDF4.Dataset(path) as nc:
        t = nc["time_centered"]
        [date] = cftime.num2date(t[:], t.units, t.calendar)
        assert (date.year, date.month, date.day) == (2015, 1, 16)
    with pytest.raises(ReaderError, match=r"'time_centered' is in the '360_day' calendar"):
        get_reader("hdf5_grid")(
            [path], variables=["tos"], lat="nav_lat", lon="nav_lon", time="time_centered"
        )


# --- GeoTIFF against rasterio ----------------------------------------------------------------

GEOTIFFS = {
    # file: (reader options, integer data)
    "elev.tif": ({"units": "m"}, True),
    "meuse.tif": ({"variables": ["meuse"], "units": "1"}, True),
    "geomatrix.tif": ({"variables": ["grey"]}, True),
    "L7_ETMs.tif": ({"variables": [f"b{i}" for i in range(1, 7)]}, True),
    "lc.tif": ({}, True),
}


def _reference_centres(ds: rasterio.DatasetReader) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.meshgrid(np.arange(ds.height), np.arange(ds.width), indexing="ij")
    xs, ys = ds.xy(rows.ravel(), cols.ravel())  # pixel centres (offset="center")
    if ds.crs.to_epsg() == 4326:
        return np.reshape(ys, rows.shape), np.reshape(xs, rows.shape)
    lon, lat = warp_transform(ds.crs, "EPSG:4326", xs, ys)
    return np.reshape(lat, rows.shape), np.reshape(lon, rows.shape)


@pytest.mark.parametrize("name", sorted(GEOTIFFS))
def test_geotiff_corpus_matches_rasterio(shared_data: Path, name: str) -> None:
    path = shared_data / "geotiff" / name
    options, integers = GEOTIFFS[name]
    [arr] = get_reader("geotiff")([path], time="2020-01-01", **options)
    with rasterio.open(path) as ds:
        assert arr.values.shape == (1, ds.count, ds.height, ds.width)
        checked = 0
        for b in range(ds.count):
            ref = ds.read(b + 1, masked=True)  # nodata masked by GDAL
            checked += _assert_values(arr.values[0, b], ref, f"{name} band {b + 1}", exact=integers)
        lat, lon = _reference_centres(ds)
    assert checked > 0
    if arr.lat.ndim == 1:  # north-up EPSG:4326: 1-D axes
        lat, lon = lat[:, 0], lon[0, :]
    np.testing.assert_allclose(arr.lat, lat, rtol=0, atol=1e-9)
    np.testing.assert_allclose(arr.lon, lon, rtol=0, atol=1e-9)


def test_geotiff_local_crs_is_refused(shared_data: Path) -> None:
    """logo.tif has an engineering CRS (LOCAL_CS "Cartesian (Meter)"); on 7c47fe5 PROJ's
    CPLE_NotSupportedError escaped from the reader as a traceback."""
    path = shared_data / "geotiff" / "logo.tif"
    with rasterio.open(path) as ds:
        assert not ds.crs.is_geographic and not ds.crs.is_projected
    with pytest.raises(ReaderError, match=r"local \(engineering\) one, 'Cartesian \(Meter\)'"):
        get_reader("geotiff")([path], time="2020-01-01", variables=["r", "g", "b"])


# --- SEG-Y IBM floats against ibm2ieee --------------------------------------------------------


def test_segy_viking_ibm_prestack_matches_ibm2ieee(shared_data: Path) -> None:
    """viking_small.segy (Mobil AVO Viking Graben, prestack shot gathers): IBM floats; the trace
    headers still say 1500 samples, the binary header (600) is right for the file size."""
    path = shared_data / "seismic" / "segy" / "viking_small.segy"
    [arr] = get_reader("segy")([path])
    raw = path.read_bytes()
    interval_us, _, ns, _, fmt = struct.unpack_from(">hhhhh", raw, 3216)
    assert fmt == 1 and ns == 600 and struct.unpack_from(">h", raw, 3600 + 114)[0] == 1500
    n = (len(raw) - 3600) // (240 + 4 * ns)
    assert 3600 + n * (240 + 4 * ns) == len(raw)
    traces = np.frombuffer(raw, dtype=np.uint8, offset=3600).reshape(n, 240 + 4 * ns)
    words = np.ascontiguousarray(traces[:, 240:]).view(">u4").astype(np.uint32)
    ref = ibm2ieee.ibm2float32(words)
    assert arr.values.shape == (n, 1, ns)
    np.testing.assert_array_equal(arr.values[:, 0].view(np.uint32), ref.view(np.uint32))
    assert arr.step == np.timedelta64(interval_us * 1000, "ns")


# --- miniSEED against libmseed 3 (pymseed) ----------------------------------------------------

MSEED_READ = [
    "testdata-3channel-signal.mseed2",
    "testdata-oneseries-mixedlengths-mixedorder.mseed2",
    "testdata-encoding-SRO.mseed2",
    "testdata-encoding-CDSN.mseed2",
    "testdata-encoding-DWWSSN.mseed2",
    "testdata-encoding-GEOSCOPE-16bit-3exp-encoded.mseed2",
    "testdata-no-blockette1000-steim1.mseed2",
    "testdata-unapplied-timecorrection.mseed2",
    "reference-testdata-steim2-LE.mseed2",
    "reference-testdata-float64.mseed2",
]
# seismic/mseed/ (the ingest samples), each set read together: TA.POKR's three one-channel files
# (pyasdf; BHZ and BHE start 1 µs after BHN) and the CO.BIRD/CO.JSC six-channel file (simplemseed).
MSEED_SAMPLES = {
    "TA.POKR..BH": ["TA.POKR..BHZ.mseed", "TA.POKR..BHN.mseed", "TA.POKR..BHE.mseed"],
    "CO.BIRD_JSC": ["CO.BIRD_JSC.00.HH.2024-02-06.mseed"],
}
MSEED_CASES = [pytest.param([f"mseed_libmseed/{n}"], id=n) for n in MSEED_READ] + [
    pytest.param([f"mseed/{f}" for f in files], id=key) for key, files in MSEED_SAMPLES.items()
]
MSEED_REFUSED = {
    "testdata-3channel-signal.mseed3": "is miniSEED 3",
    "reference-testdata-text.mseed2": "hold text (miniSEED encoding 0, ASCII",
}


def _libmseed(path: Path) -> dict[tuple[str, str, str, str], list[tuple[int, float, np.ndarray]]]:
    """(net, sta, loc, chan) → [(start ns, rate, samples)] of each contiguous segment."""
    out: dict = {}
    for tid in pymseed.MS3TraceList.from_file(str(path), unpack_data=True):
        key = pymseed.sourceid2nslc(tid.sourceid)
        for seg in tid:
            samples = np.array(seg.datasamples, dtype=np.float64)
            out.setdefault(key, []).append((int(seg.starttime), float(seg.samprate), samples))
    return out


@pytest.mark.parametrize("files", MSEED_CASES)
def test_mseed_corpus_matches_libmseed(shared_data: Path, files: list[str]) -> None:
    paths = [shared_data / "seismic" / f for f in files]
    name = ", ".join(files)
    arrays = get_reader("mseed")(paths)
    ref: dict = {}
    for path in paths:
        for key, segments in _libmseed(path).items():
            ref.setdefault(key, []).extend(segments)
    checked = 0
    for arr in arrays:
        step = int(arr.step / np.timedelta64(1, "ns"))
        start = int(arr.start[0].astype("datetime64[ns]").astype(np.int64))
        ra = arr.record_attrs
        net, sta, loc = ra["network"][0], ra["station"][0], ra["location"][0]
        code = ra["band"][0] + ra["instrument"][0]
        for c, var in enumerate(arr.variables):
            segments = ref.pop((net, sta, loc, code + var.name[-1].upper()))
            offset = int(ra[f"start_offset_ns_{var.name}"][0])
            got = arr.values[0, c].astype(np.float64)
            expected = np.full_like(got, np.nan)
            for seg_start, rate, samples in segments:
                assert step == round(1e9 / rate)
                k, rest = divmod(seg_start - start - offset, step)
                assert rest == 0 or len(segments) > 1, (name, rest)
                expected[k : k + len(samples)] = samples
            integers = all(np.array_equal(s, np.round(s)) for _, _, s in segments)
            exact = integers and np.abs(np.nan_to_num(expected)).max() < 2**24
            checked += _assert_values(got, expected, f"{name} {var.name}", exact=exact)
            first = min(s for s, _, _ in segments)
            assert start + offset == first, (name, "start time")
    assert not ref, f"channels libmseed read but the reader did not: {sorted(ref)}"
    assert checked > 0


@pytest.mark.parametrize("name", sorted(MSEED_REFUSED))
def test_mseed_corpus_refusals(shared_data: Path, name: str) -> None:
    path = shared_data / "seismic" / "mseed_libmseed" / name
    assert _libmseed(path)  # libmseed reads them: valid files of a kind the reader refuses
    with pytest.raises(ReaderError, match=MSEED_REFUSED[name].replace("(", r"\(")):
        get_reader("mseed")([path])


def test_mseed_corpus_through_prepare(shared_data: Path, tmp_path: Path) -> None:
    """One ingest of the libmseed files: the two refusals are rejects with their reasons, the
    rest land (plausibility included)."""
    folder = shared_data / "seismic" / "mseed_libmseed"
    spec = SourceSpec("libmseed", "mseed", sorted(folder.iterdir()), require_coordinates=False)
    manifest = prepare_store([spec], tmp_path / "store", progress=False)
    rejects = {Path(r["paths"][0]).name: r["reason"] for r in manifest["rejects"]}
    assert set(rejects) == set(MSEED_REFUSED), rejects
    for name, why in MSEED_REFUSED.items():
        assert why in rejects[name]
    assert len(manifest["sources"]["libmseed"]["units"]) == len(MSEED_READ)


# --- SAC against its binary layout ------------------------------------------------------------


def test_sac_matches_its_binary_layout(shared_data: Path) -> None:
    """testfile.sac (pysmo; YJ.VOH01 BHZ, 50 Hz, 1 h): negative begin time b, float32 delta,
    station coordinates in the header. SAC: 70 float words, 40 int words, then text, then
    npts float32 samples from byte 632 (byte order from NVHDR = 6)."""
    path = shared_data / "seismic" / "sac" / "testfile.sac"
    raw = path.read_bytes()
    order = "<" if struct.unpack_from("<i", raw, 304)[0] == 6 else ">"
    floats = np.frombuffer(raw, dtype=f"{order}f4", count=70)
    ints = np.frombuffer(raw, dtype=f"{order}i4", count=40, offset=280)
    delta, b, stla, stlo = floats[0], floats[5], floats[31], floats[32]
    year, jday, hour, minute, sec, msec, npts = [*ints[:6].tolist(), int(ints[9])]
    samples = np.frombuffer(raw, dtype=f"{order}f4", count=npts, offset=632)
    reference = np.datetime64(f"{year:04d}-01-01T{hour:02d}:{minute:02d}:{sec:02d}", "ns")
    reference += np.timedelta64(jday - 1, "D") + np.timedelta64(msec, "ms")
    start = reference + np.timedelta64(round(float(b) * 1e9), "ns")  # b: float32, exact in f64

    [arr] = get_reader("sac")([path])
    assert arr.names == ["vel_z"] and b < 0
    np.testing.assert_array_equal(arr.values[0, 0], samples)  # float32 samples, bit for bit
    assert abs(int((arr.start[0] - start) / np.timedelta64(1, "ns"))) <= 1000  # obspy: µs
    assert arr.step == np.timedelta64(round(float(delta) * 1e6) * 1000, "ns")
    assert (arr.lat[0], arr.lon[0]) == (float(stla), float(stlo))
