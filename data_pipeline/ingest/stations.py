"""Station and basin time series → :class:`SeriesArray`: GHCN-Daily, CAMELS-US, FLUXNET tables.

Conventions shared by the three readers:

* **One SeriesArray per station** (per ``.dly`` file, per CAMELS gauge, per FLUXNET table), each
  with ``N = 1`` record. Stations cover different periods, so stacking them into one ``(N, C, L)``
  array would pad most of it with NaN; the shard writer concatenates records instead.
* **Channels are variables** with canonical lower-case names and canonical units from
  :data:`STATION_CHANNELS` (one name, one unit, whichever source it comes from: GHCN ``TMAX`` and
  Daymet ``tmax(C)`` are both ``tmax`` in K). Values are converted in float64 through
  :func:`..units.to_canonical` and rounded once to float32.
* **The time axis is uniform and gap-filled:** ``start`` is the beginning of the first sample's
  interval (00:00 of the first day for daily data; the start of the first averaging period for
  half-hourly data), ``step`` is one day or the table's period, and every slot no line fills —
  gaps, missing-value codes, dropped flags — is NaN. Times are as written in the file; no time
  zone conversion is applied.
* ``record_attrs["station_id"]`` holds the station / gauge / site id of the record.
* Coordinates come from a sidecar (``ghcnd-stations.txt``, ``camels_topo.txt``) or an option;
  an id the sidecar does not list gets NaN coordinates and a :class:`UserWarning` (the series is
  still usable; ``SeriesArray.has_coordinates`` tells), while a sidecar that cannot be read is a
  :class:`ReaderError`.
"""

from __future__ import annotations

import calendar
import csv
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..units import to_canonical
from ..variables import VariableInfo
from .base import ReaderError, SeriesArray

_DAY = np.timedelta64(1, "D").astype("timedelta64[ns]")


@dataclass(frozen=True)
class StationChannel:
    """A canonical station variable: one name, one unit, whatever the source."""

    name: str
    units: str
    long_name: str

    def info(self) -> VariableInfo:
        return VariableInfo(self.name, self.units, "series", None, self.long_name)


# Daily totals (precipitation, snowfall, pan evaporation) are rates in "mm day**-1": a GHCN
# PRCP value is the 24-hour total, i.e. mm per observation day, which is exactly what Daymet's
# "prcp(mm/day)" holds, so both sources share one `prcp` channel and one set of statistics.
STATION_CHANNELS: Mapping[str, StationChannel] = {
    c.name: c
    for c in (
        StationChannel("prcp", "mm day**-1", "Daily precipitation"),
        StationChannel("snow", "mm day**-1", "Daily snowfall (snow depth, not water equivalent)"),
        StationChannel("evap", "mm day**-1", "Daily pan evaporation"),
        StationChannel("snwd", "mm", "Snow depth"),
        StationChannel("wesd", "mm", "Water equivalent of snow on the ground"),
        StationChannel("swe", "mm", "Snow water equivalent"),
        StationChannel("tmax", "K", "Daily maximum air temperature"),
        StationChannel("tmin", "K", "Daily minimum air temperature"),
        StationChannel("tavg", "K", "Daily mean air temperature"),
        StationChannel("tobs", "K", "Air temperature at observation time"),
        StationChannel("awnd", "m s**-1", "Daily mean wind speed"),
        StationChannel("dayl", "s", "Day length"),
        StationChannel("srad", "W m**-2", "Daylight-mean incident shortwave radiation"),
        StationChannel("vp", "Pa", "Water vapour pressure"),
        StationChannel("streamflow", "m**3 s**-1", "Daily mean streamflow"),
        StationChannel("streamflow_flag", "1", "USGS streamflow flag: 0 approved, 1 estimated"),
        StationChannel("nee", "umol m**-2 s**-1", "Net ecosystem exchange of CO2"),
        StationChannel("le", "W m**-2", "Latent heat flux"),
        StationChannel("h", "W m**-2", "Sensible heat flux"),
        StationChannel("rg", "W m**-2", "Global radiation (incoming shortwave)"),
        StationChannel("tair", "K", "Air temperature"),
        StationChannel("tsoil", "K", "Soil temperature"),
        StationChannel("rh", "%", "Relative humidity"),
        StationChannel("vpd", "Pa", "Vapour pressure deficit"),
        StationChannel("ustar", "m s**-1", "Friction velocity"),
    )
}


def _split_lines(text: str) -> list[str]:
    """Lines under any terminator: CR-only (old Mac), CRLF or LF, even mixed in one file.

    ``str.splitlines`` is not used: it also splits on form feeds, U+0085 and U+2028.
    """
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()  # the terminator of the last line, not an empty line
    return lines


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ReaderError(
            path, f"cannot read: {exc.strerror or exc}. Fix: check the path."
        ) from exc


def _decode_ascii(path: Path, data: bytes) -> str:
    """ASCII text; a stray multi-byte character would shift every fixed-width column after it."""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + data[: exc.start].count(b"\r") + 1
        raise ReaderError(
            path, f"line {line}: non-ASCII byte 0x{data[exc.start]:02x}. Fix: re-download the file."
        ) from None


def _day(year: int, month: int, day: int) -> np.datetime64:
    return np.datetime64(f"{year:04d}-{month:02d}-{day:02d}", "D")


def _series(
    values: np.ndarray,
    channels: Sequence[StationChannel],
    start: np.datetime64,
    step: np.timedelta64,
    coords: tuple[float, float, float],
    station_id: str,
    source: str,
    attrs: dict[str, Any],
) -> SeriesArray:
    """One-record SeriesArray from ``values`` (C, L) float64 already in canonical units."""
    lat, lon, elevation = coords
    return SeriesArray(
        values=values[None].astype(np.float32),  # (1, C, L)
        variables=[c.info() for c in channels],
        start=np.array([start], dtype="datetime64[ns]"),
        step=np.timedelta64(step, "ns"),
        lat=np.array([lat], dtype=np.float64),
        lon=np.array([lon], dtype=np.float64),
        elevation=np.array([elevation], dtype=np.float64),
        source=source,
        record_attrs={"station_id": np.array([station_id])},
        attrs=attrs,
    )


def _as_paths(paths: Sequence[str | Path], reader: str) -> list[Path]:
    if isinstance(paths, (str, Path)):
        raise ValueError(f"{reader} takes a sequence of paths, got the single path {paths!r}")
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError(f"{reader} got no paths. Fix: pass the files to read.")
    return out


_NO_COORDS = (float("nan"), float("nan"), float("nan"))


def _coords_or_warn(
    table: Mapping[str, tuple[float, float, float]], key: str, where: str
) -> tuple[float, float, float]:
    if key in table:
        return table[key]
    # Not a reader error: the series is intact, only its location is unknown.
    warnings.warn(
        f"{where} does not list {key!r}; its coordinates are NaN. Fix: add the station to the "
        "sidecar, or drop records without coordinates (SeriesArray.has_coordinates).",
        UserWarning,
        stacklevel=3,
    )
    return _NO_COORDS


# ---------------------------------------------------------------------------------------------
# GHCN-Daily .dly
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GhcnElement:
    channel: str
    divisor: int  # raw integer / divisor = value in `units` (10 for "tenths of")
    units: str


# NOAA ghcnd readme, section III. Dividing by 10 (not multiplying by 0.1) keeps 150 → 15.0 exact.
_GHCN_ELEMENTS: Mapping[str, _GhcnElement] = {
    "PRCP": _GhcnElement("prcp", 10, "mm day**-1"),  # 24-hour total, tenths of mm
    "SNOW": _GhcnElement("snow", 1, "mm day**-1"),  # 24-hour snowfall, mm
    "SNWD": _GhcnElement("snwd", 1, "mm"),
    "TMAX": _GhcnElement("tmax", 10, "degC"),
    "TMIN": _GhcnElement("tmin", 10, "degC"),
    "TAVG": _GhcnElement("tavg", 10, "degC"),
    "TOBS": _GhcnElement("tobs", 10, "degC"),
    "AWND": _GhcnElement("awnd", 10, "m s**-1"),
    "WESD": _GhcnElement("wesd", 10, "mm"),
    "EVAP": _GhcnElement("evap", 10, "mm day**-1"),
}
_GHCN_LINE = 21 + 31 * 8  # ID 11, YEAR 4, MONTH 2, ELEMENT 4, then 31 × (VALUE 5, M, Q, S flags)
_GHCN_MISSING = -9999


@dataclass
class _GhcnMonth:
    line: int
    values: np.ndarray  # (31,) int64 raw values
    qflags: list[str]  # (31,) quality flag characters


def _parse_dly(path: Path) -> tuple[str, dict[tuple[str, int, int], _GhcnMonth]]:
    """Station id and {(element, year, month): month} of one .dly file, every line checked."""
    lines = _split_lines(_decode_ascii(path, _read_bytes(path)))
    station = ""
    months: dict[tuple[str, int, int], _GhcnMonth] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        # Tools that strip trailing blanks cut at most the three flags of day 31; anything
        # shorter lost data.
        if not _GHCN_LINE - 3 <= len(line) <= _GHCN_LINE:
            raise ReaderError(
                path,
                f"line {lineno} has {len(line)} characters; a .dly line has {_GHCN_LINE} (ID 11, "
                "YEAR 4, MONTH 2, ELEMENT 4, 31 × [VALUE 5, MFLAG, QFLAG, SFLAG]). Fix: the file "
                "is truncated or not GHCN-Daily; re-download it.",
            )
        line = line.ljust(_GHCN_LINE)
        sid, year_s, month_s, element = line[0:11], line[11:15], line[15:17], line[17:21]
        if not station:
            station = sid
        elif sid != station:
            raise ReaderError(
                path,
                f"line {lineno} is for station {sid!r}, earlier lines for {station!r}. Fix: keep "
                "one station per .dly file, as NOAA writes them.",
            )
        if not (year_s.isdigit() and month_s.isdigit() and 1 <= int(month_s) <= 12):
            raise ReaderError(
                path, f"line {lineno}: year/month {year_s!r}/{month_s!r} are not a valid date"
            )
        if not element.isalnum():
            raise ReaderError(path, f"line {lineno}: element {element!r} is not a GHCN code")
        raw = np.empty(31, dtype=np.int64)
        for d in range(31):
            field = line[21 + 8 * d : 26 + 8 * d]
            try:
                raw[d] = int(field)
            except ValueError:
                raise ReaderError(
                    path,
                    f"line {lineno}, day {d + 1} (columns {22 + 8 * d}-{26 + 8 * d}): value "
                    f"{field!r} is not an integer. Fix: the line is garbled; re-download the file.",
                ) from None
        key = (element, int(year_s), int(month_s))
        if key in months:
            raise ReaderError(
                path,
                f"line {lineno} repeats {element} {year_s}-{month_s} (first at line "
                f"{months[key].line})",
            )
        qflags = [line[27 + 8 * d] for d in range(31)]
        months[key] = _GhcnMonth(lineno, raw, qflags)
    if not months:
        raise ReaderError(path, "holds no data lines. Fix: check the file is a GHCN-Daily .dly.")
    return station, months


def _read_stations_sidecar(path: Path) -> dict[str, tuple[float, float, float]]:
    """``ghcnd-stations.txt``: ID 1-11, LATITUDE 13-20, LONGITUDE 22-30, ELEVATION 32-37."""
    table: dict[str, tuple[float, float, float]] = {}
    for lineno, line in enumerate(_split_lines(_read_bytes(path).decode("latin-1")), start=1):
        if not line.strip():
            continue
        try:
            lat, lon, elev = float(line[12:20]), float(line[21:30]), float(line[31:37])
        except ValueError:
            raise ReaderError(
                path,
                f"line {lineno} is not a ghcnd-stations.txt line (ID 1-11, LATITUDE 13-20, "
                "LONGITUDE 22-30, ELEVATION 32-37). Fix: pass NOAA's file or a mapping.",
            ) from None
        # -999.9 is NOAA's "elevation unknown".
        table[line[0:11].strip()] = (lat, lon, float("nan") if elev == -999.9 else elev)
    return table


def _ghcn_coordinates(
    stations: str | Path | Mapping[str, Sequence[float]] | None,
) -> tuple[dict[str, tuple[float, float, float]], str] | None:
    if stations is None:
        return None
    if isinstance(stations, (str, Path)):
        return _read_stations_sidecar(Path(stations)), str(stations)
    table: dict[str, tuple[float, float, float]] = {}
    for sid, value in stations.items():
        v = [float(x) for x in value]
        if len(v) not in (2, 3):
            raise ValueError(
                f"stations[{sid!r}] = {value!r}; expected (lat, lon) or (lat, lon, elevation)"
            )
        table[str(sid)] = (v[0], v[1], v[2] if len(v) == 3 else float("nan"))
    return table, "the stations mapping"


def read_ghcn(
    paths: Sequence[str | Path],
    *,
    elements: Sequence[str] | None = None,
    stations: str | Path | Mapping[str, Sequence[float]] | None = None,
    drop_flagged: bool = True,
) -> list[SeriesArray]:
    """Read GHCN-Daily ``.dly`` files, one :class:`SeriesArray` (one record) per file.

    ``elements``: GHCN codes (``TMAX``, ``TMIN``, ``PRCP``, ``SNOW``, ``SNWD``, ``TAVG``, ``TOBS``,
    ``AWND``, ``WESD``, ``EVAP``) in channel order; an element a file lacks is an all-NaN channel,
    so every station gets the same channels. ``None`` means every element in the file, in the
    order above; an element the table does not know is then a :class:`ReaderError` (pass
    ``elements`` to read the known ones). Channels are the lower-case codes: TMAX/TMIN/TAVG/TOBS
    (tenths of °C) → K; PRCP (tenths of mm), SNOW (mm) and EVAP → ``mm day**-1`` (24-hour totals);
    SNWD (mm) and WESD (tenths of mm) → mm; AWND (tenths of m/s) → m s**-1.

    ``stations``: ``ghcnd-stations.txt`` (or a file in its layout) or a mapping id →
    (lat, lon[, elevation]); ``None`` leaves coordinates NaN. ``drop_flagged``: a non-blank QFLAG
    (failed a NOAA quality check) makes the value NaN; the counts are in ``attrs["flagged"]``.

    The daily record runs from the first day of the earliest month in the file to the last day
    of the latest; -9999 and days a month lacks are NaN, and the slots for invalid days (Feb 30,
    Apr 31) are skipped, so day 1 of the next month follows the month's last real day.
    """
    paths = _as_paths(paths, "read_ghcn")
    if elements is not None:
        wanted = [e.upper() for e in elements]
        unknown = [e for e in wanted if e not in _GHCN_ELEMENTS]
        if unknown:
            raise ValueError(
                f"elements {unknown} are not GHCN elements this reader knows; known: "
                f"{list(_GHCN_ELEMENTS)}. Fix: drop them, or add them to stations._GHCN_ELEMENTS "
                "with their divisor and units."
            )
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"elements lists a code twice: {list(elements)}")
    coordinates = _ghcn_coordinates(stations)
    out = []
    for path in paths:
        station, months = _parse_dly(path)
        if elements is None:
            present = {e for e, _, _ in months}
            unknown_lines = sorted(
                m.line for (e, _, _), m in months.items() if e not in _GHCN_ELEMENTS
            )
            if unknown_lines:
                codes = sorted({e for e in present if e not in _GHCN_ELEMENTS})
                # "All elements" must not silently mean "all we happen to know".
                raise ReaderError(
                    path,
                    f"elements {codes} (first at line {unknown_lines[0]}) are not in the element "
                    f"table {list(_GHCN_ELEMENTS)}. Fix: pass elements=[...] to read the known "
                    "ones, or add them to stations._GHCN_ELEMENTS.",
                )
            codes = [e for e in _GHCN_ELEMENTS if e in present]
        else:
            codes = wanted
        out.append(_ghcn_series(path, station, months, codes, coordinates, drop_flagged))
    return out


def _ghcn_series(
    path: Path,
    station: str,
    months: dict[tuple[str, int, int], _GhcnMonth],
    codes: list[str],
    coordinates: tuple[dict[str, tuple[float, float, float]], str] | None,
    drop_flagged: bool,
) -> SeriesArray:
    first = min((y, m) for _, y, m in months)
    last = max((y, m) for _, y, m in months)
    start = _day(*first, 1)
    end = _day(*last, calendar.monthrange(*last)[1])
    length = int((end - start) / np.timedelta64(1, "D")) + 1
    values = np.full((len(codes), length), np.nan)  # (C, L) float64
    flagged: dict[str, int] = {}
    for c, code in enumerate(codes):
        n_flagged = 0
        for (element, year, month), m in months.items():
            if element != code:
                continue
            ndays = calendar.monthrange(year, month)[1]  # days 29-31 past it are not dates
            i0 = int((_day(year, month, 1) - start) / np.timedelta64(1, "D"))
            raw = m.values[:ndays]
            ok = raw != _GHCN_MISSING
            bad_q = np.array([q != " " for q in m.qflags[:ndays]]) & ok
            n_flagged += int(bad_q.sum())
            if drop_flagged:
                ok &= ~bad_q
            values[c, i0 : i0 + ndays] = np.where(ok, raw, np.nan)
        element = _GHCN_ELEMENTS[code]
        channel = STATION_CHANNELS[element.channel]
        values[c] = to_canonical(
            values[c] / element.divisor, element.units, channel.units, where=f"{path}:{code}"
        )
        flagged[channel.name] = n_flagged
    coords = _NO_COORDS
    if coordinates is not None:
        coords = _coords_or_warn(coordinates[0], station.strip(), coordinates[1])
    channels = [STATION_CHANNELS[_GHCN_ELEMENTS[c].channel] for c in codes]
    attrs = {"path": str(path), "flagged": flagged, "drop_flagged": drop_flagged}
    return _series(values, channels, start, _DAY, coords, station.strip(), f"ghcn:{station}", attrs)


# ---------------------------------------------------------------------------------------------
# CAMELS-US: USGS streamflow + Daymet basin-mean forcing
# ---------------------------------------------------------------------------------------------

_FT3_S = "ft**3 s**-1"
_CAMELS_MISSING = -999.0
# 0/1 in the streamflow_flag channel; "M" (missing) rows carry -999 and become NaN.
_CAMELS_FLAGS = {"A": 0.0, "A:e": 1.0}
# Daymet header tokens → (channel, units as the token spells them).
_DAYMET_COLUMNS: Mapping[str, tuple[str, str]] = {
    "dayl(s)": ("dayl", "s"),
    "prcp(mm/day)": ("prcp", "mm/day"),
    "srad(W/m2)": ("srad", "W/m2"),
    "swe(mm)": ("swe", "mm"),
    "tmax(C)": ("tmax", "degC"),  # "C" alone would read as coulomb in a general registry
    "tmin(C)": ("tmin", "degC"),
    "vp(Pa)": ("vp", "Pa"),
}
_DAYMET_DATE = ["Year", "Mnth", "Day", "Hr"]


@dataclass
class _Daily:
    """One file's daily rows: their dates and, per channel, values in canonical units."""

    days: list[np.datetime64]
    columns: dict[str, np.ndarray]  # channel → (len(days),) float64


def _camels_kind(path: Path) -> tuple[str, str]:
    """(gauge id, "streamflow" | "forcing") from a CAMELS file name."""
    gauge, _, rest = path.name.partition("_")
    if not (gauge.isdigit() and len(gauge) == 8):
        raise ReaderError(
            path,
            "is not named like a CAMELS file (<8-digit gauge>_streamflow_qc.txt or "
            "<gauge>_lump_cida_forcing_leap.txt). Fix: keep the CAMELS file names.",
        )
    if rest.startswith("streamflow"):
        return gauge, "streamflow"
    if "forcing" in rest:
        return gauge, "forcing"
    raise ReaderError(path, "is neither a CAMELS streamflow nor a forcing file (by its name)")


def _parse_streamflow(path: Path, gauge: str) -> _Daily:
    lines = _split_lines(_read_bytes(path).decode("ascii", errors="replace"))
    days, q, flag = [], [], []
    for lineno, line in enumerate(lines, start=1):
        cells = line.split()
        if not cells:
            continue
        if len(cells) != 6:
            raise ReaderError(
                path, f"line {lineno} has {len(cells)} fields; expected 6: gauge Y M D Q flag"
            )
        if cells[0] != gauge:
            raise ReaderError(
                path, f"line {lineno} is for gauge {cells[0]!r}, the file for {gauge!r}"
            )
        try:
            day = _day(int(cells[1]), int(cells[2]), int(cells[3]))
            value = float(cells[4])
        except ValueError:
            raise ReaderError(
                path, f"line {lineno}: {' '.join(cells[1:5])!r} is not a date and a discharge"
            ) from None
        code = cells[5]
        if code != "M" and code not in _CAMELS_FLAGS:
            raise ReaderError(
                path,
                f"line {lineno}: flag {code!r} is not a CAMELS flag (A, A:e, M). Fix: add it to "
                "stations._CAMELS_FLAGS if USGS added a qualifier.",
            )
        missing = code == "M" or value == _CAMELS_MISSING
        days.append(day)
        q.append(np.nan if missing else value)
        flag.append(np.nan if missing else _CAMELS_FLAGS[code])
    q_si = to_canonical(np.array(q), _FT3_S, STATION_CHANNELS["streamflow"].units, where=str(path))
    return _Daily(days, {"streamflow": q_si, "streamflow_flag": np.array(flag)})


def _parse_forcing(path: Path) -> tuple[_Daily, dict[str, float]]:
    """Daymet basin forcing: lat, elevation (m), area (m²) lines, a header, then daily rows."""
    lines = _split_lines(_read_bytes(path).decode("ascii", errors="replace"))
    if len(lines) < 4:
        raise ReaderError(
            path, f"has {len(lines)} lines; a Daymet forcing file has 4+ header lines"
        )
    try:
        header = {k: float(lines[i]) for i, k in enumerate(("lat", "elevation", "area_m2"))}
    except ValueError:
        raise ReaderError(
            path, f"lines 1-3 {lines[:3]!r} are not the latitude, elevation and area numbers"
        ) from None
    names = lines[3].split()
    unknown = [n for n in names[4:] if n not in _DAYMET_COLUMNS]
    if names[:4] != _DAYMET_DATE or unknown:
        raise ReaderError(
            path,
            f"line 4 header {names} is not '{' '.join(_DAYMET_DATE)}' followed by known columns "
            f"{list(_DAYMET_COLUMNS)} (unknown: {unknown}). Fix: add the column to "
            "stations._DAYMET_COLUMNS.",
        )
    days, rows = [], []
    for lineno, line in enumerate(lines[4:], start=5):
        cells = line.split()
        if not cells:
            continue
        if len(cells) != len(names):
            raise ReaderError(path, f"line {lineno} has {len(cells)} fields, header {len(names)}")
        try:
            days.append(_day(int(cells[0]), int(cells[1]), int(cells[2])))
            rows.append([float(c) for c in cells[4:]])
        except ValueError:
            raise ReaderError(
                path, f"line {lineno}: {line.strip()!r} has a non-numeric field"
            ) from None
    table = np.array(rows, dtype=np.float64).reshape(len(rows), len(names) - 4)  # (days, cols)
    columns = {}
    for k, name in enumerate(names[4:]):
        channel, units = _DAYMET_COLUMNS[name]
        columns[channel] = to_canonical(
            table[:, k], units, STATION_CHANNELS[channel].units, where=f"{path}:{name}"
        )
    return _Daily(days, columns), header


def _read_topo(path: Path) -> dict[str, tuple[float, float, float]]:
    """camels_topo.txt (``;``-separated): gauge_id → (gauge_lat, gauge_lon, elev_mean)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except OSError as exc:
        raise ReaderError(
            path,
            f"cannot read the CAMELS attributes: {exc.strerror or exc}. Fix: pass "
            "attributes_dir=<folder with camels_topo.txt>.",
        ) from exc
    need = ["gauge_id", "gauge_lat", "gauge_lon", "elev_mean"]
    if not rows or any(k not in rows[0] for k in need):
        raise ReaderError(path, f"lacks the columns {need}. Fix: point at CAMELS camels_topo.txt")
    table = {}
    for lineno, row in enumerate(rows, start=2):
        try:
            table[row["gauge_id"].strip()] = (
                float(row["gauge_lat"]),
                float(row["gauge_lon"]),
                float(row["elev_mean"]),
            )
        except (TypeError, ValueError):
            raise ReaderError(path, f"line {lineno}: {row!r} has non-numeric coordinates") from None
    return table


def _forcing_candidates(streamflow: Path, gauge: str) -> list[Path]:
    name = f"{gauge}_lump_cida_forcing_leap.txt"
    streamflow = streamflow.absolute()  # "../" of a bare file name is the cwd's parent
    # neuralhydrology test layout: camels_us/{usgs_streamflow,daymet}/
    candidates = [streamflow.parent.parent / "daymet" / name]
    if len(streamflow.parents) > 2:
        # NCAR release: basin_dataset_public_v1p2/{usgs_streamflow,basin_mean_forcing/daymet}/<huc>/
        huc = streamflow.parent.name
        candidates.append(streamflow.parents[2] / "basin_mean_forcing" / "daymet" / huc / name)
    return candidates


def read_camels(
    paths: Sequence[str | Path],
    *,
    attributes_dir: str | Path | None = None,
    forcing: bool = True,
) -> list[SeriesArray]:
    """Read CAMELS-US basins, one :class:`SeriesArray` (one daily record) per gauge.

    ``paths`` holds ``<gauge>_streamflow_qc.txt`` and/or ``<gauge>_lump_cida_forcing_leap.txt``
    files; they are grouped by the 8-digit gauge id in the file name, in order of first
    appearance. Channels: ``streamflow`` (ft³/s → m³/s; -999 and flag ``M`` → NaN) and
    ``streamflow_flag`` (0 = ``A`` approved, 1 = ``A:e`` estimated, NaN where streamflow is NaN),
    then with ``forcing=True`` the Daymet columns ``dayl`` (s), ``prcp`` (mm day**-1), ``srad``
    (W m**-2), ``swe`` (mm), ``tmax``/``tmin`` (°C → K), ``vp`` (Pa). A gauge whose forcing file is
    not in ``paths`` gets it from ``../daymet/`` beside ``usgs_streamflow/`` (or the NCAR release's
    ``basin_mean_forcing/daymet/<huc>/``); none there is a :class:`ReaderError`. ``forcing=False``
    reads streamflow only, and forcing files in ``paths`` are then an error.

    The two files are joined by date on the union of their days, from the first to the last;
    a day one file lacks is NaN in its channels. The Daymet header's lat/elevation/area go to
    ``attrs["forcing_header"]``.

    Coordinates: ``gauge_lat``/``gauge_lon`` (the gauge) and ``elev_mean`` (basin-mean elevation,
    m) from ``camels_topo.txt`` in ``attributes_dir`` (default: ``../attributes`` beside the
    file's folder). A missing or malformed ``camels_topo.txt`` is a :class:`ReaderError`; a gauge
    it does not list gets NaN coordinates and a :class:`UserWarning`.
    """
    paths = _as_paths(paths, "read_camels")
    groups: dict[str, dict[str, Path]] = {}
    for path in paths:
        gauge, kind = _camels_kind(path)
        if kind == "forcing" and not forcing:
            raise ReaderError(
                path, "is a forcing file but forcing=False. Fix: drop it or set forcing=True."
            )
        group = groups.setdefault(gauge, {})
        if kind in group:
            raise ReaderError(path, f"gauge {gauge} already has a {kind} file: {group[kind]}")
        group[kind] = path
    topo_cache: dict[Path, dict[str, tuple[float, float, float]]] = {}
    out = []
    for gauge, group in groups.items():
        if forcing and "forcing" not in group:
            candidates = _forcing_candidates(group["streamflow"], gauge)
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise ReaderError(
                    group["streamflow"],
                    f"no Daymet forcing for gauge {gauge}; looked for "
                    f"{[str(c) for c in candidates]}. Fix: pass the forcing file in paths, or "
                    "forcing=False.",
                )
            group["forcing"] = found[0]
        parts: list[tuple[_Daily, Path]] = []
        attrs: dict[str, Any] = {"paths": [str(p) for p in group.values()]}
        if "streamflow" in group:
            parts.append((_parse_streamflow(group["streamflow"], gauge), group["streamflow"]))
            attrs["streamflow_flag_codes"] = dict(_CAMELS_FLAGS)
        if "forcing" in group:
            daily, header = _parse_forcing(group["forcing"])
            parts.append((daily, group["forcing"]))
            attrs["forcing_header"] = header
        values, channels, start = _join_daily(parts)
        first = next(iter(group.values()))
        folder = (
            Path(attributes_dir)
            if attributes_dir is not None
            else first.absolute().parent.parent / "attributes"
        )
        topo_path = folder / "camels_topo.txt"
        if topo_path not in topo_cache:
            topo_cache[topo_path] = _read_topo(topo_path)
        coords = _coords_or_warn(topo_cache[topo_path], gauge, str(topo_path))
        out.append(_series(values, channels, start, _DAY, coords, gauge, f"camels:{gauge}", attrs))
    return out


def _join_daily(
    parts: list[tuple[_Daily, Path]],
) -> tuple[np.ndarray, list[StationChannel], np.datetime64]:
    """(C, L) values on the union of the parts' days, NaN where a part lacks a day."""
    for part, path in parts:
        if not part.days:
            raise ReaderError(path, "holds no daily rows")
        if len(set(part.days)) != len(part.days):
            raise ReaderError(path, "lists a date twice. Fix: remove the duplicate rows.")
    start = min(min(p.days) for p, _ in parts)
    end = max(max(p.days) for p, _ in parts)
    length = int((end - start) / np.timedelta64(1, "D")) + 1
    channels: list[StationChannel] = []
    rows: list[np.ndarray] = []
    for part, _ in parts:
        idx = ((np.array(part.days) - start) / np.timedelta64(1, "D")).astype(np.int64)
        for name, column in part.columns.items():
            row = np.full(length, np.nan)
            row[idx] = column
            channels.append(STATION_CHANNELS[name])
            rows.append(row)
    return np.stack(rows), channels, start


# ---------------------------------------------------------------------------------------------
# FLUXNET-style half-hourly tables (CarboEurope / REddyProc layout)
# ---------------------------------------------------------------------------------------------

# Column names as CarboEurope / REddyProc write them → canonical channel.
_FLUXNET_COLUMNS: Mapping[str, str] = {
    "NEE": "nee",
    "LE": "le",
    "H": "h",
    "Rg": "rg",
    "Tair": "tair",
    "Tsoil": "tsoil",
    "rH": "rh",
    "VPD": "vpd",
    "Ustar": "ustar",
}
# CarboEurope writes units without spaces. Fixed here rather than in the shared registry, where
# "ms-1" would read as per millisecond.
_FLUXNET_UNIT_SPELLINGS = {"umolm-2s-1": "umol m**-2 s**-1", "Wm-2": "W m**-2", "ms-1": "m s**-1"}
_YDH = ("Year", "DoY", "Hour")
_TIMESTAMPS = ("TIMESTAMP_START", "TIMESTAMP_END")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _numbers(
    path: Path, rows: list[list[str]], linenos: list[int], names: list[str], cols: list[int]
) -> np.ndarray:
    """(rows, len(cols)) float64 of the given columns; a non-number is a ReaderError naming it.

    "nan" cells parse (as missing); infinities do not.
    """
    cells = [[row[c] for c in cols] for row in rows]
    try:
        table = np.array(cells, dtype=np.float64)  # fast path: numpy parses the strings
        if not np.isinf(table).any():
            return table
    except ValueError:
        pass
    for row, lineno in zip(rows, linenos, strict=True):
        for c in cols:
            try:
                ok = not np.isinf(float(row[c]))
            except ValueError:
                ok = False
            if not ok:
                raise ReaderError(
                    path,
                    f"line {lineno}, column {c + 1} ({names[c]}): {row[c]!r} is not a number. "
                    "Fix: correct the cell, or write missing values as a numeric code "
                    "(missing_values).",
                )
    # numpy and float() disagree on a spelling (e.g. "1_000"): go by float().
    return np.array([[float(x) for x in r] for r in cells], dtype=np.float64)


def _fluxnet_times(
    path: Path, names: list[str], rows: list[list[str]], linenos: list[int], timestamp: str
) -> tuple[np.ndarray, bool]:
    """(rows,) datetime64[m] stamps, and whether they mark the end of each averaging period."""
    # The option is a preference: a table with only the other stamp column still has a clock.
    preferred = [timestamp, *(t for t in _TIMESTAMPS if t != timestamp)]
    found = [t for t in preferred if t in names]
    if found:
        timestamp = found[0]
        col = names.index(timestamp)
        stamps = []
        for row, lineno in zip(rows, linenos, strict=True):
            s = row[col].strip()
            try:
                if len(s) != 12 or not s.isdigit():
                    raise ValueError
                stamps.append(np.datetime64(f"{s[:4]}-{s[4:6]}-{s[6:8]}T{s[8:10]}:{s[10:12]}", "m"))
            except ValueError:
                raise ReaderError(
                    path,
                    f"line {lineno}, column {col + 1} ({timestamp}): {s!r} is not YYYYMMDDHHMM",
                ) from None
        return np.array(stamps, dtype="datetime64[m]"), timestamp == "TIMESTAMP_END"
    if all(n in names for n in _YDH):
        ydh = _numbers(path, rows, linenos, names, [names.index(n) for n in _YDH])
        year, doy, hour = ydh.T
        minutes = hour * 60.0
        bad = np.flatnonzero(
            (year != np.round(year))
            | (doy != np.round(doy))
            | (np.abs(minutes - np.round(minutes)) > 1e-6)
        )
        if bad.size:
            raise ReaderError(
                path, f"line {linenos[bad[0]]}: Year/DoY/Hour {ydh[bad[0]].tolist()} is not a time"
            )
        jan1 = (year.astype(np.int64) - 1970).astype("datetime64[Y]").astype("datetime64[m]")
        days = (doy.astype(np.int64) - 1).astype("timedelta64[D]")
        stamps = jan1 + days + np.round(minutes).astype(np.int64).astype("timedelta64[m]")
        # REddyProc (fGetBeginOfEddyPeriod): "The timestamp of an Eddy record denotes the end of a
        # half-hour period"; a year runs from hour 0.5 of DoY 1 to hour 0 of the next year.
        return stamps, True
    raise ReaderError(
        path,
        f"has no time columns: expected {list(_TIMESTAMPS)} (YYYYMMDDHHMM) or {list(_YDH)}; "
        f"columns are {names}. Fix: add one, spelled as here.",
    )


def read_fluxnet(
    paths: Sequence[str | Path],
    *,
    variables: Sequence[str] | None = None,
    missing_values: Sequence[float] = (-9999, -9999.0, -6999),
    timestamp: str = "TIMESTAMP_START",
    site: Mapping[str, Any] | None = None,
) -> list[SeriesArray]:
    """Read FLUXNET-style (CarboEurope / REddyProc) tables, one :class:`SeriesArray` per file.

    Layout: a header row of column names, a units row (e.g. ``umolm-2s-1``, ``degC``), then one
    row per averaging period, tab- or comma-separated (from the header), with CR-only, CRLF or LF
    line endings. Units come from the units row through the units registry; a table without one
    is refused. Columns are the table's names (``NEE``, ``LE``, ``H``, ``Rg``, ``Tair``,
    ``Tsoil``, ``rH``, ``VPD``, ``Ustar``) → lower-case channels in canonical units (°C → K,
    hPa → Pa).

    ``variables``: channels (``"nee"``) or column names (``"NEE"``) in channel order; ``None``
    means every non-time column, and a column the table does not know is then an error.
    ``missing_values``: codes that become NaN (a cell equal to any of them; "nan" cells are NaN
    too). ``timestamp``: ``"TIMESTAMP_START"`` or ``"TIMESTAMP_END"`` — the YYYYMMDDHHMM column
    to prefer when a table has both (each is read as what its name says); a table with neither
    uses Year/DoY/Hour, decimal hours marking the end of each period (REddyProc convention).
    ``start`` is the beginning of the first period, ``step`` the smallest difference between
    stamps (half-hourly or hourly); absent periods are NaN.
    ``site``: ``{"lat", "lon"[, "elevation"][, "id"]}`` for every file (default: NaN, id = file
    stem).
    """
    paths = _as_paths(paths, "read_fluxnet")
    if timestamp not in _TIMESTAMPS:
        raise ValueError(f"timestamp={timestamp!r}; choose one of {list(_TIMESTAMPS)}")
    site = dict(site or {})
    extra = sorted(set(site) - {"lat", "lon", "elevation", "id"})
    if extra or (site and not {"lat", "lon"} <= set(site)):
        raise ValueError(
            f"site={site!r}: expected keys lat, lon and optionally elevation, id (unknown: {extra})"
        )
    return [_read_fluxnet_file(p, variables, missing_values, timestamp, site) for p in paths]


def _read_fluxnet_file(
    path: Path,
    variables: Sequence[str] | None,
    missing_values: Sequence[float],
    timestamp: str,
    site: Mapping[str, Any],
) -> SeriesArray:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # "µmol" in older European files
    numbered = [(i, line) for i, line in enumerate(_split_lines(text), start=1) if line.strip()]
    if len(numbered) < 3:
        raise ReaderError(path, "needs a header row, a units row and data rows")
    header = numbered[0][1]
    delimiter = "\t" if "\t" in header else ","
    names = [c.strip() for c in header.split(delimiter)]
    if len(set(names)) != len(names):
        raise ReaderError(path, f"line {numbered[0][0]}: repeated column names in {names}")
    units_line, units_row = numbered[1]
    units = [c.strip() for c in units_row.split(delimiter)]
    if len(units) != len(names) or any(_is_number(u) for u in units):
        raise ReaderError(
            path,
            f"line {units_line} is not a units row for {names} (got {units}). Fix: add the units "
            "row (REddyProc layout).",
        )
    rows, linenos = [], []
    for lineno, line in numbered[2:]:
        cells = line.split(delimiter)
        if len(cells) != len(names):
            raise ReaderError(
                path, f"line {lineno} has {len(cells)} cells, the header {len(names)} columns"
            )
        rows.append(cells)
        linenos.append(lineno)

    stamps, marks_end = _fluxnet_times(path, names, rows, linenos, timestamp)
    diffs = np.diff(stamps)
    if diffs.size == 0 or (diffs <= np.timedelta64(0, "m")).any():
        bad = int(np.argmax(diffs <= np.timedelta64(0, "m"))) + 1 if diffs.size else 0
        raise ReaderError(
            path, f"line {linenos[bad]}: times must increase row by row (needs two rows or more)"
        )
    step = diffs.min()
    if (diffs % step != np.timedelta64(0, "m")).any():
        bad = int(np.argmax(diffs % step != np.timedelta64(0, "m"))) + 1
        raise ReaderError(path, f"line {linenos[bad]}: time is off the {step} grid")
    begin = stamps - step if marks_end else stamps
    idx = ((begin - begin[0]) // step).astype(np.int64)  # (rows,)
    length = int(idx[-1]) + 1

    time_cols = {*_YDH, *_TIMESTAMPS}
    columns = _fluxnet_columns(path, names, variables, time_cols)
    table = _numbers(path, rows, linenos, names, columns)  # (rows, C)
    codes = np.asarray(list(missing_values), dtype=np.float64)
    missing = np.isin(table, codes) | np.isnan(table)  # (rows, C)
    values = np.full((len(columns), length), np.nan)  # (C, L)
    channels, n_missing = [], {}
    for k, col in enumerate(columns):
        channel = STATION_CHANNELS[_FLUXNET_COLUMNS[names[col]]]
        spelled = _FLUXNET_UNIT_SPELLINGS.get(units[col], units[col])
        column = np.where(missing[:, k], np.nan, table[:, k])
        values[k, idx] = to_canonical(column, spelled, channel.units, where=f"{path}:{names[col]}")
        channels.append(channel)
        n_missing[channel.name] = int(missing[:, k].sum())
    site_id = str(site.get("id", path.stem))
    coords = (
        float(site.get("lat", np.nan)),
        float(site.get("lon", np.nan)),
        float(site.get("elevation", np.nan)),
    )
    attrs = {"path": str(path), "missing": n_missing, "timestamp_marks_end": marks_end}
    return _series(values, channels, begin[0], step, coords, site_id, f"fluxnet:{site_id}", attrs)


def _fluxnet_columns(
    path: Path, names: list[str], variables: Sequence[str] | None, time_cols: set[str]
) -> list[int]:
    """Column indices to read, in channel order."""
    data_cols = [i for i, n in enumerate(names) if n not in time_cols]
    if variables is None:
        unknown = [names[i] for i in data_cols if names[i] not in _FLUXNET_COLUMNS]
        if unknown:
            raise ReaderError(
                path,
                f"columns {unknown} are not in the FLUXNET table {list(_FLUXNET_COLUMNS)}. Fix: "
                "pass variables=[...] to read the known ones, or add them to "
                "stations._FLUXNET_COLUMNS.",
            )
        return data_cols
    by_name = {}
    for i in data_cols:
        if names[i] in _FLUXNET_COLUMNS:
            by_name[names[i]] = i
            by_name[_FLUXNET_COLUMNS[names[i]]] = i
    chosen = []
    for v in variables:
        if v not in by_name:
            raise ReaderError(
                path,
                f"variable {v!r} is not a known column of this table; it has {names}. Fix: "
                f"request one of {sorted(by_name)}.",
            )
        chosen.append(by_name[v])
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"variables names a column twice: {list(variables)}")
    return chosen
