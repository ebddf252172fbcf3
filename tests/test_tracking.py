"""MLflow and Weights & Biases sinks (scigpt/train/tracking.py) against what those libraries
wrote: a real tiny `scigpt train` with both sinks on, SIGKILLed mid-run and resumed; MLflow's
SQLite store is read back through ``MlflowClient``, W&B's offline run files through their
records (wandb.proto), and both are compared with metrics.jsonl: one value per step, the same
values (exact: floats pass through JSON, SQLite doubles and W&B's JSON unchanged). About 60 s."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scigpt.rundir import read_metrics
from tests.conftest import job_env

pytest.importorskip("mlflow")
pytest.importorskip("wandb")

ARGS = [
    "train", "runs/demo.yaml", "--run-name", "t",
    "--set", "schedule.steps=6", "--set", "schedule.warmup_steps=1",
    "--set", "model.embed_dim=16", "--set", "model.depth=1", "--set", "model.heads=2",
    "--set", "logging.every=1", "--set", "logging.progress=false",
    "--set", "logging.tensorboard=false", "--set", "eval.every=2",
    "--set", "checkpoint.every=2", "--set", "logging.mlflow=true", "--set", "logging.wandb=true",
]  # fmt: skip
# wall-clock figures: a resumed step logs its own, the trackers keep the first segment's
TIMING = {"samples_per_s", "tokens_per_s", "tflops_per_device", "device_hours"}


def _train_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        out.append((rec["kind"], rec["step"]))
    return out


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, torch_extensions_dir) -> Path:
    """The run, killed (SIGKILL, its W&B service too) after step 3 was logged, then resumed
    from its last checkpoint to the end."""
    root = tmp_path_factory.mktemp("tracked")
    cmd = [sys.executable, "-m", "scigpt", *ARGS, "--runs-dir", str(root)]
    env = job_env(torch_extensions_dir)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    try:
        while ("train", 3) not in _train_steps(root / "t"):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the run did not reach step 3 in 300 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    logged = _train_steps(root / "t")
    assert not any(kind == "test" for kind, _ in logged), "killed too late: the run finished"
    out = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    resumed = re.search(r"resumed t from step (\d+)", out.stdout)
    assert resumed and int(resumed.group(1)) >= 2, out.stdout[-2000:]  # a checkpoint was kept
    return root / "t"


def _expected(run: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as ``kind/field`` -> {step: value} (its numbers; null = not finite)."""
    out: dict[str, dict[int, float]] = {}
    for rec in read_metrics(run / "metrics.jsonl"):
        for k, v in rec.items():
            if k not in ("step", "kind") and isinstance(v, (int, float)) and v is not True \
                    and v is not False:  # fmt: skip
                series = out.setdefault(f"{rec['kind']}/{k}", {})
                assert rec["step"] not in series, (k, rec["step"])  # one record per step
                series[rec["step"]] = float(v)
    return out


def test_mlflow_holds_metrics_jsonl_once_per_step(tracked_run):
    from mlflow.tracking import MlflowClient

    expected = _expected(tracked_run)
    assert sorted(expected["train/loss"]) == list(range(1, 7))
    ids = json.loads((tracked_run / "tracking.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{tracked_run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [ids["mlflow"]["run_id"]]  # the resume continued it
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["schedule.steps"] == "6"
    assert set(run.data.metrics) == set(expected)
    for key, series in expected.items():
        hist = client.get_metric_history(run.info.run_id, key)
        steps = [m.step for m in hist]
        assert sorted(steps) == sorted(series), (key, steps)  # once per step, none missing
        if key.split("/", 1)[1] not in TIMING:
            assert {m.step: m.value for m in hist} == series, key


def test_wandb_offline_files_hold_metrics_jsonl_once_per_step(tracked_run):
    from wandb.proto import wandb_internal_pb2

    from scigpt.train.tracking import wandb_history, wandb_records

    run_id = json.loads((tracked_run / "tracking.json").read_text())["wandb"]["run_id"]
    files = sorted((tracked_run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2  # the killed segment's and the resumed one's, one W&B run id
    for i, f in enumerate(files):
        rec = wandb_internal_pb2.Record()
        kinds = []
        for raw in wandb_records(f):
            rec.ParseFromString(raw)
            kinds.append(rec.WhichOneof("record_type"))
            if kinds[-1] == "run":
                assert rec.run.run_id == run_id and rec.run.project == "demo"
        # the killed segment's W&B service may not have flushed anything; the resumed one has
        # sent what it lacked (read back from these files at the resume)
        if i == len(files) - 1:
            assert "run" in kinds and "history" in kinds and kinds[-1] in ("exit", "final"), kinds
    rows = wandb_history(tracked_run, run_id)
    steps = [int(r["_step"]) for r in rows]
    assert sorted(steps) == list(range(1, 7)), steps  # one history row per step, across files
    expected = _expected(tracked_run)
    got: dict[str, dict[int, float]] = {}
    for row in rows:
        for k, v in row.items():
            if not k.startswith("_"):
                got.setdefault(k, {})[int(row["_step"])] = float(v)
    assert set(got) == set(expected)
    for key, series in expected.items():
        assert sorted(got[key]) == sorted(series), key
        if key.split("/", 1)[1] not in TIMING:
            assert got[key] == series, key
    # W&B's own CLI recognises both segments as syncable runs (dry run: nothing is sent)
    wandb_cli = Path(sys.executable).parent / "wandb"
    out = subprocess.run(
        [str(wandb_cli), "sync", "--dry-run", *(str(f.parent) for f in files)],
        capture_output=True, text=True, timeout=120, cwd=tracked_run,
        env={**os.environ, "WANDB_DIR": str(tracked_run), "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "Would sync 2 run(s)" in text, text
    assert all(f.name in text for f in files), text
