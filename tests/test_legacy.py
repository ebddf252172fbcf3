"""Runs and packages written by older commits still resume and load. Each folder in
tests/data/legacy_<commit> holds a finished 2-step run (tiny model: embed_dim 16, depth 1) and
its exported package, both written by that commit, with what that commit's own code made of them
(expected_*.json); see each folder's README.md.

- legacy_7c47fe5: before the run lock, segments.json and metrics de-duplication (issue 19) and
  the demo's validation block (issue 18): no segments.json, no validation, no best checkpoint.
- legacy_7c1cec6: before the trainer was split into parts (issue 21).

About 25 s (one resume per fixture, ~12 s each) once DeepSpeed's CPU op is built."""

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

DATA = Path(__file__).parent / "data"
FIXTURES = ["legacy_7c47fe5", "legacy_7c1cec6"]
TIMING = {"samples_per_s", "tokens_per_s", "tflops_per_device", "mfu", "mem_gb", "device_hours"}
# Keys the test record gained after a fixture's commit, checked on their own below: the test
# checkpoint and per-variable wins/losses (issue 18), the run's segment count (issue 19).
NEWER_TEST_KEYS = {
    "legacy_7c47fe5": {"checkpoint_step", "better_than_persistence", "worse_than_persistence",
                       "segments"},
    "legacy_7c1cec6": set(),
}  # fmt: skip


@pytest.fixture(params=FIXTURES)
def legacy(request) -> Path:
    return DATA / request.param


def test_legacy_package_loads_and_forecasts_the_same(legacy):
    """The package loader reads the old package; its forecast of a fixed input equals the one
    the old commit computed (same CPU computation: exact)."""
    from scigpt.export.package import load_pretrained

    pm = load_pretrained(legacy / "package")
    expected = json.loads((legacy / "expected_forecast.json").read_text())
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


def test_legacy_checkpoint_resumes_exactly(legacy, tmp_path, torch_extensions_dir):
    """`scigpt train --resume` continues the old run's checkpoint (typed checkpoint state read
    from the legacy client-state dict; for 7c47fe5 a config.yaml without the keys added since
    and no segments.json) for two more steps: every loss, gradient norm, learning rate,
    validation and test score equals what the old commit itself logged resuming it (exact);
    the test record's newer keys agree with the old commit's per-variable test table."""
    shutil.copytree(legacy / "run", tmp_path / "legacy")
    for sub in ("plots", "eval", "tb"):  # empty in the original run; git keeps no empty folder
        (tmp_path / "legacy" / sub).mkdir(exist_ok=True)
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
    expected = json.loads((legacy / "expected_resume.json").read_text())
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in expected]
    newer = NEWER_TEST_KEYS[legacy.name]
    for a, b in zip(got, expected, strict=True):
        assert set(a) - set(b) == (newer if a["kind"] == "test" else set()), (a, b)
        assert {k: a[k] for k in b} == b, (a, b)
    test = got[-1]
    assert test["segments"] == 2  # the old run's process (unrecorded before issue 19) + this one
    if "checkpoint_step" in newer:  # a run without validation tests its last checkpoint
        assert test["checkpoint_step"] == test["step"]
    table = tmp_path / "legacy" / "eval" / "test_rmse.csv"
    if (legacy / "expected_test_rmse.csv").is_file():  # the old commit's own table (exact)
        assert table.read_text() == (legacy / "expected_test_rmse.csv").read_text()
        rows = [line.split(",") for line in table.read_text().splitlines()[1:-1]]  # no mean
        rmse = {v: (float(m), float(p)) for v, m, p, _ in rows}
        assert test["better_than_persistence"] == [v for v, (m, p) in rmse.items() if m < p]
        assert test["worse_than_persistence"] == [v for v, (m, p) in rmse.items() if m >= p]


def test_checkpoint_state_reads_the_legacy_client_state(legacy):
    """``CheckpointState.read`` takes every client key the old commit saved, and ``to_dict``
    writes them back unchanged (same keys, same order, same values)."""
    from scigpt.parallel.reshard import client_state
    from scigpt.train.checkpoint import CheckpointState

    ckpt = legacy / "run" / "checkpoints" / "step_00000002"
    raw = client_state(ckpt)
    state = CheckpointState.read(ckpt)
    ours = state.to_dict()
    assert list(ours) == [k for k in raw if k in ours]  # the order the old commit wrote
    assert ours == {k: raw[k] for k in ours}
    assert state.step == 2 and state.layout == {"dp": 1, "tp": 1, "pp": 1, "zero_stage": 1}


def test_checkpoint_state_defaults_for_older_client_states():
    """A client state without the keys versions before 7c47fe5 lacked gets the defaults those
    versions implied; one without a run config is refused by name."""
    from scigpt.parallel.reshard import client_state
    from scigpt.train.checkpoint import CheckpointState

    raw = client_state(DATA / FIXTURES[0] / "run" / "checkpoints" / "step_00000002")
    old = {k: raw[k] for k in ("config", "step", "world_size", "variables", "stats", "loader")}
    older = CheckpointState.from_dict(old)
    assert older.best_val == float("inf") and older.skipped == 0 and older.heads is None
    assert older.variable_stats == {} and older.layout is None
    with pytest.raises(ValueError, match="holds no run config"):
        CheckpointState.from_dict({"step": 3})


def test_resume_config_check_reads_an_older_config_with_the_current_schema(tmp_path):
    """7c47fe5's config.yaml lacks keys added since (data.sources[].plausibility, units,
    unit_timeout_s, the selection block, objectives.series_forecast): read through the current
    schema they take their defaults, so its own config resumes (as written, it would be
    refused); changing one of them, or an old key, is still refused by name. In-process, < 1 s."""
    from scigpt.config_loader import load_resolved
    from scigpt.rundir import RunDir
    from scigpt.train.session import saved_config

    shutil.copy(DATA / "legacy_7c47fe5" / "run" / "config.yaml", tmp_path / "config.yaml")
    run = RunDir(tmp_path)
    resolved = load_resolved(run.read_config(), "run").resolved_dict()
    run.check_same_config(resolved, saved=saved_config(run))
    with pytest.raises(ValueError, match=r"objectives\.series_forecast: None -> 0\.0"):
        run.check_same_config(resolved)  # as written: the keys added since differ
    changed = json.loads(json.dumps(resolved))
    changed["data"]["sources"][0]["plausibility"] = "off"
    with pytest.raises(ValueError, match=r"the config differs from the run's \(data\.sources:"):
        run.check_same_config(changed, saved=saved_config(run))
    changed = json.loads(json.dumps(resolved))
    changed["optim"]["lr"] = 1e-3
    with pytest.raises(ValueError, match=r"optim\.lr: 0\.002 -> 0\.001"):
        run.check_same_config(changed, saved=saved_config(run))
