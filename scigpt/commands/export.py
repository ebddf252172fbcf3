"""``scigpt export RUN OUT`` and ``scigpt keygen KEY``: package a run's checkpoint; make a
signing key."""

from __future__ import annotations

import argparse

from scigpt.commands import EXIT_OK
from scigpt.export.signing import generate_key
from scigpt.export.writer import export_run


def run(args: argparse.Namespace) -> int:
    out = export_run(
        args.run_dir, args.out, step=args.step, best=args.best, dtype=args.dtype,
        force=args.force, sign=args.sign,
    )  # fmt: skip
    print(f"package: {out}")
    for f in sorted(out.iterdir()):
        print(f"  {f.name:20s} {f.stat().st_size:>12,d} B")
    return EXIT_OK


def keygen(args: argparse.Namespace) -> int:
    private, public, kid = generate_key(args.key)
    print(f"private key {private} (keep it secret; sign with: scigpt export --sign {private})")
    print(f"public key  {public} (give it to receivers: --trusted-key {public})")
    print(f"key id      {kid}")
    return EXIT_OK
