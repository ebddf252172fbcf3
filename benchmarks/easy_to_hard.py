"""The easy-to-hard experiment of issue 24 at a larger size than CI, under a wall-time cap.

Trains an ensemble (``scigpt ensemble``: ``--members`` seeds) on GPME diffusion + porous
medium (``configs/runs/gpme-easy.yaml`` with ``--samples`` per family, ``--grid``, ``--steps``),
then scores it on Stefan (``configs/runs/gpme-hard.yaml``), with and without ProbConserve: RMSE,
CRPS, spread–skill, relative mass error, RMSE near the front, and the members' RMSE range (the
seed spread). The training runs in a subprocess killed at ``--budget-s`` (a rerun with the same
``--work`` continues: finished members are not retrained); the evaluation runs only once every
member has finished. Prints the table, writes ``OUT.csv``/``OUT.json`` and keeps the report
(``ensemble_metrics.md``, ``ensemble_scores.png``, rank histograms) in ``WORK/evaluate``.

    OMP_NUM_THREADS=1 python benchmarks/easy_to_hard.py --members 5 --samples 256 \\
        --steps 400 --budget-s 3600 --work /tmp/e2h --out benchmarks/results/easy_to_hard
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _report import report

from scigpt.config_loader import load_config
from scigpt.eval.ensemble import evaluate_ensemble_package


def _hours(n: int) -> str:
    """Sample ``n``'s pseudo-time (the PDE source's samples are hours from 2000-01-01)."""
    t = np.datetime64("2000-01-01T00:00") + np.timedelta64(n, "h")
    return str(t)[:16]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--samples", type=int, default=256, help="samples per training family")
    ap.add_argument("--hard-samples", type=int, default=128, help="Stefan samples scored")
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--budget-s", type=float, default=3600.0, help="wall-time cap on training")
    ap.add_argument("--work", type=Path, default=Path("runs/easy_to_hard"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/easy_to_hard"))
    args = ap.parse_args()

    n, g, m = args.samples, args.grid, args.hard_samples
    train_end, test_end = n * 7 // 8 - 1, n - 1
    easy = [f"schedule.steps={args.steps}", f"data.splits.train.end={_hours(train_end)}",
            f"data.splits.test.start={_hours(train_end + 1)}",
            f"data.splits.test.end={_hours(test_end)}"]  # fmt: skip
    for i in range(2):
        easy += [f"data.sources.{i}.options.n_samples={n}", f"data.sources.{i}.options.grid={g}",
                 f"data.sources.{i}.samples_per_unit={n}"]  # fmt: skip
    cmd = [sys.executable, "-m", "scigpt", "ensemble", "runs/gpme-easy.yaml", "--members",
           str(args.members), "--out", str(args.work.resolve())]  # fmt: skip
    for s in easy:
        cmd += ["--set", s]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        rc = proc.wait(timeout=args.budget_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        print(f"training stopped at the --budget-s cap ({args.budget_s:.0f} s); rerun with the "
              f"same --work {args.work} to continue")  # fmt: skip
        return 1
    train_s = time.monotonic() - t0
    if rc != 0:
        print(f"scigpt ensemble failed (exit {rc})")
        return rc
    hard = [f"data.sources.0.options.n_samples={m}", f"data.sources.0.options.grid={g}",
            f"data.sources.0.samples_per_unit={m}", f"data.splits.train.end={_hours(7)}",
            f"data.splits.test.start={_hours(8)}",
            f"data.splits.test.end={_hours(m - 1)}"]  # fmt: skip
    t1 = time.monotonic()
    ev = evaluate_ensemble_package(args.work / "ensemble", load_config("runs/gpme-hard.yaml", hard),
                                   args.work / "evaluate")  # fmt: skip
    rows = [{**r, "members": args.members, "samples": n, "grid": g, "steps": args.steps,
             "train_s": round(train_s, 1), "eval_s": round(time.monotonic() - t1, 1)}
            for r in ev["rows"]]  # fmt: skip
    columns = [("constraint", "constraint", ""), ("rmse", "RMSE", ".4g"), ("crps", "CRPS", ".4g"),
               ("spread_skill_ratio", "SSR", ".3f"), ("conservation_error", "mass err", ".2e"),
               ("front_rmse", "front RMSE", ".4g"), ("member_rmse_min", "member min", ".4g"),
               ("member_rmse_max", "member max", ".4g"), ("train_s", "train s", ".0f")]  # fmt: skip
    report(rows, columns, args.out)
    print(f"report: {args.work / 'evaluate' / 'ensemble_metrics.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
