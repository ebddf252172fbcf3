"""Downscaling benchmark on Kolmogorov flow: x8 and x16 at 256^2 and 512^2 (SuperBench's
fluid-flow sizes), model vs bicubic vs the SRCNN baseline trained with the same budget, under a
wall-time cap. Each grid's data is generated once (a store shared by its factors); each case
trains ``configs/runs/downscale-ns-x8.yaml``'s model (vit-tiny, patch = grid / 16: 256 tokens)
and scores it with ``scigpt evaluate``'s downscale path. Cases not started before the cap are
listed as skipped. Writes a Markdown table to ``--out`` (docs/multiscale.md's section).

    OMP_NUM_THREADS=2 python benchmarks/superres.py --max-minutes 25
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from scigpt.atomic import atomic_write_text
from scigpt.commands.evaluate import evaluate
from scigpt.config_loader import load_config
from scigpt.train.trainer import train

BASE = Path(__file__).resolve().parents[1] / "configs" / "runs" / "downscale-ns-x8.yaml"


def case_config(grid: int, factor: int, steps: int, store: Path, path: Path) -> Path:
    """The NS x8 config at ``grid`` and ``factor``: three trajectories of 6 snapshots (train,
    val, test), patch grid / 16, ``steps`` steps; data in the shared ``store``."""
    cfg = yaml.safe_load(BASE.read_text())
    cfg["name"] = f"sr-ns{grid}-x{factor}"
    src = cfg["data"]["sources"][0]
    src["options"].update(grid=grid, n_samples=18, snapshots=6, spinup=2.0)
    src["samples_per_unit"] = 6
    cfg["data"]["store"] = str(store)
    cfg["data"]["splits"] = {
        "train": {"start": "2000-01-01T00:00", "end": "2000-01-01T05:00"},
        "val": {"start": "2000-01-01T07:00", "end": "2000-01-01T12:00"},
        "test": {"start": "2000-01-01T14:00", "end": "2000-01-01T19:00"},
    }
    cfg["data"]["downscale"]["factor"] = factor
    cfg["model"]["patch_size"] = grid // 16
    cfg["schedule"].update(steps=steps, warmup_steps=max(1, steps // 10), micro_batch_size=5)
    cfg["eval"]["every"] = max(1, steps // 8)
    path.write_text(yaml.safe_dump(cfg))
    return path


def summarise(s: dict) -> list[dict]:
    """Channel means of RFNE, PSNR and SSIM per method."""
    rows = []
    for m in ("model", "cnn", "bicubic"):
        rs = [r for r in s["rows"] if r["method"] == m]
        rows.append({"method": m, **{k: float(np.mean([r[k] for r in rs]))
                                     for k in ("rfne", "psnr", "ssim")}})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--factors", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--max-minutes", type=float, default=30.0)
    ap.add_argument("--work", type=Path, default=Path("runs/superres-bench"))
    ap.add_argument("--out", type=Path, default=Path("docs/superres_benchmark.md"))
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    t0, results = time.perf_counter(), []
    for grid in a.grids:
        for factor in a.factors:
            elapsed = (time.perf_counter() - t0) / 60
            if elapsed > a.max_minutes:
                results.append({"grid": grid, "factor": factor, "status": "skipped (cap)"})
                continue
            tc = time.perf_counter()
            path = case_config(grid, factor, a.steps, a.work / f"store-{grid}",
                               a.work / f"ns{grid}-x{factor}.yaml")  # fmt: skip
            loaded = load_config(path)
            run = train(loaded, run_name=f"ns{grid}-x{factor}", root=a.work).run_dir
            ev = evaluate(run, loaded, out=a.work / f"eval-ns{grid}-x{factor}", progress=False)
            s = ev["summary"]
            results.append({"grid": grid, "factor": factor, "status": "done",
                            "minutes": (time.perf_counter() - tc) / 60, "n_test": s["n_samples"],
                            "rows": summarise(s)})  # fmt: skip
            print(json.dumps(results[-1], default=float), flush=True)
            atomic_write_text(a.out, report(results, a))  # after each case: a kill keeps them
    atomic_write_text(a.out, report(results, a))


def report(results: list[dict], a: argparse.Namespace) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Kolmogorov flow downscaling ({date}; `python benchmarks/superres.py --grids "
        f"{' '.join(map(str, a.grids))} --factors {' '.join(map(str, a.factors))} --steps "
        f"{a.steps} --max-minutes {a.max_minutes:g}`, CPU). Block-mean degradation; test: one "
        "held-out trajectory; channel means over ns_w, ns_u, ns_v (physical units).",
        "",
        "| grid | factor | method | RFNE | PSNR | SSIM | minutes |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        if r["status"] != "done":
            lines.append(f"| {r['grid']}² | x{r['factor']} | {r['status']} | | | | |")
            continue
        for row in r["rows"]:
            lines.append(f"| {r['grid']}² | x{r['factor']} | {row['method']} | "
                         f"{row['rfne']:.4f} | {row['psnr']:.2f} | {row['ssim']:.4f} | "
                         f"{r['minutes']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
