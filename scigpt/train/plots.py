"""PNG figures for a run: loss curve and forecast-vs-truth maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def plot_loss(records: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    steps = [r["step"] for r in records if r.get("kind") == "train"]
    loss = [r["loss"] for r in records if r.get("kind") == "train"]
    fig = Figure(figsize=(6, 3.5), dpi=120)  # no pyplot: no global state, no display
    ax = fig.subplots()
    ax.plot(steps, loss, lw=1.2, label="train loss (area-weighted MSE, normalised)")
    ev = [r for r in records if r.get("kind") == "test"]
    if ev:
        ax.axhline(
            ev[-1]["persistence_mse"], color="grey", ls="--", lw=1, label="persistence (test)"
        )
        ax.plot([ev[-1]["step"]], [ev[-1]["model_mse"]], "o", color="C3", label="model (test)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "training loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out)
    return out


def plot_forecast_map(
    *,
    lat: np.ndarray,
    lon: np.ndarray,
    current: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    variable: str,
    units: str,
    valid_time: str,
    out: Path,
) -> Path:
    """Four panels: current state, truth, forecast, forecast error (physical units)."""
    fig = Figure(figsize=(14, 3.4), dpi=110)
    axes = fig.subplots(1, 4, sharey=True)
    vmin, vmax = float(np.nanmin(truth)), float(np.nanmax(truth))
    extent = (float(lon.min()), float(lon.max()), float(lat.min()), float(lat.max()))
    origin = "upper" if lat[0] > lat[-1] else "lower"
    panels = [("input (t)", current), ("truth (t+1)", truth), ("forecast (t+1)", pred)]
    for ax, (name, arr) in zip(axes[:3], panels, strict=True):
        im = ax.imshow(arr, extent=extent, origin=origin, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes[:3], shrink=0.85, label=f"{variable} [{units}]")
    err = pred - truth
    lim = float(np.nanmax(np.abs(err))) or 1.0
    im2 = axes[3].imshow(err, extent=extent, origin=origin, vmin=-lim, vmax=lim, cmap="RdBu_r")
    axes[3].set_title("forecast - truth", fontsize=9)
    fig.colorbar(im2, ax=axes[3], shrink=0.85)
    for ax in axes:
        ax.set_xlabel("lon [°E]")
    axes[0].set_ylabel("lat [°N]")
    fig.suptitle(f"{variable}, valid {valid_time}", fontsize=10)
    fig.savefig(out, bbox_inches="tight")
    return out
