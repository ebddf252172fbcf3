"""Issue 24 figures: GPME sample cost and mass drift; fair-CRPS speed and agreement.

Two tables (CPU, numpy; set OMP_NUM_THREADS=1 for single-core figures):

  * GPME — per family and grid: wall time per generated sample (``pde.generate``), mean
    explicit steps per sample, and the largest relative mass drift |Σu(t_end)/Σu0 − 1| of the
    float64 solution (round-off: ~1e-16);
  * CRPS — ``scigpt.eval.probabilistic.crps_ensemble`` against ``scoringrules.crps_ensemble(...,
    estimator="fair")`` on the same (M, 16, 1, 64, 64) ensemble: best-of-5 wall time of each and
    the largest elementwise difference; plus the time of all scalar scores
    (``probabilistic_scores``).

Writes ``<out>_gpme.csv/.json`` and ``<out>_crps.csv/.json``. Run:

    OMP_NUM_THREADS=1 python benchmarks/gpme_and_scores.py --out benchmarks/results/gpme_and_scores
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scoringrules
from _report import report

from scigpt.data_pipeline.ingest import pde
from scigpt.data_pipeline.ingest.pde_gpme import GPME_FAMILIES
from scigpt.eval import probabilistic


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls after one untimed call, in ms."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def gpme_rows(grids: list[int], samples: int) -> list[dict]:
    rows = []
    for grid in grids:
        for family in GPME_FAMILIES:
            t0 = time.perf_counter()
            g = pde.generate(family, samples, grid=grid, seed=0)
            ms = 1000 * (time.perf_counter() - t0) / samples
            recs = g.attrs["samples"]
            drift = max(abs(r["mass_final"] / r["mass_initial"] - 1) for r in recs)
            steps = float(np.mean([r["steps"] for r in recs]))
            rows.append(
                {"family": family, "grid": grid, "ms_per_sample": ms, "steps": steps,
                 "max_mass_drift": drift}
            )  # fmt: skip
    return rows


def crps_rows(members: list[int], repeat: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for m in members:
        ens = rng.normal(size=(m, 16, 1, 64, 64))
        obs = rng.normal(size=(16, 1, 64, 64))
        ours = probabilistic.crps_ensemble(obs, ens)
        ref = np.asarray(scoringrules.crps_ensemble(obs, ens, m_axis=0, estimator="fair"))
        rows.append(
            {
                "members": m,
                "ours_ms": best_of(lambda e=ens, o=obs: probabilistic.crps_ensemble(o, e), repeat),
                "scoringrules_ms": best_of(
                    lambda e=ens, o=obs: scoringrules.crps_ensemble(
                        o, e, m_axis=0, estimator="fair"
                    ),
                    repeat,
                ),
                "max_abs_diff": float(np.abs(ours - ref).max()),
                "all_scores_ms": best_of(
                    lambda e=ens, o=obs: probabilistic.probabilistic_scores(o, e), repeat
                ),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpme_and_scores"))
    ap.add_argument("--grids", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--members", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    report(
        gpme_rows(args.grids, args.samples),
        [("family", "family", ""), ("grid", "grid", "d"), ("ms_per_sample", "ms/sample", ".1f"),
         ("steps", "steps", ".0f"), ("max_mass_drift", "max |mass drift|", ".1e")],
        Path(f"{args.out}_gpme"),
    )  # fmt: skip
    print()
    report(
        crps_rows(args.members, args.repeat),
        [("members", "M", "d"), ("ours_ms", "ours ms", ".1f"),
         ("scoringrules_ms", "scoringrules ms", ".1f"), ("max_abs_diff", "max |diff|", ".1e"),
         ("all_scores_ms", "all scores ms", ".1f")],
        Path(f"{args.out}_crps"),
    )  # fmt: skip


if __name__ == "__main__":
    main()
