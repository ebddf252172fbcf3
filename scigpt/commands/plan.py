"""``scigpt plan``: rank parallel layouts by predicted memory and step time
(``scigpt.parallel.planner``)."""

from __future__ import annotations

import argparse

from scigpt.parallel.planner import run_cli


def run(args: argparse.Namespace) -> int:
    return run_cli(args)
