"""``scigpt validate CONFIG``: check a run config, its layout against a target and its data."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from scigpt.commands import EXIT_OK
from scigpt.config_loader import load_config
from scigpt.preflight import check_run, validate_target


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config, args.overrides)
    target = validate_target(
        loaded.config, gpus=args.gpus, gpu_mem=args.gpu_mem, cluster=args.cluster,
        nodes=args.nodes,
    )  # fmt: skip
    check_run(loaded, target=target, data=not args.no_data)
    if args.quiet:
        return EXIT_OK
    resolved = loaded.resolved_dict()
    if args.json:
        print(json.dumps(resolved, indent=2))
    else:
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
        print(f"# {args.config}: valid", file=sys.stderr)
    return EXIT_OK
