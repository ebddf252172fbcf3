"""PNG figures of the HTSR diagnostics: a layer's ESD with its fitted tail, α by depth, α over
training steps. ``matplotlib.figure.Figure`` only (no pyplot: no global state, no display)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from scigpt.diagnostics.htsr import ALPHA_RANGE, LayerDiagnostics


def plot_esd(d: LayerDiagnostics, out: Path) -> Path:
    """The ESD of one layer on log-log axes (log-binned density) with the fitted power law
    from xmin, and the MP bulk edge."""
    if d.evals is None:
        raise ValueError(f"{d.name}: eigenvalues were not kept (analyze with keep_evals=True)")
    lam = d.evals[d.evals > 0]
    fig = Figure(figsize=(5, 3.6), dpi=120)
    ax = fig.subplots()
    nbins = int(np.clip(len(lam) // 3, 5, 40))
    bins = np.logspace(math.log10(lam.min()), math.log10(lam.max()), nbins + 1)
    dens, edges = np.histogram(lam, bins=bins, density=True)
    centres = np.sqrt(edges[1:] * edges[:-1])
    keep = dens > 0
    ax.plot(centres[keep], dens[keep], "o", ms=3, label="ESD (log bins)")
    if math.isfinite(d.alpha):
        x = np.logspace(math.log10(d.xmin), math.log10(lam.max()), 50)
        share = d.num_tail / len(lam)  # the tail's mass in the whole density
        pdf = share * (d.alpha - 1) / d.xmin * (x / d.xmin) ** (-d.alpha)
        ax.plot(x, pdf, "-", color="C3", label=f"power law α={d.alpha:.2f} (n={d.num_tail})")
        ax.axvline(d.xmin, color="C3", ls=":", lw=1, label="xmin")
    if math.isfinite(d.mp_edge):
        ax.axvline(d.mp_edge, color="grey", ls="--", lw=1, label="MP bulk edge")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue λ of WᵀW")
    ax.set_ylabel("density")
    ax.set_title(d.name, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def _band(ax) -> None:
    lo, hi = ALPHA_RANGE
    ax.axhspan(lo, hi, color="C2", alpha=0.08, label=f"α in {lo:g}–{hi:g}")


def plot_alpha_by_depth(layers: Sequence[LayerDiagnostics], out: Path) -> Path:
    """α of every fitted layer in the model's order."""
    ok = [d for d in layers if d.status == "ok" and math.isfinite(d.alpha)]
    fig = Figure(figsize=(max(5, 0.25 * len(ok) + 2), 3.6), dpi=120)
    ax = fig.subplots()
    _band(ax)
    ax.plot(range(len(ok)), [d.alpha for d in ok], "o-", ms=4, lw=1)
    ax.set_xticks(range(len(ok)))
    ax.set_xticklabels([d.name.removesuffix(".weight") for d in ok], rotation=90, fontsize=6)
    ax.set_ylabel("α")
    ax.set_title("power-law exponent α by depth", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def plot_alpha_over_steps(history: Mapping[int, Mapping[str, float]], out: Path) -> Path:
    """α of each layer (thin lines) and their mean (thick) at each checkpoint's step."""
    steps = sorted(history)
    names = sorted({n for s in steps for n in history[s]})
    fig = Figure(figsize=(5.5, 3.6), dpi=120)
    ax = fig.subplots()
    _band(ax)
    for n in names:
        ax.plot(steps, [history[s].get(n, math.nan) for s in steps], lw=0.6, alpha=0.5)
    mean = [np.nanmean(list(history[s].values())) if history[s] else math.nan for s in steps]
    ax.plot(steps, mean, "o-", color="k", lw=2, label="mean α")
    ax.set_xlabel("step")
    ax.set_ylabel("α")
    ax.set_title("α over training", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out
