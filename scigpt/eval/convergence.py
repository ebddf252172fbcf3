"""The resolution-convergence test of ContinuousNet (Queiruga et al. 2020; Krishnapriyan et al.
2023): did a model learn the continuous problem, or only the grid it was trained on?

Evaluate it on the same physical cases at a sequence of discretisations h (grid spacings or
time steps), measure the error e(h) against each level's reference, and fit e ≈ C h^p by least
squares of log e on log h. A model that is a consistent discretisation of order q converges,
p ≈ q; a model that memorised one grid does not: its error stops decreasing (a plateau at its
own approximation error) or grows off its training grid.

Verdict (``Thresholds``; the levels ordered coarse → fine, the ratios r_i = e_{i+1} / e_i):

- ``diverges``: the last ratio > ``grow_ratio`` (1.1: the error grows by more than 10 % on the
  finest refinement) or the fitted p < −``p_min``;
- ``plateaus``: the last ratio ≥ ``plateau_ratio`` (0.8: the finest refinement cuts the error by
  less than 20 %, a local order below 0.32 for a halving of h);
- ``converges``: every ratio < 1 (errors decreasing), p > ``p_min`` (0.5) and, with three or more
  levels, p − 2 SE(p) > 0 (p clearly above 0);
- ``inconclusive``: anything else (errors that go up and down, too few levels);
- ``exact``: every error is 0 (the model reproduces each reference).

``convergence_study`` is the driver: ``predict(case, level)`` and ``reference(case, level)`` give
arrays at each level (an operator model on PDE cases regenerated at several grids; reanalysis
fields coarsened conservatively; a forecast at several time steps: ``convergence_cases``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from scipy import stats

from scigpt.atomic import atomic_write, atomic_write_text
from scigpt.eval.superres import rfne
from scigpt.tables import Table

VERDICTS = ("converges", "plateaus", "diverges", "inconclusive", "exact")


@dataclass(frozen=True)
class Thresholds:
    """The verdict's thresholds (see the module docstring)."""

    p_min: float = 0.5
    plateau_ratio: float = 0.8
    grow_ratio: float = 1.1

    def __post_init__(self) -> None:
        if not (self.p_min > 0 and 0 < self.plateau_ratio < 1 < self.grow_ratio):
            raise ValueError(
                f"{self}: need p_min > 0 and 0 < plateau_ratio < 1 < grow_ratio "
                "(e.g. the defaults 0.5, 0.8, 1.1)"
            )


def _ordered(h: Sequence[float], e: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """h and e as float arrays ordered coarse → fine (h decreasing), checked."""
    hh = np.asarray(h, dtype=np.float64)
    ee = np.asarray(e, dtype=np.float64)
    if hh.shape != ee.shape or hh.ndim != 1 or hh.size < 2:
        raise ValueError(f"need two or more (h, error) pairs; got h {hh.shape}, errors {ee.shape}")
    if not (np.all(np.isfinite(hh)) and np.all(hh > 0)) or len(set(hh.tolist())) != hh.size:
        raise ValueError(f"spacings h must be distinct positive numbers, got {hh.tolist()}")
    if not (np.all(np.isfinite(ee)) and np.all(ee >= 0)):
        raise ValueError(f"errors must be finite and ≥ 0, got {ee.tolist()}")
    order = np.argsort(-hh)
    return hh[order], ee[order]


def fit_order(h: Sequence[float], e: Sequence[float]) -> dict[str, float]:
    """Least squares of log e = log C + p log h: the observed order ``p``, its standard error
    ``p_se`` and 95 % interval (Student t, n − 2 degrees of freedom; NaN with two levels), ``r2``
    and ``log_c``. Errors must be > 0."""
    hh, ee = _ordered(h, e)
    if np.any(ee <= 0):
        raise ValueError(f"fit_order needs errors > 0, got {ee.tolist()}")
    res = stats.linregress(np.log(hh), np.log(ee))
    n = hh.size
    se = float(res.stderr) if n > 2 else float("nan")
    half = float(stats.t.ppf(0.975, n - 2)) * se if n > 2 else float("nan")
    r2 = float(res.rvalue**2) if n > 2 else 1.0
    return {"p": float(res.slope), "p_se": se, "p_lo": float(res.slope) - half,
            "p_hi": float(res.slope) + half, "r2": r2, "log_c": float(res.intercept),
            "n": n}  # fmt: skip


def pairwise_orders(h: Sequence[float], e: Sequence[float]) -> list[float]:
    """log(e_i / e_{i+1}) / log(h_i / h_{i+1}) between consecutive levels (coarse → fine);
    NaN where an error is 0."""
    hh, ee = _ordered(h, e)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.log(ee[:-1] / ee[1:]) / np.log(hh[:-1] / hh[1:])
    return [float(x) if np.isfinite(x) else float("nan") for x in q]


def verdict(
    h: Sequence[float], e: Sequence[float], thresholds: Thresholds | None = None
) -> tuple[str, str]:
    """(verdict, reason) by the rules of the module docstring."""
    t = thresholds or Thresholds()
    hh, ee = _ordered(h, e)
    if np.all(ee == 0):
        return "exact", "every error is 0"
    if np.any(ee == 0):
        return "inconclusive", f"some errors are 0 and some not: {ee.tolist()}"
    ratios = ee[1:] / ee[:-1]
    fit = fit_order(hh, ee)
    p, se, last = fit["p"], fit["p_se"], float(ratios[-1])
    if last > t.grow_ratio or p < -t.p_min:
        return "diverges", (
            f"the error grows: last ratio {last:.3g} (> {t.grow_ratio:g} diverges) or fitted "
            f"order {p:.3g} < −{t.p_min:g}"
        )
    if last >= t.plateau_ratio:
        return "plateaus", (
            f"the error stops decreasing: the finest refinement's ratio {last:.3g} ≥ "
            f"{t.plateau_ratio:g} (order {p:.3g} over all levels)"
        )
    clear = hh.size < 3 or p - 2 * se > 0
    if np.all(ratios < 1) and p > t.p_min and clear:
        return "converges", f"errors decrease at every level; observed order {p:.3g} ± {se:.2g}"
    return "inconclusive", (
        f"ratios {np.round(ratios, 3).tolist()}, order {p:.3g} ± {se:.2g}: neither a steady "
        "decrease nor a plateau"
    )


def summarise(
    h: Sequence[float], e: Sequence[float], thresholds: Thresholds | None = None
) -> dict[str, Any]:
    """Fit, pairwise orders, ratios and verdict of one error sequence (ordered coarse → fine)."""
    hh, ee = _ordered(h, e)
    v, reason = verdict(hh, ee, thresholds)
    fit = fit_order(hh, ee) if np.all(ee > 0) else None
    return {"h": hh.tolist(), "error": ee.tolist(), "fit": fit,
            "pairwise_orders": pairwise_orders(hh, ee),
            "ratios": [float(r) for r in ee[1:] / np.where(ee[:-1] > 0, ee[:-1], np.nan)],
            "verdict": v, "reason": reason,
            "thresholds": asdict(thresholds or Thresholds())}  # fmt: skip


def convergence_study(
    predict: Callable[[Any, Any], np.ndarray],
    cases: Iterable[Any],
    levels: Sequence[Any],
    reference: Callable[[Any, Any], np.ndarray],
    *,
    error: Callable[[np.ndarray, np.ndarray], float] = rfne,
    spacing: Callable[[Any], float] | None = None,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """Error of ``predict(case, level)`` against ``reference(case, level)`` for every case and
    level (default error: RFNE), averaged over cases per level, then ``summarise``d.

    ``levels``: grid sizes (default spacing h = 1 / level) or time steps (pass ``spacing=float``
    so that h = the step). Returns ``{"rows": [{level, h, error, error_std, n_cases}], **summary}``.
    """
    cases = list(cases)
    if not cases or len(levels) < 2:
        raise ValueError(f"need at least one case and two levels; got {len(cases)}, {levels}")
    spacing = spacing or (lambda level: 1.0 / float(level))
    rows = []
    for level in levels:
        errs = [float(error(predict(c, level), reference(c, level))) for c in cases]
        rows.append({"level": level, "h": float(spacing(level)), "error": float(np.mean(errs)),
                     "error_std": float(np.std(errs)), "n_cases": len(errs)})  # fmt: skip
    rows.sort(key=lambda r: -r["h"])
    summary = summarise([r["h"] for r in rows], [r["error"] for r in rows], thresholds)
    for r, q in zip(rows, [math.nan, *summary["pairwise_orders"]], strict=True):
        r["pairwise_order"] = q
    return {"rows": rows, **summary}


def plot_convergence(
    result: dict[str, Any],
    path: str | Path,
    *,
    ref_slopes: Sequence[float] = (1.0, 2.0),
    xlabel: str = "h",
    title: str = "",
) -> Path:
    """Log-log error against h with the fitted line and reference slopes through the coarsest
    point."""
    path = Path(path)
    h = np.asarray(result["h"])
    e = np.asarray(result["error"])
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    pos = e > 0
    ax.loglog(h[pos], e[pos], "o-", color="k", label="error")
    fit = result.get("fit")
    if fit is not None:
        ax.loglog(h, np.exp(fit["log_c"]) * h ** fit["p"], "--", color="tab:red",
                  label=f"fit p = {fit['p']:.2f}")  # fmt: skip
    if pos.any():
        h0, e0 = h[pos][0], e[pos][0]
        for s in ref_slopes:
            ax.loglog(h, e0 * (h / h0) ** s, ":", color="grey", lw=1)
            ax.annotate(f"∝ h^{s:g}", (h[-1], e0 * (h[-1] / h0) ** s), fontsize=7, color="grey")
    ax.xaxis.set_minor_formatter(NullFormatter())  # the log axis's minor labels overlap
    ax.set_xlabel(xlabel)
    ax.set_ylabel("error")
    ax.legend(fontsize=8)
    ax.set_title(title or f"convergence: {result['verdict']}", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def write_study(
    result: dict[str, Any], out: str | Path, *, stem: str = "convergence", title: str = ""
) -> dict[str, Path]:
    """``STEM.json`` (everything), ``STEM.csv`` (one row per level) and ``STEM.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    text = json.dumps(result, indent=1, default=float, allow_nan=True)
    atomic_write_text(files["json"], text + "\n")
    atomic_write_text(files["csv"], Table.of(result["rows"]).csv())
    plot_convergence(result, files["png"], title=title)
    return files
