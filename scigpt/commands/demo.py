"""``scigpt demo``: the shipped demo run (``--select``: the demo's candidate selection)."""

from __future__ import annotations

import argparse
import sys

from scigpt.commands import DEMO_CONFIG, EXIT_FAIL, EXIT_OK
from scigpt.commands.train import run_training
from scigpt.config_loader import load_config, shipped_config
from scigpt.rundir import runs_root
from scigpt.train.select import select


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"schedule.steps={args.steps}")
    if args.select:
        return _select(args, overrides)
    if args.out is not None:
        raise ValueError("--out is the selection directory: use it with --select")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return run_training(load_config(shipped_config(DEMO_CONFIG), overrides), args, demo=True)


def _select(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.seed is not None or args.run_name or args.resume:
        raise ValueError(
            "--select runs every candidate at the seeds of the config's selection: block, "
            "each in its own run directory under --out: drop --seed, --run-name and --resume"
        )
    out = (args.out or (args.runs_dir or runs_root()) / "demo-select").resolve()
    print(f"selection in {out} (a rerun continues where it stopped)")
    res = select(shipped_config(DEMO_CONFIG), overrides, out)
    print((out / "selection.md").read_text(), end="")
    print(f"\nselection: {out / 'selection.json'}, {out / 'selection.md'}")
    if res["config_differs"]:
        print("the shipped config is not the chosen candidate", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK
