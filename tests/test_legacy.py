"""Runs and packages written by 7c1cec6 (before the trainer was split into parts) still resume and
load: tests/data/legacy_7c1cec6 holds a finished 2-step run (tiny model: embed_dim 16, depth 1)
and its exported package, both written by that commit, with what that commit's own code made
of them (expected_*.json). See tests/data/legacy_7c1cec6/README.md. About 40 s (one resume)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scigpt.rundir import read_metrics
from tests.conftest import job_env

LEGACY = Path(__file__).parent / "data" / "legacy_7c1cec6"
TIMING = {"samples_per_s", "tokens_per_s", "tflops_per_device", "mfu", "mem_gb", "device_hours"}


def test_legacy_package_loads_and_forecasts_the_same():
    """The package loader reads the old package; its forecast of a fixed input equals the one
    7c1cec6 computed (same CPU computation: exact)."""
    from scigpt.export.package import load_pretrained

    pm = load_pretrained(LEGACY / "package")
    expected = json.loads((LEGACY / "expected_forecast.json").read_text())
    names = pm.var_names
    g = torch.Generator().manual_seed(expected["input_seed"])
    means = torch.tensor([v["mean"] for v in pm.variables])[:, None, None, None]
    stds = torch.tensor([v["std"] for v in pm.variables])[:, None, None, None]
    x = means + stds * torch.randn(len(names), 2, 41, 41, generator=g)
    lat, lon = np.linspace(52, 42, 41), np.linspace(3, 13, 41)
    y = pm.forecast(x[None], names, lat, lon, np.array(["2020-01-01T12:00"], "datetime64[ns]"))
    assert list(y.shape) == expected["shape"]
    assert y[0, :, 0, 0].tolist() == expected["first"]
    assert float(y.double().sum()) == expected["sum"]


def test_legacy_checkpoint_resumes_exactly(tmp_path, torch_extensions_dir):
    """`scigpt train --resume` continues the old run's checkpoint (typed checkpoint state read
    from the legacy client-state dict) for two more steps: every loss, gradient norm, learning
    rate, validation and test score equals what 7c1cec6 itself logged resuming it (exact)."""
    shutil.copytree(LEGACY / "run", tmp_path / "legacy")
    for sub in ("plots", "eval", "tb"):  # empty in the original run; git keeps no empty folder
        (tmp_path / "legacy" / sub).mkdir()
    cmd = [sys.executable, "-m", "scigpt", "train", str(tmp_path / "legacy" / "config.yaml"),
           "--resume", "--run-name", "legacy", "--runs-dir", str(tmp_path),
           "--set", "schedule.steps=4"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=job_env(torch_extensions_dir))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "resumed legacy from step 2" in proc.stdout
    got = [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in read_metrics(tmp_path / "legacy" / "metrics.jsonl")
        if r["step"] > 2
    ]
    expected = json.loads((LEGACY / "expected_resume.json").read_text())
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a == b, (a, b)


def test_checkpoint_state_reads_the_legacy_client_state():
    """``CheckpointState.read`` takes every client key 7c1cec6 saved, and ``to_dict`` writes
    them back unchanged (same keys, same order, same values); a state without the keys older
    versions lacked gets the defaults those versions implied."""
    from scigpt.parallel.reshard import client_state
    from scigpt.train.checkpoint import CheckpointState

    ckpt = LEGACY / "run" / "checkpoints" / "step_00000002"
    raw = client_state(ckpt)
    state = CheckpointState.read(ckpt)
    ours = state.to_dict()
    assert list(ours) == [k for k in raw if k in ours]  # the order 7c1cec6 wrote
    assert ours == {k: raw[k] for k in ours}
    assert state.step == 2 and state.layout == {"dp": 1, "tp": 1, "pp": 1, "zero_stage": 1}
    old = {k: raw[k] for k in ("config", "step", "world_size", "variables", "stats", "loader")}
    older = CheckpointState.from_dict(old)
    assert older.best_val == float("inf") and older.skipped == 0 and older.heads is None
    assert older.variable_stats == {} and older.layout is None
    with pytest.raises(ValueError, match="holds no run config"):
        CheckpointState.from_dict({"step": 3})
