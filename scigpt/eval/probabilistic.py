"""Probabilistic scores of ensemble forecasts, for grids and series alike (one module).

Every function takes the truth ``obs`` and the ensemble ``ens`` whose axis ``member_axis`` holds
the M members; ``obs`` has the shape of ``ens`` without that axis — (N, V, H, W) grids, (N, V, T)
series, anything. Truth that is NaN is left out of every mean and count (as in gridded.py).
``weights`` (optional) broadcasts against ``obs`` — e.g. latitude weights of shape (H, 1) for
(N, V, H, W) — and the means are ``Σ w a / Σ w``. Everything is computed in float64.

Definitions (M members x_1..x_M, truth y, weighted mean ⟨·⟩ over all non-member axes):

* **CRPS**, the *fair* (unbiased) ensemble estimator WeatherBench 2 uses (Zamo & Naveau 2018;
  Ferro 2014): ``CRPS = (1/M) Σ_i |x_i − y| − 1/(2M(M−1)) Σ_{i,j} |x_i − x_j|``, elementwise.
  It equals ``scoringrules.crps_ensemble(..., estimator="fair")``; properscoring and
  scoringrules' default divide the second sum by 2M² instead (biased: it rewards small ensembles).
  The double sum is evaluated in O(M log M) from the sorted members:
  ``Σ_{i,j} |x_i − x_j| = 2 Σ_k (2k − M − 1) x_(k)``.
* **Ensemble-mean RMSE** (skill): ``sqrt⟨(x̄ − y)²⟩``, x̄ the member mean (square root last).
* **Spread–skill ratio** (WeatherBench 2, Rasp et al. 2024 §4.2; Fortin et al. 2014):
  ``SSR = sqrt((M+1)/M) · sqrt⟨s²⟩ / sqrt⟨(x̄ − y)²⟩`` with s² the member variance (ddof = 1).
  For a perfectly reliable ensemble (y and the x_i exchangeable) E(x̄ − y)² = σ²(M+1)/M and
  E s² = σ², so the factor makes SSR → 1 for any M; < 1 is over-confident, > 1 under-confident.
  ``correction=False`` drops the factor (as WeatherBench-X's ``SpreadSkillRatio``).
* **Rank histogram** (Talagrand; WB2 ``RankHistogram`` with ``break_ties_randomly=True``): the
  rank of y is the number of members below it, 0..M, counted over all points into M+1 bins. A
  truth equal to k members takes a rank drawn uniformly from the k+1 tied positions, so a
  degenerate ensemble that hits the truth does not pile into one bin.

Ensemble diagnostics for regression (squared loss), after Theisen et al. 2023, "When are
ensembles really effective?" (NeurIPS; their classification originals use the 0-1 loss, majority
vote and the disagreement rate P(h(x) ≠ h'(x))):

* ``avg_member_error``  E_m = (1/M) Σ_m ⟨(x_m − y)²⟩   (average member MSE; classification:
  the members' average error rate E_h[L(h)])
* ``ensemble_error``    E_ens = ⟨(x̄ − y)²⟩            (MSE of the ensemble mean; classification:
  the majority vote's error rate)
* ``ambiguity``         A = E_m − E_ens = ⟨(1/M) Σ_m (x_m − x̄)²⟩ ≥ 0 (Krogh & Vedelsby 1995:
  exact for squared loss, so averaging never hurts; with the 0-1 loss the vote can be worse)
* ``improvement_rate``  EIR = A / E_m   (Theisen's ensemble improvement rate (E_h L(h) −
  L(h_MV)) / E_h L(h)), in [0, 1] for squared loss
* ``disagreement_error_ratio``  DER = D / E_m with D = mean over member pairs m ≠ m' of
  ⟨(x_m − x_m')²⟩ = 2M/(M−1) · A (Theisen's E_{h,h'} D(h, h') / E_h L(h), the squared
  difference replacing the disagreement indicator). Theisen et al. find ensembles help when
  DER is large (≳ 1) — members disagree about as much as they err.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from scigpt.atomic import atomic_write


def _split(obs: np.ndarray, ens: np.ndarray, member_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(obs, ens) as float64 with the members moved to axis 0; shapes checked."""
    ens = np.moveaxis(np.asarray(ens, dtype=np.float64), member_axis, 0)
    obs = np.asarray(obs, dtype=np.float64)
    if ens.shape[1:] != obs.shape:
        raise ValueError(
            f"ensemble shape without member axis {member_axis} is {ens.shape[1:]}, truth shape is "
            f"{obs.shape}. Fix: pass member_axis= the axis that holds the members, or align them."
        )
    if ens.shape[0] < 1:
        raise ValueError("the ensemble has no members. Fix: pass at least one member.")
    return obs, ens


def _need_two(m: int, what: str) -> None:
    if m < 2:
        raise ValueError(f"{what} needs at least 2 members, got {m}. Fix: use a larger ensemble.")


def _wmean(a: np.ndarray, obs: np.ndarray, weights: np.ndarray | None) -> float:
    """Weighted mean of ``a`` (shape of obs) over points where obs is finite."""
    w = (
        np.ones(obs.shape)
        if weights is None
        else np.broadcast_to(np.asarray(weights, float), obs.shape)
    )
    w = np.where(np.isnan(obs), 0.0, w)
    total = w.sum()
    if total <= 0:
        raise ValueError("no truth to score: every point is NaN or has zero weight.")
    return float(np.sum(np.where(w > 0, a, 0.0) * w) / total)


def crps_ensemble(obs: np.ndarray, ens: np.ndarray, member_axis: int = 0) -> np.ndarray:
    """Fair (unbiased) ensemble CRPS, elementwise: an array of ``obs``'s shape (float64).

    ``(1/M) Σ_i |x_i − y| − 1/(2M(M−1)) Σ_{i,j} |x_i − x_j|``; needs M ≥ 2 members.
    """
    obs, ens = _split(obs, ens, member_axis)
    m = ens.shape[0]
    _need_two(m, "the fair CRPS")
    skill = np.abs(ens - obs[None]).mean(axis=0)
    xs = np.sort(ens, axis=0)
    k = np.arange(1, m + 1, dtype=np.float64).reshape((m,) + (1,) * obs.ndim)
    pair_sum = 2.0 * np.sum((2.0 * k - m - 1.0) * xs, axis=0)  # Σ_{i,j} |x_i − x_j|
    return skill - pair_sum / (2.0 * m * (m - 1))


def ensemble_mean_rmse(
    obs: np.ndarray, ens: np.ndarray, member_axis: int = 0, weights: np.ndarray | None = None
) -> float:
    """``sqrt⟨(x̄ − y)²⟩``: RMSE of the member mean, weighted mean first, root last."""
    obs, ens = _split(obs, ens, member_axis)
    return float(np.sqrt(_wmean((ens.mean(axis=0) - obs) ** 2, obs, weights)))


def ensemble_spread(
    obs: np.ndarray, ens: np.ndarray, member_axis: int = 0, weights: np.ndarray | None = None
) -> float:
    """``sqrt⟨s²⟩``, s² the member variance with ddof = 1 (WB2's ensemble spread)."""
    obs, ens = _split(obs, ens, member_axis)
    _need_two(ens.shape[0], "the ensemble spread")
    return float(np.sqrt(_wmean(ens.var(axis=0, ddof=1), obs, weights)))


def spread_skill_ratio(
    obs: np.ndarray,
    ens: np.ndarray,
    member_axis: int = 0,
    weights: np.ndarray | None = None,
    *,
    correction: bool = True,
) -> float:
    """``sqrt((M+1)/M) · spread / ensemble-mean RMSE`` (WB2 / Fortin et al. 2014); 1 = reliable.

    ``correction=False`` leaves out the sqrt((M+1)/M) finite-ensemble factor.
    """
    m = np.shape(ens)[member_axis]
    spread = ensemble_spread(obs, ens, member_axis, weights)
    skill = ensemble_mean_rmse(obs, ens, member_axis, weights)
    if skill == 0:
        raise ValueError("the ensemble mean equals the truth everywhere: the ratio is undefined.")
    factor = np.sqrt((m + 1) / m) if correction else 1.0
    return float(factor * spread / skill)


def rank_histogram(
    obs: np.ndarray,
    ens: np.ndarray,
    member_axis: int = 0,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Counts (int64, M+1 bins) of the truth's rank among the members, over all points.

    Rank = number of members strictly below the truth; a truth tied with k members takes a
    rank uniform in the k+1 tied positions (WB2's random tie-break). ``rng``: a Generator or a
    seed; None uses seed 0, so a report is reproducible. NaN truth is skipped.
    """
    obs, ens = _split(obs, ens, member_axis)
    m = ens.shape[0]
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng or 0)
    keep = ~np.isnan(obs)
    below = np.sum(ens < obs[None], axis=0)[keep]
    tied = np.sum(ens == obs[None], axis=0)[keep]
    ranks = below + np.floor(rng.random(below.shape) * (tied + 1)).astype(np.int64)
    return np.bincount(ranks, minlength=m + 1).astype(np.int64)


def ensemble_diagnostics(
    obs: np.ndarray, ens: np.ndarray, member_axis: int = 0, weights: np.ndarray | None = None
) -> dict[str, float]:
    """Theisen et al. 2023's ensemble diagnostics for squared loss (see the module docstring).

    Keys: ``avg_member_error``, ``ensemble_error``, ``ambiguity``, ``improvement_rate``,
    ``disagreement_error_ratio`` (errors are MSEs; the ratios are dimensionless).
    """
    obs, ens = _split(obs, ens, member_axis)
    m = ens.shape[0]
    _need_two(m, "the ensemble diagnostics")
    avg_member = _wmean(np.mean((ens - obs[None]) ** 2, axis=0), obs, weights)
    ensemble = _wmean((ens.mean(axis=0) - obs) ** 2, obs, weights)
    ambiguity = _wmean(ens.var(axis=0, ddof=0), obs, weights)  # = avg_member − ensemble
    if avg_member == 0:
        raise ValueError("every member equals the truth: the ratios are undefined.")
    return {
        "avg_member_error": avg_member,
        "ensemble_error": ensemble,
        "ambiguity": ambiguity,
        "improvement_rate": ambiguity / avg_member,
        "disagreement_error_ratio": 2.0 * m / (m - 1) * ambiguity / avg_member,
    }


def probabilistic_scores(
    obs: np.ndarray, ens: np.ndarray, member_axis: int = 0, weights: np.ndarray | None = None
) -> dict[str, float]:
    """All scalar scores of one (obs, ens) pair: the table row of ``scigpt evaluate``.

    Keys: ``crps`` (weighted mean of the fair CRPS), ``ensemble_mean_rmse``, ``spread``,
    ``spread_skill_ratio`` and the keys of :func:`ensemble_diagnostics`.
    """
    obs_, _ = _split(obs, ens, member_axis)
    out = {
        "crps": _wmean(crps_ensemble(obs, ens, member_axis), obs_, weights),
        "ensemble_mean_rmse": ensemble_mean_rmse(obs, ens, member_axis, weights),
        "spread": ensemble_spread(obs, ens, member_axis, weights),
        "spread_skill_ratio": spread_skill_ratio(obs, ens, member_axis, weights),
    }
    out.update(ensemble_diagnostics(obs, ens, member_axis, weights))
    return out


def plot_rank_histogram(counts: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """Bar chart of a rank histogram (relative frequencies, the flat 1/(M+1) line); atomic."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2 or counts.sum() <= 0:
        raise ValueError(
            f"counts must be M+1 >= 2 non-negative bins with a positive sum, got {counts}"
        )
    path = Path(path)
    freq = counts / counts.sum()
    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.add_subplot()
    ax.bar(np.arange(counts.size), freq, width=0.9, color="tab:blue")
    ax.axhline(1.0 / counts.size, color="k", linestyle="--", linewidth=1, label="reliable")
    ax.set_xlabel(f"rank of truth among {counts.size - 1} members")
    ax.set_ylabel("relative frequency")
    ax.set_title(title or "rank histogram")
    ax.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    fmt = path.suffix.lstrip(".") or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110))
    return path
