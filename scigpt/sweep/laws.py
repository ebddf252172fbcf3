"""Scaling laws fitted to a sweep: one axis, and model size with data together (with the
compute-optimal allocation). Estimation and intervals: ``scigpt.sweep.estimation``.

Laws
----
* One axis (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", arXiv:2001.08361)::

      L(x) = E + A·x^(−α)        offset=True   (E: the loss no amount of x removes)
      L(x) =     A·x^(−α)        offset=False  (a straight line in log-log)

* Model size N and data D together (Hoffmann et al. 2022, "Training Compute-Optimal Large
  Language Models", arXiv:2203.15556, "Chinchilla", approach 3)::

      L(N, D) = E + A·N^(−α) + B·D^(−β)

  With training compute C ≈ k·N·D (k = 6 FLOPs per parameter per token for a dense
  transformer, forward + backward), minimising L at fixed C gives (Chinchilla eq. 4)::

      N_opt(C) = G·(C/k)^a,   D_opt(C) = G^(−1)·(C/k)^b,
      a = β/(α+β),  b = α/(α+β),  G = (α·A / (β·B))^(1/(α+β)).

  The exponents a and b do not depend on k (nor on the unit of D: samples or tokens); G does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scigpt.sweep.estimation import (
    _E_FRACTIONS,
    _JOINT_E_FRACTIONS,
    _JOINT_EXPONENTS,
    _TINY,
    ArrayLike,
    Bootstrap,
    Interval,
    _check_1d,
    _check_options,
    _check_same_length,
    _fit_core,
    _g,
    _joint_model,
    _jsonable,
    _percentiles,
    _power_model,
    _summarise,
    _with_ci,
)

# ---- one axis ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawFit:
    """L(x) = E + A·x^(−α) (``offset``) or A·x^(−α), with studentized bootstrap intervals.

    ``params``: {"A", "alpha"[, "E"]}; ``ci``: {name: (lo, hi)} at ``level``; ``samples``:
    {name: bootstrap estimates} (``alpha_samples`` for α); ``residual_scale``: rms of the
    log-residuals with n − p degrees of freedom (≈ the relative noise of one loss).
    """

    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    n_points: int
    offset: bool
    samples: dict[str, np.ndarray] = field(repr=False)
    level: float = 0.95
    huber_delta: float = math.nan
    residual_scale: float = math.nan
    x_range: tuple[float, float] = (math.nan, math.nan)
    bootstrap: str = "residual"
    n_boot_failed: int = 0
    notes: tuple[str, ...] = ()
    variable: str = "x"
    interval: str = "studentized"

    @property
    def exponent(self) -> float:
        """α: the loss (above E) falls as x^(−α)."""
        return self.params["alpha"]

    @property
    def alpha_samples(self) -> np.ndarray:
        return self.samples["alpha"]

    @property
    def n_boot(self) -> int:
        return len(self.samples["alpha"])

    def predict(self, x: ArrayLike | float) -> np.ndarray:
        """E + A·x^(−α) at x (> 0)."""
        x = np.asarray(x, dtype=float)
        return self.params.get("E", 0.0) + self.params["A"] * x ** (-self.params["alpha"])

    def predict_samples(self, x: ArrayLike | float) -> np.ndarray:
        """The law of every bootstrap replicate at x: shape (n_boot, len(x))."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        e = self.samples["E"][:, None] if self.offset else 0.0
        return e + self.samples["A"][:, None] * x[None, :] ** (-self.samples["alpha"][:, None])

    def formula(self, variable: str | None = None) -> str:
        v = variable or self.variable
        law = f"{_g(self.params['A'])}·{v}^-{_g(self.params['alpha'])}"
        return f"{_g(self.params['E'])} + {law}" if self.offset else law

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "form": "E + A*x^-alpha" if self.offset else "A*x^-alpha",
                "variable": self.variable,
                "params": self.params,
                "ci": self.ci,
                "level": self.level,
                "n_points": self.n_points,
                "n_boot": self.n_boot,
                "n_boot_failed": self.n_boot_failed,
                "bootstrap": self.bootstrap,
                "interval": self.interval,
                "huber_delta": self.huber_delta,
                "residual_scale": self.residual_scale,
                "x_range": self.x_range,
                "notes": list(self.notes),
            }
        )

    def __str__(self) -> str:
        v, p, ci = self.variable, self.params, self.ci
        law = f"{_with_ci(p['A'], ci['A'])} · {v}^-({_with_ci(p['alpha'], ci['alpha'])})"
        if self.offset:
            law = f"{_with_ci(p['E'], ci['E'])} + {law}"
        tail = (
            f"{self.n_points} points, {self.level:.0%} {self.interval} {self.bootstrap}-bootstrap "
            "intervals "
            f"from {self.n_boot} resamples, rms log-residual {self.residual_scale:.3g}"
        )
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        return f"L = {law}   ({tail}){notes}"


def _power_starts(uc: np.ndarray, y: np.ndarray, offset: bool) -> np.ndarray:
    design = np.stack([np.ones_like(uc), -uc], axis=1)
    if not offset:
        coef = np.linalg.lstsq(design, np.log(y), rcond=None)[0]
        return coef[None, :]
    starts = []
    for frac in _E_FRACTIONS:
        e = max(frac, _TINY) * y.min()
        coef = np.linalg.lstsq(design, np.log(y - e), rcond=None)[0]
        starts.append([coef[0], coef[1], math.log(e)])
    return np.array(starts)


def fit_power_law(
    x: ArrayLike,
    y: ArrayLike,
    *,
    offset: bool = True,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
    huber_delta: float | None = None,
    bootstrap: Bootstrap = "residual",
    variable: str = "x",
    interval: Interval = "studentized",
) -> PowerLawFit:
    """Fit L = E + A·x^(−α) (``offset=True``) or L = A·x^(−α) to positive (x, y).

    Huber loss on log-residuals, multi-start (E at 0–99 % of the smallest loss, then log A and
    α by least squares on log(L − E)); ``n_boot`` bootstrap replicates (``seed``) give
    studentized (or ``interval="percentile"``) intervals at ``level``. Needs ≥ p + 1 points
    and ≥ p distinct x values
    (p = 3 with an offset, 2 without); raises ``ValueError`` otherwise and for NaN, infinite or
    non-positive values.
    """
    _check_options(n_boot, level, bootstrap, huber_delta, interval)
    xa, ya = _check_1d("x", x), _check_1d("y (loss)", y)
    n = _check_same_length(x=xa, y=ya)
    p = 3 if offset else 2
    distinct = len(np.unique(xa))
    form = "E + A·x^-α" if offset else "A·x^-α"
    if n < p + 1:
        raise ValueError(
            f"{form} has {p} parameters: it needs at least {p + 1} points (one more than its "
            f"parameters, to estimate the noise), got {n}"
        )
    if distinct < p:
        raise ValueError(f"{form} needs at least {p} distinct x values, got {distinct}")

    u = np.log(xa)
    ubar = float(u.mean())
    uc = u - ubar
    core = _fit_core(
        _power_model(uc, offset),
        _power_starts(uc, ya, offset),
        np.log(ya),
        n_boot=n_boot,
        seed=seed,
        huber_delta=huber_delta,
        bootstrap=bootstrap,
        identifiable=lambda keep: len(np.unique(xa[keep])) >= p and keep.sum() >= p + 1,
    )

    def natural(th: np.ndarray) -> dict[str, np.ndarray]:
        out = {"A": np.exp(th[..., 0] + th[..., 1] * ubar), "alpha": th[..., 1]}
        if offset:
            out["E"] = np.exp(th[..., 2])
        return out

    params, samples, ci, boot_notes = _summarise(core, natural, level, n_boot, interval, ("A", "E"))
    notes = []
    if params["alpha"] <= 0:
        notes.append("α ≤ 0: the loss does not fall with x over this range")
    if offset and params["E"] < 1e-3 * float(ya.min()):
        notes.append("E ≈ 0: the points do not determine an offset (try offset=False)")
    notes += boot_notes
    return PowerLawFit(
        params=params,
        ci=ci,
        n_points=n,
        offset=offset,
        samples=samples,
        level=level,
        huber_delta=core.delta,
        residual_scale=core.residual_scale,
        x_range=(float(xa.min()), float(xa.max())),
        bootstrap=bootstrap,
        n_boot_failed=core.n_boot_failed,
        notes=tuple(notes),
        variable=variable,
        interval=interval,
    )


# ---- model size and data together ----------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    """Compute-optimal model size and data for budgets C (FLOPs), with C = k·N·D."""

    compute: np.ndarray
    params: np.ndarray  # N_opt
    data: np.ndarray  # D_opt
    loss: np.ndarray  # L(N_opt, D_opt)
    params_ci: tuple[np.ndarray, np.ndarray]
    data_ci: tuple[np.ndarray, np.ndarray]
    a: float  # N_opt ∝ C^a
    b: float  # D_opt ∝ C^b
    flops_per_param_token: float

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "compute": self.compute,
                "params": self.params,
                "params_ci": list(zip(*self.params_ci, strict=True)),
                "data": self.data,
                "data_ci": list(zip(*self.data_ci, strict=True)),
                "loss": self.loss,
                "a": self.a,
                "b": self.b,
                "flops_per_param_token": self.flops_per_param_token,
            }
        )


def _allocate(
    e: np.ndarray, a_: np.ndarray, alpha: np.ndarray, b_: np.ndarray, beta: np.ndarray, c_k: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N_opt, D_opt, L_opt for C/k values ``c_k``; parameters broadcast against c_k. NaN where
    α ≤ 0 or β ≤ 0 (no finite optimum) or where the numbers overflow."""
    with np.errstate(all="ignore"):
        s = alpha + beta
        log_g = (np.log(alpha * a_) - np.log(beta * b_)) / s
        log_n = log_g + beta / s * np.log(c_k)
        log_d = np.log(c_k) - log_n
        n, d = np.exp(log_n), np.exp(log_d)
        loss = e + a_ * n ** (-alpha) + b_ * d ** (-beta)
        ok = (alpha > 0) & (beta > 0) & np.isfinite(n) & np.isfinite(d) & np.isfinite(loss)
    return tuple(np.where(ok, v, np.nan) for v in (n, d, loss))  # type: ignore[return-value]


@dataclass(frozen=True)
class JointFit:
    """L(N, D) = E + A·N^(−α) + B·D^(−β) (Hoffmann et al. 2022, approach 3).

    ``params``: {"E", "A", "alpha", "B", "beta"}; ``ci`` also holds the allocation exponents
    "a" = β/(α+β) (N_opt ∝ C^a) and "b" = α/(α+β) (D_opt ∝ C^b); ``samples`` the bootstrap
    estimates of all seven.
    """

    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    n_points: int
    samples: dict[str, np.ndarray] = field(repr=False)
    level: float = 0.95
    huber_delta: float = math.nan
    residual_scale: float = math.nan
    bootstrap: str = "residual"
    n_boot_failed: int = 0
    flops_per_param_token: float = 6.0
    notes: tuple[str, ...] = ()
    interval: str = "studentized"

    @property
    def a(self) -> float:
        """N_opt(C) ∝ C^a, a = β/(α+β)."""
        return self.params["beta"] / (self.params["alpha"] + self.params["beta"])

    @property
    def b(self) -> float:
        """D_opt(C) ∝ C^b, b = α/(α+β)."""
        return self.params["alpha"] / (self.params["alpha"] + self.params["beta"])

    @property
    def n_boot(self) -> int:
        return len(self.samples["alpha"])

    def predict(self, N: ArrayLike | float, D: ArrayLike | float) -> np.ndarray:
        p = self.params
        n, d = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return p["E"] + p["A"] * n ** (-p["alpha"]) + p["B"] * d ** (-p["beta"])

    def optimal_allocation(
        self, compute: ArrayLike | float, *, flops_per_param_token: float | None = None
    ) -> Allocation:
        """N_opt = G·(C/k)^a, D_opt = (C/k)/N_opt, G = (αA/(βB))^(1/(α+β)) for budgets C, with
        bootstrap percentile intervals. Needs α, β > 0 (otherwise no finite optimum: NaN); an
        interval is NaN where more than (1 − level)/2 of the replicates have no optimum."""
        k = float(flops_per_param_token or self.flops_per_param_token)
        if not k > 0:
            raise ValueError(f"flops_per_param_token must be > 0, got {k!r}")
        c = np.atleast_1d(_check_1d("compute", np.atleast_1d(compute)))
        p = self.params
        n, d, loss = _allocate(p["E"], p["A"], p["alpha"], p["B"], p["beta"], c / k)
        s = self.samples
        if self.n_boot:
            ns, ds, _ = _allocate(
                *(s[name][:, None] for name in ("E", "A", "alpha", "B", "beta")), (c / k)[None]
            )
            n_lo, n_hi = self._alloc_ci(ns)
            d_lo, d_hi = self._alloc_ci(ds)
        else:
            n_lo = n_hi = d_lo = d_hi = np.full_like(c, np.nan)
        return Allocation(c, n, d, loss, (n_lo, n_hi), (d_lo, d_hi), self.a, self.b, k)

    def _alloc_ci(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Percentiles per budget over the replicates; NaN where more than (1 − level)/2 of
        them have no optimum (an end of the interval is then undefined)."""
        tail = (1 - self.level) / 2
        lo, hi = np.full(samples.shape[1], np.nan), np.full(samples.shape[1], np.nan)
        for j in range(samples.shape[1]):
            col = samples[:, j]
            if np.isnan(col).mean() <= tail:
                lo[j], hi[j] = _percentiles(col, self.level)
        return lo, hi

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "form": "E + A*N^-alpha + B*D^-beta",
                "params": self.params,
                "ci": self.ci,
                "allocation_exponents": {"a": self.a, "b": self.b},
                "level": self.level,
                "n_points": self.n_points,
                "n_boot": self.n_boot,
                "n_boot_failed": self.n_boot_failed,
                "bootstrap": self.bootstrap,
                "interval": self.interval,
                "huber_delta": self.huber_delta,
                "residual_scale": self.residual_scale,
                "flops_per_param_token": self.flops_per_param_token,
                "notes": list(self.notes),
            }
        )

    def __str__(self) -> str:
        p, ci = self.params, self.ci
        w = {k: _with_ci(p[k], ci[k]) for k in p}
        law = f"L = {w['E']} + {w['A']}·N^-({w['alpha']}) + {w['B']}·D^-({w['beta']})"
        alloc = f"N_opt ∝ C^{_with_ci(self.a, ci['a'])}, D_opt ∝ C^{_with_ci(self.b, ci['b'])}"
        tail = (
            f"{self.n_points} points, {self.level:.0%} {self.interval} {self.bootstrap}-bootstrap "
            "intervals "
            f"from {self.n_boot} resamples, rms log-residual {self.residual_scale:.3g}"
        )
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        return f"{law}\n  {alloc}   ({tail}){notes}"


def _joint_starts(uc: np.ndarray, vc: np.ndarray, y: np.ndarray) -> np.ndarray:
    starts = []
    for alpha in _JOINT_EXPONENTS:
        for beta in _JOINT_EXPONENTS:
            cols = np.stack([np.exp(-alpha * uc), np.exp(-beta * vc)], axis=1)
            for frac in _JOINT_E_FRACTIONS:
                e = max(frac, _TINY) * y.min()
                rest = y - e
                coef = np.linalg.lstsq(cols, rest, rcond=None)[0]
                coef = np.maximum(coef, _TINY * float(np.median(rest)))
                starts.append([math.log(e), math.log(coef[0]), alpha, math.log(coef[1]), beta])
    return np.array(starts)


def fit_joint(
    N: ArrayLike,
    D: ArrayLike,
    L: ArrayLike,
    *,
    n_boot: int = 300,
    seed: int = 0,
    level: float = 0.95,
    huber_delta: float | None = None,
    bootstrap: Bootstrap = "residual",
    flops_per_param_token: float = 6.0,
    interval: Interval = "studentized",
) -> JointFit:
    """Fit L(N, D) = E + A·N^(−α) + B·D^(−β) (Chinchilla approach 3) with bootstrap intervals.

    Starts: α, β ∈ {0.1, 0.25, 0.5, 0.8} × E ∈ {0, 50, 80, 95 %} of the smallest loss, (A, B)
    by least squares. Needs ≥ 6 points (five parameters + one), ≥ 3 distinct N and ≥ 3
    distinct D (with two values of one axis its term and E cannot be told apart), and N and D
    not varied in lockstep. ``flops_per_param_token`` (k in C = k·N·D) is kept for
    ``optimal_allocation``.
    """
    _check_options(n_boot, level, bootstrap, huber_delta, interval)
    if not flops_per_param_token > 0:
        raise ValueError(f"flops_per_param_token must be > 0, got {flops_per_param_token!r}")
    na, da, la = _check_1d("N", N), _check_1d("D", D), _check_1d("L (loss)", L)
    n = _check_same_length(N=na, D=da, L=la)
    if n < 6:
        raise ValueError(
            f"E + A·N^-α + B·D^-β has 5 parameters: it needs at least 6 points, got {n}"
        )
    for name, arr in (("N", na), ("D", da)):
        k = len(np.unique(arr))
        if k < 3:
            raise ValueError(f"the joint law needs at least 3 distinct {name} values, got {k}")
    u, v = np.log(na), np.log(da)
    if abs(float(np.corrcoef(u, v)[0, 1])) > 0.999:
        raise ValueError("N and D vary together (|corr(log N, log D)| > 0.999): α and β "
                         "cannot be told apart; vary them independently")  # fmt: skip
    ubar, vbar = float(u.mean()), float(v.mean())
    uc, vc = u - ubar, v - vbar

    def identifiable(keep: np.ndarray) -> bool:
        return keep.sum() >= 6 and len(np.unique(na[keep])) >= 3 and len(np.unique(da[keep])) >= 3

    core = _fit_core(
        _joint_model(uc, vc),
        _joint_starts(uc, vc, la),
        np.log(la),
        n_boot=n_boot,
        seed=seed,
        huber_delta=huber_delta,
        bootstrap=bootstrap,
        identifiable=identifiable,
    )

    def natural(th: np.ndarray) -> dict[str, np.ndarray]:
        alpha, beta = th[..., 2], th[..., 4]
        with np.errstate(all="ignore"):
            return {
                "E": np.exp(th[..., 0]),
                "A": np.exp(th[..., 1] + alpha * ubar),
                "alpha": alpha,
                "B": np.exp(th[..., 3] + beta * vbar),
                "beta": beta,
                "a": beta / (alpha + beta),
                "b": alpha / (alpha + beta),
            }

    everything, samples, ci, boot_notes = _summarise(
        core, natural, level, n_boot, interval, ("E", "A", "B")
    )
    params = {k: everything[k] for k in ("E", "A", "alpha", "B", "beta")}
    notes = []
    if params["alpha"] <= 0 or params["beta"] <= 0:
        notes.append("α or β ≤ 0: no compute-optimal allocation exists for this fit")
    if params["E"] < 1e-3 * float(la.min()):
        notes.append("E ≈ 0: the points do not determine an irreducible loss")
    notes += boot_notes
    return JointFit(
        params=params,
        ci=ci,
        n_points=n,
        samples=samples,
        level=level,
        huber_delta=core.delta,
        residual_scale=core.residual_scale,
        bootstrap=bootstrap,
        n_boot_failed=core.n_boot_failed,
        flops_per_param_token=float(flops_per_param_token),
        notes=tuple(notes),
        interval=interval,
    )
