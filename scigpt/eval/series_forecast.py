"""Scores, baselines, tables and plots of probabilistic station-series forecasts (model-free).

A forecast is issued at N issue times (the last context day) for leads 1..H days. Arrays:
``obs`` (N, H) the truth, ``context`` (N, Lc) what the forecaster saw, ``samples`` (N, H, S)
sample paths (NaN-padded members allowed) or ``point`` (N, H). NaN is missing and is left out of
every mean; everything is float64.

Metrics (Chronos, Ansari et al. 2024 §5.2, plus hydrology's NSE/KGE):

* **pinball** ρ_τ(y, q) = τ·max(y − q, 0) + (1 − τ)·max(q − y, 0).
* **WQL**, weighted quantile loss: (1/|T|) Σ_τ 2 Σ_i ρ_τ(y_i, q_τ,i) / Σ_i |y_i| over the valid
  points i; a point forecast uses the same value for every level (then WQL = Σ|q − y| / Σ|y|
  for levels symmetric about 0.5).
* **MASE**: |forecast − y| / s, s = mean |c_t − c_{t−m}| over the window's context (seasonal
  naive in-sample error, Hyndman & Koehler 2006), averaged over windows with a positive s.
* **CRPS**: the fair ensemble estimator of ``scigpt.eval.probabilistic.crps_ensemble`` on each
  window's finite members (ragged ensembles scored window by window); |point − y| for a point.
* **NSE / KGE** of the median (or point) over the N issue times at each lead
  (``scigpt.eval.series``).

Baselines a hydrologist would use (``baselines``): persistence (lead 1), day-of-year
climatology from the training period only (leads >= 7) and seasonal naive (one year before).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from scigpt.atomic import atomic_write, atomic_write_text
from scigpt.eval.probabilistic import crps_ensemble
from scigpt.eval.series import kge, nse
from scigpt.tables import Table

__all__ = [
    "LEVELS",
    "LONG_LEAD",
    "baselines",
    "compare_table",
    "crps_ragged",
    "forecast_windows",
    "mase_scale",
    "noleap_dayofyear",
    "pinball",
    "plot_fan",
    "plot_scores_by_lead",
    "score",
    "verdict",
    "wql",
    "write_tables",
]

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # Chronos's WQL levels
LONG_LEAD = 7  # leads >= 7 days: where climatology is the baseline to beat
METRICS = ("mase", "wql", "crps", "nse", "kge")
_DAY = np.timedelta64(1, "D")


# ---- metrics ---------------------------------------------------------------------------------
def pinball(y: np.ndarray, q_pred: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Elementwise pinball loss ρ_τ(y, q): ``q_pred`` (..., Q) holds the quantiles at ``levels``
    on its last axis, ``y`` (...) the truth; returns (..., Q), NaN where either is NaN."""
    lv = _levels(levels)
    q = np.asarray(q_pred, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if q.shape[:-1] != y.shape or q.shape[-1] != lv.size:
        raise ValueError(
            f"q_pred shape {q.shape} must be the truth's {y.shape} plus a last axis of "
            f"{lv.size} levels. Fix: put the quantile levels on the last axis."
        )
    u = y[..., None] - q  # (..., Q)
    return np.where(u >= 0, lv * u, (lv - 1.0) * u)


def wql(obs: np.ndarray, qpred: np.ndarray, levels: Sequence[float]) -> float:
    """Chronos's weighted quantile loss (1/|T|) Σ_τ 2 Σ ρ_τ / Σ |y| over the points where the
    truth and every quantile are finite; NaN when none are or Σ |y| = 0."""
    loss = pinball(obs, qpred, levels)  # (..., Q)
    ok = np.isfinite(loss).all(axis=-1)
    denom = np.abs(np.asarray(obs, dtype=np.float64)[ok]).sum()
    if not ok.any() or denom <= 0:
        return float("nan")
    return float(np.mean(2.0 * loss[ok].sum(axis=0) / denom))


def mase_scale(context: np.ndarray, season: int = 1) -> np.ndarray:
    """Per window (N,): mean |c_t − c_{t−season}| over the context (N, Lc), NaN pairs skipped;
    a zero or undefined scale is NaN, so that window is left out of MASE."""
    c = np.asarray(context, dtype=np.float64)
    if c.ndim != 2 or season < 1 or c.shape[1] <= season:
        raise ValueError(
            f"context shape {c.shape} with season {season}: need (N, Lc) with Lc > season >= 1. "
            "Fix: pass longer contexts or a shorter season."
        )
    d = np.abs(c[:, season:] - c[:, :-season])
    n = np.isfinite(d).sum(axis=1)
    s = np.where(n > 0, np.nansum(d, axis=1) / np.maximum(n, 1), np.nan)
    return np.where(s > 0, s, np.nan)


def crps_ragged(obs: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Fair CRPS (``crps_ensemble``) of ensembles whose last axis is NaN-padded: each point
    (shape of ``obs``) is scored on its own finite members; NaN where fewer than 2 or obs NaN."""
    y = np.asarray(obs, dtype=np.float64)
    x = np.sort(np.asarray(samples, dtype=np.float64), axis=-1)  # NaNs sort last
    if x.shape[:-1] != y.shape:
        raise ValueError(f"samples shape {x.shape} must be the truth's {y.shape} plus members")
    m = np.isfinite(x).sum(axis=-1)
    out = np.full(y.shape, np.nan)
    # One call per distinct member count: the first m sorted members are exactly the finite ones.
    for k in np.unique(m[(m >= 2) & np.isfinite(y)]):
        sel = (m == k) & np.isfinite(y)
        out[sel] = crps_ensemble(y[sel], x[sel][:, :k], member_axis=-1)
    return out


def _levels(levels: Sequence[float]) -> np.ndarray:
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    if lv.size == 0 or np.any((lv <= 0) | (lv >= 1)):
        raise ValueError(f"quantile levels must lie in (0, 1), got {list(lv)}")
    return lv


def _quiet(fn, *a, **k):
    # nanmedian / nanquantile / nanmean of an all-NaN slice is NaN, which is what we want.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*a, **k)


def score(
    obs: np.ndarray,
    *,
    context: np.ndarray,
    samples: np.ndarray | None = None,
    point: np.ndarray | None = None,
    season: int = 1,
    levels: Sequence[float] = LEVELS,
    quantiles: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per-lead scores of one forecaster: ``samples`` (N, H, S) or ``point`` (N, H) vs ``obs``.

    Returns arrays (H,) ``mase``, ``wql``, ``crps``, ``nse``, ``kge``, ``n`` (pairs where truth and
    median are finite; CRPS of samples also needs 2 finite members, MASE a positive scale),
    ``quantiles`` (N, H, Q) at ``levels`` (0.5 among them), with ``samples``: the forecast's
    exact quantiles (a model's, computed from its distribution) — the median and WQL use them
    instead of the samples' (whose sampling noise would count against the model), the CRPS the
    samples.
    ``leads`` (1..H), ``kind`` ("samples"/"point"), and aggregates ``<metric>_lead1`` and
    ``<metric>_lead7plus`` (the mean of the per-lead values over leads >= 7; NaN if H < 7).
    """
    if (samples is None) == (point is None):
        raise ValueError("pass exactly one of samples= (N, H, S) or point= (N, H)")
    y = np.asarray(obs, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"obs must be (N, H), got shape {y.shape}")
    lv = _levels(levels)
    scale = mase_scale(context, season)
    if scale.shape[0] != y.shape[0]:
        raise ValueError(f"context has {scale.shape[0]} windows, obs {y.shape[0]}")
    if samples is not None:
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim != 3 or x.shape[:2] != y.shape:
            raise ValueError(f"samples shape {x.shape} must be (N, H, S) with (N, H) = {y.shape}")
        if quantiles is not None:
            qs = np.asarray(quantiles, dtype=np.float64)
            if qs.shape != (*y.shape, lv.size) or not np.any(np.isclose(lv, 0.5)):
                raise ValueError(f"quantiles shape {qs.shape} must be (N, H, {lv.size}) at "
                                 f"levels {lv.tolist()} including 0.5")  # fmt: skip
            med = qs[..., int(np.argmin(np.abs(lv - 0.5)))]
        else:
            med = _quiet(np.nanmedian, x, axis=-1)
            qs = np.moveaxis(_quiet(np.nanquantile, x, lv, axis=-1), 0, -1)  # (N, H, Q)
        crps = crps_ragged(y, x)
    else:
        med = np.asarray(point, dtype=np.float64)
        if med.shape != y.shape:
            raise ValueError(f"point shape {med.shape} must equal obs shape {y.shape}")
        qs = np.repeat(med[..., None], lv.size, axis=-1)
        crps = np.abs(med - y)
    ok = np.isfinite(y) & np.isfinite(med)
    ratio = np.abs(med - y) / scale[:, None]
    h = y.shape[1]
    kind = "point" if samples is None else "samples"
    out: dict[str, Any] = {"leads": np.arange(1, h + 1), "kind": kind, "n": ok.sum(axis=0)}
    out["mase"] = np.array([_quiet(np.nanmean, ratio[ok[:, j], j]) for j in range(h)])
    truth = np.where(ok, y, np.nan)  # WQL over the same pairs as the other scores
    out["wql"] = np.array([wql(truth[:, j], qs[:, j], lv) for j in range(h)])
    out["crps"] = np.array([_quiet(np.nanmean, crps[ok[:, j], j]) for j in range(h)])
    out["nse"] = np.array([nse(med[:, j], y[:, j]) for j in range(h)])
    out["kge"] = np.array([kge(med[:, j], y[:, j])["kge"] for j in range(h)])
    for m in METRICS:
        out[f"{m}_lead1"] = float(out[m][0])
        long = out[m][LONG_LEAD - 1 :]
        out[f"{m}_lead{LONG_LEAD}plus"] = float(_quiet(np.nanmean, long)) if long.size else np.nan
    return out


# ---- baselines -------------------------------------------------------------------------------
def noleap_dayofyear(times: np.ndarray) -> np.ndarray:
    """Day of year 1..365 on a no-leap calendar: Feb 29 counts as Feb 28 (59) and later days
    of a leap year shift down by one, so a date keeps its number across years."""
    t = np.asarray(times, dtype="datetime64[D]")
    year = t.astype("datetime64[Y]")
    doy = (t - year).astype(np.int64) + 1
    y = year.astype(np.int64) + 1970
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    return np.where(leap & (doy >= 60), doy - 1, doy)


def baselines(
    values: np.ndarray,
    times: np.ndarray,
    issue_idx: np.ndarray,
    horizon: int,
    *,
    train_end: np.datetime64 | str,
    season_days: int = 365,
    clim_halfwidth: int = 7,
) -> dict[str, np.ndarray]:
    """Reference forecasts from one station's daily series ``values`` (T,) at ``times`` (T,),
    issued on days ``issue_idx`` (N,) for leads 1..``horizon``.

    * ``persistence`` (N, H): the value on the issue day.
    * ``seasonal_naive`` (N, H): the value ``season_days`` before the target day (NaN before the
      series, or after the issue day when the lead exceeds a season: that would be look-ahead).
    * ``climatology`` (N, H, M): every finite value of days <= ``train_end`` (training data only)
      whose no-leap day of year is within ±``clim_halfwidth`` days (circular over 365) of the
      target's, NaN-padded to the largest pool M. Its point forecast is the nanmedian.
    """
    v = np.asarray(values, dtype=np.float64)
    t = np.asarray(times).astype("datetime64[ns]")
    idx = np.asarray(issue_idx, dtype=np.int64).reshape(-1)
    if v.ndim != 1 or t.shape != v.shape:
        raise ValueError(f"values {v.shape} and times {t.shape} must be the same 1-D length")
    if t.size > 1 and np.any(np.diff(t) != _DAY.astype("timedelta64[ns]")):
        raise ValueError("times must be a regular daily series. Fix: reindex to daily, NaN gaps.")
    if horizon < 1 or clim_halfwidth < 0 or season_days < 1:
        raise ValueError(
            f"horizon {horizon}, clim_halfwidth {clim_halfwidth}, season_days {season_days}: "
            "need horizon >= 1, halfwidth >= 0, season >= 1"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= v.size):
        raise ValueError(f"issue_idx must lie in [0, {v.size}), got {idx.min()}..{idx.max()}")
    lead = np.arange(1, horizon + 1)
    target = idx[:, None] + lead[None, :]  # (N, H) index of the target day
    persistence = np.repeat(v[idx][:, None], horizon, axis=1)
    src = target - season_days
    ok = (src >= 0) & (src <= idx[:, None])  # never a day after the issue day
    seasonal = np.where(ok, v[np.clip(src, 0, v.size - 1)], np.nan)

    end = np.datetime64(train_end).astype("datetime64[ns]")
    train = (t <= end) & np.isfinite(v)
    pool_v, pool_d = v[train], noleap_dayofyear(t[train])
    t_doy = noleap_dayofyear(t[idx][:, None] + lead[None, :] * _DAY)  # (N, H), dates past T too
    days, inv = np.unique(t_doy, return_inverse=True)
    gap = np.abs(days[:, None] - pool_d[None, :]) % 365  # (D, P)
    near = np.minimum(gap, 365 - gap) <= clim_halfwidth
    m = int(near.sum(axis=1).max()) if days.size and pool_v.size else 0
    table = np.full((days.size, max(m, 1)), np.nan)
    for i in range(days.size):
        members = pool_v[near[i]]
        table[i, : members.size] = members
    climatology = table[inv.reshape(t_doy.shape)]  # (N, H, M)
    return {"persistence": persistence, "seasonal_naive": seasonal, "climatology": climatology}


def forecast_windows(
    values: np.ndarray, issue_idx: np.ndarray, context_len: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """(context (N, Lc), obs (N, H)) of ``values`` around each issue day; NaN off the series."""
    v = np.concatenate([np.full(context_len, np.nan), np.asarray(values, np.float64),
                        np.full(horizon, np.nan)])  # fmt: skip
    idx = np.asarray(issue_idx, dtype=np.int64).reshape(-1, 1) + context_len
    ctx = v[idx + np.arange(-context_len + 1, 1)[None, :]]
    return ctx, v[idx + np.arange(1, horizon + 1)[None, :]]


# ---- tables and verdict ----------------------------------------------------------------------
def compare_table(
    station: str, channel: str, scores: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per forecaster and lead: station, channel, forecaster, kind, lead, n, metrics."""
    rows = []
    for name, s in scores.items():
        for j, lead in enumerate(s["leads"]):
            row = {"station": station, "channel": channel, "forecaster": name,
                   "kind": s["kind"], "lead": int(lead), "n": int(s["n"][j])}  # fmt: skip
            row.update({m: float(s[m][j]) for m in METRICS})
            rows.append(row)
    return rows


def verdict(scores: Mapping[str, Mapping[str, Any]], model_name: str) -> dict[str, Any]:
    """Does ``model_name`` beat persistence at lead 1 and climatology over leads >= 7, in MASE
    and in CRPS (lower is better; NaN never beats)? Each entry: ``beats``, ``model``,
    ``baseline``; ``all`` is True when all four hold."""
    for k in (model_name, "persistence", "climatology"):
        if k not in scores:
            raise ValueError(
                f"verdict needs scores of {k!r}; have {sorted(scores)}. Fix: score the baselines."
            )
    out: dict[str, Any] = {}
    for base, agg in (("persistence", "lead1"), ("climatology", f"lead{LONG_LEAD}plus")):
        for m in ("mase", "crps"):
            a, b = float(scores[model_name][f"{m}_{agg}"]), float(scores[base][f"{m}_{agg}"])
            out[f"{m}_vs_{base}_{agg}"] = {"beats": bool(a < b), "model": a, "baseline": b}
    out["all"] = all(v["beats"] for v in out.values())
    return out


def write_tables(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """``series_forecast_scores.csv`` (full precision) and ``.md`` in ``out_dir``, atomically."""
    if not rows:
        raise ValueError("no rows to write. Fix: score at least one forecaster.")
    out_dir = Path(out_dir)
    table = Table.of(rows, right=("lead", "n", *METRICS))
    csv_path = out_dir / "series_forecast_scores.csv"
    md_path = csv_path.with_suffix(".md")
    atomic_write_text(csv_path, table.csv())
    atomic_write_text(md_path, table.markdown() + "\n")
    return {"csv": csv_path, "md": md_path}


# ---- plots -----------------------------------------------------------------------------------
def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110))
    return path


def _level_curve(quantiles: np.ndarray, lv: np.ndarray, tau: float) -> np.ndarray | None:
    """The quantile curve at ``tau``: exact if given, else linear in the level between the two
    neighbouring levels (an approximation for drawing only); None outside the given levels."""
    hit = np.isclose(lv, tau)
    if hit.any():
        return quantiles[np.argmax(hit)]
    if tau < lv.min() or tau > lv.max():
        return None
    order = np.argsort(lv)
    q = quantiles[order]
    return np.array([np.interp(tau, lv[order], q[:, i]) for i in range(q.shape[1])])


def plot_fan(
    times: np.ndarray,
    obs: np.ndarray | None,
    context_times: np.ndarray,
    context: np.ndarray,
    quantiles: np.ndarray,
    levels: Sequence[float],
    path: str | Path,
    title: str = "",
) -> Path:
    """Fan chart of one forecast: context, median, 10–90 % and 25–75 % bands (levels missing
    from ``levels`` are interpolated linearly between neighbours), observations; atomic.
    ``quantiles`` (Q, H) at ``levels``, ``times`` (H,), ``context`` (Lc,) at ``context_times``."""
    lv = _levels(levels)
    q = np.asarray(quantiles, dtype=np.float64)
    if q.shape != (lv.size, len(times)):
        raise ValueError(f"quantiles shape {q.shape} must be (Q={lv.size}, H={len(times)})")
    med = _level_curve(q, lv, 0.5)
    if med is None:
        raise ValueError(f"levels {list(lv)} do not bracket the median 0.5")
    fig = Figure(figsize=(8, 3.4))
    ax = fig.add_subplot()
    ax.plot(context_times, context, color="k", linewidth=1, label="context")
    for lo, hi, alpha in ((0.1, 0.9, 0.2), (0.25, 0.75, 0.4)):
        a, b = _level_curve(q, lv, lo), _level_curve(q, lv, hi)
        if a is not None and b is not None:
            ax.fill_between(times, a, b, color="tab:blue", alpha=alpha, linewidth=0,
                            label=f"{int(lo * 100)}–{int(hi * 100)} %")  # fmt: skip
    ax.plot(times, med, color="tab:blue", linewidth=1.5, label="median")
    if obs is not None:
        ax.plot(times, obs, color="tab:red", linewidth=1, marker=".", markersize=3,
                label="observed")  # fmt: skip
    ax.set_title(title or "forecast")
    ax.legend(loc="upper left", fontsize=7, ncol=5)
    fig.autofmt_xdate()
    fig.tight_layout()
    return _save(fig, path)


def plot_scores_by_lead(
    scores: Mapping[str, Mapping[str, Any]], metric: str, path: str | Path, *, title: str = ""
) -> Path:
    """``metric`` (one of mase, wql, crps, nse, kge) against lead for every forecaster (point
    forecasts dashed); atomic."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    if not scores:
        raise ValueError("no scores to plot")
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.add_subplot()
    for name, s in scores.items():
        ls = "--" if s.get("kind") == "point" else "-"
        ax.plot(s["leads"], s[metric], linestyle=ls, marker=".", label=name)
    ax.set_xlabel("lead (days)")
    ax.set_ylabel(metric.upper())
    ax.set_title(title or f"{metric.upper()} by lead")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
