"""The estimator behind every scaling-law fit (``scigpt.sweep.laws``): input checks, a batched
robust optimiser, Gauss–Newton covariances and studentized bootstrap intervals.

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
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

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
