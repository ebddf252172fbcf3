"""``scigpt transfer TRANSFER.yaml``: pretrained vs from-scratch fine-tuning at several data
fractions."""

from __future__ import annotations

import argparse

from scigpt.commands import EXIT_OK
from scigpt.rundir import runs_root
from scigpt.sweep import transfer as tr


def run(args: argparse.Namespace) -> int:
    if args.report is not None:
        res = tr.report(args.report, tr.Transfer.load(args.report / "transfer.yaml").spec.metric)
    else:
        if args.transfer is None:
            raise ValueError("scigpt transfer TRANSFER.yaml (or --report DIR)")
        t = tr.Transfer.load(args.transfer)
        out = (args.out or runs_root() / "transfers" / t.spec.name).resolve()
        print(f"transfer {t.spec.name} in {out}")
        res = tr.run(t, out)
    for v in res["verdicts"]:
        print(f"  fraction {v['fraction']:g} ({v['train_samples']} samples): pretrained better "
              f"by {v['margin']:+.4f}, seed spread {v['spread']:.4f}"
              f"{' (beyond the spread)' if v['beyond_spread'] else ''}")  # fmt: skip
    for key, path in res["files"].items():
        print(f"  {key:12s} {path}")
    return EXIT_OK
