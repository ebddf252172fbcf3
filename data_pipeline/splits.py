"""Which samples belong to a time block: the one rule that statistics and datasets share.

A sample (a series window, a grid tubelet, a forecast's frames) belongs to the block
``[start, end]`` (inclusive, as ``TimeRange.bounds()`` gives it) only if **all** of it lies inside:
its first time is at least ``start + gap`` and its last time at most ``end``. A series window of
``window`` samples spans ``start .. start + (window - 1) · step`` whatever part of it is NaN
padding, so a window that straddles a split boundary belongs to neither split. The normalisation
statistics of a store are computed with the same rule over its training block (``gap`` 0), so
they cover exactly the values of the training samples (DESIGN.md §12).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def to_ns(t: Any) -> int:
    """A time (datetime64, ISO string, datetime) as int64 nanoseconds since the epoch."""
    return int(np.datetime64(t, "ns").astype(np.int64))


def inside_block(
    first_ns: np.ndarray,
    last_ns: np.ndarray,
    time_range: tuple[Any, Any] | None,
    *,
    gap_ns: int = 0,
) -> np.ndarray:
    """Bool mask: samples spanning ``first_ns .. last_ns`` (int64 ns) that lie wholly inside
    ``time_range`` and start at least ``gap_ns`` after its start. ``None``: every sample."""
    first = np.asarray(first_ns, dtype=np.int64)
    last = np.asarray(last_ns, dtype=np.int64)
    if time_range is None:
        return np.ones(first.shape, dtype=bool)
    t0, t1 = (to_ns(t) for t in time_range)
    return (first >= t0 + int(gap_ns)) & (last <= t1)


def window_last_ns(start_ns: np.ndarray, window: int, step_ns: int) -> np.ndarray:
    """Time of the last sample of series windows of ``window`` samples ``step_ns`` apart."""
    return np.asarray(start_ns, dtype=np.int64) + (int(window) - 1) * int(step_ns)
