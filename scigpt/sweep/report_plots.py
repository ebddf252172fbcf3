"""The sweep report's plots: loss against compute (with the Pareto frontier and its fit), against
model size per data size and against data per model size, with the fitted laws
(``scigpt.sweep.report`` computes what they show).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from scigpt.atomic import atomic_write
from scigpt.sweep.fit import FrontierFit, PowerLawFit


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: clusters and CI have no display
    import matplotlib.pyplot as plt

    return plt


def ci_text(fit_ci: tuple[float, float]) -> str:
    """`` [lo, hi]`` of an interval, or nothing where it is not finite."""
    lo, hi = fit_ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return f" [{lo:.3g}, {hi:.3g}]"


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _fit_label(fit: PowerLawFit) -> str:
    return f"α = {fit.exponent:.3g}{ci_text(fit.ci['alpha'])}"


def write_plots(out_dir: Path, **k: Any) -> dict[str, Path]:
    """The three PNGs of the report in ``out_dir`` (``k``: what ``write_report`` computed)."""
    plt = _plt()
    from matplotlib.colors import LogNorm

    label, unit = k["label"], k["data_unit"]
    n_v, c_v, l_v = k["n_v"], k["c_v"], k["l_v"]
    paths: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(6.6, 4.4), dpi=120)
    if len(c_v):
        norm = LogNorm(n_v.min(), n_v.max()) if n_v.min() < n_v.max() else None
        sc = ax.scatter(c_v, l_v, c=n_v, cmap="viridis", norm=norm, s=30, edgecolors="k",
                        linewidths=0.4, zorder=3, label="points")  # fmt: skip
        fig.colorbar(sc, ax=ax).set_label("model parameters N")
        idx = k["front_idx"]
        ax.plot(c_v[idx], l_v[idx], "-", color="0.25", lw=1.2, zorder=2, label="Pareto frontier")
        frontier: FrontierFit | None = k["frontier"]
        if frontier is not None:
            lo, hi = frontier.fit.x_range
            cc = np.geomspace(lo, hi, 100)
            ax.plot(cc, frontier.predict(cc), "--", color="C3", lw=1.4, zorder=4,
                    label=f"frontier fit L = {frontier.fit.formula('C')}, "
                    f"{_fit_label(frontier.fit)}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no points with finite, positive N, D, C and loss")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(label)
    ax.set_title("Loss vs training compute (colour: model size)")
    ax.grid(alpha=0.3, which="both")
    paths["loss_vs_compute"] = _save(fig, out_dir / "loss_vs_compute.png")

    for name, groups, xlabel, line, title in (
        ("loss_vs_params", k["by_data"], "model parameters N", f"D = {{:.3g}} {unit}",
         "Loss vs model size, one line per data size"),
        ("loss_vs_data", k["by_params"], f"unique training data D ({unit})", "N = {:.3g}",
         "Loss vs data, one line per model size"),
    ):  # fmt: skip
        fig, ax = plt.subplots(figsize=(6.6, 4.4), dpi=120)
        cmap = plt.get_cmap("plasma")
        for j, (value, g) in enumerate(groups.items()):
            color = cmap(0.85 * j / max(len(groups) - 1, 1))
            fit: PowerLawFit | None = g["fit"]
            text = line.format(value) + (f" (fit {_fit_label(fit)})" if fit else "")
            ax.plot(g["x"], g["y"], "o-", color=color, lw=1.2, ms=5, label=text)
            if fit is not None:
                xx = np.geomspace(g["x"].min(), g["x"].max(), 100)
                ax.plot(xx, fit.predict(xx), "--", color=color, lw=1.0)
        if groups:
            ax.set_xscale("log")
            ax.set_yscale("log")
            any_fit = any(g["fit"] is not None for g in groups.values())
            title_ = "dashed: power-law fits" if any_fit else "no fits (too few points)"
            ax.legend(fontsize=7, title=title_, title_fontsize=7)
        else:
            _empty(ax, "no points with finite, positive N, D, C and loss")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        paths[name] = _save(fig, out_dir / f"{name}.png")
    return paths
