"""``scigpt submit --cluster PROFILE -- COMMAND``: run a scigpt command as a Slurm job."""

from __future__ import annotations

import argparse
from pathlib import Path

from scigpt.commands import EXIT_OK
from scigpt.rundir import runs_root
from scigpt.slurm.submit import load_profile, prepare_job, render, sbatch, write_script


def run(args: argparse.Namespace) -> int:
    command = args.job_command[1:] if args.job_command[:1] == ["--"] else args.job_command
    profile = load_profile(args.cluster)
    job = prepare_job(
        command, profile, nodes=args.nodes, time=args.time, runs_dir=args.runs_dir or runs_root()
    )
    path = write_script(job, render(profile, job, cwd=Path.cwd()))
    print(f"script: {path}")
    if args.dry_run:
        print(path.read_text())
        return EXIT_OK
    job_id = sbatch(path)
    print(f"submitted job {job_id}: logs in {job.job_dir / 'slurm'}")
    return EXIT_OK
