"""FLUXNET-style half-hourly tables → :class:`SeriesArray` (conventions: stations.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..units import to_canonical
from .base import ReaderError, SeriesArray
from .stations import (
    STATION_CHANNELS,
    _as_paths,
    _read_bytes,
    _series,
    _split_lines,
)

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
    attrs = {
        "path": str(path),
        "missing": n_missing,
        "timestamp_marks_end": marks_end,
        "time_stamp": "interval start: a sample's time is the start of its averaging period "
        f"(the file's stamps mark its {'end; shifted back one step' if marks_end else 'start'})",
    }
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
