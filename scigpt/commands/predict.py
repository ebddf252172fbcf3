"""``scigpt predict PACKAGE INPUTS --lead L``: forecasts to CF-1.8 netCDF."""

from __future__ import annotations

import argparse
import shlex

from scigpt.commands import EXIT_OK
from scigpt.eval.predict import predict
from scigpt.eval.series_predict import is_series_package, predict_series


def run(args: argparse.Namespace) -> int:
    options = {"variables": args.variables.split(",")} if args.variables else {}
    command = "scigpt " + " ".join(shlex.quote(a) for a in args.argv)
    if is_series_package(args.package):
        if args.leads:
            raise ValueError("a series package forecasts --horizon samples; --lead is for grids")
        out = predict_series(
            args.package, args.inputs, args.out, horizon=args.horizon, n_samples=args.samples,
            quantiles=[float(q) for q in args.quantiles.split(",")], init=args.init,
            seed=args.seed, fmt=args.fmt, options=options, allow_missing=args.allow_missing,
            device=args.device, command=command, trusted_keys=args.trusted_keys,
        )  # fmt: skip
        print(f"forecast: {out}")
        return EXIT_OK
    if not args.leads:
        raise ValueError("--lead is required for a grid package (e.g. --lead 6h)")
    out = predict(
        args.package, args.inputs, args.out, leads=args.leads, fmt=args.fmt, init=args.init,
        options=options, device=args.device, progress=True, trusted_keys=args.trusted_keys,
        command=command,
        allow_missing=args.allow_missing, conserve=args.conserve or (),
    )  # fmt: skip
    print(f"forecast: {out}")
    return EXIT_OK
