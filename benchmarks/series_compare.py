"""Binned (Chronos-style) vs patch series tokens, pretrained on a mixture vs trained from scratch:
the comparison of issue 26, one command.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/series_compare.py
    # options: --out DIR (tables, plot), --work DIR (runs; a rerun continues there),
    #          --fractions 1.0 (a subset of the transfer files' fractions), --tokenizers bins,
#          --steps 4 (a smoke test of the pipeline)

What it measures: for each tokenizer, ``scigpt transfer benchmarks/series/transfer-<tok>.yaml``
(``scigpt.sweep.transfer.run``): pretrain on a mixture of a daily GHCN station (Algiers,
1909-1937) and a half-hourly FLUXNET site (Tharandt, 1998), export, then forecast CAMELS-US
daily discharge 14 days ahead (``configs/series/camels-<tok>.yaml``) fine-tuned from the package
and from scratch with the same model, steps, optimiser and data, at each training-data fraction
and seed (3 seeds). From each downstream run's test record it tabulates, per tokenizer × arm ×
fraction, the mean ± std (ddof 1) over seeds of CRPS and MASE at lead 1 and at leads >= 7, with
persistence's scores on the same test windows for reference (they do not depend on the model).
Lower is better throughout. Writes ``series_compare.csv``, ``series_compare.md`` and
``series_compare.png`` to ``--out``; each experiment's own transfer report stays in ``--work``.

Limits: CAMELS is the shipped sample, one basin (01022500) and three years (train 2000-2001,
test June-December 2002: ~200 overlapping windows, so the scores are strongly correlated); the
pretraining mixture is two stations; the model is vit-tiny, CPU-sized (pretraining 600 steps, the
downstream runs as configs/series/camels-<tok>.yaml). This shows
the machinery and the sign of an effect at this scale, not a result about Chronos-scale
pretraining (Ansari et al. 2024 pretrain on ~10^10 tokens).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from tqdm import tqdm

from scigpt.atomic import atomic_write_text
from scigpt.rundir import RunDir
from scigpt.sweep import transfer as tr
from scigpt.sweep.runner import read_status
from scigpt.tables import Table

HERE = Path(__file__).resolve().parent
TOKENIZERS = ("bins", "patch")
CHANNEL = "streamflow"
# (test record key suffix, column label): the scores tabulated, model's and persistence's
SCORES = (
    ("crps_lead1", "CRPS lead 1"),
    ("mase_lead1", "MASE lead 1"),
    ("crps_lead7plus", "CRPS leads 7+"),
    ("mase_lead7plus", "MASE leads 7+"),
)


def run_experiments(
    tokenizers: list[str], work: Path, fractions: list[float] | None, steps: int | None = None
) -> dict[str, Path]:
    """Run (or continue) each tokenizer's transfer experiment in ``work/<tok>``; returns those
    folders. ``fractions``: run only these of the transfer file's fractions; ``steps``: train
    every run this many steps (a smoke test; use its own ``work``)."""
    outs = {}
    for tok in tqdm(tokenizers, desc="series_compare", unit="experiment"):
        t = tr.Transfer.load(HERE / "series" / f"transfer-{tok}.yaml")
        if fractions is not None:
            missing = sorted(set(fractions) - set(t.spec.downstream.fractions))
            if missing:
                raise ValueError(
                    f"--fractions {missing} are not in {t.path.name}'s fractions "
                    f"{t.spec.downstream.fractions}: pick from those"
                )
            down = t.spec.downstream.model_copy(update={"fractions": fractions})
            t.spec = t.spec.model_copy(update={"downstream": down})
        if steps is not None:
            short = {"schedule.steps": steps, "schedule.warmup_steps": 1, "eval.every": steps}
            t.spec = t.spec.model_copy(update={
                "pretrain": t.spec.pretrain.model_copy(update={"set": short}),
                "downstream": t.spec.downstream.model_copy(update={"set": short}),
            })  # fmt: skip
        outs[tok] = work / tok
        # subprocesses read the pretraining config's relative data paths against its folder
        tr.run(t, outs[tok], env={**os.environ, "OMP_NUM_THREADS": "1"})
    return outs


def _test_record(run_dir: Path) -> dict[str, Any]:
    recs = [r for r in RunDir(run_dir).metrics() if r["kind"] == "test"]
    if not recs:
        raise RuntimeError(f"{run_dir}: finished but has no test record in metrics.jsonl")
    return recs[-1]


def collect(outs: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per finished downstream run: tokenizer, arm, fraction, seed, the scores."""
    rows = []
    for tok, out in outs.items():
        spec = tr.Transfer.load(out / "transfer.yaml").spec
        for f in spec.downstream.fractions:
            for seed in spec.downstream.seeds:
                for arm in tr.ARMS:
                    name = tr.point_name(arm, f, seed)
                    if read_status(out, name)["state"] != "done":
                        continue
                    test = _test_record(out / "runs" / name)
                    row = {"tokenizer": tok, "arm": arm, "fraction": f, "seed": seed,
                           "train_samples": test["train_samples"]}  # fmt: skip
                    for who in ("model", "persistence"):
                        for key, _ in SCORES:
                            row[f"{who}_{key}"] = test[f"{CHANNEL}/{who}_{key}"]
                    rows.append(row)
    return rows


def _mean_std(vals: list[float]) -> tuple[float, float]:
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
    return mean, std


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (tokenizer, arm, fraction): mean and std over seeds of every score."""
    out = []
    for tok, arm, f in sorted({(r["tokenizer"], r["arm"], r["fraction"]) for r in rows}):
        sub = [r for r in rows if (r["tokenizer"], r["arm"], r["fraction"]) == (tok, arm, f)]
        row = {"tokenizer": tok, "arm": arm, "fraction": f,
               "train_samples": sub[0]["train_samples"], "n_seeds": len(sub)}  # fmt: skip
        for who in ("model", "persistence"):
            for key, _ in SCORES:
                row[f"{who}_{key}_mean"], row[f"{who}_{key}_std"] = _mean_std(
                    [r[f"{who}_{key}"] for r in sub]
                )
        out.append(row)
    return out


def markdown(summary: list[dict[str, Any]], command: str) -> str:
    head = ["tokenizer", "arm", "fraction", "train samples", "seeds"]
    head += [label for _, label in SCORES]
    lines = [
        "# Series forecasting: binned vs patch tokens, pretrained vs scratch (CAMELS 01022500)",
        "",
        f"`{command}` ({datetime.date.today().isoformat()}). Test scores of daily discharge "
        "(m³/s; MASE unitless), mean ± std over seeds, lower is better. Persistence (last "
        "observed value) on the same windows for reference.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in summary:
        cells = [r["tokenizer"], r["arm"], f"{r['fraction']:g}", str(r["train_samples"]),
                 str(r["n_seeds"])]  # fmt: skip
        cells += [f"{r[f'model_{k}_mean']:.3f} ± {r[f'model_{k}_std']:.3f}" for k, _ in SCORES]
        lines.append("| " + " | ".join(cells) + " |")
    if summary:
        # persistence does not depend on the model: every run scores the same test windows
        p = summary[0]
        cells = ["persistence", "", "", "", ""]
        cells += [f"{p[f'persistence_{k}_mean']:.3f}" for k, _ in SCORES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], path: Path) -> Path:
    """CRPS at lead 1 and at leads >= 7 per (tokenizer, arm), grouped by fraction, with the
    seed std as error bars and persistence as a dashed line."""
    fig = Figure(figsize=(9, 3.8))
    axes = fig.subplots(1, 2)
    groups = sorted({(r["tokenizer"], r["arm"]) for r in summary})
    fracs = sorted({r["fraction"] for r in summary})
    width = 0.8 / max(len(groups), 1)
    colours = {
        ("bins", "pretrained"): "tab:blue",
        ("bins", "scratch"): "lightsteelblue",
        ("patch", "pretrained"): "tab:orange",
        ("patch", "scratch"): "navajowhite",
    }
    for ax, key, label in zip(axes, ("crps_lead1", "crps_lead7plus"),
                              ("CRPS lead 1", "CRPS leads 7+"), strict=True):  # fmt: skip
        for g, (tok, arm) in enumerate(groups):
            sub = {r["fraction"]: r for r in summary if (r["tokenizer"], r["arm"]) == (tok, arm)}
            xs = [i + (g - (len(groups) - 1) / 2) * width for i, f in enumerate(fracs) if f in sub]
            ys = [sub[f][f"model_{key}_mean"] for f in fracs if f in sub]
            es = [sub[f][f"model_{key}_std"] for f in fracs if f in sub]
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=f"{tok} {arm}",
                   color=colours.get((tok, arm)), edgecolor="k", linewidth=0.5)  # fmt: skip
        ax.axhline(summary[0][f"persistence_{key}_mean"], color="k", ls="--", lw=1,
                   label="persistence")  # fmt: skip
        ax.set_xticks(range(len(fracs)), [f"{f:g}" for f in fracs])
        ax.set_xlabel("training-data fraction")
        ax.set_ylabel(f"{label} (m³/s)")
        ax.set_title(f"CAMELS 01022500 discharge: {label}", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "series_compare")
    ap.add_argument("--work", type=Path, default=HERE.parent / "runs" / "series_compare")
    ap.add_argument("--fractions", type=float, nargs="+", default=None)
    ap.add_argument("--tokenizers", nargs="+", choices=TOKENIZERS, default=list(TOKENIZERS))
    ap.add_argument("--steps", type=int, default=None, help="smoke test: steps of every run")
    args = ap.parse_args()
    outs = run_experiments(args.tokenizers, args.work.resolve(), args.fractions, args.steps)
    rows = collect(outs)
    if not rows:
        raise SystemExit(f"no finished downstream runs under {args.work}: see its logs/")
    summary = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "OMP_NUM_THREADS=1 python benchmarks/series_compare.py" + "".join(
        f" {a}" for a in sys.argv[1:]
    )
    atomic_write_text(args.out / "series_compare.csv", Table.of(summary).csv())
    atomic_write_text(args.out / "series_compare_points.csv", Table.of(rows).csv())
    md = markdown(summary, command)
    atomic_write_text(args.out / "series_compare.md", md)
    plot(summary, args.out / "series_compare.png")
    print(md)
    print(f"wrote {args.out}/series_compare.{{csv,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
