"""Validated parameter ranges of the generated PDE families (``pde.py``, ``pde_gpme.py``).

Each range is a ``(lo, hi)`` pair drawn uniformly per sample; the frozen dataclasses check
their ranges on construction with errors that name the option, the value and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def check_range(
    name: str,
    value: Any,
    *,
    low: float,
    strict: bool = False,
    high: float = math.inf,
    example: tuple[float, float],
) -> tuple[float, float]:
    """``value`` as a ``(lo, hi)`` float pair inside [low, high] (``(low, high]`` if strict);
    errors name the option, the value and the fix (the default as an example)."""
    right = ")" if math.isinf(high) else "]"
    bound = f"{'(' if strict else '['}{low:g}, {high:g}{right}"
    fix = f"e.g. {name}: [{example[0]:g}, {example[1]:g}] (the default)"
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a pair [lo, hi] of numbers, got {value!r}. Fix: write {fix}."
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(
            f"{name} range ({lo:g}, {hi:g}) needs finite lo <= hi. Fix: swap them, or write {fix}."
        )
    if (lo <= low if strict else lo < low) or hi > high:
        raise ValueError(
            f"{name} range ({lo:g}, {hi:g}) must lie in {bound}. Fix: choose lo and hi in "
            f"{bound}, {fix}."
        )
    return lo, hi


class RangeChecks:
    """Validation shared by the frozen range dataclasses (here, in pde.py and pde_gpme.py)."""

    def _check(
        self, name: str, *, low: float, strict: bool = False, high: float = math.inf
    ) -> tuple[float, float]:
        default = self.__dataclass_fields__[name].default  # type: ignore[attr-defined]
        value = check_range(
            name, getattr(self, name), low=low, strict=strict, high=high, example=default
        )
        # frozen: store the normalised tuple (configs from YAML give lists)
        object.__setattr__(self, name, value)
        return value


@dataclass(frozen=True)
class SourceRanges(RangeChecks):
    """Gaussian-bump source f(x) = Σ_b s_b a_b exp(−|x − c_b|² / (2 w_b²)) (paper §3).

    Each sample draws the number of bumps from ``n_bumps`` (inclusive), then per bump the centre
    coordinates from ``bump_centre``, the width ``w`` from ``bump_width``, the amplitude ``a``
    from ``bump_amplitude`` (all uniform) and the sign ``s`` = ±1 with equal probability.
    """

    n_bumps: tuple[int, int] = (1, 4)
    bump_width: tuple[float, float] = (0.05, 0.15)
    bump_amplitude: tuple[float, float] = (0.5, 1.5)
    bump_centre: tuple[float, float] = (0.1, 0.9)

    def __post_init__(self) -> None:
        lo, hi = self._check("n_bumps", low=1)
        if lo != int(lo) or hi != int(hi):
            raise ValueError(f"n_bumps range {self.n_bumps!r} must be integers. Fix: e.g. [1, 4].")
        object.__setattr__(self, "n_bumps", (int(lo), int(hi)))
        self._check("bump_width", low=0, strict=True, high=1)
        self._check("bump_amplitude", low=0)
        self._check("bump_centre", low=0, high=1)
