"""``scigpt verify STORE``: hash every shard of a patch store against its manifest."""

from __future__ import annotations

import argparse
import sys

from scigpt.commands import EXIT_FAIL, EXIT_OK
from scigpt.data_pipeline.store import verify_shards


def run(args: argparse.Namespace) -> int:
    n, problems = verify_shards(args.store, jobs=args.jobs, progress=not args.quiet)
    for p in problems:
        print(f"{p['shard']} (source {p['source']}, unit {p['unit']}) {p['problem']}",
              file=sys.stderr)  # fmt: skip
    if problems:
        print(
            f"scigpt verify: {len(problems)} of {n} shards of {args.store} are bad. Fix: delete "
            "each with its record units/<source>/<unit>.json, then re-run `scigpt prepare`",
            file=sys.stderr,
        )
        return EXIT_FAIL
    print(f"{args.store}: {n} shards verified")
    return EXIT_OK
