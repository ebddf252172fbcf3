"""``scigpt sweep SWEEP.yaml``: a scaling sweep, run locally or as Slurm job arrays,
and its report."""

from __future__ import annotations

import argparse

from scigpt.commands import EXIT_FAIL, EXIT_OK
from scigpt.rundir import runs_root
from scigpt.sweep import runner
from scigpt.sweep.spec import Sweep


def run(args: argparse.Namespace) -> int:
    if args.report is not None:
        sweep = Sweep.load(args.report / "sweep.yaml")
        files = runner.report(args.report, sweep.spec.objective, sweep.spec.metric)
        for key, path in files.items():
            print(f"  {key:18s} {path}")
        return EXIT_OK
    if args.sweep is None:
        raise ValueError("scigpt sweep SWEEP.yaml (or --report DIR)")
    sweep = Sweep.load(args.sweep)
    out = (args.out or runs_root() / "sweeps" / sweep.spec.name).resolve()
    if args.array_task:
        return runner.run_array_task(sweep, out, args.array_task)
    points = runner.plan(sweep, out)
    todo = runner.todo(sweep, out, points)
    if args.list:
        for p in points:
            st = runner.read_status(out, p.name)
            print(f"{p.name:48s} {st['state']:8s} attempts={st['attempts']}")
        return EXIT_OK
    print(f"sweep {sweep.spec.name}: {len(points)} points, {len(todo)} to run, in {out}")
    if args.slurm:
        ids = runner.submit_arrays(sweep, out, todo, cluster=args.cluster)
        print(f"submitted job arrays {ids}; when they finish: scigpt sweep --report {out}")
        return EXIT_OK
    runner.run_local(sweep, out, todo)
    done, failed = runner.summary(sweep, out, points)
    for name, why in failed:
        print(f"  failed: {name}: {why}")
    if done:
        for key, path in runner.report(out, sweep.spec.objective, sweep.spec.metric).items():
            print(f"  {key:18s} {path}")
    print(f"{done}/{len(points)} points done" + (f", {len(failed)} failed" if failed else ""))
    return EXIT_OK if not failed else EXIT_FAIL
