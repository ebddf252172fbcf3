"""Shared test fixtures."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pytest
import torch

pytest_plugins = ["tests.slurm_cluster"]  # session fixture `slurm`: a real single-node Slurm
if not torch.cuda.is_available():
    # Triton decorates its own library (tl.sum, tl.max, tl.zeros are @triton.jit functions) once,
    # at its first import, for the interpreter or for the compiler, as TRITON_INTERPRET is then.
    # Without a GPU the kernel tests run interpreted, and anything may import Triton first
    # (torch.utils.flop_counter does): import it here, before any test module, in interpreter
    # mode, then restore the variable. Ahead-of-time compilation runs in subprocesses.
    _saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    import triton  # noqa: F401

    if _saved is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _saved


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` exist only where CUDA does: without it they are deselected (not
    skipped), so a skip always means something is wrong."""
    if torch.cuda.is_available():
        return
    gpu = [it for it in items if it.get_closest_marker("cuda")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [it for it in items if not it.get_closest_marker("cuda")]


@pytest.fixture(scope="session")
def sample_era5_dir() -> Path:
    """The ERA5 Rhine sample shipped as package data (works against an installed wheel too)."""
    path = Path(str(resources.files("scigpt.sample_data") / "era5_rhine_2020-01-01"))
    assert path.is_dir(), f"shipped sample folder missing: {path}"
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample files the tests read (tests/data, see its PROVENANCE.md): kept in the
    repository so a clone with nothing beside it runs the suite (new samples are copied in
    with a PROVENANCE.md row)."""
    path = Path(__file__).parent / "data"
    assert path.is_dir(), f"test data not found at {path}"
    return path


@pytest.fixture(scope="session")
def torch_extensions_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Where DeepSpeed caches its CPU comm op (~30 s to build once); CI sets its own."""
    own = os.environ.get("TORCH_EXTENSIONS_DIR")
    return own or str(tmp_path_factory.mktemp("torch_extensions"))


@pytest.fixture(scope="session")
def demo_package(tmp_path_factory, torch_extensions_dir) -> Path:
    """A model package of a 6-step demo run (shared, read-only: copy it before changing it)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("demo_package")
    env = job_env(torch_extensions_dir)
    for args in (
        ["demo", "--steps", "6", "--runs-dir", str(root), "--run-name", "r", "--set",
         "logging.progress=false", "--set", "schedule.warmup_steps=2"],
        ["export", str(root / "r"), str(root / "pkg")],
    ):  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "scigpt", *args], env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return root / "pkg"


def corrupt_copy(store_dir: Path, dest: Path, shard: str) -> Path:
    """Copy a store and flip one byte in the middle of ``shard`` (relative path); returns dest."""
    import shutil

    shutil.copytree(store_dir, dest)
    path = dest / shard
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return dest


# Variables a launcher may have left in the test's own environment; jobs launched by the tests
# must discover their ranks from what mpirun / torchrun set, not from these.
LAUNCH_VARS = frozenset(
    {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR",
     "MASTER_PORT"}
)  # fmt: skip
LAUNCH_PREFIXES = ("SLURM_", "OMPI_COMM_WORLD_")


def job_env(torch_extensions_dir: str | Path | None = None) -> dict[str, str]:
    """Environment for a launched job: no inherited rank variables, one thread per op, the
    session's DeepSpeed op cache, and OpenMPI allowed to run as root (containers, CI)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCH_VARS and not k.startswith(LAUNCH_PREFIXES)
    }
    env.update(OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if torch_extensions_dir is not None:
        env["TORCH_EXTENSIONS_DIR"] = str(torch_extensions_dir)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_job(cmd: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 240):
    """Run a launcher (torchrun, mpirun) to completion; return the probes' JSON records (the
    ``{"rank": ...}`` lines, sorted by rank) and a report of the command and its output."""
    import json
    import re
    import signal
    import subprocess

    # Own session, so a hung job can be killed with all its ranks, not just the launcher.
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout_s} s\n{out}\n{err}")
    report = f"{' '.join(cmd)}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{report}"
    # Found anywhere in the output: ranks share one pipe with the launchers' own messages; each
    # probe writes its record as one whole line.
    records = [json.loads(m.group()) for m in re.finditer(r'\{"rank".*\}', out)]
    return sorted(records, key=lambda r: r["rank"]), report
