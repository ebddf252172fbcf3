"""CAMELS-US streamflow and Daymet forcing → :class:`SeriesArray` (conventions: stations.py)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..units import to_canonical
from .base import ReaderError, SeriesArray
from .stations import (
    _DAY,
    STATION_CHANNELS,
    StationChannel,
    _as_paths,
    _coords_or_warn,
    _day,
    _read_bytes,
    _series,
    _split_lines,
)

_FT3_S = "ft**3 s**-1"  # USGS discharge units
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
    variables: Sequence[str] | None = None,
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

    ``variables``: keep these channels only, in this order (e.g. ``[streamflow, prcp, tmax,
    tmin]``; Daymet's ``swe`` is 0 on every day of many basins and carries nothing).
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
        if variables is not None:
            names = [c.name for c in channels]
            unknown = [v for v in variables if v not in names]
            if unknown:
                raise ReaderError(
                    next(iter(group.values())),
                    f"has no channels {unknown}; it has {names}. Fix: choose variables among "
                    "them (forcing channels need forcing=True)",
                )
            keep = [names.index(v) for v in variables]
            values, channels = values[keep], [channels[i] for i in keep]
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
