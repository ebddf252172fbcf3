"""Run directories: the unit of truth (DESIGN.md §6).

``${SCIGPT_RUNS:-./runs}/<run name>/`` holds::

    config.yaml        resolved config (also inside every checkpoint)
    provenance.json    git SHA + dirty flag, installed packages, hosts, data manifest hash
    metrics.jsonl      one JSON object per logged step / evaluation (``MetricsLog``: one record
                       per step however often the run was killed and resumed)
    segments.json      each process that ran the run: host, pid, Slurm job, steps, seconds
    .lock              who writes the directory now (``scigpt.runlock``: one writer at a time)
    tb/                TensorBoard events
    checkpoints/       DeepSpeed checkpoints
    store/             ingested data (unless data.store points elsewhere)
    plots/             PNG figures
    eval/              evaluation tables (test_rmse.csv/.md: the run's test scores)
    eval/evaluate/     ``scigpt evaluate RUN``'s tables, plots and eval.json (read by export)

Every command that reads a run (train, export, evaluate, sweep, transfer, demo selection)
finds these paths through ``RunDir``; ``check_run_name`` is the one run-name check.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from scigpt.atomic import atomic_write_text
from scigpt.runlock import Holder, RunLock
from scigpt.safe_yaml import load_yaml_file

SUBDIRS = ("checkpoints", "plots", "eval", "tb")
SEGMENTS = "segments.json"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# A run name is one directory name: filesystems allow 255 bytes; leave room for suffixes that
# tools add beside it (".tmp-xxxxxxxx", "-pkg", "-eval").
MAX_RUN_NAME = 200
STAMP_CHARS = len("-20260101-000000")  # what default_run_name appends to a config's name


def runs_root(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get("SCIGPT_RUNS") or "./runs").expanduser().resolve()


def default_run_name(config_name: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return check_run_name(f"{config_name}-{stamp}")


def check_run_name(name: str) -> str:
    """A run name is one directory name: letters, digits, ``.``, ``_``, ``-``, at most
    ``MAX_RUN_NAME`` characters."""
    if not _RUN_NAME.match(name):
        raise ValueError(
            f"--run-name {name!r}: use letters, digits, '.', '_' and '-' only (it names one "
            "directory under the runs root)"
        )
    if len(name) > MAX_RUN_NAME:
        raise ValueError(
            f"--run-name {name[:40]}... is {len(name)} characters: use at most {MAX_RUN_NAME} "
            "(it names one directory; filesystems allow 255 bytes)"
        )
    return name


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file. A last line cut by a kill mid-write is left out; a damaged
    line before it is an error."""
    return [rec for _, rec in _metric_lines(Path(path))]


def _metric_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the last line, cut by a kill mid-write (no newline after it)
            raise ValueError(
                f"{path}: line {i + 1} is not JSON: the metrics file is damaged"
            ) from None
        out.append((line, rec))
    return out


class MetricsLog:
    """The one writer of ``metrics.jsonl``: appends one JSON line per record, flushed each time
    (a killed run keeps what it logged). ``guard`` runs before every write (the run lock's
    check: a process that lost the run directory writes nothing more)."""

    def __init__(self, path: Path, guard: Callable[[], None] | None = None):
        self.path = Path(path)
        self._guard = guard
        self._f = self.path.open("a")

    def append(self, record: dict[str, Any], step: int) -> None:
        if self._guard is not None:
            self._guard()
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        self._f.write(json.dumps({"step": step, **clean}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class Segment:
    """One process's share of a run (the first start, each resume or requeue): its steps and
    training seconds, kept in ``segments.json`` so that device-hours add up over every segment,
    killed ones included. The clock runs from ``start()`` (the training loop) to ``close()``;
    the lock's heartbeat writes the file, so a killed segment counts up to its last heartbeat."""

    def __init__(self, run: RunDir, records: list[dict[str, Any]]):
        self.run, self._records = run, records
        self.record = records[-1]
        self._lock = threading.Lock()
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def at(self, step: int) -> None:
        """The step this segment has reached (cheap: written at the next flush)."""
        self.record["last_step"] = int(step)

    def flush(self) -> None:
        with self._lock:
            if self._t0 is not None:
                self.record["train_s"] = time.perf_counter() - self._t0
            self.record["updated_utc"] = _utc()
            self.run._write_segments(self._records)

    def stop(self) -> None:
        """Stop the clock (the segment's seconds are final; it is still running)."""
        self.flush()
        self._t0 = None

    def close(self, state: str) -> None:
        """Stop the clock and record how the segment ended (completed, preempted, failed)."""
        self.stop()
        self.record["state"] = state
        self.flush()


class RunDir:
    """A run directory. The name is fixed at creation; a resumed job reuses the directory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.run_lock: RunLock | None = None

    @classmethod
    def create(cls, root: Path, name: str, resolved_config: dict[str, Any]) -> RunDir:
        path = root / name
        if (path / "config.yaml").exists():
            raise FileExistsError(
                f"run directory {path} already exists: choose another --run-name, "
                "or remove the directory to start over"
            )
        path.mkdir(parents=True, exist_ok=True)
        for sub in SUBDIRS:
            (path / sub).mkdir(exist_ok=True)
        run = cls(path)
        atomic_write_text(path / "config.yaml", yaml.safe_dump(resolved_config, sort_keys=False))
        return run

    # paths ---------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def provenance_path(self) -> Path:
        return self.path / "provenance.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def test_table(self) -> Path:
        """The run's per-variable test RMSE (``eval/test_rmse.csv``, written at the end)."""
        return self.eval_dir / "test_rmse.csv"

    @property
    def evaluate_dir(self) -> Path:
        """Where ``scigpt evaluate RUN`` writes (``eval/evaluate``; export reads its eval.json)."""
        return self.eval_dir / "evaluate"

    def is_run(self) -> bool:
        """Whether the directory looks like a run directory (it has ``checkpoints/``)."""
        return self.checkpoints.is_dir()

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    def check_same_config(
        self, resolved: dict[str, Any], saved: dict[str, Any] | None = None
    ) -> None:
        """A resumed run must use the config it started with (the length of training, logging,
        retention and the parallel layout may change: a checkpoint reshards onto another
        layout); anything else is an error naming the keys. ``saved``: the run's config.yaml
        as the current schema reads it (default: as written)."""
        old = _flatten(self.read_config() if saved is None else saved)
        new = _flatten(resolved)
        may_change = (
            "schedule.steps", "logging.", "checkpoint.keep_", "eval.early_stop", "parallel.",
        )  # fmt: skip
        diff = sorted(
            k for k in old.keys() | new.keys()
            if old.get(k) != new.get(k) and not k.startswith(may_change)
        )  # fmt: skip
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
            raise ValueError(
                f"cannot resume {self.path}: the config differs from the run's ({shown}); "
                "resume with the run's own config.yaml or start a new --run-name"
            )

    def read_config(self) -> dict[str, Any]:
        return load_yaml_file(self.config_path, "run config")

    def write_json(self, rel: str, obj: Any) -> Path:
        out = self.path / rel
        atomic_write_text(out, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        return out

    # ---- one writer --------------------------------------------------------------------------
    def lock(self, *, break_lock: bool = False) -> RunLock:
        """Take the run directory's lock (``scigpt.runlock``; created if need be). Raises
        ``RunLocked`` naming the holder when another live process has it."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.run_lock = RunLock(self.path).acquire(break_lock=break_lock)
        return self.run_lock

    def unlock(self) -> None:
        if self.run_lock is not None:
            self.run_lock.release()
            self.run_lock = None

    def check_lock(self) -> None:
        """Raise ``RunLockLost`` if this process held the lock and another took it over."""
        if self.run_lock is not None:
            self.run_lock.check()

    # ---- metrics -----------------------------------------------------------------------------
    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_path)

    def test_record(self) -> dict[str, Any] | None:
        """The run's ``kind: test`` record (written last: a run that has one has finished)."""
        found = None
        for rec in self.metrics():
            if rec.get("kind") == "test":
                found = rec
        return found

    def finished(self, steps: int) -> dict[str, Any] | None:
        """The test record if the run finished: it reached ``steps`` or stopped early there."""
        recs = self.metrics()
        tests = [r for r in recs if r.get("kind") == "test"]
        if not tests:
            return None
        test = tests[-1]
        stopped = any(r.get("kind") == "early_stop" and r["step"] == test["step"] for r in recs)
        return test if test["step"] >= steps or stopped else None

    def resume_metrics(self, start_step: int) -> int:
        """Drop what a killed or preempted segment logged past ``start_step`` (the step it is
        resumed from: 0 when it had no checkpoint) and any test record, so the resumed run
        writes each step once. Returns the number of records dropped."""
        lines = _metric_lines(self.metrics_path)
        keep = [
            line for line, rec in lines if rec["step"] <= start_step and rec.get("kind") != "test"
        ]
        text = self.metrics_path.read_text() if self.metrics_path.is_file() else ""
        torn = bool(text) and not text.endswith("\n")  # a last line cut mid-write
        if len(keep) != len(lines) or torn:
            atomic_write_text(self.metrics_path, "".join(line + "\n" for line in keep))
        return len(lines) - len(keep)

    def open_metrics(self) -> MetricsLog:
        return MetricsLog(self.metrics_path, guard=self.check_lock)

    # ---- segments ----------------------------------------------------------------------------
    def segments(self) -> list[dict[str, Any]]:
        path = self.path / SEGMENTS
        if not path.is_file():
            return []
        return list(json.loads(path.read_text())["segments"])

    def _write_segments(self, records: list[dict[str, Any]]) -> None:
        self.write_json(SEGMENTS, {"segments": records})

    def begin_segment(self, *, start_step: int, world_size: int) -> Segment:
        """Record that this process (re)starts the run at ``start_step``; a segment left
        ``running`` by an earlier process was killed."""
        records = self.segments()
        if not records and start_step > 0:
            # A run written before segments.json existed (7c47fe5 and older; issue 19) reached
            # ``start_step`` in processes nobody recorded: one earlier segment whose host,
            # process, world size and seconds are unknown (None; device_hours leaves it out, as
            # those versions counted only the current process's time).
            records.append({
                "index": 0, "state": "unrecorded", "host": None, "pid": None,
                "slurm_job_id": None, "slurm_restart_count": None, "world_size": None,
                "start_step": 0, "last_step": int(start_step), "train_s": None,
                "started_utc": None, "updated_utc": None,
            })  # fmt: skip
        for rec in records:
            if rec.get("state") == "running":
                rec["state"] = "killed"
        me = Holder.current()
        records.append({
            "index": len(records), "state": "running", "host": me.host, "pid": me.pid,
            "slurm_job_id": me.job_id, "slurm_restart_count": me.restart_count,
            "world_size": int(world_size), "start_step": int(start_step),
            "last_step": int(start_step), "train_s": 0.0, "started_utc": _utc(),
            "updated_utc": _utc(),
        })  # fmt: skip
        seg = Segment(self, records)
        seg.flush()
        if self.run_lock is not None:
            self.run_lock.on_beat(seg.flush)
        return seg

    def device_hours(self) -> float:
        """Training device-hours over every segment (seconds x world size); an unrecorded
        segment (None: see ``begin_segment``) is left out."""
        segs = [s for s in self.segments() if s["train_s"] is not None]
        return sum(s["train_s"] * s["world_size"] for s in segs) / 3600


def _utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """SHA and dirty flag of the checkout the code runs from (None outside a git checkout)."""
    cwd = cwd or Path(__file__).resolve().parent
    sha = _git("rev-parse", "HEAD", cwd=cwd)
    if sha is None:
        return {"sha": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"sha": sha, "dirty": bool(status)}


def installed_packages() -> list[str]:
    """``pip freeze`` equivalent from importlib.metadata (no subprocess, works without pip)."""
    pkgs = {
        f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]
    }
    return sorted(pkgs, key=str.lower)


def provenance(
    *, data_manifest_sha256: str | None, hosts: list[str], extra: dict[str, Any]
) -> dict:
    return {
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
        "git": git_state(),
        "command": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "hosts": hosts,
        "data_manifest_sha256": data_manifest_sha256,
        "packages": installed_packages(),
        **extra,
    }
