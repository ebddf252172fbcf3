"""``scigpt predict PACKAGE INPUTS --lead L``: forecasts to CF-1.8 netCDF."""

from __future__ import annotations

import argparse
import shlex

from scigpt.commands import EXIT_OK
from scigpt.eval.predict import predict


def run(args: argparse.Namespace) -> int:
    options = {"variables": args.variables.split(",")} if args.variables else {}
    out = predict(
        args.package, args.inputs, args.out, leads=args.leads, fmt=args.fmt, init=args.init,
        options=options, device=args.device, progress=True, trusted_keys=args.trusted_keys,
        command="scigpt " + " ".join(shlex.quote(a) for a in args.argv),
        allow_missing=args.allow_missing, conserve=args.conserve or (),
    )  # fmt: skip
    print(f"forecast: {out}")
    return EXIT_OK
