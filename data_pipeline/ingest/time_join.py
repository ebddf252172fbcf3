"""Join the files of one unit along time and across variables, read lazily block by block.

ERA5 is downloaded one variable per file over a day, a month or a year (CDS requests, ARCO
exports). The netCDF and Zarr readers cut every input into *pieces* — one canonical variable of
one file over that file's times — and this module puts them together:

* pieces of the same variable are concatenated in time order (they must not overlap);
* the variables must then cover exactly the same times (joined per time step); when they do
  not (a missing hour, a file absent), the error names each variable's files and the first
  missing times, and how to fix it;
* the result is a loader ``(t0, t1) -> (t1 - t0, V, H, W)`` that decodes only the pieces
  overlapping that window, so a unit is never held whole in memory (``base.LazyGrid``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Piece:
    """One canonical variable of one input over that input's (windowed) time steps."""

    path: Path
    times: np.ndarray  # (n,) datetime64[ns], ascending
    read: Callable[[int, int], np.ndarray]  # local steps [a, b) -> (b - a, H, W) float32
    # Called once its last step has been read: frees what the open file holds (netCDF-C keeps
    # a chunk cache per open variable, which would grow with the number of files of a unit).
    release: Callable[[], None] | None = None


def _iso(t: np.datetime64) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "ns"), unit="s"))


def time_window(times: np.ndarray, time_slice: tuple[str, str] | None, where: Path) -> slice:
    """Positions of ``time_slice`` (ISO times, both ends inclusive, partial dates cover their
    period, as ``xarray``'s ``.sel(time=slice(a, b))``) on an ascending time axis."""
    if time_slice is None:
        return slice(0, len(times))
    index = pd.DatetimeIndex(times)
    if not index.is_monotonic_increasing:
        raise ValueError(f"{where}: time axis is not ascending; time_slice needs it sorted")
    try:
        window = index.slice_indexer(time_slice[0], time_slice[1])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"time_slice={time_slice!r} is not a pair of ISO times ({exc}). "
            "Fix: use e.g. ('2020-01-01T06:00', '2020-01-01T12:00')."
        ) from exc
    return slice(window.start, max(window.start, window.stop))


def _concat(name: str, pieces: list[Piece]) -> tuple[np.ndarray, list[tuple[int, Piece]]]:
    """One variable's pieces in time order: its time axis and (global start, piece) pairs."""
    pieces = sorted((p for p in pieces if len(p.times)), key=lambda p: p.times[0])
    placed: list[tuple[int, Piece]] = []
    start = 0
    for k, piece in enumerate(pieces):
        if np.any(np.diff(piece.times) <= np.timedelta64(0, "ns")):
            raise ValueError(
                f"{piece.path}: the time axis of {name!r} is not strictly ascending. "
                "Fix: sort the file by time (e.g. ds.sortby('time')) and drop repeated steps."
            )
        if k and piece.times[0] <= pieces[k - 1].times[-1]:
            prev = pieces[k - 1]
            raise ValueError(
                f"variable {name!r} is in both {prev.path} and {piece.path} for the same times "
                f"({_iso(max(piece.times[0], prev.times[0]))} to "
                f"{_iso(min(piece.times[-1], prev.times[-1]))}). Fix: pass each variable and "
                "time once (drop the duplicate download, or cut the overlap with time_slice)."
            )
        placed.append((start, piece))
        start += len(piece.times)
    times = np.concatenate([p.times for p in pieces]) if pieces else np.array([], "M8[ns]")
    return times, placed


def _misaligned(names: Sequence[str], axes: dict[str, np.ndarray], files: dict) -> str:
    """The error text when the variables do not cover the same times."""
    union = np.unique(np.concatenate([axes[n] for n in names]))
    lines = []
    for name in names:
        missing = np.setdiff1d(union, axes[name])
        got = f"{len(axes[name])} of {len(union)} steps"
        if len(missing):
            shown = ", ".join(_iso(t) for t in missing[:5]) + (" ..." if len(missing) > 5 else "")
            got += f", missing {len(missing)}: {shown}"
        lines.append(f"{name} ({got}; files: {', '.join(map(str, files[name]))})")
    return (
        "variables have different time axes: they must cover the same times to be joined per "
        "time step, but " + "; ".join(lines) + ". Fix: re-download the missing hours of those "
        "variables (a CDS request per variable and period), or limit the source to the times "
        "every variable covers (options.time_slice, or leave the incomplete files out)."
    )


def join_pieces(
    names: Sequence[str], pieces: dict[str, list[Piece]]
) -> tuple[np.ndarray, Callable[[int, int], np.ndarray]]:
    """Time axis (T,) of the variables ``names`` and a loader of (t, V, H, W) blocks."""
    axes: dict[str, np.ndarray] = {}
    placed: dict[str, list[tuple[int, Piece]]] = {}
    for name in names:
        axes[name], placed[name] = _concat(name, pieces[name])
    time = axes[names[0]] if names else np.array([], "M8[ns]")
    if any(not np.array_equal(axes[n], time) for n in names):
        files = {n: [p.path for p in pieces[n]] for n in names}
        raise ValueError(_misaligned(names, axes, files))

    def load(t0: int, t1: int) -> np.ndarray:
        out: np.ndarray | None = None
        for v, name in enumerate(names):
            for start, piece in placed[name]:
                lo, hi = max(t0, start), min(t1, start + len(piece.times))
                if lo >= hi:
                    continue
                block = piece.read(lo - start, hi - start)  # (hi - lo, H, W)
                if out is None:
                    out = np.empty((t1 - t0, len(names), *block.shape[1:]), dtype=np.float32)
                out[lo - t0 : hi - t0, v] = block
                if hi == start + len(piece.times) and piece.release is not None:
                    piece.release()
        assert out is not None, f"no piece covers steps [{t0}, {t1})"
        return out

    return time, load
