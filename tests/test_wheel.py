"""Build the wheel, install it into a scratch venv, and run the installed CLI.

A missing package-data entry (configs, slurm profiles, sample data) or a broken package-dir
mapping fails here, not on a user's cluster. Dependencies come from the test venv through a
``.pth`` line, so nothing is downloaded; scigpt itself comes only from the wheel.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build_dir = tmp_path_factory.mktemp("build")
    # Build from a copy of the tracked files so the checkout gets no build/ or egg-info litter.
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for rel in filter(None, files):
        src, dst = ROOT / rel.decode(), build_dir / rel.decode()
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(build_dir)],
        cwd=build_dir,
    )  # fmt: skip
    (whl,) = out.glob("scigpt-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in [
        "scigpt/cli.py",
        "scigpt/data_pipeline/loader.py",
        "scigpt/data_pipeline/ingest/netcdf.py",
        "scigpt/launch/env.py",
        "scigpt/kernels/__init__.py",
        "scigpt/kernels/flash_attention.py",
        "scigpt/kernels/patch_embed.py",
        "scigpt/kernels/aot.py",
        "scigpt/export/package.py",
        "scigpt/export/loader.py",
        "scigpt/commands/dispatch.py",
        "scigpt/tables.py",
        "scigpt/finetune/lora.py",
        "scigpt/sweep/runner.py",
        "scigpt/configs/sweeps/tiny-scaling.yaml",
        "scigpt/configs/runs/demo.yaml",
        "scigpt/configs/models/vit-tiny.yaml",
        "scigpt/slurm/__init__.py",
        "scigpt/sample_data/PROVENANCE.md",
        "scigpt/sample_data/era5_rhine_2020-01-01/ERA5_2020-01-01_u10.nc",
    ]:
        assert must in names, f"{must} missing from {wheel.name}"
    # No generic top-level module names land in site-packages.
    tops = {n.split("/")[0] for n in names if not n.startswith("scigpt-")}
    assert tops == {"scigpt"}, tops


@pytest.mark.slow
def test_installed_wheel_runs_cli(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    site = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
             cwd=tmp_path).stdout.strip()
    )  # fmt: skip
    # Dependencies from this test venv; .pth files there (our editable install) are not read.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
         "-q", str(wheel)],
        cwd=tmp_path,
    )  # fmt: skip
    scigpt = venv / "bin" / "scigpt"
    assert "demo" in _run([str(scigpt), "--help"], cwd=tmp_path).stdout
    for sub in ("demo", "train", "validate"):
        assert "usage: scigpt" in _run([str(scigpt), sub, "--help"], cwd=tmp_path).stdout
    where = _run(
        [str(py), "-c", "import scigpt.data_pipeline as d, scigpt.launch as l; "
         "from scigpt.config_loader import shipped_config; "
         "print(d.__file__); print(l.__file__); print(shipped_config('runs/demo.yaml'))"],
        cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    assert all(p.startswith(str(site)) for p in where), where  # from the wheel, not the checkout
    # The shipped config, by its short name, validates from the installed package data.
    ok = _run([str(scigpt), "validate", "runs/demo.yaml", "--json"], cwd=tmp_path)
    assert '"preset": "vit-tiny"' in ok.stdout
    bad = subprocess.run(
        [str(scigpt), "validate", "runs/demo.yaml", "--set", "parallel.tp=3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "parallel.tp=3 does not divide" in bad.stderr
