"""Run directories: the unit of truth (DESIGN.md §6).

``${SCIGPT_RUNS:-./runs}/<run name>/`` holds::

    config.yaml        resolved config (also inside every checkpoint)
    provenance.json    git SHA + dirty flag, installed packages, hosts, data manifest hash
    metrics.jsonl      one JSON object per logged step / evaluation
    tb/                TensorBoard events
    checkpoints/       DeepSpeed checkpoints
    store/             ingested data (unless data.store points elsewhere)
    plots/             PNG figures
    eval/              evaluation tables
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from scigpt.atomic import atomic_write_text

SUBDIRS = ("checkpoints", "plots", "eval", "tb")


def runs_root(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get("SCIGPT_RUNS") or "./runs").expanduser().resolve()


def default_run_name(config_name: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{config_name}-{stamp}"


class RunDir:
    """A run directory. The name is fixed at creation; a resumed job reuses the directory."""

    def __init__(self, path: Path):
        self.path = Path(path)

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
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    def check_same_config(self, resolved: dict[str, Any]) -> None:
        """A resumed run must use the config it started with (the length of training, logging,
        retention and the parallel layout may change: a checkpoint reshards onto another
        layout); anything else is an error naming the keys."""
        old = _flatten(self.read_config())
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
        return yaml.safe_load(self.config_path.read_text())

    def write_json(self, rel: str, obj: Any) -> Path:
        out = self.path / rel
        atomic_write_text(out, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        return out


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
