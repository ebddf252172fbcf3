"""``scigpt export RUN OUT``: package a run's checkpoint (``scigpt.export.writer``)."""

from __future__ import annotations

import argparse

from scigpt.commands import EXIT_OK
from scigpt.export.writer import export_run


def run(args: argparse.Namespace) -> int:
    out = export_run(
        args.run_dir, args.out, step=args.step, best=args.best, dtype=args.dtype,
        force=args.force, sign=args.sign, diagnostics=not args.no_diagnostics,
    )  # fmt: skip
    print(f"package: {out}")
    for f in sorted(out.iterdir()):
        print(f"  {f.name:20s} {f.stat().st_size:>12,d} B")
    return EXIT_OK
