"""The units of work of an ingest (``prepare.py`` plans and runs them): the resolved source
spec, one unit of it, and the records every unit's outcome carries (its inputs and spec; a
reject's reason).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .ingest.time_join import time_window
from .shards import PatchSpec, write_record

# Formats whose inputs can be grouped by time: "module:function" in ingest giving a file's
# canonical variables and time axis from its metadata.
TIME_PROBES = {"netcdf": "netcdf:probe_times", "zarr": "zarr_store:probe_times"}
CALENDAR_UNITS = {"day": "D", "month": "M", "year": "Y"}


@dataclass
class SourceSpec:
    """One source to ingest (resolved: absolute paths, options checked against the reader)."""

    name: str
    format: str
    paths: list[Path]
    options: dict[str, Any] = field(default_factory=dict)
    # "file": one unit per path; "all": every path in one unit; "time": files grouped by time
    # (ERA5 one variable per file); "day"/"month"/"year": one unit per period (time_units)
    unit: str = "file"
    patch: PatchSpec = field(default_factory=PatchSpec)
    require_coordinates: bool = True
    samples_per_unit: int = 64  # generated sources (pde): samples per unit
    # this source's statistics block when it has its own splits (default: the store's)
    stats_time_range: tuple[Any, Any] | None = None
    plausibility: str = "reject"  # out-of-range values: "reject" the unit, "warn" or "off"
    # a unit whose read gives no result within this many seconds is stopped and rejected
    unit_timeout_s: float = 3600.0
    # entries of the source folder that are not read, with the reason ({"path", "reason"})
    skipped: list[dict[str, str]] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Hash of everything that shapes this source's output (a changed spec redoes units)."""
        d = {
            "format": self.format,
            "options": self.options,
            "unit": self.unit,
            "patch": self.patch.to_dict(),
            "require_coordinates": self.require_coordinates,
            "samples_per_unit": self.samples_per_unit,
        }
        if self.stats_time_range is not None:
            d["stats_time_range"] = [str(t) for t in self.stats_time_range]
        if self.plausibility != "reject":
            d["plausibility"] = self.plausibility
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Unit:
    source: SourceSpec
    name: str  # "<source>-<index>"
    index: int
    paths: tuple[Path, ...]
    options: dict[str, Any]  # reader options of this unit (ranges for generated sources)


def _iso(t: np.datetime64) -> str:
    t = np.datetime64(t, "ns")
    whole = t.astype(np.int64) % 1_000_000_000 == 0
    return str(np.datetime_as_string(t, unit="s" if whole else "ns"))


def time_units(src: SourceSpec) -> list[tuple[tuple[Path, ...], dict[str, Any]]] | None:
    """The units of a source grouped by time: (paths, reader options) each, or None when each
    file is its own unit.

    ``unit: time`` (ERA5 as downloaded: one variable per file over a day, month or year): a unit
    is one period between consecutive file start times, holding every file that overlaps it,
    read with ``time_slice`` set to the period (a yearly file is read a day at a time next to
    daily files). ``unit: file`` keeps one unit per file, except when the source names its
    ``variables`` and a file lacks some of them that others hold (each file alone would be
    refused): then it groups as ``time``. ``unit: day|month|year``: one unit per calendar
    period of the files' times. A file
    whose metadata cannot be read, or that is not a regular file, stays a unit of its own (read
    in the isolated worker, which rejects it with the reason or stops it at its timeout)."""
    if src.unit not in CALENDAR_UNITS and src.unit not in ("file", "time"):
        return None
    wanted = src.options.get("variables")
    if src.unit == "file" and not wanted:
        return None  # one unit per file, nothing to probe
    if src.format not in TIME_PROBES:
        if src.unit != "file":
            raise ValueError(
                f"source {src.name!r}: unit: {src.unit} groups files by time, which the "
                f"{src.format!r} reader cannot (only {sorted(TIME_PROBES)}). Fix: use unit: file "
                "or unit: all."
            )
        return None
    module, func = TIME_PROBES[src.format].split(":")
    probe = getattr(importlib.import_module(f"{__package__}.ingest.{module}"), func)
    options = {k: v for k, v in src.options.items() if k == "level_names"}
    probed: dict[Path, np.ndarray] = {}
    broken: list[Path] = []
    kinds: set[frozenset[str]] = set()
    for path in src.paths:
        if src.format != "zarr" and not path.is_file():  # a FIFO would block the open here
            broken.append(path)
            continue
        try:
            names, times = probe(path, **options)
            window = time_window(times, src.options.get("time_slice"), path)
        except Exception:  # refused when read, with the reader's reason
            broken.append(path)
            continue
        kinds.add(frozenset(names))
        probed[path] = times[window]
    if src.unit == "file" and all(set(wanted) <= kind for kind in kinds):
        return None  # every file holds every requested variable: one unit per file
    times = np.unique(np.concatenate([t for t in probed.values()] or [np.array([], "M8[ns]")]))
    if src.unit in ("file", "time"):
        starts = np.unique([t[0] for t in probed.values() if len(t)])
        key = np.searchsorted(starts, times, side="right")  # period of each time step
    else:
        key = times.astype(f"datetime64[{CALENDAR_UNITS[src.unit]}]").astype(np.int64)
    cuts = np.flatnonzero(np.diff(key)) + 1
    out: list[tuple[tuple[Path, ...], dict[str, Any]]] = []
    for period in np.split(times, cuts) if len(times) else []:
        lo, hi = period[0], period[-1]
        paths = tuple(p for p, t in probed.items() if len(t) and t[0] <= hi and t[-1] >= lo)
        out.append((paths, {**src.options, "time_slice": (_iso(lo), _iso(hi))}))
    out.extend(((p,), dict(src.options)) for p in broken)
    return out


def input_stamp(unit: Unit) -> list[list[int]]:
    """(size, mtime in ns) of each input: a reject is retried once its input changes."""
    out = []
    for p in unit.paths:
        try:
            st = p.stat()
            out.append([st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([-1, -1])
    return out


def unit_meta(unit: Unit) -> dict[str, Any]:
    """What every record of ``unit`` carries: its inputs and the spec it was made with."""
    stamp = input_stamp(unit)
    return {
        "index": unit.index,
        "paths": [str(p) for p in unit.paths],
        "fingerprint": unit.source.fingerprint(),
        "input_bytes": sum(max(size, 0) for size, _ in stamp),
        "input_stamp": stamp,
    }


def reject_unit(store: Path, unit: Unit, reason: str, **extra: Any) -> dict[str, Any]:
    """Write ``unit``'s reject record (and drop a shard of an earlier ingest); returns it."""
    rec = {"unit": unit.name, "source": unit.source.name, "status": "rejected",
           "reason": reason, **unit_meta(unit), **extra}  # fmt: skip
    (store / "shards" / unit.source.name / f"{unit.name}.h5").unlink(missing_ok=True)
    write_record(store, unit.source.name, unit.name, rec)
    return rec
