"""Scaling-law fits for sweeps: power laws with bootstrap intervals, the joint L(N, D) law with
its compute-optimal allocation, the compute frontier, and saturation tests.

This module holds the compute frontier and the saturation test, and is where the fits are
imported from: the laws live in ``scigpt.sweep.laws`` (one axis, L(N, D) and the allocation; the
formulas and their sources are in its docstring), the estimator in ``scigpt.sweep.estimation``
(Huber loss of the log-residuals minimised by a batched Levenberg–Marquardt iteration,
studentized bootstrap intervals).

Every fit needs more points than parameters (one degree of freedom at least, so the noise and
the intervals are defined) and enough distinct values per axis; bad inputs (NaN, infinities,
values ≤ 0, mismatched lengths) raise ``ValueError`` naming what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from scigpt.sweep.estimation import (
    ArrayLike,
    Bootstrap,
    _check_1d,
    _check_same_length,
)
from scigpt.sweep.laws import (
    Allocation,
    JointFit,
    PowerLawFit,
    fit_joint,
    fit_power_law,
)

__all__ = [
    "Allocation",
    "FrontierFit",
    "JointFit",
    "PowerLawFit",
    "fit_frontier",
    "fit_joint",
    "fit_power_law",
    "pareto_frontier",
    "saturation",
]


# ---- the compute frontier ------------------------------------------------------------------------


def pareto_frontier(compute: ArrayLike, loss: ArrayLike) -> np.ndarray:
    """Indices of the points whose loss is lower than that of every other point with less or
    equal compute, in increasing compute. Of points tied in both compute and loss, the first
    (lowest index) is kept. Empty inputs give an empty array."""
    c = _check_1d("compute", compute, positive=False)
    lo = _check_1d("loss", loss, positive=False)
    n = _check_same_length(compute=c, loss=lo)
    keep: list[int] = []
    best = math.inf
    for i in np.lexsort((np.arange(n), lo, c)):  # by compute, then loss, then index
        if lo[i] < best:
            keep.append(int(i))
            best = float(lo[i])
    return np.array(keep, dtype=int)


@dataclass(frozen=True)
class FrontierFit:
    """A power law of loss vs compute through the compute frontier (``indices``, into the
    inputs of ``fit_frontier``, in increasing compute)."""

    indices: np.ndarray
    fit: PowerLawFit

    def predict(self, compute: ArrayLike | float) -> np.ndarray:
        return self.fit.predict(compute)

    @property
    def exponent(self) -> float:
        return self.fit.exponent

    def to_dict(self) -> dict[str, Any]:
        return {"indices": [int(i) for i in self.indices], **self.fit.to_dict()}

    def __str__(self) -> str:
        return f"frontier of {len(self.indices)} points: {self.fit}"


def fit_frontier(
    compute: ArrayLike,
    loss: ArrayLike,
    *,
    offset: bool = False,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
    huber_delta: float | None = None,
    bootstrap: Bootstrap = "residual",
) -> FrontierFit:
    """Fit L(C) = A·C^(−α) (Kaplan et al. 2020's L(C_min) form; ``offset=True``: E + A·C^(−α))
    through ``pareto_frontier(compute, loss)``. Needs positive compute and loss and, on the
    frontier, the points ``fit_power_law`` asks for."""
    c, lo = _check_1d("compute", compute), _check_1d("loss", loss)
    _check_same_length(compute=c, loss=lo)
    idx = pareto_frontier(c, lo)
    try:
        fit = fit_power_law(
            c[idx], lo[idx], offset=offset, n_boot=n_boot, seed=seed, level=level,
            huber_delta=huber_delta, bootstrap=bootstrap, variable="C",
        )  # fmt: skip
    except ValueError as e:
        raise ValueError(f"the compute frontier has {len(idx)} points: {e}") from None
    return FrontierFit(idx, fit)


# ---- saturation ----------------------------------------------------------------------------------


def saturation(
    x: ArrayLike,
    y: ArrayLike,
    fit: PowerLawFit | None = None,
    *,
    level: float = 0.95,
    noise: float | None = None,
    noise_dof: float | None = None,
) -> dict[str, Any]:
    """Does the largest step of this axis still pay off? One rule, a one-sided test:

    **saturated** ⇔ the mean log-loss at the largest x lies above the straight log-log trend
    of the points at the smaller x values (ordinary least squares, log L = a − α·log x) by more
    than t·σ·√(1/n_last + h): the largest step fell short of the power law the smaller steps
    followed, beyond the noise. σ is the relative noise of one loss — the trend's own rms
    log-residual (ν = n_lower − 2 degrees of freedom) or ``noise`` (with ``noise_dof``; None:
    known, a normal quantile) —, t the ``level`` quantile of Student's t with ν degrees of
    freedom, n_last the points at the largest x and h = 1/n_lower + (u − ū)²/Σ(u_i − ū)² the
    trend's leverage at u = log x_last.

    False alarms: where the power law holds to the largest x (not saturated) and the log-losses
    carry independent normal noise, the statistic is exactly Student-t, so the rule flags
    1 − ``level`` of such sweeps (5 % at 0.95; measured in ``benchmarks/fit_calibration.py``).
    A law that flattens — towards an irreducible loss, or because another axis limits it — is
    flagged once the flattening exceeds the noise.

    Needs 3 distinct x (2 below the largest, for the trend) and, without ``noise``, 3 points
    below the largest. ``fit`` (a ``PowerLawFit`` of these points) adds the fitted improvement
    of the largest step and the local exponent −d ln L̂/d ln x at x_last (information only).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    xa, ya = _check_1d("x", x), _check_1d("y (loss)", y)
    _check_same_length(x=xa, y=ya)
    xs = np.unique(xa)
    if len(xs) < 3:
        raise ValueError(
            f"saturation needs at least 3 distinct x values (a trend of 2 below the largest), "
            f"got {len(xs)}"
        )
    if noise is not None and not (math.isfinite(noise) and noise > 0):
        raise ValueError(f"noise must be a finite number > 0, got {noise!r}")
    if noise_dof is not None and not noise_dof > 0:
        raise ValueError(f"noise_dof must be > 0 (or None: known noise), got {noise_dof!r}")
    x_prev, x_last = float(xs[-2]), float(xs[-1])
    top = xa == x_last
    u, z = np.log(xa[~top]), np.log(ya[~top])
    n_low = u.size
    if noise is None and n_low < 3:
        raise ValueError(
            f"{n_low} points below the largest x leave no degree of freedom for the noise of "
            "their trend: pass noise= (the relative noise of one loss) or add points"
        )
    ubar = float(u.mean())
    sxx = float(np.sum((u - ubar) ** 2))
    slope = float(np.sum((u - ubar) * (z - z.mean())) / sxx)  # −α of the trend
    intercept = float(z.mean() - slope * ubar)
    u_last = math.log(x_last)
    predicted = intercept + slope * u_last  # the trend's log-loss at x_last
    at_last = np.log(ya[top])
    excess = float(at_last.mean() - predicted)  # > 0: above the trend
    if noise is None:
        dof: float | None = n_low - 2
        sigma = float(np.sqrt(np.sum((z - intercept - slope * u) ** 2) / dof))
    else:
        dof, sigma = noise_dof, float(noise)
    leverage = 1 / n_low + (u_last - ubar) ** 2 / sxx
    se = sigma * math.sqrt(1 / at_last.size + leverage)
    quantile = NormalDist().inv_cdf(level) if dof is None else float(student_t.ppf(level, dof))
    bound = quantile * se
    at_prev = np.log(ya[xa == x_prev])
    fitted = local = math.nan
    if fit is not None:
        p = fit.params
        pred_last = float(fit.predict(x_last))
        fitted = float(np.log(fit.predict(x_prev)) - np.log(pred_last))
        local = float(p["alpha"] * p["A"] * x_last ** (-p["alpha"]) / pred_last)
    return {
        "saturated": bool(excess > bound),
        "x_prev": x_prev,
        "x_last": x_last,
        "loss_prev": float(np.exp(at_prev.mean())),
        "loss_last": float(np.exp(at_last.mean())),
        "observed_improvement": float(at_prev.mean() - at_last.mean()),
        "trend_exponent": -slope,
        "trend_improvement": float(intercept + slope * math.log(x_prev) - predicted),
        "excess": excess,
        "bound": bound,
        "noise": sigma,
        "noise_dof": dof,
        "false_alarm_rate": 1 - level,
        "fitted_improvement": fitted,
        "local_exponent": local,
        "level": level,
    }
