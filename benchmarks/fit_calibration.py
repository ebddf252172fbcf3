"""Calibration of the scaling-law fits on synthetic sweeps (not a speed benchmark).

* coverage of the nominal 95 % exponent intervals (studentized bootstrap, as ``scigpt sweep``
  reports them; the percentile intervals of the same replicates beside them) over the designs
  of ``scigpt.sweep.calibration``: 1000 sweeps each by default; target band 0.93–0.97;
* the saturation rule's false-alarm rate on sweeps whose power law holds (stated: 5 %),
  2000 sweeps per design; it must lie within 2 standard errors of 5 %.

    python benchmarks/fit_calibration.py [--replicates 1000] [--false-alarm-replicates 2000]

Writes benchmarks/results/fit_calibration.{csv,json} (both tables, one row per design and
interval) and prints them; the figures go into docs/DESIGN_NOTES.md and
``scigpt.sweep.calibration.RECORDED`` (the sweep report quotes it; a test checks they agree).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import report

from scigpt.sweep.calibration import (
    COVERAGE_DESIGNS,
    FALSE_ALARM_DESIGNS,
    coverage,
    false_alarms,
    joint_coverage,
)

OUT = Path(__file__).resolve().parent / "results" / "fit_calibration"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=1000, help="sweeps per coverage design")
    ap.add_argument("--false-alarm-replicates", type=int, default=2000,
                    help="sweeps per false-alarm design")  # fmt: skip
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for i, design in enumerate(COVERAGE_DESIGNS):
        rows += coverage(design, args.replicates, seed=args.seed + i)
        print(f"  {design.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    rows += joint_coverage(args.replicates, seed=args.seed + 100)
    for r in rows:
        r["kind"] = "coverage of the 95 % interval"
        r["in_band"] = 0.93 <= r["rate"] <= 0.97
    alarms = []
    for i, design in enumerate(FALSE_ALARM_DESIGNS):
        r = false_alarms(design, args.false_alarm_replicates, seed=args.seed + 200 + i)
        alarms.append({"kind": "saturation false alarms (stated 5 %)", "design": r["design"],
                       "interval": "", "level": 0.95, "rate": r["rate"], "se": r["se"],
                       "n": r["n"], "median_width": float("nan"), "undefined": 0,
                       "in_band": r["within_2se"]})  # fmt: skip
    columns = [("kind", "measured", ""), ("design", "design", ""), ("interval", "interval", ""),
               ("rate", "rate", ".3f"), ("se", "± se", ".3f"), ("n", "sweeps", "d"),
               ("median_width", "median width", ".3g"), ("in_band", "in band", "")]  # fmt: skip
    report(rows + alarms, columns, OUT)
    studentized = [r["rate"] for r in rows if r["interval"] == "studentized"]
    print(f"\nstudentized coverage {min(studentized):.3f}–{max(studentized):.3f}; "
          f"false alarms {min(a['rate'] for a in alarms):.3f}–"
          f"{max(a['rate'] for a in alarms):.3f}; {time.perf_counter() - t0:.0f} s")  # fmt: skip
    ok = all(r["in_band"] for r in rows if r["interval"] == "studentized") and all(
        a["in_band"] for a in alarms
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
