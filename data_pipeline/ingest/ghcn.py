"""GHCN-Daily ``.dly`` station files → :class:`SeriesArray` (conventions: stations.py)."""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..units import to_canonical
from .base import ReaderError, SeriesArray
from .stations import (
    _DAY,
    _NO_COORDS,
    STATION_CHANNELS,
    _as_paths,
    _coords_or_warn,
    _day,
    _decode_ascii,
    _read_bytes,
    _series,
    _split_lines,
)


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
