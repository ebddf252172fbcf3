"""Seismic readers (miniSEED/SAC, SEG-Y, SeisBench) against values read directly with obspy,
segyio, h5py and the csv module, on the real files in tests/data/seismic (PROVENANCE.md).

Files marked *derived* are written by fixtures here from those real files (a gap cut out, SAC
copies, SEG-Y copies in another sample format or byte order, damaged copies); nothing is
synthetic.
"""

from __future__ import annotations

import csv
import shutil
import typing
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import obspy
import pytest
import segyio
import yaml
from pydantic import TypeAdapter
from rasterio.warp import transform

from scigpt.data_pipeline.ingest.base import ReaderError, SeriesArray, get_reader
from scigpt.data_pipeline.ingest.segy import read_segy
from scigpt.data_pipeline.ingest.seisbench import read_seisbench
from scigpt.data_pipeline.ingest.seismic import read_waveforms

# Real miniSEED samples (tests/data/PROVENANCE.md): TA.POKR's three BH channels of the 2013 Sea of
# Okhotsk Mw 8.3 deep earthquake (pyasdf's test data), one file per channel; CO.BIRD and CO.JSC
# (simplemseed's test data): two stations × three HH channels in one file.
POKR_Z = "TA.POKR..BHZ.mseed"
POKR = [POKR_Z, "TA.POKR..BHN.mseed", "TA.POKR..BHE.mseed"]
CO = "CO.BIRD_JSC.00.HH.2024-02-06.mseed"
# TA.POKR's coordinates as its StationXML gives them (seismic/stationxml/TA.POKR..BH_.xml).
POKR_AT = (65.1171, -147.4335, 501.0)
POKR_START = "2013-05-24T05:40:00.000001"  # BHZ: the microsecond is from blockette 1001
GAP = (1000, 1500)  # samples [a:b] cut out of TA.POKR BHZ for the gap fixture


@pytest.fixture(scope="module")
def mseed_dir(shared_data: Path) -> Path:
    return shared_data / "seismic" / "mseed"


def test_pokr_coordinates_are_the_stationxml_ones(shared_data: Path) -> None:
    """The coordinates the tests and configs/runs/ingest-samples.yaml give TA.POKR are the ones in
    the StationXML the IRIS DMC served with the waveforms (pyasdf ships both)."""
    inv = obspy.read_inventory(str(shared_data / "seismic/stationxml/TA.POKR..BH_.xml"))
    sta = inv.select(network="TA", station="POKR")[0][0]
    assert (sta.latitude, sta.longitude, sta.elevation) == POKR_AT
    config = Path(__file__).parents[1] / "configs/runs/ingest-samples.yaml"
    [src] = [s for s in yaml.safe_load(config.read_text())["data"]["sources"]
             if s["name"] == "mseed"]  # fmt: skip
    assert tuple(src["options"]["stations"]["TA.POKR"]) == POKR_AT


# --------------------------------------------------------------------------------------------
# miniSEED / SAC


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([POKR_Z], {"TA.POKR.": (["vel_z"], 25_000_000, 168001, {"vel_z": 0})}),
        # Three files merged: BHZ and BHE start 1 µs after BHN (blockette 1001's microseconds).
        (POKR, {"TA.POKR.": (["vel_z", "vel_n", "vel_e"], 25_000_000, 168001,
                             {"vel_z": 1000, "vel_n": 0, "vel_e": 1000})}),
        # One file, two stations × three channels: one array per station.
        ([CO], {f"CO.{sta}.00": (["vel_z", "vel_n", "vel_e"], 10_000_000, 3000,
                                 dict.fromkeys(["vel_z", "vel_n", "vel_e"], 0))
                for sta in ("BIRD", "JSC")}),
    ],
)  # fmt: skip
def test_mseed_matches_obspy(mseed_dir: Path, files: list[str], expected: dict) -> None:
    arrays = read_waveforms([mseed_dir / f for f in files])
    st = obspy.Stream([tr for f in files for tr in obspy.read(str(mseed_dir / f))])
    assert len(arrays) == len(expected)
    for arr in arrays:
        s0 = {k: str(arr.record_attrs[k][0]) for k in ("network", "station", "location")}
        names, step_ns, length, offsets = expected[".".join(s0.values())]
        own = st.select(network=s0["network"], station=s0["station"], location=s0["location"])
        assert arr.names == names and len(own) == len(names)
        assert all(v.units == "counts" and v.modality == "waveform" for v in arr.variables)
        assert arr.step == np.timedelta64(step_ns, "ns")
        assert arr.values.shape == (1, len(names), length)
        t0 = min(tr.stats.starttime for tr in own)
        assert arr.start[0] == np.datetime64(t0.ns, "ns")
        for tr in own:
            var = "vel_" + tr.stats.channel[-1].lower()
            row = arr.values[0, names.index(var)]
            k = round((tr.stats.starttime - t0) * tr.stats.sampling_rate)
            n = tr.stats.npts
            # Values exact: the counts fit float32's 24-bit significand.
            assert np.array_equal(row[k : k + n].astype(np.float64), tr.data.astype(np.float64))
            assert np.isnan(row[:k]).all() and np.isnan(row[k + n :]).all()
            offset = int(arr.record_attrs[f"start_offset_ns_{var}"][0])
            assert offset == tr.stats.starttime.ns - (t0.ns + k * step_ns) == offsets[var]
        s = own[0].stats
        band = {"band": s.channel[0], "instrument": s.channel[1]}
        assert {k: str(arr.record_attrs[k][0]) for k in band} == band
        assert not arr.has_coordinates and np.isnan(arr.elevation).all()
        assert arr.attrs["float32_exact"] and arr.attrs["coordinates_from"] == "none"


def test_mseed_pokr_start_and_station_sidecar(mseed_dir: Path) -> None:
    (arr,) = read_waveforms([mseed_dir / POKR_Z], stations={"TA.POKR": POKR_AT})
    assert arr.start[0] == np.datetime64(POKR_START, "ns")
    assert (arr.lat[0], arr.lon[0], arr.elevation[0]) == POKR_AT
    assert arr.attrs["coordinates_from"] == "stations"
    with pytest.raises(ValueError, match=r"stations\['POKR'\].*NET\.STA"):
        read_waveforms([mseed_dir / POKR_Z], stations={"POKR": POKR_AT})
    with pytest.raises(ValueError, match=r"latitude first"):
        read_waveforms([mseed_dir / POKR_Z], stations={"TA.POKR": (-147.4335, 65.1171, 501.0)})


@pytest.fixture(scope="module")
def gap_files(mseed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Derived: samples [a:b] = GAP cut out of TA.POKR BHZ with obspy, written as miniSEED, once
    as one file holding both pieces and once as two files (one piece each)."""
    out = tmp_path_factory.mktemp("gap")
    tr = obspy.read(str(mseed_dir / POKR_Z))[0]
    a, b = GAP
    head = tr.copy()
    head.data = tr.data[:a].copy()
    tail = tr.copy()
    tail.data = tr.data[b:].copy()
    tail.stats.starttime = tr.stats.starttime + b * tr.stats.delta
    obspy.Stream([head, tail]).write(str(out / "gap.mseed"), format="MSEED")
    head.write(str(out / "part1.mseed"), format="MSEED")
    tail.write(str(out / "part2.mseed"), format="MSEED")
    return {"one": out / "gap.mseed", "parts": [out / "part1.mseed", out / "part2.mseed"]}


def test_mseed_gap_is_nan_exactly_where_cut(mseed_dir: Path, gap_files: dict) -> None:
    ref = obspy.read(str(mseed_dir / POKR_Z))[0].data.astype(np.float32)
    a, b = GAP
    for paths in ([gap_files["one"]], gap_files["parts"]):
        (arr,) = read_waveforms(paths)
        row = arr.values[0, 0]
        assert row.shape == ref.shape
        assert np.flatnonzero(np.isnan(row)).tolist() == list(range(a, b)), paths
        keep = np.r_[0:a, b : len(ref)]
        assert np.array_equal(row[keep], ref[keep])
        assert arr.start[0] == np.datetime64(POKR_START, "ns")
    (arr,) = read_waveforms([gap_files["one"]], fill_gaps="interpolate")
    row = arr.values[0, 0]
    # obspy fills the gap on the straight line from sample a-1 to sample b (int32 data).
    line = np.interp(np.arange(a, b), [a - 1, b], [ref[a - 1], ref[b]])
    assert np.isfinite(row).all() and np.abs(row[a:b] - line).max() <= 1.0


@pytest.fixture(scope="module")
def sac_files(mseed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Derived: the three TA.POKR components written as SAC files with stla/stlo/stel set."""
    out = tmp_path_factory.mktemp("sac")
    paths = []
    for tr in (obspy.read(str(mseed_dir / f))[0] for f in POKR):
        tr.stats.sac = dict(zip(("stla", "stlo", "stel"), POKR_AT, strict=True))
        path = out / f"{tr.id}.sac"
        tr.write(str(path), format="SAC")
        paths.append(path)
    return paths


def test_sac_coordinates_from_headers(mseed_dir: Path, sac_files: list[Path]) -> None:
    (from_mseed,) = read_waveforms([mseed_dir / f for f in POKR])
    # The headers win over the sidecar.
    (arr,) = read_waveforms(sac_files, stations={"TA.POKR": (0.0, 0.0, 0.0)})
    head = obspy.read(str(sac_files[0]))[0].stats.sac  # float32 header values
    assert arr.lat[0] == float(head.stla) and arr.lon[0] == float(head.stlo)
    assert arr.elevation[0] == float(head.stel) == POKR_AT[2]
    assert abs(arr.lat[0] - POKR_AT[0]) < 1e-5 and arr.attrs["coordinates_from"] == "sac"
    # SAC stores delta as float32; the step is still 25 ms, the grid the miniSEED's.
    assert arr.step == np.timedelta64(25_000_000, "ns") and arr.attrs["formats"] == ["SAC"]
    assert arr.names == from_mseed.names and arr.start[0] == from_mseed.start[0]
    assert np.array_equal(arr.values, from_mseed.values, equal_nan=True)


def test_sac_components_disagreeing_on_coordinates(sac_files: list[Path], tmp_path: Path) -> None:
    """Derived: one of the SAC copies rewritten with another station latitude."""
    moved = tmp_path / sac_files[0].name
    tr = obspy.read(str(sac_files[0]))[0]
    tr.stats.sac.stla = 38.0
    tr.write(str(moved), format="SAC")
    with pytest.raises(ReaderError, match="different station coordinates"):
        read_waveforms([moved, *sac_files[1:]])


def test_merge_components_and_min_samples(mseed_dir: Path, gap_files: dict) -> None:
    """TA.POKR BHN and BHE (168,001 samples each) beside a derived BHZ: its first 1000 samples
    alone (gap fixture, part 1), then the whole channel less the GAP's 500 samples."""
    horizontals = [mseed_dir / f for f in POKR[1:]]
    single = read_waveforms([gap_files["parts"][0], *horizontals], merge_components=False)
    assert [a.source for a in single] == ["seismic:TA.POKR..BHE", "seismic:TA.POKR..BHN",
                                          "seismic:TA.POKR..BHZ"]  # fmt: skip
    assert [a.names for a in single] == [["vel_e"], ["vel_n"], ["vel_z"]]
    assert [a.values.shape[2] for a in single] == [168001, 168001, 1000]  # own spans
    # BHZ has 168001 - 500 = 167501 valid samples.
    (arr,) = read_waveforms([gap_files["one"], *horizontals], min_samples=167_600)
    assert arr.names == ["vel_n", "vel_e"]
    assert arr.attrs["dropped_channels"] == ["TA.POKR..BHZ: 167501 valid samples < 167600"]
    with pytest.raises(ReaderError, match="min_samples=200000"):
        read_waveforms([gap_files["one"], *horizontals], min_samples=200_000)


def _truncated(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    # 300 B into a 512-byte record (under 128 B, obspy's own warning would come first)
    dst.write_bytes(data[: len(data) // 2 // 512 * 512 + 300])


def _bad_steim(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    data[512 * 10 + 100 : 512 * 10 + 140] = b"\xff" * 40  # Steim-2 frames of record 10
    dst.write_bytes(bytes(data))


def _record_overwritten(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    data[512:1024] = bytes(512)  # record 1 zeroed: libmseed skips it with a warning
    dst.write_bytes(bytes(data))


def _not_seismic(src: Path, dst: Path) -> None:
    dst.write_bytes(b"not a waveform file\n" * 50)


def _restituted_sac(src: Path, dst: Path) -> None:
    tr = obspy.read(str(src))[0]
    tr.stats.sac = {"idep": 7}  # IVEL: velocity in nm/s, not counts
    tr.write(str(dst), format="SAC")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (_truncated, "truncated"),
        (_bad_steim, "Steim"),
        (_record_overwritten, "obspy warned while reading it"),
        (_not_seismic, "cannot read it as miniSEED or SAC"),
        (_restituted_sac, "not raw counts"),
    ],
)
def test_damaged_waveform_file_is_refused(
    mseed_dir: Path, tmp_path: Path, damage, match: str
) -> None:
    """Derived damaged copies of TA.POKR BHZ: the error names the path and the reason."""
    bad = tmp_path / "damaged.mseed"
    damage(mseed_dir / POKR_Z, bad)
    with pytest.raises(ReaderError, match=match) as info:
        read_waveforms([mseed_dir / CO, bad])
    assert info.value.path == str(bad) and str(bad) in str(info.value)


# --------------------------------------------------------------------------------------------
# SEG-Y


@pytest.fixture(scope="module")
def f3_path(shared_data: Path) -> Path:
    return shared_data / "seismic" / "segy" / "f3.sgy"


@pytest.fixture(scope="module")
def f3_ref(f3_path: Path) -> dict[str, np.ndarray]:
    """F3 read directly with segyio: samples and the header fields the reader maps."""
    with segyio.open(str(f3_path)) as f:
        tf = segyio.TraceField
        return {
            "data": f.trace.raw[:],
            "samples_ms": np.asarray(f.samples),
            "inline": f.attributes(tf.INLINE_3D)[:],
            "crossline": f.attributes(tf.CROSSLINE_3D)[:],
            "x": f.attributes(tf.CDP_X)[:],
            "y": f.attributes(tf.CDP_Y)[:],
            "scalar": f.attributes(tf.SourceGroupScalar)[:],
        }


def _copy_segy(src: Path, dst: Path, fmt: int, endian: str, traces: np.ndarray) -> None:
    with segyio.open(str(src)) as f:
        spec = segyio.tools.metadata(f)
        text, binary = f.text[0], dict(f.bin)
        headers = [dict(h) for h in f.header]
    spec.format, spec.endian = fmt, endian
    with segyio.create(str(dst), spec) as g:
        g.text[0] = text
        g.bin = binary
        g.bin.update(format=fmt)
        g.header = headers
        g.trace = [t.copy() for t in traces]  # copies: segyio converts its buffer in place


@pytest.fixture(scope="module")
def f3_copies(
    f3_path: Path, f3_ref: dict, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, np.ndarray]]:
    """Derived: F3 as 4-byte IBM float big-endian (amplitudes × 0.37, so that IBM rounding
    matters) and as 2-byte integer little-endian, written with segyio; with the values written."""
    out = tmp_path_factory.mktemp("segy")
    scaled = f3_ref["data"].astype(np.float32) * np.float32(0.37)
    _copy_segy(f3_path, out / "ibm.sgy", 1, "big", scaled)
    _copy_segy(f3_path, out / "le.sgy", 3, "little", f3_ref["data"])
    return {"ibm": (out / "ibm.sgy", scaled), "le": (out / "le.sgy", f3_ref["data"])}


def test_segy_f3_matches_segyio(f3_path: Path, f3_ref: dict) -> None:
    (arr,) = read_segy([f3_path])
    assert arr.values.shape == (414, 1, 75) and arr.names == ["amplitude"]
    assert arr.variables[0].units == "1" and arr.variables[0].modality == "waveform"
    assert np.array_equal(arr.values[:, 0].astype(np.float64), f3_ref["data"].astype(np.float64))
    assert arr.step == np.timedelta64(4, "ms")
    # Relative time: sample 0 at segyio's first sample time (4 ms delay) after the epoch.
    assert (arr.start == np.datetime64(0, "ns") + np.timedelta64(4, "ms")).all()
    assert f3_ref["samples_ms"][0] == 4.0
    assert np.array_equal(arr.record_attrs["inline"], f3_ref["inline"])
    assert np.array_equal(arr.record_attrs["crossline"], f3_ref["crossline"])
    assert (f3_ref["scalar"] == -10).all()  # F3's CDP X/Y are in decimetres
    assert np.array_equal(arr.record_attrs["cdp_x"], f3_ref["x"] / 10.0)
    assert np.array_equal(arr.record_attrs["cdp_y"], f3_ref["y"] / 10.0)
    assert arr.record_attrs["cdp_x"][0] == 620197.2
    assert np.isnan(arr.lat).all() and np.isnan(arr.lon).all()
    (raw,) = read_segy([f3_path], coordinate_scalar=False)
    assert np.array_equal(raw.record_attrs["cdp_x"], f3_ref["x"].astype(np.float64))
    # Another header byte for the inline number: CDP (bytes 21-24) holds the crossline here.
    (other,) = read_segy([f3_path], iline=21)
    assert np.array_equal(other.record_attrs["inline"], f3_ref["crossline"])


def test_segy_ibm_float_and_little_endian_copies(f3_path: Path, f3_copies: dict) -> None:
    ibm_path, written = f3_copies["ibm"]
    (ibm,) = read_segy([ibm_path])
    assert ibm.attrs["sample_format"] == "4-byte IBM float" and ibm.attrs["endian"] == "big"
    # IBM float keeps a 24-bit fraction under a base-16 exponent: up to 3 leading zero bits, so
    # float32 → IBM → float32 is within 2**-20 relative (truncation; 2**-21 when rounded).
    np.testing.assert_allclose(ibm.values[:, 0], written, rtol=2**-20, atol=0)
    assert (ibm.values[:, 0] != written).any()  # the rounding was exercised
    with segyio.open(str(ibm_path)) as f:
        assert np.array_equal(ibm.values[:, 0], f.trace.raw[:])  # decoded exactly as segyio

    le_path, _ = f3_copies["le"]
    (le,) = read_segy([le_path])  # endian="auto" finds the byte order
    (be,) = read_segy([f3_path])
    assert le.attrs["endian"] == "little" and le.attrs["sample_format"] == "2-byte signed integer"
    assert np.array_equal(le.values, be.values)
    for key in ("inline", "crossline", "cdp_x", "cdp_y"):
        assert np.array_equal(le.record_attrs[key], be.record_attrs[key]), key
    (le2,) = read_segy([le_path], endian="little")
    assert np.array_equal(le2.values, be.values)
    with pytest.raises(ReaderError, match="big-endian"):
        read_segy([le_path], endian="big")


def test_segy_f3_lat_lon(f3_path: Path, f3_ref: dict) -> None:
    (arr,) = read_segy([f3_path], crs="EPSG:23031")  # ED50 / UTM zone 31N
    # The F3 block lies in the Dutch sector of the North Sea.
    assert (arr.lat > 54.7).all() and (arr.lat < 55.0).all()
    assert (arr.lon > 4.5).all() and (arr.lon < 4.9).all()
    lon, lat = transform("EPSG:23031", "EPSG:4326", list(f3_ref["x"] / 10.0),
                         list(f3_ref["y"] / 10.0))  # fmt: skip
    np.testing.assert_allclose(arr.lat, lat, rtol=0, atol=1e-9)
    np.testing.assert_allclose(arr.lon, lon, rtol=0, atol=1e-9)
    assert arr.has_coordinates
    with pytest.raises(ValueError, match="crs='EPSG:999999'"):
        read_segy([f3_path], crs="EPSG:999999")


def test_segy_truncated_is_refused(f3_path: Path, tmp_path: Path) -> None:
    """Derived: F3 cut 1000 bytes short."""
    bad = tmp_path / "f3_truncated.sgy"
    bad.write_bytes(f3_path.read_bytes()[:-1000])
    with pytest.raises(ReaderError, match="segyio cannot open it") as info:
        read_segy([bad])
    assert info.value.path == str(bad)


# --------------------------------------------------------------------------------------------
# SeisBench


@pytest.fixture(scope="module")
def sb_dir(shared_data: Path) -> Path:
    return shared_data / "seismic" / "seisbench_ipoc_pb01"


@pytest.fixture(scope="module")
def sb_rows(sb_dir: Path) -> list[dict[str, str]]:
    with (sb_dir / "metadata.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def sb(sb_dir: Path) -> SeriesArray:
    (arr,) = read_seisbench([sb_dir / "waveforms.hdf5"])
    return arr


def test_seisbench_matches_h5py_and_csv(sb: SeriesArray, sb_dir: Path, sb_rows: list) -> None:
    assert sb.values.shape == (100, 3, 1200) and sb.names == ["vel_z", "vel_n", "vel_e"]
    assert sb.step == np.timedelta64(50, "ms") and sb.variables[0].units == "counts"
    with h5py.File(sb_dir / "waveforms.hdf5", "r") as f:
        assert f["data_format/component_order"][()] == b"ZNE"
        buckets = {name: f["data"][name][()] for name in f["data"]}
    # The bucket$index mapping, spelled out for a few rows.
    for row, (bucket, i) in {0: ("bucket0", 0), 59: ("bucket0", 59), 60: ("bucket1", 0),
                             70: ("bucket2", 0), 99: ("bucket2", 29)}.items():  # fmt: skip
        assert sb_rows[row]["trace_name"] == f"{bucket}${i},:3,:1200"
        assert np.array_equal(sb.values[row], buckets[bucket][i])
        assert np.array_equal(sb.values[row, 0], buckets[bucket][i][0])  # Z first
    for k, r in enumerate(sb_rows):
        bucket, i = r["trace_name"].split(",")[0].split("$")
        assert np.array_equal(sb.values[k], buckets[bucket][int(i)]), r["trace_name"]
        t = datetime.strptime(r["trace_start_time"], "%Y/%m/%d %H:%M:%S.%f")
        assert sb.start[k] == np.datetime64(t, "ns"), r["trace_start_time"]
        assert sb.lat[k] == float(r["station_latitude_deg"])
        assert sb.lon[k] == float(r["station_longitude_deg"])
        assert sb.elevation[k] == float(r["station_elevation_m"])
        for col in ("source_magnitude", "source_depth_km", "source_latitude_deg"):
            assert sb.record_attrs[col][k] == float(r[col]), col
        for col in ("split", "trace_name", "station_code", "source_magnitude_type"):
            assert sb.record_attrs[col][k] == r[col], col
    assert set(sb.record_attrs) >= set(sb_rows[0]) | {"network", "station", "location"}
    assert sb.record_attrs["network"][0] == "CX" and sb.record_attrs["station"][0] == "PB01"
    assert sb.depth is None and sb.attrs["assumed"] == []


def test_seisbench_splits(sb: SeriesArray, sb_dir: Path, sb_rows: list) -> None:
    (part,) = read_seisbench([sb_dir / "waveforms.hdf5"], splits=["dev", "test"])
    keep = [k for k, r in enumerate(sb_rows) if r["split"] in ("dev", "test")]
    assert len(keep) == 40
    assert np.array_equal(part.values, sb.values[keep])
    assert list(part.record_attrs["trace_name"]) == [sb_rows[k]["trace_name"] for k in keep]
    with pytest.raises(ReaderError, match=r"present: \['dev', 'test', 'train'\]"):
        read_seisbench([sb_dir / "waveforms.hdf5"], splits=["validation"])


@pytest.mark.parametrize(
    ("trace_name", "match"),
    [("bucket7$3,:3,:1200", r"'bucket7\$3,:3,:1200' points at data/bucket7"),
     ("bucket1$10,:3,:1200", r"bucket1\$10.*past the end of data/bucket1")],
)  # fmt: skip
def test_seisbench_bad_trace_name(
    sb_dir: Path, tmp_path: Path, trace_name: str, match: str
) -> None:
    """Derived metadata: the real CSV with row 5 pointing at a missing bucket or row."""
    text = (sb_dir / "metadata.csv").read_text()
    lines = text.splitlines(keepends=True)
    lines[6] = lines[6].replace('"bucket0$5,:3,:1200"', f'"{trace_name}"')
    assert trace_name in lines[6]
    meta = tmp_path / "metadata.csv"
    meta.write_text("".join(lines))
    with pytest.raises(ReaderError, match=match):
        read_seisbench([sb_dir / "waveforms.hdf5"], metadata=str(meta))
    # The default metadata path is the CSV beside the waveform file.
    shutil.copy(sb_dir / "waveforms.hdf5", tmp_path / "waveforms.hdf5")
    with pytest.raises(ReaderError, match=match):
        read_seisbench([tmp_path / "waveforms.hdf5"])


def test_seisbench_wc_layout_and_plain_trace_names(
    sb: SeriesArray, sb_dir: Path, sb_rows: list, tmp_path: Path
) -> None:
    """Derived: rows 0-69 rewritten as dimension_order "WC" (bucket0 transposed to (60, 1200, 3))
    and as plain per-trace datasets data/trace60 ... data/trace69 (each (1200, 3)), with ISO 8601
    start times."""
    with h5py.File(sb_dir / "waveforms.hdf5", "r") as src, h5py.File(tmp_path / "w.hdf5", "w") as f:
        for key in src["data_format"]:
            f[f"data_format/{key}"] = src[f"data_format/{key}"][()]
        del f["data_format/dimension_order"]
        f["data_format/dimension_order"] = "WC"
        f["data/bucket0"] = src["data/bucket0"][()].transpose(0, 2, 1)
        for i in range(10):
            f[f"data/trace{60 + i}"] = src["data/bucket1"][i].T
    rows = [dict(r) for r in sb_rows[:70]]
    for k, r in enumerate(rows):
        r["trace_name"] = f"bucket0${k},:1200,:3" if k < 60 else f"trace{k}"
        t = datetime.strptime(r["trace_start_time"], "%Y/%m/%d %H:%M:%S.%f")
        r["trace_start_time"] = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with (tmp_path / "m.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (arr,) = read_seisbench([tmp_path / "w.hdf5"], metadata=str(tmp_path / "m.csv"))
    assert arr.attrs["dimension_order"] == "WC"
    assert np.array_equal(arr.values, sb.values[:70])
    assert np.array_equal(arr.start, sb.start[:70])


# --------------------------------------------------------------------------------------------
# registry and config options


def test_registry_and_option_types() -> None:
    assert (
        get_reader("mseed").__wrapped__ is read_waveforms
        and get_reader("sac").__wrapped__ is read_waveforms
    )
    assert (
        get_reader("segy").__wrapped__ is read_segy
        and get_reader("seisbench").__wrapped__ is read_seisbench
    )
    # Options arrive from YAML: their annotations must resolve and validate (lists → tuples).
    hints = typing.get_type_hints(read_waveforms)
    stations = TypeAdapter(hints["stations"]).validate_python({"TA.POKR": [*POKR_AT[:2], 501]})
    assert stations == {"TA.POKR": POKR_AT}
    for fn in (read_segy, read_seisbench):
        typing.get_type_hints(fn)
    assert TypeAdapter(typing.get_type_hints(read_segy)["endian"]).validate_python("auto")
