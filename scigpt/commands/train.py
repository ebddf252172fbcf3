"""``scigpt train CONFIG`` and ``scigpt finetune PACKAGE CONFIG``: train a run and report its
test scores."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from scigpt.commands import EXIT_OK
from scigpt.config_loader import load_config
from scigpt.rundir import RunDir
from scigpt.train.trainer import train


def run_training(loaded, args: argparse.Namespace, *, demo: bool) -> int:
    result = train(
        loaded,
        run_name=args.run_name,
        root=args.runs_dir.resolve() if args.runs_dir else None,
        resume=args.resume,
        break_lock=args.break_lock,
        trusted_keys=getattr(args, "trusted_keys", None),
    )
    s = result.test.get("summary", {})
    if not s or not result.main:  # rank 0 reports for the run; a preempted run has no test
        return EXIT_OK
    # an operator task hides its outputs from the inputs: the baseline is the training mean
    # a downscale task's "persistence" is its input: the bicubic-up-sampled coarse field
    task = loaded.config.data.task
    base = {"operator": "the mean", "downscale": "bicubic"}.get(task, "persistence")
    print()
    if "per_channel" in result.test:  # a series-forecasting run
        print_series_test(result.test)
        print_files(result)
        return EXIT_OK
    print(f"Test forecasts ({s['n_forecasts']}), latitude-weighted RMSE over normalised channels:")
    print(f"  model        {s['rmse_model']:.4f}")
    print(f"  {base:12s} {s['rmse_persistence']:.4f}")
    gain = s["improvement_vs_persistence"]
    verdict = "better" if gain > 0 else "WORSE"
    print(f"  the model is {100 * abs(gain):.1f}% {verdict} than {base}")
    if demo:
        print_demo_details(result)
    for name, res in result.test.get("series", {}).items():
        scores = ", ".join(f"{k} {v:.4g}" for k, v in res["summary"].items() if k != "n_windows")
        print(f"  {name} ({res['summary']['n_windows']} test windows): {scores}")
    print()
    print_files(result)
    return EXIT_OK


def print_series_test(test: dict) -> None:
    """Lead 1 and leads >= 7 of each forecast channel: the model against persistence."""
    print(f"Test forecasts ({test['summary']['n_windows']} windows), model vs persistence:")
    for res in test["per_channel"]:
        m, p = res["model"], res["persistence"]
        for key, what in (("lead1", "lead 1"), ("lead7plus", "leads >= 7")):
            print(f"  {res['channel']:>12s} {what:>10s}: MASE {m['mase_' + key]:.4g} vs "
                  f"{p['mase_' + key]:.4g}, CRPS {m['crps_' + key]:.4g} vs {p['crps_' + key]:.4g} "
                  f"{res['units']}")  # fmt: skip
    print("  (climatology and seasonal naive: scigpt evaluate RUN_DIR CONFIG)")


def print_files(result) -> None:
    run = RunDir(result.run_dir)
    print(f"Run directory: {result.run_dir}")
    for key, path in result.files.items():
        print(f"  {key:14s} {path}")
    print(f"  {'metrics':14s} {run.metrics_path}")
    print(f"  {'tensorboard':14s} tensorboard --logdir {run.tb}")


def print_demo_details(result) -> None:
    """The tested checkpoint and its validation score, and the test per variable."""
    recs = RunDir(result.run_dir).metrics()
    test = [r for r in recs if r["kind"] == "test"][-1]
    val = [r for r in recs if r["kind"] == "val" and r["step"] == test["checkpoint_step"]]
    if val:
        print(f"  tested: the best validation checkpoint, step {test['checkpoint_step']} "
              f"(validation: {100 * val[-1]['improvement_vs_persistence']:+.1f}% against "
              f"persistence)")  # fmt: skip
    better, worse = test["better_than_persistence"], test["worse_than_persistence"]
    print(f"  per variable: {len(better)} better than persistence, {len(worse)} worse "
          f"(RMSE model vs persistence):")  # fmt: skip
    with Path(result.files["rmse_csv"]).open() as f:
        for row in csv.DictReader(f):
            if row["variable"] == "mean":
                continue
            verdict = "better" if row["variable"] in better else "worse"
            print(f"    {row['variable']:8s} {float(row['rmse_model']):.4f} vs "
                  f"{float(row['rmse_persistence']):.4f}  "
                  f"{100 * float(row['improvement']):+6.1f}%  {verdict}")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    return run_training(load_config(args.config, args.overrides), args, demo=False)


def finetune(args: argparse.Namespace) -> int:
    package = json.dumps(str(args.package.resolve()))
    loaded = load_config(args.config, [*args.overrides, f"finetune.package={package}"])
    return run_training(loaded, args, demo=False)
