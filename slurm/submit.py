"""Render and submit sbatch scripts: one template, a cluster profile, any long subcommand.

``scigpt submit [--cluster PROFILE] [--nodes N] [--time T] [--dry-run] -- SUBCOMMAND ARGS``:

* the profile (``slurm/profiles/<name>.yaml`` or a path) says how the cluster is used: partition,
  account, QOS, GPUs per node and tasks per node, CPU/GPU binding, environment setup lines
  (modules, venv), NCCL/RCCL variables, container arguments, config overrides the site needs
  (e.g. no DALI on ROCm);
* the script runs one task per GPU (or ``tasks_per_node`` CPU tasks) with ``srun``; each task
  finds its rank from ``SLURM_*`` (``scigpt.launch``);
* preemption and time limits: ``--signal=B:USR1@<grace>`` and ``--requeue``; the batch shell
  traps USR1 and forwards it to the srun tasks; the trainer checkpoints at the end of its step and
  exits cleanly; the script then requeues the job (``scontrol requeue``), which resumes in the same
  run directory (``train``/``demo`` always get ``--run-name NAME --resume``).

Every value that comes from a config, the command line or a profile field other than ``setup``
is shell-quoted (``shlex.quote``) in shell lines, and ``#SBATCH`` values must be single-line
(``_sbatch_value``): a value cannot inject a command. ``setup`` lines are shell by design — a
profile is site configuration, like a module file, and is trusted as such.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scigpt.atomic import atomic_write_text
from scigpt.cluster import Profile, load_profile, shipped_profiles
from scigpt.config_loader import load_config
from scigpt.preflight import check_run, validate_target
from scigpt.rundir import check_run_name, default_run_name

TRAINING = ("train", "demo")  # subcommands that resume a run directory


_SBATCH_SAFE = re.compile(r"^[^\x00-\x1f\x7f]*$")


def _sbatch_value(key: str, value: object) -> str:
    """A value for an ``#SBATCH --key=value`` line: one line, no control characters (sbatch
    reads these lines itself, not a shell, but a newline would start a new script line)."""
    text = str(value)
    if not _SBATCH_SAFE.match(text):
        raise ValueError(f"#SBATCH --{key}: {text!r} contains a newline or control character")
    return shlex.quote(text) if re.search(r"[\s'\"\\$`]", text) else text


def _job_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64] or "scigpt"


@dataclass(frozen=True)
class Job:
    """What to run where: the subcommand, its job directory, and the allocation."""

    command: list[str]  # scigpt subcommand and its arguments
    job_dir: Path  # the run directory for train/demo; the script and Slurm logs go in slurm/
    name: str
    nodes: int
    time: str
    array: str | None = None  # job array spec, e.g. "0-5%2" (each task reads SLURM_ARRAY_TASK_ID)


def render(profile: Profile, job: Job, *, cwd: Path) -> str:
    """The sbatch script for ``job`` on ``profile``."""
    p = profile
    logs = job.job_dir / "slurm"
    opts: list[tuple[str, object]] = [
        ("job-name", _job_name(job.name)),
        ("nodes", job.nodes),
        ("ntasks-per-node", p.tasks),
        ("cpus-per-task", p.cpus_per_task),
        ("time", job.time),
        ("signal", f"B:USR1@{p.signal_grace_s}"),
        ("output", logs / ("slurm-%A_%a.out" if job.array else "slurm-%j.out")),
        ("chdir", cwd),
    ]
    if job.array:
        opts.append(("array", job.array))
    if p.gpus_per_node:
        opts.append(("gpus-per-task", 1))
    for key in ("partition", "account", "qos"):
        if getattr(p, key):
            opts.append((key, getattr(p, key)))
    when = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    lines = ["#!/bin/bash", f"# Rendered by scigpt submit ({when}) from a cluster profile."]
    lines += [f"#SBATCH --{k}={_sbatch_value(k, v)}" for k, v in opts]
    lines += ["#SBATCH --requeue", "#SBATCH --open-mode=append"]
    for arg in p.sbatch_args:
        if not arg.startswith("--"):
            raise ValueError(f"profile sbatch_args entry {arg!r} must be an --option")
        key, _, value = arg[2:].partition("=")
        lines.append(f"#SBATCH --{key}" + (f"={_sbatch_value(key, value)}" if value else ""))
    lines += ["", "set -uo pipefail", "# --- site setup (from the profile) ---", *p.setup, ""]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in p.env.items()]
    lines += [
        "# sbatch exports the submitting shell's environment: drop launcher variables that would",
        "# override the ranks and rendezvous port srun's tasks derive from SLURM_* (scigpt.launch)",
        "unset MASTER_ADDR MASTER_PORT RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE",
    ]
    srun = ["srun", "--kill-on-bad-exit=1", f"--ntasks-per-node={p.tasks}"]
    if p.cpu_bind:
        srun.append(f"--cpu-bind={p.cpu_bind}")
    if p.gpu_bind:
        srun.append(f"--gpu-bind={p.gpu_bind}")
    srun += p.srun_args
    cmd = [*srun, p.python, "-m", "scigpt", *job.command]
    lines += [
        'echo "scigpt: job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-?}, restart '
        '${SLURM_RESTART_COUNT:-0}"',
        "",
        "# Preemption / time limit: Slurm sends USR1 to this shell; pass it to the tasks, whose",
        "# trainer checkpoints at the end of the step and exits; then requeue and resume.",
        "preempted=0",
        'forward_usr1() { preempted=1; echo "scigpt: USR1, checkpointing"; '
        'kill -USR1 "$srun_pid" 2>/dev/null; }',
        "trap forward_usr1 USR1",
        " ".join(shlex.quote(c) for c in cmd) + " &",
        "srun_pid=$!",
        "# wait returns early when a trapped signal arrives: wait until srun has really exited",
        'while true; do wait "$srun_pid"; rc=$?; kill -0 "$srun_pid" 2>/dev/null || break; done',
        'if [ "$preempted" = 1 ]; then',
        '  echo "scigpt: requeueing job ${SLURM_JOB_ID} (srun exit ${rc})"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def prepare_job(
    command: Sequence[str],
    profile: Profile,
    *,
    nodes: int | None,
    time: str | None,
    runs_dir: Path,
) -> Job:
    """The job for ``command`` (``train CONFIG …``, ``demo …``, ``prepare CONFIG …``). Training
    commands are validated now (a bad config fails here, not in the queue) and get a fixed run
    name plus ``--resume``, so a requeued job continues where it stopped."""
    if not command:
        raise ValueError("nothing to submit: scigpt submit [options] -- train CONFIG ...")
    sub, args = command[0], list(command[1:])
    if sub == "submit":
        raise ValueError("scigpt submit cannot submit itself")
    if sub in TRAINING:
        args += [a for o in profile.overrides for a in ("--set", o)]
        if sub == "train":
            config = args[0] if args else None
            if not config or config.startswith("-"):
                raise ValueError("scigpt submit -- train CONFIG: the config is missing")
            overrides = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--set"]
            loaded = load_config(config, overrides)
            # What the job would refuse, refused now: sources, variables, and memory per rank
            # against this profile's devices and the job's size (not the login node's).
            check_run(loaded, target=validate_target(loaded.config, cluster=profile, nodes=nodes))
            base = loaded.config.name
        else:
            base = "demo"
        name = _flag_value(args, "--run-name")
        if name is not None:
            check_run_name(name)
        else:
            name = default_run_name(base)
            args += ["--run-name", name]
        if "--resume" not in args:
            args.append("--resume")
        root = _flag_value(args, "--runs-dir")
        if root is None:
            args += ["--runs-dir", str(runs_dir)]
        job_dir = Path(root or runs_dir).resolve() / name
    else:
        name = f"{sub}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
        job_dir = runs_dir.resolve() / "jobs" / name
    return Job(
        command=[sub, *args],
        job_dir=job_dir,
        name=name,
        nodes=nodes or profile.nodes,
        time=time or profile.time,
    )


def write_script(job: Job, script: str, name: str = "job") -> Path:
    """Save the rendered script in the job directory (``slurm/<name>.sbatch``, plus a copy per
    submission) and return its path."""
    folder = job.job_dir / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    atomic_write_text(folder / f"{name}-{stamp}.sbatch", script)
    path = folder / f"{name}.sbatch"
    atomic_write_text(path, script)
    path.chmod(0o755)
    return path


def sbatch(path: Path, env: dict[str, str] | None = None) -> int:
    """Submit; returns the job id."""
    try:
        proc = subprocess.run(
            ["sbatch", "--parsable", str(path)], capture_output=True, text=True, env=env
        )
    except FileNotFoundError:
        raise RuntimeError(
            "sbatch not found: run scigpt submit on a Slurm login node (or use --dry-run)"
        ) from None
    if proc.returncode:
        raise RuntimeError(f"sbatch refused {path}: {proc.stderr.strip()}")
    return int(proc.stdout.strip().split(";")[0])


__all__ = [
    "Job",
    "Profile",
    "load_profile",
    "prepare_job",
    "render",
    "sbatch",
    "shipped_profiles",
    "write_script",
]
