"""Station readers (GHCN-Daily, CAMELS-US, FLUXNET) against independent parses of the real files.

References are built with pandas (``read_fwf``, ``read_csv``, outer joins, ``to_datetime``) or
the csv module, never with the reader's own helpers. GHCN is also checked against rnoaa's CSV of
the same station (PROVENANCE.md: the .dly was re-serialised from it). Files named "derived" are
copies of the shared samples, changed by the test as stated, in ``tmp_path``.
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scigpt.data_pipeline.ingest.base import ReaderError, SeriesArray, get_reader
from scigpt.data_pipeline.ingest.camels import read_camels
from scigpt.data_pipeline.ingest.fluxnet import read_fluxnet
from scigpt.data_pipeline.ingest.ghcn import read_ghcn

FT3 = 0.028316846592  # m³ per ft³ (exact: 0.3048³)


@pytest.fixture(scope="module")
def station_dir(shared_data: Path) -> Path:
    return shared_data / "station"


def _channel(arr: SeriesArray, name: str) -> np.ndarray:
    return arr.values[0, arr.names.index(name)]  # (L,)


def _days(arr: SeriesArray) -> pd.DatetimeIndex:
    return pd.date_range(arr.start[0], periods=arr.values.shape[2], freq="D")


def test_registry_resolves_station_readers() -> None:
    assert get_reader("ghcn").__wrapped__ is read_ghcn
    assert get_reader("camels").__wrapped__ is read_camels
    assert get_reader("fluxnet").__wrapped__ is read_fluxnet


# ----------------------------------------------------------------------------------------------
# GHCN-Daily
# ----------------------------------------------------------------------------------------------

_DLY_COLSPECS = [(0, 11), (11, 15), (15, 17), (17, 21)] + [
    (21 + 8 * d + o, 21 + 8 * d + o + w) for d in range(31) for o, w in ((0, 5), (5, 1), (6, 1))
]
_DLY_NAMES = ["id", "year", "month", "element"] + [
    f"{k}{d}" for d in range(1, 32) for k in ("value", "mflag", "qflag")
]


@pytest.fixture(scope="module")
def dly_path(station_dir: Path) -> Path:
    return station_dir / "ghcn" / "AGE00147704.dly"


@pytest.fixture(scope="module")
def dly_reference(dly_path: Path) -> pd.DataFrame:
    """Long table (element, date, value, qflag) of valid calendar days, via pandas.read_fwf."""
    wide = pd.read_fwf(
        dly_path, colspecs=_DLY_COLSPECS, names=_DLY_NAMES, header=None, dtype=str, na_filter=False
    )
    parts = []
    for d in range(1, 32):
        date = pd.to_datetime(
            {"year": wide["year"].astype(int), "month": wide["month"].astype(int), "day": d},
            errors="coerce",  # Feb 30, Apr 31 → NaT
        )
        parts.append(
            pd.DataFrame(
                {
                    "element": wide["element"],
                    "date": date,
                    "value": wide[f"value{d}"].astype(int),
                    "qflag": wide[f"qflag{d}"],
                }
            )
        )
    return pd.concat(parts).dropna(subset=["date"])


def _ghcn_expected(ref: pd.DataFrame, element: str, days: pd.DatetimeIndex) -> np.ndarray:
    raw = ref[ref["element"] == element].set_index("date")["value"].reindex(days)
    raw = raw.where(raw != -9999).to_numpy(dtype=np.float64)
    if element == "PRCP":
        return (raw / 10).astype(np.float32)  # tenths of mm per day → mm day**-1
    return (raw / 10 + 273.15).astype(np.float32)  # tenths of °C → K


def test_ghcn_matches_fixed_width_reference(dly_path: Path, dly_reference: pd.DataFrame) -> None:
    (arr,) = read_ghcn([dly_path], drop_flagged=False)
    assert arr.names == ["prcp", "tmax", "tmin"]
    assert [v.units for v in arr.variables] == ["mm day**-1", "K", "K"]
    assert {v.modality for v in arr.variables} == {"series"}
    # PROVENANCE.md: 1909-11 to 1937-12.
    days = _days(arr)
    assert days[0] == pd.Timestamp("1909-11-01") and days[-1] == pd.Timestamp("1937-12-31")
    assert arr.step == np.timedelta64(1, "D")
    assert arr.record_attrs["station_id"].tolist() == ["AGE00147704"]
    assert np.isnan(arr.lat).all() and np.isnan(arr.elevation).all()  # no sidecar given
    for element in ("PRCP", "TMAX", "TMIN"):
        got = _channel(arr, element.lower())
        np.testing.assert_array_equal(got, _ghcn_expected(dly_reference, element, days))
        # Every -9999 on a real day of a month in the file is a NaN, and nothing else is.
        rows = dly_reference[dly_reference["element"] == element]
        covered = np.isin(days, rows["date"].to_numpy())
        assert np.isnan(got[covered]).sum() == (rows["value"] == -9999).sum()


def test_ghcn_matches_rnoaa_csv(station_dir: Path, dly_path: Path) -> None:
    """The CSV holds the same data in another layout: NA for missing, one row per month."""
    (arr,) = read_ghcn([dly_path], drop_flagged=False)
    start = arr.start[0].astype("datetime64[D]").astype(dt.date)
    seen, n_values = np.zeros(arr.values.shape[1:], dtype=bool), 0
    with (station_dir / "ghcn" / "AGE00147704.rnoaa.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["id"] == "NA":  # rnoaa's all-NA artefact row
                continue
            c = arr.names.index(row["element"].lower())
            for d in range(1, 32):
                try:
                    i = (dt.date(int(row["year"]), int(row["month"]), d) - start).days
                except ValueError:
                    assert row[f"VALUE{d}"] == "NA"  # no value on a day that does not exist
                    continue
                seen[c, i] = True
                got = arr.values[0, c, i]
                if row[f"VALUE{d}"] == "NA":
                    assert np.isnan(got), (row["element"], row["year"], row["month"], d)
                    continue
                tenths = int(row[f"VALUE{d}"])
                want = tenths / 10 if c == 0 else tenths / 10 + 273.15
                assert got == np.float32(want), (row["element"], row["year"], row["month"], d)
                n_values += 1
    assert n_values == 27_755  # PROVENANCE.md: all non-missing values of the CSV
    assert np.isnan(arr.values[0][~seen]).all()  # months absent from the file are NaN


def test_ghcn_drop_flagged(dly_path: Path, dly_reference: pd.DataFrame) -> None:
    kept = read_ghcn([dly_path], drop_flagged=False)[0]
    dropped = read_ghcn([dly_path])[0]
    days = _days(kept)
    ref = dly_reference[(dly_reference["qflag"] != "") & (dly_reference["value"] != -9999)]
    assert len(ref) == 30  # 24 'I' (internal consistency) + 6 'O' (outlier) in this file
    expected = np.zeros(kept.values.shape[1:], dtype=bool)
    for element, date in zip(ref["element"], ref["date"], strict=True):
        expected[kept.names.index(element.lower()), days.get_loc(date)] = True
    newly_nan = np.isnan(dropped.values[0]) & ~np.isnan(kept.values[0])
    np.testing.assert_array_equal(newly_nan, expected)
    np.testing.assert_array_equal(dropped.values[0][~expected], kept.values[0][~expected])
    assert dropped.attrs["flagged"] == {"prcp": 0, "tmax": 16, "tmin": 14}


def _derived_dly(src: Path, dst: Path, edit) -> Path:
    """Derived: a copy of the .dly with its lines passed through ``edit(lines)``."""
    lines = src.read_text().splitlines()
    dst.write_text("\n".join(edit(lines)) + "\n")
    return dst


def test_ghcn_invalid_days_are_skipped(dly_path: Path, tmp_path: Path) -> None:
    """Derived: values on Feb 29 + 30 (1910, no leap year) and Apr 31 (1910) of TMAX, and the
    following month's TMAX line removed, so a leak into the next day would show."""
    lines = dly_path.read_text().splitlines()
    line_of = {ln[11:21]: i for i, ln in enumerate(lines)}
    feb, apr = line_of["191002TMAX"], line_of["191004TMAX"]

    def edit(ls: list[str]) -> list[str]:
        for i, days in ((feb, (29, 30)), (apr, (31,))):
            for d in days:
                o = 21 + 8 * (d - 1)
                ls[i] = ls[i][:o] + "  123" + ls[i][o + 5 :]
        return [ln for ln in ls if ln[11:21] not in ("191003TMAX", "191005TMAX")]

    path = _derived_dly(dly_path, tmp_path / "invalid_days.dly", edit)
    (got,) = read_ghcn([path])
    want = read_ghcn([dly_path])[0].values.copy()
    days = _days(got)
    c = got.names.index("tmax")
    for month in ("1910-03", "1910-05"):
        want[0, c, days.to_period("M") == pd.Period(month)] = np.nan
    np.testing.assert_array_equal(got.values, want)


def test_ghcn_elements_option_and_unknown_element(dly_path: Path, tmp_path: Path) -> None:
    (arr,) = read_ghcn([dly_path], elements=["TMIN", "snwd", "TMAX"])
    full = read_ghcn([dly_path])[0]
    assert arr.names == ["tmin", "snwd", "tmax"]
    np.testing.assert_array_equal(arr.values[0, 0], _channel(full, "tmin"))
    assert np.isnan(arr.values[0, 1]).all()  # the station has no SNWD: an all-NaN channel
    with pytest.raises(ValueError, match="XXXX"):
        read_ghcn([dly_path], elements=["TMAX", "XXXX"])

    def rename_line_5(ls: list[str]) -> list[str]:
        ls[4] = ls[4][:17] + "WT01" + ls[4][21:]
        return ls

    path = _derived_dly(dly_path, tmp_path / "wt01.dly", rename_line_5)
    with pytest.raises(ReaderError, match=r"WT01.*line 5") as err:
        read_ghcn([path])
    assert err.value.path == str(path)
    assert read_ghcn([path], elements=["TMAX"])[0].names == ["tmax"]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda ln: ln[:150], r"line 7 has 150 characters"),
        (lambda ln: ln[: 21 + 16] + "12x45" + ln[21 + 21 :], r"line 7, day 3 .*'12x45'"),
        (lambda ln: ln[: 21 + 16] + "     " + ln[21 + 21 :], r"line 7, day 3 .*'     '"),
    ],
    ids=["truncated", "garbled", "blank"],
)
def test_ghcn_bad_line_names_path_and_line(dly_path: Path, tmp_path: Path, edit, match) -> None:
    def break_line_7(ls: list[str]) -> list[str]:
        ls[6] = edit(ls[6])
        return ls

    path = _derived_dly(dly_path, tmp_path / "bad.dly", break_line_7)
    with pytest.raises(ReaderError, match=match) as err:
        read_ghcn([path])
    assert str(path) in str(err.value)


def test_ghcn_coordinates_from_sidecar_and_mapping(dly_path: Path, tmp_path: Path) -> None:
    # Derived sidecar in ghcnd-stations.txt columns; the numbers are the test's, not NOAA's.
    sidecar = tmp_path / "ghcnd-stations.txt"
    sidecar.write_text(
        "AGE00147704  36.7800    3.0700   50.0    ALGER-PORT\n"
        "AGE00135039  35.7297    0.6500 -999.9    ORAN-HOPITAL\n"
    )
    (arr,) = read_ghcn([dly_path], stations=sidecar)
    assert (arr.lat[0], arr.lon[0], arr.elevation[0]) == (36.78, 3.07, 50.0)
    assert arr.has_coordinates
    (arr,) = read_ghcn([dly_path], stations={"AGE00147704": (36.5, 3.5)})
    assert (arr.lat[0], arr.lon[0]) == (36.5, 3.5) and np.isnan(arr.elevation[0])
    with pytest.warns(UserWarning, match="AGE00147704"):
        (arr,) = read_ghcn([dly_path], stations={"USW00094728": (40.8, -74.0, 40.0)})
    assert not arr.has_coordinates


# ----------------------------------------------------------------------------------------------
# CAMELS-US
# ----------------------------------------------------------------------------------------------

_DAYMET = {
    "dayl(s)": ("dayl", 1.0, 0.0),
    "prcp(mm/day)": ("prcp", 1.0, 0.0),
    "srad(W/m2)": ("srad", 1.0, 0.0),
    "swe(mm)": ("swe", 1.0, 0.0),
    "tmax(C)": ("tmax", 1.0, 273.15),
    "tmin(C)": ("tmin", 1.0, 273.15),
    "vp(Pa)": ("vp", 1.0, 0.0),
}


@pytest.fixture(scope="module")
def camels_dir(station_dir: Path) -> Path:
    return station_dir / "camels_us"


def _camels_reference(streamflow: Path, forcing: Path) -> pd.DataFrame:
    """Outer join of the two files on date, reindexed to every day (pandas, not the reader)."""
    q = pd.read_csv(
        streamflow, sep=r"\s+", header=None, names=["gauge", "Y", "M", "D", "Q", "flag"],
        dtype={"gauge": str},
    )  # fmt: skip
    q.index = pd.to_datetime({"year": q["Y"], "month": q["M"], "day": q["D"]})
    f = pd.read_csv(forcing, sep=r"\s+", skiprows=3)
    f.index = pd.to_datetime({"year": f["Year"], "month": f["Mnth"], "day": f["Day"]})
    joined = q[["Q", "flag"]].join(f[list(_DAYMET)], how="outer")
    return joined.reindex(pd.date_range(joined.index.min(), joined.index.max(), freq="D"))


def _check_camels(arr: SeriesArray, ref: pd.DataFrame) -> None:
    assert _days(arr).equals(ref.index)
    q = ref["Q"].where(ref["Q"] != -999).to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(_channel(arr, "streamflow"), (q * FT3).astype(np.float32))
    flag = ref["flag"].map({"A": 0.0, "A:e": 1.0}).where(~np.isnan(q))
    np.testing.assert_array_equal(_channel(arr, "streamflow_flag"), flag.to_numpy(np.float32))
    for column, (name, scale, offset) in _DAYMET.items():
        want = ref[column].to_numpy(dtype=np.float64) * scale + offset
        np.testing.assert_array_equal(_channel(arr, name), want.astype(np.float32), err_msg=name)


def test_camels_matches_independent_parse(camels_dir: Path) -> None:
    streamflow = camels_dir / "usgs_streamflow" / "01022500_streamflow_qc.txt"
    forcing = camels_dir / "daymet" / "01022500_lump_cida_forcing_leap.txt"
    (arr,) = read_camels([streamflow])  # forcing found in ../daymet, attributes in ../attributes
    ref = _camels_reference(streamflow, forcing)
    assert arr.names == ["streamflow", "streamflow_flag", "dayl", "prcp", "srad", "swe", "tmax",
                         "tmin", "vp"]  # fmt: skip
    assert arr.variables[0].units == "m**3 s**-1" and arr.variables[6].units == "K"
    # Streamflow covers 2000-2002 (1,096 days), forcing 2000-2003: the union is 1,461 days.
    assert arr.values.shape == (1, 9, 1461)
    assert np.isnan(_channel(arr, "streamflow")).sum() == 365
    _check_camels(arr, ref)
    topo = pd.read_csv(
        camels_dir / "attributes" / "camels_topo.txt", sep=";", dtype={"gauge_id": str}
    )
    row = topo.set_index("gauge_id").loc["01022500"]
    assert (arr.lat[0], arr.lon[0], arr.elevation[0]) == (
        row["gauge_lat"], row["gauge_lon"], row["elev_mean"]
    )  # fmt: skip
    assert arr.record_attrs["station_id"].tolist() == ["01022500"]
    assert arr.attrs["forcing_header"] == {"lat": 44.82, "elevation": 133.0, "area_m2": 587675987.0}
    # Passing both files, forcing first, gives the same record.
    (both,) = read_camels([forcing, streamflow])
    np.testing.assert_array_equal(both.values, arr.values)


def _derived_camels(camels_dir: Path, root: Path, topo_without_gauge: bool = False) -> Path:
    """Derived: the CAMELS sample copied to ``root`` (same layout), optionally without 01022500
    in camels_topo.txt. Returns the streamflow file."""
    for sub in ("usgs_streamflow", "daymet"):
        shutil.copytree(camels_dir / sub, root / sub)
    (root / "attributes").mkdir()
    topo = (camels_dir / "attributes" / "camels_topo.txt").read_text().splitlines(keepends=True)
    if topo_without_gauge:
        topo = [ln for ln in topo if not ln.startswith("01022500;")]
    (root / "attributes" / "camels_topo.txt").write_text("".join(topo))
    return root / "usgs_streamflow" / "01022500_streamflow_qc.txt"


def test_camels_missing_codes_and_gaps_join_on_union(camels_dir: Path, tmp_path: Path) -> None:
    streamflow = _derived_camels(camels_dir, tmp_path)
    forcing = tmp_path / "daymet" / "01022500_lump_cida_forcing_leap.txt"
    q = streamflow.read_text().splitlines(keepends=True)
    q[9] = "01022500 2000 01 10  -999.00 M\n"  # missing, as USGS writes it
    q[10] = "01022500 2000 01 11  -999.00 A\n"  # the code alone also means missing
    del q[19]  # 2000-01-20 absent from the streamflow file
    streamflow.write_text("".join(q))
    f = forcing.read_text().splitlines(keepends=True)
    del f[4 + 40]  # 2000-02-10 absent from the forcing file
    del f[4]  # the forcing now starts a day after the streamflow
    forcing.write_text("".join(f))

    (arr,) = read_camels([streamflow])
    _check_camels(arr, _camels_reference(streamflow, forcing))
    days = _days(arr)
    assert days[0] == pd.Timestamp("2000-01-01")  # union: the streamflow's first day
    for day in ("2000-01-10", "2000-01-11", "2000-01-20"):
        i = days.get_loc(pd.Timestamp(day))
        assert np.isnan(arr.values[0, :2, i]).all() and not np.isnan(arr.values[0, 2:, i]).any()
    for day in ("2000-01-01", "2000-02-10"):
        i = days.get_loc(pd.Timestamp(day))
        assert not np.isnan(arr.values[0, :2, i]).any() and np.isnan(arr.values[0, 2:, i]).all()


def test_camels_gauge_missing_from_attributes(camels_dir: Path, tmp_path: Path) -> None:
    """Documented choice: NaN coordinates and a warning; an unreadable topo file is an error."""
    streamflow = _derived_camels(camels_dir, tmp_path, topo_without_gauge=True)
    with pytest.warns(UserWarning, match=r"camels_topo\.txt does not list '01022500'"):
        (arr,) = read_camels([streamflow])
    assert np.isnan(arr.lat).all() and np.isnan(arr.lon).all() and not arr.has_coordinates
    assert not np.isnan(_channel(arr, "tmax")).all()  # the data are still read
    with pytest.raises(ReaderError, match=r"camels_topo\.txt"):
        read_camels([streamflow], attributes_dir=tmp_path / "nowhere")


def test_camels_forcing_false_and_bad_flag(camels_dir: Path, tmp_path: Path) -> None:
    streamflow = camels_dir / "usgs_streamflow" / "01022500_streamflow_qc.txt"
    (arr,) = read_camels([streamflow], forcing=False, attributes_dir=camels_dir / "attributes")
    assert arr.names == ["streamflow", "streamflow_flag"] and arr.values.shape == (1, 2, 1096)
    with pytest.raises(ReaderError, match="forcing=False"):
        read_camels([camels_dir / "daymet" / "01022500_lump_cida_forcing_leap.txt"], forcing=False)
    bad = _derived_camels(camels_dir, tmp_path)
    lines = bad.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace(" A\n", " Z\n")
    bad.write_text("".join(lines))
    with pytest.raises(ReaderError, match=r"line 3: flag 'Z'"):
        read_camels([bad])


# ----------------------------------------------------------------------------------------------
# FLUXNET (REddyProc / CarboEurope layout)
# ----------------------------------------------------------------------------------------------

# column → (channel, scale, offset) to canonical units, written out independently of the reader
_FLUX = {
    "NEE": ("nee", 1.0, 0.0),
    "LE": ("le", 1.0, 0.0),
    "H": ("h", 1.0, 0.0),
    "Rg": ("rg", 1.0, 0.0),
    "Tair": ("tair", 1.0, 273.15),
    "Tsoil": ("tsoil", 1.0, 273.15),
    "rH": ("rh", 1.0, 0.0),
    "VPD": ("vpd", 100.0, 0.0),
    "Ustar": ("ustar", 1.0, 0.0),
}


@pytest.fixture(scope="module")
def flux_path(station_dir: Path) -> Path:
    return station_dir / "fluxnet" / "Example_DETha98.txt"


@pytest.fixture(scope="module")
def flux_reference(flux_path: Path) -> pd.DataFrame:
    # PROVENANCE.md's recipe: CR-only line endings, units in row 2.
    return pd.read_csv(flux_path, sep="\t", lineterminator="\r", skiprows=[1])


@pytest.fixture(scope="module")
def flux_array(flux_path: Path) -> SeriesArray:
    return read_fluxnet([flux_path])[0]


def test_fluxnet_matches_pandas(flux_array: SeriesArray, flux_reference: pd.DataFrame) -> None:
    arr, ref = flux_array, flux_reference
    assert arr.names == [c for c, _, _ in _FLUX.values()]
    assert len(ref) == 17_520 and arr.values.shape == (1, 9, 17_520)
    assert arr.step == np.timedelta64(30, "m")
    # REddyProc stamps the end of each half hour: the first row (DoY 1, 0.5 h) is 00:00-00:30.
    end = (
        pd.to_datetime(ref["Year"].astype(str), format="%Y")
        + pd.to_timedelta(ref["DoY"] - 1, unit="D")
        + pd.to_timedelta(ref["Hour"], unit="h")
    )
    begin = (end - pd.Timedelta(minutes=30)).to_numpy()
    np.testing.assert_array_equal(begin, arr.start[0] + np.arange(17_520) * arr.step)
    n_nan = 0
    for column, (name, scale, offset) in _FLUX.items():
        raw = ref[column].to_numpy(dtype=np.float64)
        want = np.where(np.isin(raw, [-9999, -6999]), np.nan, raw * scale + offset)
        got = _channel(arr, name)
        np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=column)
        assert np.isnan(got).sum() == np.isin(raw, [-9999, -6999]).sum()
        n_nan += int(np.isnan(got).sum())
    assert n_nan == int(np.isin(ref[list(_FLUX)].to_numpy(), [-9999]).sum()) > 0
    assert arr.variables[arr.names.index("nee")].units == "umol m**-2 s**-1"


@pytest.mark.parametrize("newline", ["\r\n", "\n"], ids=["crlf", "lf"])
def test_fluxnet_line_endings_identical(
    flux_path: Path, flux_array: SeriesArray, tmp_path: Path, newline: str
) -> None:
    """Derived: the CR-only sample rewritten with CRLF / LF line endings."""
    path = tmp_path / "derived.txt"
    path.write_bytes(flux_path.read_bytes().replace(b"\r", newline.encode()))
    (arr,) = read_fluxnet([path])
    np.testing.assert_array_equal(arr.values, flux_array.values)
    assert arr.names == flux_array.names and arr.start == flux_array.start
    assert arr.step == flux_array.step


def test_fluxnet_non_numeric_cell_names_line_and_column(flux_path: Path, tmp_path: Path) -> None:
    """Derived: row 1000 of the data (line 1002) gets 'n/a' for Tair (column 8)."""
    lines = flux_path.read_bytes().decode().split("\r")
    cells = lines[1001].split("\t")
    cells[7] = "n/a"
    lines[1001] = "\t".join(cells)
    path = tmp_path / "derived.txt"
    path.write_text("\r".join(lines), newline="")
    with pytest.raises(ReaderError, match=r"line 1002, column 8 \(Tair\): 'n/a'") as err:
        read_fluxnet([path])
    assert err.value.path == str(path)


@pytest.mark.parametrize(
    ("stamps", "timestamp"),
    [
        (["TIMESTAMP_START", "TIMESTAMP_END"], "TIMESTAMP_START"),
        (["TIMESTAMP_START", "TIMESTAMP_END"], "TIMESTAMP_END"),
        (["TIMESTAMP_END"], "TIMESTAMP_START"),  # the option is a preference, END is read as END
    ],
    ids=["both-start", "both-end", "end-only"],
)
def test_fluxnet_timestamp_columns(
    flux_reference: pd.DataFrame,
    flux_array: SeriesArray,
    tmp_path: Path,
    stamps: list[str],
    timestamp: str,
) -> None:
    """Derived: Year/DoY/Hour replaced by FLUXNET2015-style stamps, comma-separated, LF."""
    ref = flux_reference
    end = pd.to_datetime(ref["Year"].astype(str), format="%Y") + pd.to_timedelta(
        (ref["DoY"] - 1) * 24 + ref["Hour"], unit="h"
    )
    clock = {
        "TIMESTAMP_START": (end - pd.Timedelta(minutes=30)).dt.strftime("%Y%m%d%H%M"),
        "TIMESTAMP_END": end.dt.strftime("%Y%m%d%H%M"),
    }
    table = pd.DataFrame({**{k: clock[k] for k in stamps}, **{c: ref[c] for c in _FLUX}})
    units = ["-"] * len(stamps)
    units += ["umolm-2s-1", "Wm-2", "Wm-2", "Wm-2", "degC", "degC", "%", "hPa", "ms-1"]
    path = tmp_path / "derived.csv"
    with path.open("w", newline="") as f:
        f.write(",".join(table.columns) + "\n" + ",".join(units) + "\n")
        table.to_csv(f, header=False, index=False)
    (arr,) = read_fluxnet([path], timestamp=timestamp)
    np.testing.assert_array_equal(arr.values, flux_array.values)
    assert arr.start == flux_array.start == np.datetime64("1998-01-01T00:00")
    with pytest.raises(ValueError, match="timestamp="):
        read_fluxnet([path], timestamp="TIME")


def test_fluxnet_options(flux_path: Path, flux_reference: pd.DataFrame) -> None:
    site = {"lat": 50.9636, "lon": 13.5669, "elevation": 380.0, "id": "DE-Tha"}
    (arr,) = read_fluxnet([flux_path], variables=["tair", "NEE"], missing_values=(), site=site)
    assert arr.names == ["tair", "nee"]
    assert (arr.lat[0], arr.lon[0], arr.elevation[0]) == (50.9636, 13.5669, 380.0)
    assert arr.record_attrs["station_id"].tolist() == ["DE-Tha"] and arr.source == "fluxnet:DE-Tha"
    # With no missing-value codes the raw -9999 stay numbers.
    nee = flux_reference["NEE"].to_numpy()
    assert not np.isnan(arr.values).any()
    assert (_channel(arr, "nee") == -9999).sum() == (nee == -9999).sum() > 0
    with pytest.raises(ReaderError, match="'co2'"):
        read_fluxnet([flux_path], variables=["co2"])
    with pytest.raises(ValueError, match="site="):
        read_fluxnet([flux_path], site={"latitude": 50.9})


def test_fluxnet_other_missing_codes(flux_path: Path, tmp_path: Path) -> None:
    """Derived: data row 1 gets NEE = -6999 and LE = 'nan' (LF endings)."""
    lines = flux_path.read_bytes().decode().split("\r")
    cells = lines[2].split("\t")
    cells[3], cells[4] = "-6999", "nan"
    lines[2] = "\t".join(cells)
    path = tmp_path / "derived.txt"
    path.write_text("\n".join(lines))
    (arr,) = read_fluxnet([path])
    assert np.isnan(arr.values[0, :2, 0]).all() and arr.attrs["missing"]["le"] == 2456 + 1
    (arr,) = read_fluxnet([path], missing_values=(-9999,))
    assert arr.values[0, 0, 0] == -6999 and np.isnan(arr.values[0, 1, 0])


def test_station_channels_share_names_and_units_across_sources(
    dly_path: Path, camels_dir: Path
) -> None:
    """One canonical name, one unit: GHCN TMAX/PRCP and Daymet tmax/prcp are the same channel."""
    (ghcn,) = read_ghcn([dly_path])
    (camels,) = read_camels([camels_dir / "usgs_streamflow" / "01022500_streamflow_qc.txt"])
    for name in ("tmax", "tmin", "prcp"):
        assert ghcn.variables[ghcn.names.index(name)] == camels.variables[camels.names.index(name)]
