"""``scigpt ensemble CONFIG --members N``: train (or fine-tune) an ensemble, package it, and
optionally score it (``--evaluate EVAL_CONFIG``)."""

from __future__ import annotations

import argparse

import yaml

from scigpt.commands import EXIT_FAIL, EXIT_OK
from scigpt.commands.evaluate import print_ensemble_scores
from scigpt.eval.ensemble import evaluate_ensemble_package
from scigpt.rundir import runs_root
from scigpt.sweep import ensemble


def _parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: write KEY=VALUE, e.g. --set optim.lr=3e-4")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    name = args.name or args.config.stem
    out = (args.out or runs_root() / "ensembles" / name).resolve()
    sweep = ensemble.ensemble_sweep(
        args.config, args.members, out, name=name, seed0=args.seed0,
        overrides=_parse_sets(args.overrides), from_package=args.from_package,
        slurm={"cluster": args.cluster} if args.cluster else None,
    )  # fmt: skip
    res = ensemble.run(sweep, out, slurm=args.slurm, cluster=args.cluster)
    print(f"ensemble {sweep.spec.name}: {len(res['points'])} members, {len(res['todo'])} to "
          f"run, in {out}")  # fmt: skip
    if args.slurm:
        print(f"submitted job arrays {res['job_ids']}; when they finish, rerun this command "
              "without --slurm to package (finished members are not rerun)")  # fmt: skip
        return EXIT_OK
    for name_, why in res["failed"]:
        print(f"  failed: {name_}: {why}")
    if res["package"] is None:
        return EXIT_FAIL
    print(f"  ensemble package   {res['package']}")
    if args.evaluate is not None:
        ev = evaluate_ensemble_package(res["package"], args.evaluate, out / "evaluate")
        print_ensemble_scores(ev["rows"], ev["files"])
    return EXIT_OK
