"""The ``scigpt`` command: argument parsing, then dispatch to ``scigpt.commands`` (one module
per subcommand holds its body; ``scigpt.commands.dispatch`` maps names to them).

Exit codes: 0 success; 1 a runtime failure (bad data file, diverged run); 2 a usage or config
error (printed without a traceback, naming the key and the fix; ``SCIGPT_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from scigpt import __version__
from scigpt.commands import DEMO_CONFIG, EXIT_FAIL, EXIT_OK, EXIT_USAGE

__all__ = ["DEMO_CONFIG", "EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]


def _add_config_args(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    if config:
        p.add_argument(
            "config", type=Path, help="run config YAML (or a shipped one, e.g. runs/demo.yaml)"
        )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=3e-4 (repeatable)",
    )


def _int_list(text: str) -> list[int]:
    """``16,32,64`` → [16, 32, 64]."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers separated by commas") from None


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-name",
        default=None,
        help="run directory name under $SCIGPT_RUNS (default: <config name>-<UTC time>)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue --run-name from its latest checkpoint (start it if it has none)",
    )
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="root of run directories (default: $SCIGPT_RUNS or ./runs)",
    )
    p.add_argument(
        "--break-lock",
        action="store_true",
        help="take the run directory's lock even if its holder looks alive (only when you know "
        "it is gone: two writers corrupt a run)",
    )


def _add_trusted_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trusted-key", dest="trusted_keys", action="append", default=None, type=Path,
        metavar="KEY.pub",
        help="accept the package only if signed by this public key (scigpt keygen; repeatable)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scigpt",
        description="SciGPT: train one transformer on many kinds of Earth data.",
        epilog="Run `scigpt demo` to train a tiny forecaster on real ERA5 data in a few minutes.",
    )
    parser.add_argument("--version", action="version", version=f"scigpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "demo",
        help="ingest the shipped ERA5 sample, train a tiny ViT forecaster, score it",
        description="Ingest the shipped ERA5 Rhine sample, train a tiny ViT to forecast the next "
        "hour through DeepSpeed ZeRO-1, and compare its RMSE with persistence.",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: config)")
    p.add_argument(
        "--select",
        action="store_true",
        help="rerun the demo's model selection: every candidate of its selection: block at "
        "every seed, chosen on the validation hours; print the tables (a rerun continues; "
        "exit 1 if the shipped config is not the chosen candidate)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="with --select: the selection directory (default: $SCIGPT_RUNS/demo-select)",
    )
    _add_config_args(p, config=False)
    _add_run_args(p)

    p = sub.add_parser(
        "train",
        help="train from a run config",
        description="Train from a run config. Launch with torchrun, mpirun or srun for several "
        "processes; ranks are discovered from the environment.",
    )
    _add_config_args(p)
    _add_run_args(p)

    p = sub.add_parser(
        "prepare",
        help="ingest the config's data sources into a checksummed patch store",
        description="Read every source of the config (netCDF, GRIB, Zarr, GeoTIFF, MODIS HDF4, "
        "HDF5, miniSEED/SAC, SEG-Y, SeisBench, GHCN, CAMELS, FLUXNET, PDE simulations), cut it "
        "into token patches and write HDF5 shards, statistics and a manifest. Run it under "
        "mpirun/srun/torchrun to split the files across processes; rerun it to resume.",
    )
    _add_config_args(p)
    p.add_argument(
        "--out", type=Path, default=None, help="store folder (default: the config's data.store)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "validate",
        help="check a run config as train will and print it resolved",
        description="Load, compose, override, interpolate and validate a config, then check "
        "what train would refuse: sources (reader options, paths, the variables the files "
        "hold), the run name, a fine-tune package, and memory per rank against the target "
        "(--gpus/--gpu-mem or --cluster; default one 80 GiB GPU per model-parallel group). "
        "Exit code 2 and one line per problem when it is invalid.",
    )
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing when valid")
    p.add_argument(
        "--cluster",
        default=None,
        help="judge memory per rank against this cluster profile (name or .yaml)",
    )
    p.add_argument("--nodes", type=int, default=None, help="nodes of the job (with --cluster)")
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="ranks of the job (default: the profile's, else tp x pp)",
    )
    p.add_argument(
        "--gpu-mem",
        type=float,
        default=None,
        metavar="GIB",
        help="memory of one GPU in GiB (default: the profile's, else 80)",
    )
    p.add_argument(
        "--no-data",
        action="store_true",
        help="do not open the sources' files (their variables are checked at ingest)",
    )

    p = sub.add_parser(
        "submit",
        help="render an sbatch script for a subcommand and submit it to Slurm",
        description="Render an sbatch script from a cluster profile (one task per GPU via srun, "
        "USR1 before the time limit -> checkpoint -> requeue -> resume) for any long "
        "subcommand, save it in the run directory and submit it. Example: scigpt submit "
        "--cluster generic-gpu --nodes 4 -- train my_run.yaml",
    )
    p.add_argument(
        "--cluster", default="local", help="profile name (local, generic-gpu, perlmutter, "
        "frontier) or a profile .yaml (default: local)",
    )  # fmt: skip
    p.add_argument("--nodes", type=int, default=None, help="nodes (default: the profile's)")
    p.add_argument("--time", default=None, help="time limit, e.g. 12:00:00 (default: profile)")
    p.add_argument(
        "--dry-run", action="store_true", help="render and save the script, do not submit"
    )
    p.add_argument(
        "--runs-dir", type=Path, default=None,
        help="root of run directories (default: $SCIGPT_RUNS or ./runs)",
    )  # fmt: skip
    p.add_argument(
        "job_command", nargs=argparse.REMAINDER, metavar="-- SUBCOMMAND ARGS",
        help="the scigpt subcommand to run in the job, after --",
    )  # fmt: skip

    p = sub.add_parser(
        "sweep",
        help="run a scaling sweep (locally or as Slurm job arrays) and fit scaling laws",
        description="Expand a sweep file (grid or compute-matched), run every point that has "
        "not finished (locally one after another, or --slurm as throttled job arrays), then "
        "collect the results and write fits, plots and tables into the sweep directory. "
        "Rerunning resumes: finished points are not rerun, failed ones are retried.",
    )
    p.add_argument("sweep", type=Path, nargs="?", help="sweep YAML (see scigpt/sweep/spec.py)")
    p.add_argument("--out", type=Path, default=None,
                   help="sweep directory (default: $SCIGPT_RUNS/sweeps/<name>)")  # fmt: skip
    p.add_argument("--slurm", action="store_true", help="submit job arrays instead of running")
    p.add_argument("--cluster", default=None, help="Slurm profile (default: the sweep file's)")
    p.add_argument("--list", action="store_true", help="print the points and their status")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="only rebuild the report of sweep directory DIR")  # fmt: skip
    p.add_argument("--array-task", default=None, help=argparse.SUPPRESS)  # inside a job array

    p = sub.add_parser(
        "plan",
        help="rank parallel layouts by memory per GPU and estimated step time",
        description="Size every valid (dp, tp, pp, ZeRO stage, activation checkpointing) layout "
        "of a model on N GPUs from its config alone: memory per rank (worst rank) and an "
        "estimated step time. Prints the layouts that fit, fastest first, and writes the best "
        "as a run-config fragment. Exit code 2 when none fits. Memory in GiB (2^30 bytes).",
    )
    p.add_argument("--model", required=True, help="model preset (vit-1b, ...) or a preset .yaml")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in the job (dp x tp x pp)")
    p.add_argument(
        "--gpu-mem",
        type=float,
        required=True,
        metavar="GIB",
        help="memory of one GPU in GiB (H100 80GB: 80; 10%% / 2 GiB stay free)",
    )
    p.add_argument("--nodes", type=int, default=None, help="nodes (default: GPUs / 8)")
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: min(GPUs, 8)")
    p.add_argument("--micro-batch", type=int, default=8, help="samples per GPU per micro-step")
    p.add_argument("--grid", default="64x64", help="grid HxW of a sample (default 64x64)")
    p.add_argument("--vars", type=int, default=100, help="variables per sample (default 100)")
    p.add_argument("--history", type=int, default=2, help="input frames per sample (default 2)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument(
        "--global-batch",
        type=int,
        default=None,
        help="samples per optimizer step for every layout (default 4 x micro-batch x GPUs)",
    )
    p.add_argument(
        "--grad-accum",
        type=int,
        default=None,
        help="micro-batches per step for every layout, instead of --global-batch",
    )
    p.add_argument("--max-tp", type=int, default=None, help="consider tp <= this only")
    p.add_argument("--max-pp", type=int, default=None, help="consider pp <= this only")
    p.add_argument(
        "--max-sp", type=int, default=1,
        help="also consider sequence parallelism up to sp = this (Ulysses; long sequences)",
    )  # fmt: skip
    p.add_argument(
        "--pp-partition",
        choices=["parameters", "blocks", "uniform"],
        default="parameters",
        help="how pipeline stages are cut (parallel.pp_partition; default parameters)",
    )
    p.add_argument(
        "--intra-bw",
        type=float,
        default=900.0,
        help="GB/s inside a node (default 900, NVLink H100/H200)",
    )
    p.add_argument(
        "--inter-bw",
        type=float,
        default=25.0,
        help="GB/s per GPU between nodes (default 25, 200 Gb/s InfiniBand)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="dense bf16 TFLOP/s per GPU (default 989, H100/H200; fp32 uses half)",
    )
    p.add_argument(
        "--mfu-assumption",
        type=float,
        default=0.45,
        help="fraction of peak the compute reaches (default 0.45)",
    )
    p.add_argument("--top", type=int, default=10, help="rows to print (default 10)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the best layout as a YAML config fragment here",
    )
    p = sub.add_parser(
        "finetune",
        help="fine-tune an exported model package on a run config",
        description="Start from a model package (scigpt export): the model and its variable "
        "registry come from the package, the data's new variables are appended (outputs "
        "unchanged at step 0), and finetune.mode in the config chooses full training, a frozen "
        "backbone (finetune.train parts stay trainable) or LoRA adapters. The run exports again "
        "as a package that can be fine-tuned again.",
    )
    p.add_argument("package", type=Path, metavar="PACKAGE", help="model package directory")
    _add_config_args(p)
    _add_run_args(p)
    _add_trusted_keys(p)

    p = sub.add_parser(
        "evaluate",
        help="score a package or run on a config's data (WB2 RMSE/bias/ACC, series scores)",
        description="Autoregressive forecasts to eval.horizon model calls on eval.split of the "
        "config's first (gridded) source, scored per variable and lead with WeatherBench-2 "
        "conventions (RMSE: mean over space and time, root last; ACC against a climatology from "
        "the training split or eval.climatology); series sources get pooled-head and masked-"
        "reconstruction scores (RMSE/MAE/NSE/KGE). Writes CSV, Markdown and PNGs; fills the "
        "package's model card (a run's card at its next export). With --convergence: the "
        "resolution-convergence test of an operator-task PDE model (its test cases regenerated "
        "at each of --levels grids; error, observed order and a verdict; convergence.json/.csv/"
        ".png).",
    )
    p.add_argument("target", type=Path, metavar="PACKAGE_OR_RUN",
                   help="model package or run directory")  # fmt: skip
    p.add_argument("config", type=Path, nargs="?", default=None,
                   help="run config YAML whose data to score (optional with --convergence: "
                   "default the model's own)")  # fmt: skip
    _add_config_args(p, config=False)
    p.add_argument("--convergence", action="store_true",
                   help="run the resolution-convergence test, not the scores")  # fmt: skip
    p.add_argument("--levels", type=_int_list, default=None, metavar="N,N,...",
                   help="--convergence grid sizes (default 16,32,64,128)")  # fmt: skip
    p.add_argument("--cases", type=int, default=8,
                   help="--convergence: test samples used (default 8)")  # fmt: skip
    p.add_argument("--reference", choices=("fine", "level"), default="fine",
                   help="--convergence reference: the continuous solution (fine, default) or "
                   "each grid's own discretisation (level)")  # fmt: skip
    p.add_argument("--source", default=None,
                   help="--convergence: the PDE source's name (default: the first)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: RUN/eval/evaluate or PACKAGE-eval)")  # fmt: skip
    p.add_argument("--no-card", action="store_true", help="leave the package's card as it is")
    _add_trusted_keys(p)

    p = sub.add_parser(
        "predict",
        help="forecast from input files with a model package; write CF-1.8 netCDF",
        description="Read INPUT files with SciGPT's readers (names and units as in training), "
        "normalise with the package's statistics, roll the model out to each --lead and write "
        "the forecasts as CF-1.8 netCDF (time, prediction_timedelta, latitude, longitude; "
        "valid_time; units; provenance attributes). A series package (trained with "
        "objectives.series_forecast) reads station files instead and writes --samples sample "
        "paths and --quantiles of the next --horizon samples of every station as a CF "
        "timeSeries netCDF (station, time; realization and quantile dimensions). Inputs lacking "
        "any of the package's variables are refused (exit 2, naming them) unless "
        "--allow-missing.",
    )
    p.add_argument("package", type=Path, metavar="PACKAGE", help="model package directory")
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="input files")
    p.add_argument("--lead", action="append", default=None, dest="leads",
                   help="grid packages: lead 6h, PT6H, 2d or a number of time steps "
                        "(repeatable; required)")  # fmt: skip
    p.add_argument(
        "--horizon",
        type=int,
        default=None,
        help="series packages: samples to forecast (default: the model's horizon)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=100,
        help="series packages: sample paths to draw (default 100)",
    )
    p.add_argument(
        "--quantiles",
        default="0.05,0.1,0.25,0.5,0.75,0.9,0.95",
        help="series packages: comma-separated quantile levels to write",
    )
    p.add_argument("--seed", type=int, default=0, help="series packages: seed of the draws")
    p.add_argument("--out", type=Path, default=Path("forecast.nc"), help="netCDF file to write")
    p.add_argument("--format", dest="fmt", default=None,
                   help="input reader (netcdf, grib, zarr; default: from the suffix)")  # fmt: skip
    p.add_argument("--init", default=None, help="initial time, ISO 8601 (default: the last)")
    p.add_argument("--variables", default=None, help="comma-separated variables to read")
    p.add_argument("--conserve", action="append", default=None, metavar="VAR",
                   help="ensemble packages: hold VAR's area-weighted total at the initial "
                        "frame's at every lead by ProbConserve (repeatable)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument(
        "--allow-missing", action="store_true",
        help="forecast even when the inputs lack some of the package's variables (refused by "
        "default, exit 2); the missing ones are recorded in the netCDF's attributes",
    )  # fmt: skip
    _add_trusted_keys(p)

    p = sub.add_parser(
        "transfer",
        help="pretrain, then fine-tune vs scratch on a held-out task at several data sizes",
        description="The transfer experiment of a TRANSFER.yaml: pretrain on a mixture, export, "
        "then train the downstream task at each data.train_fraction and seed from the package "
        "and from scratch (same model, steps, optimiser); report error vs downstream samples "
        "with the seed spread (points.csv, summary.csv, report.md, transfer.png). Reruns "
        "continue where the last stopped.",
    )
    p.add_argument("transfer", type=Path, nargs="?", metavar="TRANSFER",
                   help="transfer file, e.g. transfers/tiny-pde.yaml (shipped)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None,
                   help="experiment folder (default: RUNS/transfers/NAME)")  # fmt: skip
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="only (re)write the report of an experiment folder")  # fmt: skip

    p = sub.add_parser(
        "ensemble",
        help="train N members differing in seed (or fine-tuned from one package) as a sweep",
        description="Train N ensemble members that differ in seed (initialisation and data "
        "order), or fine-tune N members from one package (--from), as a sweep (locally or a "
        "Slurm job array; reruns continue), export them and write an ensemble package "
        "(members with checksums) to OUT/ensemble. --evaluate CONFIG then scores it there "
        "(CRPS, spread-skill, rank histogram, ensemble diagnostics; with eval.constraints, "
        "each with and without ProbConserve).",
    )
    _add_config_args(p)
    p.add_argument("--members", type=int, required=True, help="number of members (>= 2)")
    p.add_argument("--from", dest="from_package", type=Path, default=None, metavar="PACKAGE",
                   help="fine-tune every member from this model package")  # fmt: skip
    p.add_argument("--seed0", type=int, default=0, help="seed of the first member (default 0)")
    p.add_argument("--name", default=None, help="ensemble name (default: the config's stem)")
    p.add_argument("--out", type=Path, default=None,
                   help="ensemble folder (default: $SCIGPT_RUNS/ensembles/<name>)")  # fmt: skip
    p.add_argument("--slurm", action="store_true", help="submit the members as a job array")
    p.add_argument("--cluster", default=None, help="Slurm profile (default: local)")
    p.add_argument("--evaluate", type=Path, default=None, metavar="EVAL_CONFIG",
                   help="score the ensemble on this config's eval.split")  # fmt: skip

    p = sub.add_parser(
        "export",
        help="package a run's checkpoint as a self-contained model (safetensors + JSON)",
        description="Consolidate a checkpoint of any layout (dp/ZeRO, tp, pp) into a model "
        "package OUT: model.safetensors, config.json, variables.json (units, normalisation), "
        "provenance.json, MODEL_CARD.md, format.json, checksums.sha256. Load it with "
        "scigpt.load_pretrained(OUT); loading needs neither DeepSpeed nor pickle.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    p.add_argument("out", type=Path, metavar="OUT", help="package directory to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    which.add_argument("--best", action="store_true", help="the best (validation) checkpoint")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights dtype")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument(
        "--sign",
        type=Path,
        default=None,
        metavar="KEY",
        help="sign the package with this Ed25519 private key (scigpt keygen)",
    )
    p.add_argument("--no-diagnostics", action="store_true",
                   help="no weight diagnostics (scigpt diagnose) in the card")  # fmt: skip

    p = sub.add_parser(
        "diagnose",
        help="HTSR weight diagnostics (power-law α of each layer's spectrum) of a run or package",
        description="Eigenvalues of WᵀW for every weight matrix (≥ --min-evals eigenvalues), "
        "the power-law tail exponent α (MLE, xmin by KS distance), α-weighted, norms, stable "
        "rank, the Marchenko–Pastur bulk edge and spikes, and correlation traps. Writes "
        "layers.csv/.md, summary.json and plots (ESD of chosen layers, α by depth, α over "
        "steps when the run has several checkpoints).",
    )
    p.add_argument("path", type=Path, metavar="RUN_DIR_OR_PACKAGE",
                   help="a run directory or a model package (scigpt export)")  # fmt: skip
    p.add_argument("--step", type=int, default=None,
                   help="checkpoint step of a run (default: latest)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default RUN/diagnostics/step_N)")  # fmt: skip
    p.add_argument("--layer", action="append", default=None, metavar="NAME",
                   help="plot this layer's ESD (repeatable; default: four layers)")  # fmt: skip
    p.add_argument("--min-evals", type=int, default=50,
                   help="fewer eigenvalues: reported as too small (default 50)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the entry shuffle (traps)")
    p.add_argument("--workers", type=int, default=1, help="layers analysed in parallel")
    p.add_argument("--no-history", action="store_true",
                   help="skip α over steps (one checkpoint only)")  # fmt: skip

    p = sub.add_parser(
        "verify",
        help="check every shard of a patch store against its manifest's sha256",
        description="Hash every shard of STORE and compare with the manifest (opening a store "
        "checks sizes only; each shard's sha256 is checked the first time a process reads it). "
        "Exits 1 naming the bad shards.",
    )
    p.add_argument("store", type=Path, metavar="STORE", help="patch store (scigpt prepare's out)")
    p.add_argument("--jobs", type=int, default=1, help="shards hashed at once (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signing packages (scigpt export --sign)",
        description="Write a new Ed25519 private key to KEY (PEM, readable by you only) and its "
        "public key to KEY.pub. Sign packages with `scigpt export --sign KEY`; receivers load "
        "them with `--trusted-key KEY.pub` (or load_pretrained(..., trusted_keys=[...])). "
        "Checksums alone detect accidents, not tampering.",
    )
    p.add_argument("key", type=Path, metavar="KEY", help="private key file to create")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # recorded by predict
    # Imported here, after parsing: `scigpt --help` and usage errors stay free of torch.
    from scigpt.commands.dispatch import run

    return run(args.command, args)
