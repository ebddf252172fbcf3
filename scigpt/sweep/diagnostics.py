"""The seed's claim, measured on a sweep: do weight diagnostics (HTSR) rank its runs as their test
loss does?

For every finished point, the HTSR summary (``scigpt.diagnostics``) of the checkpoint its test
scored (``checkpoint_step`` of the test record, read shard by shard whatever the layout); then,
for mean α and mean α-weighted each, over the points that have a fitted value:

* Spearman's rank correlation ρ with the test loss and n;
* a two-sided permutation p-value of ρ (the loss's ranks permuted against the diagnostic's:
  exact, all n! orders, up to n = 8; else ``N_PERM`` random orders, (hits + 1) / (N_PERM + 1));
* a bootstrap 95 % percentile interval of ρ (pairs resampled, ``N_BOOT`` times).

It is reported whatever sign it comes out with (Martin & Mahoney's claim is that smaller α goes
with better models, so ρ > 0 with the loss; on a small CPU sweep it may well not hold). A point
whose matrices are all smaller than the fit's minimum (50 eigenvalues) has no α and is listed
but left out of n. Writes ``diagnostics.csv``, ``diagnostics.json`` and
``diagnostics_vs_loss.png`` beside the sweep report, and returns the section that ends
``report.md``.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from scigpt.atomic import atomic_write, atomic_write_text
from scigpt.diagnostics.htsr import analyze_state, summarize
from scigpt.export.writer import checkpoint_weights
from scigpt.rundir import RunDir
from scigpt.tables import Table, fmt
from scigpt.train.checkpoint import tag_of

DIAGNOSTICS = ("mean_alpha", "mean_alpha_weighted")
N_PERM = 20_000
N_BOOT = 2_000
EXACT_UP_TO = 8  # n! orders: 40 320 at n = 8


def tested_checkpoint(run: Path) -> Path:
    """The checkpoint folder the run's test record scored."""
    recs = [r for r in RunDir(run).metrics() if r["kind"] == "test"]
    if not recs:
        raise ValueError(f"{run}: no test record (the run has not finished)")
    return RunDir(run).checkpoints / tag_of(int(recs[-1]["checkpoint_step"]))


def point_summary(run: Path, *, workers: int = 1) -> dict[str, Any]:
    """The HTSR summary of a run's tested checkpoint (LoRA adapters folded in)."""
    weights = checkpoint_weights(tested_checkpoint(run))
    return summarize(analyze_state(weights, workers=workers, traps=False))


def rank_correlation(x: Sequence[float], y: Sequence[float], *, seed: int = 0) -> dict[str, Any]:
    """Spearman's ρ of (x, y) with n, a permutation p-value and a bootstrap 95 % interval;
    ``rho`` is None with fewer than 3 pairs (``why`` says so)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 3:
        return {"n": n, "rho": None, "p_value": None, "ci95": None,
                "why": f"{n} points with a fitted value (a rank correlation needs 3)"}  # fmt: skip
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": n, "rho": None, "p_value": None, "ci95": None,
                "why": "one of the two is constant over the points"}  # fmt: skip

    def rho(a: np.ndarray, b: np.ndarray) -> float:
        return float(stats.spearmanr(a, b).statistic)

    # Permutation p-value: ρ is the Pearson correlation of the ranks, so permuting y's ranks
    # against x's gives the null distribution; exact over all n! orders up to EXACT_UP_TO.
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    exact = n <= EXACT_UP_TO
    if exact:
        perms = np.array(list(itertools.permutations(ry)))
    else:
        perms = np.random.default_rng(seed).permuted(np.tile(ry, (N_PERM, 1)), axis=1)
    null = perms @ rx / (np.linalg.norm(rx) * np.linalg.norm(ry))
    observed = float(rx @ ry / (np.linalg.norm(rx) * np.linalg.norm(ry)))
    hits = int(np.sum(np.abs(null) >= abs(observed) - 1e-12))
    p_value = hits / len(perms) if exact else (hits + 1) / (N_PERM + 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(N_BOOT, n))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        boots = np.array([rho(x[i], y[i]) for i in idx])
    boots = boots[np.isfinite(boots)]  # a resample with a constant side has no ρ
    ci = [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]
    return {
        "n": n,
        "rho": float(rho(x, y)),
        "p_value": p_value,
        "p_method": "permutation, " + ("exact (all n! orders)" if exact else f"{N_PERM} random"),
        "ci95": ci,
        "ci_method": f"bootstrap of pairs, {len(boots)} resamples, percentile",
    }


def _plot(points: list[dict[str, Any]], corr: dict[str, dict], label: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DIAGNOSTICS), figsize=(5 * len(DIAGNOSTICS), 4))
    for ax, key in zip(np.atleast_1d(axes), DIAGNOSTICS, strict=True):
        pts = [p for p in points if p[key] is not None]
        ax.scatter([p[key] for p in pts], [p["loss"] for p in pts], color="tab:blue")
        for p in pts:
            ax.annotate(p["name"], (p[key], p["loss"]), fontsize=7, alpha=0.7)
        c = corr[key]
        rho = "n/a" if c["rho"] is None else f"{c['rho']:+.2f}, p = {c['p_value']:.3g}"
        title = f"Spearman ρ = {rho} (n = {c['n']})"
        ax.set(xlabel=key.replace("_", " "), ylabel=label, title=title)
        ax.set_yscale("log")
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out


def diagnose_sweep(
    out: Path, records: Sequence[dict[str, Any]], *, label: str = "test loss", seed: int = 0
) -> tuple[dict[str, Path], str]:
    """HTSR summary of every record's run (``out/runs/NAME``), the rank correlations with the
    loss, their files; returns (files, the Markdown section for report.md)."""
    points = []
    for r in records:
        s = point_summary(out / "runs" / r["name"])
        points.append({"name": r["name"], "loss": float(r["loss"]),
                       "fitted_layers": s["fitted_layers"],
                       **{k: s[k] for k in DIAGNOSTICS}})  # fmt: skip
    corr = {}
    for key in DIAGNOSTICS:
        pts = [p for p in points if p[key] is not None]
        corr[key] = rank_correlation([p[key] for p in pts], [p["loss"] for p in pts], seed=seed)
    table = Table(["name", "loss", "fitted_layers", *DIAGNOSTICS], points)
    files = {"diagnostics_csv": out / "diagnostics.csv",
             "diagnostics_json": out / "diagnostics.json"}  # fmt: skip
    atomic_write_text(files["diagnostics_csv"], table.csv())
    body = {"loss": label, "points": points, "correlation": corr,
            "claim": "HTSR: smaller alpha, better model (rho > 0 with the loss)"}  # fmt: skip
    atomic_write_text(files["diagnostics_json"], json.dumps(body, indent=1, allow_nan=False) + "\n")
    files["diagnostics_plot"] = _plot(points, corr, label, out / "diagnostics_vs_loss.png")
    lines = ["", "## Weight diagnostics (HTSR) against the loss", "",
             f"Spearman's ρ between each point's HTSR summary (its tested checkpoint) and the "
             f"{label}; HTSR expects ρ > 0 (smaller α, better model). Points without a fitted "
             "matrix (all under 50 eigenvalues) are left out of n.", "",
             "| diagnostic | n | ρ | p-value | 95 % interval |",
             "|---|---|---|---|---|"]  # fmt: skip
    for key, c in corr.items():
        if c["rho"] is None:
            lines.append(f"| {key} | {c['n']} | n/a ({c['why']}) | | |")
        else:
            lo, hi = c["ci95"]
            lines.append(f"| {key} | {c['n']} | {c['rho']:+.3f} | {fmt(c['p_value'])} "
                         f"| [{lo:+.2f}, {hi:+.2f}] |")  # fmt: skip
    lines += ["", "Per point: `diagnostics.csv`; plot: `diagnostics_vs_loss.png`.", ""]
    return files, "\n".join(lines)
