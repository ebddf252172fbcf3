"""The files of a diagnosis: per-layer table (CSV + Markdown), summary JSON, plots; and the
summary as Markdown (the model card's section). Every file is written atomically."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scigpt.atomic import atomic_write, atomic_write_text
from scigpt.diagnostics.htsr import LayerDiagnostics, layer_table, summary_markdown
from scigpt.diagnostics.plots import plot_alpha_by_depth, plot_alpha_over_steps, plot_esd
from scigpt.tables import Table

ESD_PLOTS = 4  # layers whose ESD is plotted when none are named


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def esd_layers(layers: Sequence[LayerDiagnostics], chosen: Sequence[str] = ()) -> list[str]:
    """The layers whose ESD is plotted: ``chosen`` (each must exist and be fitted), else the
    first and last fitted layers and those of the smallest and largest α."""
    ok = [d for d in layers if d.status == "ok" and math.isfinite(d.alpha)]
    names = [d.name for d in ok]
    if chosen:
        missing = [c for c in chosen if c not in names]
        if missing:
            raise ValueError(
                f"--layer {', '.join(missing)}: no fitted weight matrix of that name; fitted: "
                f"{', '.join(names) or 'none'}"
            )
        return list(chosen)
    if not ok:
        return []
    by_alpha = sorted(ok, key=lambda d: d.alpha)
    picks = [ok[0].name, ok[-1].name, by_alpha[0].name, by_alpha[-1].name]
    return list(dict.fromkeys(picks))[:ESD_PLOTS]


def write_report(
    out: Path,
    layers: Sequence[LayerDiagnostics],
    summary: Mapping[str, Any],
    *,
    history: Mapping[int, Mapping[str, float]] | None = None,
    chosen: Sequence[str] = (),
) -> list[Path]:
    """Write ``layers.csv``, ``layers.md``, ``summary.json``, ``esd_<layer>.png``,
    ``alpha_by_depth.png`` and, with a ``history`` of several steps (step → layer → α),
    ``alpha_over_steps.csv`` and ``.png``. Returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = layer_table(layers)
    written = []

    def text(name: str, body: str) -> None:
        atomic_write_text(out / name, body)
        written.append(out / name)

    def png(name: str, draw) -> None:
        atomic_write(out / name, draw)
        written.append(out / name)

    text("layers.csv", table.csv())
    text(
        "layers.md",
        "# Weight diagnostics (HTSR)\n\n" + summary_markdown(summary) + "\n\n"
        + table.markdown() + "\n",
    )  # fmt: skip
    text("summary.json", json.dumps(dict(summary), indent=2, allow_nan=False) + "\n")
    by_name = {d.name: d for d in layers}
    for name in esd_layers(layers, chosen):
        png(f"esd_{_slug(name)}.png", lambda tmp, d=by_name[name]: plot_esd(d, tmp))
    if any(d.status == "ok" for d in layers):
        png("alpha_by_depth.png", lambda tmp: plot_alpha_by_depth(layers, tmp))
    if history and len(history) > 1:
        names = sorted({n for s in history for n in history[s]})
        steps = Table(["step", *names], [{"step": s, **history[s]} for s in sorted(history)])
        text("alpha_over_steps.csv", steps.csv())
        png("alpha_over_steps.png", lambda tmp: plot_alpha_over_steps(history, tmp))
    return written
