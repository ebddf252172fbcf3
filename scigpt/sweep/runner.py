"""Run a sweep's points locally (one after another) or on Slurm (job arrays), track their status,
collect their results and write the report.

A sweep directory (default ``$SCIGPT_RUNS/sweeps/<name>``)::

    sweep.yaml            the sweep file as run
    points.json           every point: name, settings, overrides
    status/<point>.json   state (done | failed | running), attempts, last error, run directory
    runs/<point>/         each point's run directory (config, metrics, checkpoints, Slurm logs)
    logs/<point>.log      local runs: the point's output
    store/                the patch store every point shares (ingested once)
    points.csv, report.md, fits.json, loss_vs_*.png   the report (``scigpt sweep --report DIR``)

Resuming runs nothing that finished: done points are skipped, a point stopped mid-run continues
from its last checkpoint (``--resume``), and failed points are retried up to ``max_retries``
times; the summary names every point that failed and why.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from scigpt.atomic import atomic_write_text
from scigpt.cluster import load_profile
from scigpt.config_loader import load_config
from scigpt.data_pipeline.store import GridStore
from scigpt.launch.env import discover
from scigpt.models.sizing import flops_per_token, grid_tokens
from scigpt.models.vit import ModelSpec
from scigpt.prepare import prepare_from_config
from scigpt.rundir import RunDir
from scigpt.safe_yaml import load_yaml_file
from scigpt.slurm.submit import Job, render, sbatch, write_script
from scigpt.sweep.diagnostics import diagnose_sweep
from scigpt.sweep.report import write_report
from scigpt.sweep.spec import Point, Sweep
from scigpt.train.trainer import train

SHARED_DATA_KEYS = ("data.train_fraction", "data.loader.")  # keys that keep one store valid


# ---- status ------------------------------------------------------------------------------------


def _status_path(out: Path, name: str) -> Path:
    return out / "status" / f"{name}.json"


def read_status(out: Path, name: str) -> dict[str, Any]:
    p = _status_path(out, name)
    return json.loads(p.read_text()) if p.is_file() else {"state": "pending", "attempts": 0}


def write_status(out: Path, name: str, **fields: Any) -> None:
    status = {**read_status(out, name), **fields, "updated": time.time()}
    p = _status_path(out, name)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(status, indent=1) + "\n")


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ---- setting up ----------------------------------------------------------------------------------


def _shares_store(sweep: Sweep) -> bool:
    keys = list(sweep.spec.set) + list(sweep.spec.axes) + [k for m in sweep.spec.models for k in m]
    return not any(k.startswith("data.") and not k.startswith(SHARED_DATA_KEYS) for k in keys)


def _steps_for(sweep: Sweep, store_dir: Path) -> Callable[[dict[str, Any], float], int]:
    """Compute-matched designs: steps that spend ``budget`` training FLOPs for a model setting
    (3 × forward model FLOPs per sample, ``scigpt.models.sizing``, × samples per step)."""

    def steps(overrides: dict[str, Any], budget: float) -> int:
        sets = [f"{k}={json.dumps(v)}" for k, v in {**sweep.spec.set, **overrides}.items()]
        cfg = load_config(sweep.base_config, sets).config
        store = GridStore(store_dir, source=cfg.data.sources[0].name, verify=False)
        n = grid_tokens(cfg.model, len(store.lat), len(store.lon))
        spec = ModelSpec(num_vars=len(store.variables), history=cfg.data.history)
        per_sample = flops_per_token(cfg.model, spec, n) * n
        per_step = per_sample * cfg.schedule.micro_batch_size * cfg.schedule.grad_accum
        return max(cfg.schedule.warmup_steps + 1, round(budget / per_step))

    return steps


def plan(sweep: Sweep, out: Path, *, progress: bool = True) -> list[Point]:
    """Create the sweep directory, ingest the shared store once, expand and record the points."""
    out.mkdir(parents=True, exist_ok=True)
    # The copy names its base config absolutely: job arrays load it from the sweep directory.
    raw = load_yaml_file(sweep.path, "sweep")
    raw["base"] = str(Path(sweep.base_config).resolve())
    atomic_write_text(out / "sweep.yaml", yaml.safe_dump(raw, sort_keys=False))
    steps_for = None
    if _shares_store(sweep):
        sets = [f"{k}={json.dumps(v)}" for k, v in sweep.spec.set.items()]
        loaded = load_config(sweep.base_config, sets)
        prepare_from_config(loaded, out / "store", progress=progress)
        if sweep.spec.design == "compute_matched":
            steps_for = _steps_for(sweep, out / "store")
    elif sweep.spec.design == "compute_matched":
        raise ValueError(
            "compute_matched sweeps share one data store: vary only data.train_fraction and "
            "data.loader.* among the data keys"
        )
    points = sweep.points(steps_for)
    atomic_write_text(
        out / "points.json",
        json.dumps([{"name": p.name, "settings": p.settings, "overrides": p.overrides,
                     "budget": p.budget} for p in points], indent=1, default=str) + "\n",
    )  # fmt: skip
    return points


def point_overrides(sweep: Sweep, out: Path, point: Point) -> list[str]:
    """The config overrides (``--set`` values) of a point."""
    sets = sweep.overrides(point)
    if _shares_store(sweep):
        sets.append(f"data.store={json.dumps(str(out / 'store'))}")
    return [*sets, "logging.progress=false"]


def point_args(sweep: Sweep, out: Path, point: Point) -> list[str]:
    """The ``scigpt train`` arguments of a point (after ``train``)."""
    args = [str(sweep.base_config)]
    for o in point_overrides(sweep, out, point):
        args += ["--set", o]
    return [*args, "--run-name", point.name, "--runs-dir", str(out / "runs"), "--resume"]


def todo(sweep: Sweep, out: Path, points: list[Point]) -> list[Point]:
    """Points still to run: not done, and failed fewer than 1 + max_retries times."""
    keep = []
    for p in points:
        st = read_status(out, p.name)
        if st["state"] == "done":
            continue
        if st["state"] == "failed" and st["attempts"] > sweep.spec.max_retries:
            continue
        keep.append(p)
    return keep


# ---- running -------------------------------------------------------------------------------------


def run_local(sweep: Sweep, out: Path, points: list[Point], *, env: dict | None = None) -> None:
    """Run the points one after another, each in its own process (a crash fails one point)."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for point in tqdm(points, desc=f"sweep {sweep.spec.name}", unit="point"):
        attempts = read_status(out, point.name)["attempts"] + 1
        write_status(out, point.name, state="running", attempts=attempts,
                     run_dir=str(out / "runs" / point.name))  # fmt: skip
        cmd = [sys.executable, "-m", "scigpt", "train", *point_args(sweep, out, point)]
        log = out / "logs" / f"{point.name}.log"
        with log.open("a") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        if proc.returncode == 0:
            write_status(out, point.name, state="done", error=None)
        else:
            write_status(out, point.name, state="failed", exit_code=proc.returncode,
                         error=_tail(log.read_text()))  # fmt: skip


def submit_arrays(
    sweep: Sweep, out: Path, points: list[Point], *, cluster: str | None = None, env=None
) -> list[int]:
    """One Slurm job array per resource shape (an array shares one resource request), throttled
    to ``slurm.throttle`` tasks at once. Each array task runs ``scigpt sweep --array-task``."""
    sl = sweep.spec.slurm
    profile = load_profile(cluster or sl.cluster)
    # The resource shape of a point: nodes and time (the same for every point of one sweep
    # unless a future axis sets them); points are grouped by it.
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        shape = (sl.nodes or profile.nodes, sl.time or profile.time)
        groups.setdefault(shape, []).append(p)
    job_ids = []
    for i, ((nodes, limit), members) in enumerate(sorted(groups.items())):
        group = f"array{i}"
        atomic_write_text(out / "arrays" / f"{group}.json",
                          json.dumps([p.name for p in members]) + "\n")  # fmt: skip
        job = Job(
            command=["sweep", str(out / "sweep.yaml"), "--out", str(out), "--array-task", group],
            job_dir=out, name=f"{sweep.spec.name}-{group}", nodes=nodes, time=limit,
            array=f"0-{len(members) - 1}%{sl.throttle}",
        )  # fmt: skip
        script = write_script(job, render(profile, job, cwd=out), name=group)
        for p in members:
            attempts = read_status(out, p.name)["attempts"]
            write_status(out, p.name, state="queued", attempts=attempts)
        job_ids.append(sbatch(script, env=env))
    return job_ids


def run_array_task(sweep: Sweep, out: Path, group: str) -> int:
    """Inside a job array task (every srun task calls this): train the point
    ``SLURM_ARRAY_TASK_ID`` of ``group`` in this process. Rank 0 records the status."""
    names = json.loads((out / "arrays" / f"{group}.json").read_text())
    index = int(os.environ["SLURM_ARRAY_TASK_ID"])
    by_name = {p["name"]: p for p in json.loads((out / "points.json").read_text())}
    entry = by_name[names[index]]
    point = Point(entry["name"], entry["settings"], entry["overrides"], entry["budget"])
    sets = point_overrides(sweep, out, point)
    main = discover().rank == 0
    if main:
        attempts = read_status(out, point.name)["attempts"] + 1
        write_status(out, point.name, state="running", attempts=attempts,
                     run_dir=str(out / "runs" / point.name),
                     slurm_job=os.environ.get("SLURM_ARRAY_JOB_ID"))  # fmt: skip
    try:
        result = train(load_config(sweep.base_config, sets), run_name=point.name,
                       root=out / "runs", resume=True)  # fmt: skip
    except Exception as e:
        if main:
            write_status(out, point.name, state="failed", error=f"{type(e).__name__}: {e}")
        raise
    if main and not result.preempted:
        write_status(out, point.name, state="done", error=None)
    return 0


# ---- collecting ----------------------------------------------------------------------------------


def collect(out: Path, objective: str = "test", metric: str = "model_mse") -> list[dict]:
    """One record per finished point: its settings, scale (params, data, compute) and losses."""
    records = []
    for entry in json.loads((out / "points.json").read_text()):
        name = entry["name"]
        if read_status(out, name)["state"] != "done":
            continue
        recs = RunDir(out / "runs" / name).metrics()
        test = [r for r in recs if r["kind"] == "test"][-1]
        vals = [r[metric] for r in recs if r["kind"] == "val"]
        row = {
            "name": name,
            **{k: v for k, v in entry["settings"].items()},
            "params": test["n_params"],
            "data": test["train_samples"] * test["tokens_per_sample"],  # unique training tokens
            "tokens": test["samples_seen"] * test["tokens_per_sample"],
            "compute": test["train_flops"],
            "device_hours": test["device_hours"],
            "test": test[metric],
            "best_val": min(vals) if vals else math.nan,
            "final_val": vals[-1] if vals else math.nan,
        }
        row["loss"] = row[objective]
        records.append(row)
    return records


def summary(sweep: Sweep, out: Path, points: list[Point]) -> tuple[int, list[tuple[str, str]]]:
    """(points done, [(failed point, why)])."""
    done, failed = 0, []
    for p in points:
        st = read_status(out, p.name)
        if st["state"] == "done":
            done += 1
        elif st["state"] == "failed":
            failed.append((p.name, (st.get("error") or "").splitlines()[-1:] or ["?"]))
    return done, [(n, e[0]) for n, e in failed]


def report(out: Path, objective: str, metric: str) -> dict[str, Path]:
    records = collect(out, objective, metric)
    if not records:
        raise ValueError(f"{out}: no finished points to report on")
    files = write_report(records, out, objective=f"{objective} {metric}")
    diag, section = diagnose_sweep(out, records, label=f"{objective} {metric}")
    atomic_write_text(files["markdown"], files["markdown"].read_text() + section)
    return {**files, **diag}
