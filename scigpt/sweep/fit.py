"""Scaling-law fits for sweeps: power laws with bootstrap intervals, the joint L(N, D) law with
its compute-optimal allocation, the compute frontier, and saturation tests.

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

Estimation
----------
As Chinchilla approach 3, the parameters minimise the Huber loss of the log-residuals::

    Σ_i Huber_δ(log L̂_i − log L_i),   log L̂ = LSE(log A − α·log x, log E)   (one axis)
                                        log L̂ = LSE(log E, log A − α·log N, log B − β·log D)

(LSE = log-sum-exp, so E, A, B stay positive and every term is fitted in relative terms),
started from a grid of initialisations, keeping the best. Chinchilla runs L-BFGS with
δ = 1e-3; here a Levenberg–Marquardt iteration on the iteratively reweighted (IRLS)
Gauss–Newton system minimises the same objective (numpy only, every start and every bootstrap
replicate solved at once as one batch), accepting a step only when the objective decreases.
``huber_delta=None`` (the default) picks δ = 1.345·σ̂, σ̂ a robust (MAD) scale of the
log-residuals of a least-squares fit: the classical choice that keeps 95 % of least squares'
efficiency for Gaussian noise while still down-weighting outlying runs; ``huber_delta=1e-3``
reproduces Chinchilla's choice, which for losses noisier than 0.1 % is close to an L1 fit.
log x is centred inside the optimiser (log A and α are otherwise almost collinear).

Intervals
---------
Studentized bootstrap (bootstrap-t) intervals, 2.5–97.5 % by default (Efron & Tibshirani 1993,
ch. 12; Davison & Hinkley 1997, §5.2). ``bootstrap="residual"`` (the default) keeps the design
fixed and resamples the centred log-residuals of the fit, inflated by sqrt(n/(n−p)) for the p
fitted parameters: log L*_i = log L̂_i + r*_i. Each replicate is refitted, and its estimate q*
of every quantity is studentized by its own standard error, se* from the Gauss–Newton
covariance s*²·(JᵀJ)⁻¹ (s*² with n − p degrees of freedom; the delta method for derived
quantities; log scale for the positive E, A, B); the interval is [q̂ − t*₉₇.₅·se, q̂ − t*₂.₅·se]
with the quantiles of t* = (q* − q̂)/se*. Percentile intervals of q* (``interval="percentile"``,
what was reported before) ignore that a sweep of 6–12 points estimates its own noise from a few
degrees of freedom and covered the true exponent only 83–91 % of the time on synthetic laws;
the studentized ones keep 95 % (``scigpt.sweep.calibration``, ``benchmarks/fit_calibration.py``).

The sweep's x values are chosen by its config, not sampled, and the noise is in the loss, which
is what a residual bootstrap models. It also keeps every replicate identifiable: resampling
whole points (``bootstrap="pairs"``) from a sweep of 6–12 points often leaves 2–3 distinct x
values, too few for an offset fit (such replicates are skipped and counted in
``n_boot_failed``). Pairs are the safer choice when the law itself is in doubt (residual
bootstrap assumes it is right). Each replicate is refitted from the full-data optimum and the
other local optima found on the full data. The compute-optimal allocation's intervals per
budget remain percentile intervals of the replicates (their coverage is not measured).

Every fit needs more points than parameters (one degree of freedom at least, so the noise and
the intervals are defined) and enough distinct values per axis; bad inputs (NaN, infinities,
values ≤ 0, mismatched lengths) raise ``ValueError`` naming what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from scipy.stats import t as student_t

ArrayLike = Sequence[float] | np.ndarray
Bootstrap = Literal["residual", "pairs"]
Interval = Literal["studentized", "percentile"]
Model = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

# Starting grids. One axis: E as a fraction of the smallest loss, then (log A, α) by linear
# least squares of log(L − E) on log x. Joint: α, β and E fractions, then (A, B) by least squares.
_E_FRACTIONS = (0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99)
_JOINT_EXPONENTS = (0.1, 0.25, 0.5, 0.8)
_JOINT_E_FRACTIONS = (0.0, 0.5, 0.8, 0.95)
_TINY = 1e-4  # a start "without offset" puts E (or a term's coefficient) at 1e-4 of the loss
_BOOT_STARTS = 6  # starts per bootstrap replicate: the optimum + other local optima


# ---- input checks --------------------------------------------------------------------------------


def _check_1d(name: str, values: Any, *, positive: bool = True) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not numbers ({e})") from None
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence, got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(
            f"{name}: {int(bad.sum())} value(s) are NaN or infinite "
            f"(first at index {int(np.flatnonzero(bad)[0])})"
        )
    if positive and (a <= 0).any():
        i = int(np.flatnonzero(a <= 0)[0])
        raise ValueError(
            f"{name}: every value must be > 0 (power laws are fitted on log axes); "
            f"index {i} is {a[i]!r}"
        )
    return a


def _check_same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"lengths differ: {lengths}")
    return next(iter(lengths.values()))


def _check_options(
    n_boot: int, level: float, bootstrap: str, huber_delta: float | None, interval: str
) -> None:
    if interval not in ("studentized", "percentile"):
        raise ValueError(f"interval must be 'studentized' or 'percentile', got {interval!r}")
    if int(n_boot) != n_boot or n_boot < 0:
        raise ValueError(f"n_boot must be an integer ≥ 0, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if bootstrap not in ("residual", "pairs"):
        raise ValueError(f"bootstrap must be 'residual' or 'pairs', got {bootstrap!r}")
    if huber_delta is not None and not huber_delta > 0:
        raise ValueError(f"huber_delta must be > 0 (or None: adaptive), got {huber_delta!r}")


# ---- the optimiser -------------------------------------------------------------------------------


def _huber_sum(r: np.ndarray, w: np.ndarray, delta: float) -> np.ndarray:
    """Σ_i w_i·Huber_δ(r_i) along the last axis (δ = inf: half the weighted sum of squares)."""
    if math.isinf(delta):
        return 0.5 * np.sum(w * r * r, axis=-1)
    a = np.abs(r)
    return np.sum(w * np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)), axis=-1)


def _solve(
    model: Model,
    theta0: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray,
    delta: float,
    *,
    max_iter: int = 500,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise Σ_i w_bi·Huber_δ(model(θ_b)_i − target_bi) for every problem b at once.

    ``model(θ (B, p)) -> (prediction (B, n), Jacobian (B, n, p))``. Levenberg–Marquardt on the
    IRLS system: H = JᵀWJ, g = JᵀWr with W = w·min(1, δ/|r|) (g is the exact gradient of the
    Huber objective); step −(H + λ·diag H)⁻¹g, accepted only if the objective does not grow.
    Returns (θ (B, p), objective (B,)); problems that never had a finite objective get inf.
    """
    theta = np.array(theta0, dtype=float, copy=True)
    n_prob, p = theta.shape
    eye = np.eye(p)
    with np.errstate(all="ignore"):
        pred, jac = model(theta)
        r = pred - target
        f = _huber_sum(r, weights, delta)
        f = np.where(np.isfinite(f), f, np.inf)
        lam = np.full(n_prob, 1e-3)
        active = np.isfinite(f)
        for _ in range(max_iter):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            jb, rb, wb = jac[idx], r[idx], weights[idx]
            w = wb * np.minimum(1.0, delta / np.maximum(np.abs(rb), 1e-300))
            jw = jb * w[..., None]
            hess = np.einsum("bni,bnj->bij", jw, jb)
            grad = np.einsum("bni,bn->bi", jw, rb)
            d = np.diagonal(hess, axis1=1, axis2=2)
            floor = 1e-9 * d.max(axis=1, keepdims=True) + 1e-12
            damped = hess + (lam[idx, None] * np.maximum(d, floor))[:, :, None] * eye
            try:
                step = -np.linalg.solve(damped, grad[..., None])[..., 0]
            except np.linalg.LinAlgError:
                step = -(np.linalg.pinv(damped) @ grad[..., None])[..., 0]
            new = theta[idx] + step
            pred_n, jac_n = model(new)
            r_n = pred_n - target[idx]
            f_n = _huber_sum(r_n, wb, delta)
            ok = np.isfinite(f_n) & (f_n <= f[idx]) & np.isfinite(new).all(axis=1)
            acc, rej = idx[ok], idx[~ok]
            decrease = f[acc] - f_n[ok]
            tiny_step = np.max(np.abs(step[ok]) / (1.0 + np.abs(new[ok])), axis=1) < 1e-11
            converged = tiny_step | (decrease <= 1e-13 * f[acc])
            theta[acc], r[acc], jac[acc], f[acc] = new[ok], r_n[ok], jac_n[ok], f_n[ok]
            lam[acc] = np.maximum(lam[acc] / 3.0, 1e-12)
            lam[rej] *= 4.0
            active[acc[converged]] = False
            active[rej[lam[rej] > 1e12]] = False  # no descent direction left: a minimum
    return theta, f


def _lse(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log Σ_k exp(terms_k) over axis 0, and the softmax weights (its partial derivatives)."""
    m = terms.max(axis=0)
    ex = np.exp(terms - m)
    s = ex.sum(axis=0)
    return m + np.log(s), ex / s


def _power_model(uc: np.ndarray, offset: bool) -> Model:
    """θ = (a, α[, e]): log L̂ = LSE(a − α·uc, e) (or a − α·uc), uc = log x − mean(log x)."""

    def model(th: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, alpha = th[:, 0:1], th[:, 1:2]
        t1 = a - alpha * uc
        if not offset:
            jac = np.stack([np.ones_like(t1), np.broadcast_to(-uc, t1.shape)], axis=-1)
            return t1, jac
        pred, s = _lse(np.stack([t1, np.broadcast_to(th[:, 2:3], t1.shape)]))
        return pred, np.stack([s[0], -uc * s[0], s[1]], axis=-1)

    return model


def _joint_model(uc: np.ndarray, vc: np.ndarray) -> Model:
    """θ = (e, a, α, b, β): log L̂ = LSE(e, a − α·uc, b − β·vc) (uc, vc: centred log N, log D)."""

    def model(th: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e, a, alpha, b, beta = (th[:, i : i + 1] for i in range(5))
        t1, t2 = a - alpha * uc, b - beta * vc
        pred, s = _lse(np.stack([np.broadcast_to(e, t1.shape), t1, t2]))
        return pred, np.stack([s[0], s[1], -uc * s[1], s[2], -vc * s[2]], axis=-1)

    return model


def _distinct_rows(rows: np.ndarray, k: int) -> np.ndarray:
    """The first k rows (already sorted best first) that differ from every kept row."""
    kept: list[np.ndarray] = []
    for row in rows:
        if not np.isfinite(row).all():
            continue
        if all(np.max(np.abs(row - q) / (1.0 + np.abs(q))) > 1e-3 for q in kept):
            kept.append(row)
        if len(kept) == k:
            break
    return np.array(kept)


@dataclass
class _Core:
    theta: np.ndarray  # (p,) the optimum
    delta: float
    residual_scale: float  # rms log-residual with n − p degrees of freedom
    boot: np.ndarray  # (n_ok, p) bootstrap optima
    n_boot_failed: int
    cov: np.ndarray  # (p, p) Gauss–Newton covariance of the optimum
    boot_cov: np.ndarray  # (n_ok, p, p) the same for each bootstrap optimum


def _covariance(model: Model, theta: np.ndarray, target: np.ndarray, weights: np.ndarray):
    """s²·(JᵀWJ)⁻¹ at each θ (B, p) for targets and weights (B, n), s² = Σw·r² / (Σw − p):
    the Gauss–Newton (asymptotic least-squares) covariance. A direction the data do not
    determine (E → 0) gets a huge variance, not an error: a tiny ridge keeps it invertible."""
    pred, jac = model(theta)
    p = theta.shape[1]
    r = pred - target
    dof = np.maximum(weights.sum(axis=1) - p, 1.0)
    s2 = np.sum(weights * r * r, axis=1) / dof
    h = np.einsum("bni,bn,bnj->bij", jac, weights, jac)
    ridge = 1e-13 * np.trace(h, axis1=1, axis2=2)[:, None, None] * np.eye(p) + 1e-300
    with np.errstate(all="ignore"):
        inv = np.linalg.inv(h + ridge)
    return s2[:, None, None] * inv


def _fit_core(
    model: Model,
    starts: np.ndarray,
    z: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    huber_delta: float | None,
    bootstrap: str,
    identifiable: Callable[[np.ndarray], bool],
) -> _Core:
    """Multi-start fit of log-losses ``z`` (least squares first, for δ and a start), then the
    bootstrap. ``identifiable(mask of points kept)`` rejects degenerate pairs-bootstrap draws."""
    n, p = z.size, starts.shape[1]
    ones = np.ones((len(starts), n))
    th_ls, f_ls = _solve(model, starts, np.broadcast_to(z, ones.shape), ones, math.inf)
    best_ls = th_ls[int(np.argmin(f_ls))]
    r_ls = z - model(best_ls[None])[0][0]
    if huber_delta is None:
        mad = 1.4826 * float(np.median(np.abs(r_ls - np.median(r_ls))))
        delta = max(1.345 * mad * math.sqrt(n / (n - p)), 1e-8)
    else:
        delta = float(huber_delta)

    all_starts = np.vstack([best_ls[None], th_ls, starts])
    ones = np.ones((len(all_starts), n))
    th, f = _solve(model, all_starts, np.broadcast_to(z, ones.shape), ones, delta)
    order = np.argsort(f)
    theta = th[order[0]]
    if not np.isfinite(f[order[0]]):
        raise ValueError("the fit did not converge from any starting point")
    pred = model(theta[None])[0][0]
    res = z - pred
    scale = float(np.sqrt(np.sum(res**2) / (n - p)))

    cov = _covariance(model, theta[None], z[None], np.ones((1, n)))[0]
    if n_boot == 0:
        return _Core(theta, delta, scale, np.empty((0, p)), 0, cov, np.empty((0, p, p)))
    rng = np.random.default_rng(seed)
    boot_starts = _distinct_rows(th[order], _BOOT_STARTS)
    k = len(boot_starts)
    if bootstrap == "residual":
        centred = (res - res.mean()) * math.sqrt(n / (n - p))
        targets = pred + centred[rng.integers(0, n, size=(n_boot, n))]
        weights = np.ones((n_boot, n))
        usable = np.ones(n_boot, dtype=bool)
    else:
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
        targets = np.broadcast_to(z, (n_boot, n))
        usable = np.array([identifiable(wi > 0) for wi in weights])
    targets, weights = targets[usable], weights[usable]
    m = len(targets)
    boot, boot_cov = np.empty((0, p)), np.empty((0, p, p))
    if m:
        th_b, f_b = _solve(
            model,
            np.tile(boot_starts, (m, 1)),
            np.repeat(targets, k, axis=0),
            np.repeat(weights, k, axis=0),
            delta,
        )
        f_b = f_b.reshape(m, k)
        pick = np.argmin(f_b, axis=1)
        boot = th_b.reshape(m, k, p)[np.arange(m), pick]
        ok = np.isfinite(f_b[np.arange(m), pick]) & np.isfinite(boot).all(axis=1)
        boot = boot[ok]
        boot_cov = _covariance(model, boot, targets[ok], weights[ok])
    return _Core(theta, delta, scale, boot, n_boot - len(boot), cov, boot_cov)


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if s.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(s, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


def _value_and_se(natural, theta: np.ndarray, cov: np.ndarray, logs: tuple[str, ...]):
    """Every natural quantity at θ (B, p) on its interval scale (log for the positive ones in
    ``logs``) and its delta-method standard error from ``cov`` (B, p, p); gradients by forward
    differences of ``natural``."""

    def scaled(th: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(all="ignore"):
            return {k: (np.log(v) if k in logs else v) for k, v in natural(th).items()}

    base = scaled(theta)
    grads = {k: np.empty(theta.shape) for k in base}
    for j in range(theta.shape[1]):
        h = 1e-6 * (1.0 + np.abs(theta[:, j]))
        moved = theta.copy()
        moved[:, j] += h
        for k, v in scaled(moved).items():
            with np.errstate(all="ignore"):
                grads[k][:, j] = (v - base[k]) / h
    with np.errstate(all="ignore"):
        se = {k: np.sqrt(np.einsum("bi,bij,bj->b", g, cov, g)) for k, g in grads.items()}
    return base, se


def _studentized(core, natural, level: float, logs: tuple[str, ...]):
    """Bootstrap-t intervals (Efron & Tibshirani 1993, ch. 12; Davison & Hinkley 1997, §5.2):
    t*_b = (q*_b − q̂)/se*_b over the replicates, interval [q̂ − t*_(1−a)·se, q̂ − t*_(a)·se]
    with a = (1 − level)/2, on the log scale for positive quantities. Replicates whose t* is
    not finite are left out of that quantity's quantiles."""
    est, se = _value_and_se(natural, core.theta[None], core.cov[None], logs)
    rep, rep_se = _value_and_se(natural, core.boot, core.boot_cov, logs)
    ci = {}
    for k in est:
        with np.errstate(all="ignore"):
            t = (rep[k] - est[k][0]) / rep_se[k]
        lo_t, hi_t = _percentiles(t, level)
        lo, hi = est[k][0] - hi_t * se[k][0], est[k][0] - lo_t * se[k][0]
        if k in logs:
            with np.errstate(all="ignore"):
                lo, hi = np.exp(lo), np.exp(hi)
        ci[k] = (float(lo), float(hi)) if np.isfinite([lo, hi]).all() else (math.nan, math.nan)
    return ci


def _summarise(core, natural, level: float, n_boot: int, interval: str, logs: tuple[str, ...] = ()):
    """A fit core's values and bootstrap samples in natural parameters, their intervals
    (studentized or percentile; NaN without a bootstrap) and the note on unusable replicates."""
    values = {k: float(v) for k, v in natural(core.theta).items()}
    samples = natural(core.boot)
    if not (n_boot and len(core.boot)):
        ci = {k: (math.nan, math.nan) for k in values}
    elif interval == "studentized":
        ci = _studentized(core, natural, level, logs)
    else:
        ci = {k: _percentiles(samples[k], level) for k in values}
    notes = []
    if core.n_boot_failed:
        notes.append(f"{core.n_boot_failed} of {n_boot} bootstrap replicates were unusable")
    return values, samples, ci, notes


def _g(v: float) -> str:
    return f"{v:.4g}"


def _with_ci(value: float, ci: tuple[float, float]) -> str:
    if not all(math.isfinite(c) for c in ci):
        return _g(value)
    return f"{_g(value)} [{_g(ci[0])}, {_g(ci[1])}]"


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


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
