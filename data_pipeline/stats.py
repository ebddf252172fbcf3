"""Exact streaming per-variable statistics (count, mean, variance) that merge across shards/ranks.

Each batch is reduced with a two-pass mean/M2 in float64, and partial results are combined with
the pairwise update of Chan, Golub & LeVeque, "Updating formulae and a pairwise algorithm for
computing sample variances" (1979/1983); for one sample at a time it reduces to Welford (1962).
Unlike sum/sum-of-squares, this does not lose precision for fields with a large offset (surface
pressure ~1e5 Pa with ~1e3 Pa spread), and any split of the data gives the same answer up to
rounding, so per-shard or per-rank statistics can be merged in any order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class RunningStats:
    """Per-variable count / mean / M2 (sum of squared deviations), NaNs ignored."""

    def __init__(self, num_vars: int) -> None:
        if num_vars < 1:
            raise ValueError(f"RunningStats needs num_vars >= 1, got {num_vars}")
        self.num_vars = int(num_vars)
        self._count = np.zeros(self.num_vars, dtype=np.int64)
        self._mean = np.zeros(self.num_vars, dtype=np.float64)
        self._m2 = np.zeros(self.num_vars, dtype=np.float64)

    def update(self, x: np.ndarray, axis: int) -> None:
        """Add the samples of ``x``, whose variable axis is ``axis``; NaN entries are skipped."""
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[axis] != self.num_vars:
            raise ValueError(
                f"RunningStats.update: axis {axis} of x with shape {x.shape} must have "
                f"num_vars ({self.num_vars}) entries"
            )
        flat = np.moveaxis(x, axis, 0).reshape(self.num_vars, -1).astype(np.float64)  # (V, N)
        valid = ~np.isnan(flat)
        count = valid.sum(axis=1)  # (V,)
        total = np.where(valid, flat, 0.0).sum(axis=1)
        safe = np.maximum(count, 1)  # empty variables give mean 0, M2 0 and count 0
        mean = total / safe
        # Second pass around the batch mean: exact up to rounding, no cancellation.
        dev = np.where(valid, flat - mean[:, None], 0.0)
        m2 = (dev * dev).sum(axis=1)
        self._combine(count.astype(np.int64), mean, m2)

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold ``other`` into ``self`` (in place) and return ``self``."""
        if other.num_vars != self.num_vars:
            raise ValueError(
                f"cannot merge RunningStats with {other.num_vars} variables into one with "
                f"{self.num_vars}"
            )
        self._combine(other._count.copy(), other._mean.copy(), other._m2.copy())
        return self

    def _combine(self, n_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        # Chan et al.: n = na + nb, d = mb - ma, mean = ma + d nb / n, M2 = M2a + M2b + d² na nb / n
        n_a = self._count.astype(np.float64)
        nb = n_b.astype(np.float64)
        n = n_a + nb
        safe = np.where(n > 0, n, 1.0)
        delta = mean_b - self._mean
        self._mean = np.where(n > 0, self._mean + delta * (nb / safe), 0.0)
        self._m2 = self._m2 + m2_b + delta * delta * (n_a * nb / safe)
        self._count = self._count + n_b

    @property
    def count(self) -> np.ndarray:
        """(V,) int64 number of non-NaN samples per variable."""
        return self._count.copy()

    @property
    def mean(self) -> np.ndarray:
        """(V,) float64 mean; NaN for a variable without samples."""
        return np.where(self._count > 0, self._mean, np.nan)

    @property
    def var(self) -> np.ndarray:
        """(V,) float64 population variance (ddof=0); NaN for a variable without samples."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._count > 0, self._m2 / self._count, np.nan)

    @property
    def std(self) -> np.ndarray:
        """(V,) float64 population standard deviation."""
        return np.sqrt(self.var)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state; Python floats round-trip float64 exactly through JSON."""
        return {
            "count": [int(c) for c in self._count],
            "mean": [float(m) for m in self._mean],
            "m2": [float(m) for m in self._m2],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunningStats:
        """Inverse of :meth:`to_dict`."""
        if set(d) != {"count", "mean", "m2"}:
            raise ValueError(
                f"RunningStats dict must have exactly the keys count, mean, m2; got {sorted(d)}"
            )
        n = len(d["count"])
        if len(d["mean"]) != n or len(d["m2"]) != n:
            raise ValueError(
                f"RunningStats dict lists differ in length: count {n}, mean {len(d['mean'])}, "
                f"m2 {len(d['m2'])}"
            )
        out = cls(n)
        out._count = np.asarray(d["count"], dtype=np.int64)
        out._mean = np.asarray(d["mean"], dtype=np.float64)
        out._m2 = np.asarray(d["m2"], dtype=np.float64)
        return out
