"""The units of one grid source compared with each other: odd ones are flagged, not refused.

A file can be damaged in a way that leaves it valid. GRIB messages carry no count and a GRIB
file is just messages one after another, so a download cut exactly between two time steps is
a complete, shorter GRIB file: its own bytes cannot tell it from a file that was meant to be
short (WMO FM 92 has no "number of fields"; ecCodes' ``count`` and cfgrib's hypercubes only see
what is there). Inside one file, a time step that lacks some of its fields is refused by the
reader; across files, a source's files normally share one structure — the same variables,
members and grid, evenly spaced frames, and as many of them (or each one whole calendar day,
month or year). A unit that departs from the structure most of its siblings share is flagged:
the manifest lists it under ``flagged`` with the reason, and its unit entry carries ``flags``.
It stays in the store (a file meant to be shorter is not an error), and ``scigpt prepare``
prints it. A source with one unit has no siblings to compare with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

_PERIODS = (("D", "calendar day"), ("M", "calendar month"), ("Y", "calendar year"))


def _frames(rec: dict[str, Any], pt: int) -> np.ndarray:
    """Valid times (ns) of every frame a unit's grid arrays hold, ascending, without repeats."""
    out = []
    for a in rec["arrays"]:
        starts = np.array(a["times"], dtype="datetime64[ns]").astype(np.int64)
        out.append((starts[:, None] + np.arange(pt) * int(a["frame_step_ns"])).ravel())
    return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)


def _layout(rec: dict[str, Any]) -> tuple:
    """What each frame holds: per array (members, products) its variables and grid."""
    return tuple((tuple(a["variables"]), a["height"], a["width"]) for a in rec["arrays"])


def _whole_period(frames: np.ndarray, step: int | None) -> str | None:
    """The calendar period (D, M, Y) that evenly spaced ``frames`` fill exactly, if any."""
    if step is None or len(frames) < 2:
        return None
    t0 = np.datetime64(int(frames[0]), "ns")
    for code, _ in _PERIODS:
        p0 = t0.astype(f"datetime64[{code}]")
        length = int((p0 + 1).astype("datetime64[ns]").astype(np.int64)) - int(
            p0.astype("datetime64[ns]").astype(np.int64)
        )
        offset = int(frames[0]) - int(p0.astype("datetime64[ns]").astype(np.int64))
        if offset < step and len(frames) * step == length:
            return code
    return None


def _duration(ns: int) -> str:
    for unit, size in (("d", 86_400 * 10**9), ("h", 3600 * 10**9), ("min", 60 * 10**9)):
        if ns and ns % size == 0:
            return f"{ns // size} {unit}"
    return f"{ns / 1e9:g} s"


def _iso(ns: int) -> str:
    return str(np.datetime_as_string(np.datetime64(int(ns), "ns"), unit="m"))


def _majority(values: Sequence[Any]) -> tuple[Any, int]:
    """The most common value (ties: the first seen) and how often it occurs."""
    return Counter(values).most_common(1)[0]


def _describe_layout(layout: tuple) -> str:
    names = sorted({v for arr in layout for v in arr[0]})
    grids = sorted({f"{h}×{w}" for _, h, w in layout})
    return f"{len(layout)} array(s) (members) of {names} on a {'/'.join(grids)} grid"


def flag_units(records: Sequence[dict[str, Any]], pt: int = 1) -> dict[str, list[str]]:
    """Reasons to flag each grid unit of one source (unit name → reasons; unflagged: absent).

    ``records``: the source's done unit records in unit order (those that read files count);
    ``pt``: frames per tubelet."""
    grids = [r for r in records if r.get("paths")  # generated units (pde) are not files
             and r["arrays"] and all(a["kind"] == "grid" for a in r["arrays"])]  # fmt: skip
    if len(grids) < 2:
        return {}
    m = len(grids)
    frames = {r["unit"]: _frames(r, pt) for r in grids}
    steps = {}  # unit → the one frame interval, None when irregular or a single frame
    for u, f in frames.items():
        d = np.unique(np.diff(f))
        steps[u] = int(d[0]) if len(d) == 1 else None
    flags: dict[str, list[str]] = {}

    def flag(unit: str, why: str) -> None:
        flags.setdefault(unit, []).append(why)

    layout, n_layout = _majority([_layout(r) for r in grids])
    for r in grids:
        if _layout(r) != layout:
            flag(r["unit"], f"holds {_describe_layout(_layout(r))} where {n_layout} of the "
                 f"source's {m} units hold {_describe_layout(layout)}")  # fmt: skip
    spaced = [s for u, s in steps.items() if len(frames[u]) > 1]
    step, n_step = _majority(spaced) if spaced else (None, 0)
    for u, s in steps.items():
        if step is not None and len(frames[u]) > 1 and s != step:
            gaps = ", ".join(_duration(int(x)) for x in np.unique(np.diff(frames[u]))[:4])
            flag(u, f"its frames are {gaps} apart where {n_step} of the source's {m} units "
                 f"have them evenly {_duration(step)} apart")  # fmt: skip
    counts = {u: len(f) for u, f in frames.items()}
    ranked = Counter(counts.values()).most_common()
    n_ref = max(n for n, c in ranked if c == ranked[0][1])  # ties: the longer (cuts shorten)
    k_ref = sum(1 for n in counts.values() if n == n_ref)
    periods = {u: _whole_period(frames[u], steps[u]) for u in frames}
    ref_periods = {periods[u] for u, n in counts.items() if n == n_ref}
    period = next(iter(ref_periods)) if len(ref_periods) == 1 else None
    for u, n in counts.items():
        if n == n_ref or (period is not None and periods[u] == period):
            continue  # e.g. monthly files: February is shorter than January, and whole
        f = frames[u]
        span = _iso(f[0]) if n == 1 else f"{_iso(f[0])} … {_iso(f[-1])}"
        whole = dict(_PERIODS).get(period or "", "")
        flag(u, f"holds {n} time step(s) ({span}) where {k_ref} of the source's {m} units "
             f"hold {n_ref} each{f', a whole {whole}' if whole else ''}. A "
             "file cut exactly between two time steps is still a valid, shorter file (GRIB "
             "messages carry no count), so this one may be truncated. Fix: compare it with "
             "what was requested (time range, size) and re-download it if it is incomplete; "
             "if it is meant to be shorter, nothing is wrong")  # fmt: skip
    return flags


def source_flags(
    records: Sequence[dict[str, Any]], patch: dict[str, Any] | None
) -> dict[str, list[str]]:
    """:func:`flag_units` with the frames per tubelet taken from a source's patch spec."""
    pt = int((patch or {}).get("grid", [1])[0])
    return flag_units(records, pt)


__all__ = ["flag_units", "source_flags"]
