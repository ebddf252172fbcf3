"""Training engine on CPU (gloo, DeepSpeed): exact resume after SIGKILL, interrupted saves,
retention, validation with best checkpoint, numerical guards, and data parallelism with ZeRO
1/2/3 against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scigpt.train.metrics import read_metrics
from tests.conftest import free_port, job_env

# A 30-step run with a validation block: train 00-12 h, val 13-17 h, test 18-23 h.
COMMON = [
    "--set", "logging.progress=false", "--set", "logging.every=1",
    "--set", "checkpoint.every=10", "--set", "checkpoint.keep_last=1",
    "--set", "checkpoint.keep_every=20", "--set", "schedule.warmup_steps=5",
    "--set", "eval.every=10",
    "--set", "data.splits.train={start: '2020-01-01T00:00', end: '2020-01-01T12:00'}",
    "--set", "data.splits.val={start: '2020-01-01T13:00', end: '2020-01-01T17:00'}",
    "--set", "data.splits.test={start: '2020-01-01T18:00', end: '2020-01-01T23:00'}",
]  # fmt: skip


def _demo(root: Path, name: str, tex, *extra: str, steps: int = 30, env=None, check=True):
    cmd = [sys.executable, "-m", "scigpt", "demo", "--steps", str(steps), "--runs-dir", str(root),
           "--run-name", name, *COMMON, *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env or job_env(tex))
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _losses(run: Path) -> dict[int, float]:
    return {
        r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, torch_extensions_dir) -> Path:
    root = tmp_path_factory.mktemp("runs")
    _demo(root, "A", torch_extensions_dir)
    return root / "A"


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise(uninterrupted, tmp_path, torch_extensions_dir):
    cmd = [sys.executable, "-m", "scigpt", "demo", "--steps", "30", "--runs-dir", str(tmp_path),
           "--run-name", "B", *COMMON]  # fmt: skip
    proc = subprocess.Popen(cmd, env=job_env(torch_extensions_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    latest = tmp_path / "B" / "checkpoints" / "latest"

    def at_20() -> bool:
        return latest.is_file() and latest.read_text() == "step_00000020"

    deadline = time.monotonic() + 300
    while not at_20() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert at_20(), "the run never reached its step-20 checkpoint"
    killed_at = max(_losses(tmp_path / "B"))
    assert killed_at < 30, "the kill came too late"
    resumed = _demo(tmp_path, "B", torch_extensions_dir, "--resume")
    assert "resumed B from step 20" in resumed.stdout
    a, b = _losses(uninterrupted), _losses(tmp_path / "B")
    assert sorted(a) == sorted(b) == list(range(1, 31))
    assert a == b  # bitwise: same model, optimizer, scheduler, data stream and RNG
    prov = json.loads((tmp_path / "B" / "provenance.json").read_text())
    assert prov["restarts"][0]["step"] == 20


def _steps(run: Path) -> list[tuple]:
    """(step, loss, grad norm, lr) of every train record, in file order."""
    recs = read_metrics(run / "metrics.jsonl")
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in recs if r["kind"] == "train"]


def _snapshot(run: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(run.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.slow
def test_concurrent_resumes_leave_one_writer(uninterrupted, tmp_path, torch_extensions_dir):
    """Two `--resume` of one run started together (a requeue racing the job it replaces, a
    double submission): one trains, the other refuses naming it; the run is the uninterrupted
    one, each step once, one test record."""
    cmd = [sys.executable, "-m", "scigpt", "demo", "--steps", "30", "--runs-dir", str(tmp_path),
           "--run-name", "C", *COMMON, "--resume"]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=job_env(torch_extensions_dir), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 1], [o[1][-3000:] for o in outs]
    winner = next(p for p in procs if p.returncode == 0)
    refusal = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 1)
    assert f"is in use by pid {winner.pid}" in refusal and "Traceback" not in refusal
    run = tmp_path / "C"
    assert _steps(run) == _steps(uninterrupted)  # bitwise, each step once
    recs = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in recs if r["kind"] == "test"] == [30]
    assert not (run / ".lock").exists()


@pytest.mark.slow
def test_kill_before_first_checkpoint_then_resume_then_resume_finished(
    uninterrupted, tmp_path, torch_extensions_dir
):
    """A kill before the first checkpoint (with the default checkpoint.every: 0, every mid-run
    kill is one) then --resume: the run restarts from step 0 and its metrics are the
    uninterrupted run's, bitwise, each step once; device-hours add both segments. Resuming the
    finished run exits 0 and writes nothing."""
    env = {**job_env(torch_extensions_dir), "SCIGPT_LOCK_HEARTBEAT_S": "0.2",
           "SCIGPT_LOCK_STALE_S": "30"}  # fmt: skip
    cmd = [sys.executable, "-m", "scigpt", "demo", "--steps", "30", "--runs-dir", str(tmp_path),
           "--run-name", "K", *COMMON]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "K"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and len(_steps(run)) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert 5 <= len(_steps(run)) < 10 and not (run / "checkpoints" / "latest").exists()
    resumed = _demo(tmp_path, "K", torch_extensions_dir, "--resume", env=env)
    assert "resumed K from step 0" in resumed.stdout
    assert _steps(run) == _steps(uninterrupted)
    recs = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in recs if r["kind"] == "val"] == [10, 20, 30]
    (test,) = [r for r in recs if r["kind"] == "test"]
    segs = json.loads((run / "segments.json").read_text())["segments"]
    assert [s["state"] for s in segs] == ["killed", "completed"]
    assert segs[0]["train_s"] > 0  # the killed segment counts, up to its last heartbeat
    assert test["segments"] == 2
    assert test["device_hours"] * 3600 == pytest.approx(sum(s["train_s"] for s in segs), 1e-12)
    before = _snapshot(run)
    again = _demo(tmp_path, "K", torch_extensions_dir, "--resume", env=env)
    assert "has finished (step 30" in again.stdout
    assert _snapshot(run) == before  # not a byte, not a timestamp


@pytest.mark.slow
def test_a_refused_lock_stops_every_rank(tmp_path, torch_extensions_dir):
    """Rank 0 holds the lock for the job; when another writer has it, every rank exits with the
    refusal and nothing is written."""
    from scigpt.runlock import RunLock

    run = tmp_path / "L"
    lock = RunLock(run, heartbeat_s=0.5, stale_s=60).acquire()  # a live writer: this process
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), "-m", "scigpt", "demo", "--steps", "10",
               "--runs-dir", str(tmp_path), "--run-name", "L", *DP_COMMON, "--resume"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env=job_env(torch_extensions_dir))  # fmt: skip
        assert proc.returncode != 0
        out = proc.stdout + proc.stderr
        assert out.count(f"is in use by pid {os.getpid()}") == 2, out[-4000:]  # both ranks
        assert "scigpt/train/" not in out  # refused, not crashed
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
        assert lock.verify()
    finally:
        lock.release()


@pytest.mark.slow
def test_retention_validation_and_best(uninterrupted):
    ck = uninterrupted / "checkpoints"
    recs = read_metrics(uninterrupted / "metrics.jsonl")
    vals = [r for r in recs if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [10, 20, 30]
    best_step = min(vals, key=lambda r: r["rmse_model"])["step"]  # eval.metric default
    assert (ck / "best").read_text() == f"step_{best_step:08d}"
    assert (ck / "latest").read_text() == "step_00000030"
    # keep_last=1 + keep_every=20 + the best
    want = {"step_00000030", "step_00000020", f"step_{best_step:08d}"}
    assert {p.name for p in ck.iterdir() if p.name.startswith("step_")} == want
    rng = ck / "step_00000030" / "rng_rank00000.pt"
    assert rng.is_file()


@pytest.mark.slow
def test_interrupted_save_leaves_previous_checkpoint_loadable(
    uninterrupted, tmp_path, torch_extensions_dir
):
    import shutil

    run = tmp_path / "A"
    shutil.copytree(uninterrupted, run)
    # A save killed half way: DeepSpeed had written part of the temporary tag, nothing renamed.
    tmp = run / "checkpoints" / ".tmp-step_00000040"
    tmp.mkdir()
    (tmp / "mp_rank_00_model_states.pt").write_bytes(b"\x80\x04 truncated")
    proc = _demo(tmp_path, "A", torch_extensions_dir, "--resume", steps=35)
    assert "resumed A from step 30" in proc.stdout
    assert not tmp.exists()
    assert max(_losses(run)) == 35


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_then_rolled_back(tmp_path, torch_extensions_dir):
    env = {**job_env(torch_extensions_dir), "SCIGPT_TEST_NAN_STEPS": "13,15,16,17"}
    _demo(tmp_path, "N", torch_extensions_dir, "--set", "guards.rollback_after=3", env=env,
          steps=25)  # fmt: skip
    recs = read_metrics(tmp_path / "N" / "metrics.jsonl")
    skips = [r["step"] for r in recs if r["kind"] == "skip"]
    assert skips == [13, 15, 16, 17]
    assert [r["step"] for r in recs if r["kind"] == "rollback"] == [17]
    train = [r for r in recs if r["kind"] == "train"]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    assert train[-1]["step"] == 25 and train[-1]["skipped_steps"] == 4
    # with the guard off, the first non-finite step fails the run with a clear message
    off = _demo(tmp_path, "N2", torch_extensions_dir, "--set", "guards.skip_nonfinite=false",
                env=env, steps=25, check=False)  # fmt: skip
    assert off.returncode != 0 and "loss is nan at step 13" in off.stderr


# ---- data, tensor and pipeline parallelism against one process ---------------------------------

# Gradient clipping at 0.02 is active on most steps (gradient norms 0.02-0.05), so the global
# gradient norm over data, tensor and pipeline ranks is checked too.
DP_COMMON = ["--set", "logging.progress=false", "--set", "logging.every=1",
             "--set", "schedule.warmup_steps=5", "--set", "optim.grad_clip=0.02"]  # fmt: skip
# The same 18 samples a step in every layout: one process with micro-batch 18, or micro-batches
# of 9 (two data-parallel ranks, or two micro-batches of one pipeline).
MB18 = ["--set", "schedule.micro_batch_size=18"]
MB9 = ["--set", "schedule.micro_batch_size=9"]  # set here: the demo's own is 7
MB9x2 = [*MB9, "--set", "schedule.grad_accum=2"]
LAYOUTS = {
    "z1": (2, ["--set", "parallel.zero_stage=1", *MB9]),
    "z2": (2, ["--set", "parallel.zero_stage=2", *MB9]),
    "z3": (2, ["--set", "parallel.zero_stage=3", *MB9]),
    "tp2": (2, ["--set", "parallel.tp=2", *MB18]),
    "dp2xtp2": (4, ["--set", "parallel.tp=2", *MB9]),
    "pp2": (2, ["--set", "parallel.pp=2", *MB9x2]),
    "tp2xpp2": (4, ["--set", "parallel.tp=2", "--set", "parallel.pp=2", *MB9x2]),
    "bf16": (2, ["--set", "precision=bf16", *MB9]),
}


def _torchrun(
    root: Path, name: str, tex, nproc: int, *extra: str, steps: int = 20
) -> subprocess.CompletedProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(port), "-m", "scigpt", "demo", "--steps", str(steps),
           "--runs-dir", str(root), "--run-name", name, *DP_COMMON, *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=job_env(tex))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _fp32_weights(run: Path) -> dict[str, torch.Tensor]:
    from scigpt.parallel.reshard import consolidate

    return consolidate(run / "checkpoints" / "step_00000020")


def _curves(run: Path) -> dict[int, tuple[float, float]]:
    recs = read_metrics(run / "metrics.jsonl")
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in recs if r["kind"] == "train"}


def _assert_matches_single(single: Path, run: Path) -> None:
    """Losses and gradient norms over 20 steps, and the consolidated weights at the end, agree
    with one process (fp32, reductions in another order: relative 1e-5)."""
    a, b = _curves(single), _curves(run)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for k in a:
        assert b[k][0] == pytest.approx(a[k][0], rel=1e-5), (k, a[k], b[k])
        assert b[k][1] == pytest.approx(a[k][1], rel=1e-5), (k, a[k], b[k])
    assert sum(a[k][1] > 0.02 for k in a) >= 5  # clipping was active
    wa, wb = _fp32_weights(single), _fp32_weights(run)
    assert wa.keys() == wb.keys()
    for name in wa:
        # AdamW divides by sqrt(v): a near-zero gradient's rounding noise becomes a full-size
        # step, so weights agree to ~1e-6 absolute (20 steps of lr 1e-3 move them ~1e-2).
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-5, atol=5e-6, msg=name)


@pytest.fixture(scope="module")
def single(tmp_path_factory, torch_extensions_dir) -> Path:
    root = tmp_path_factory.mktemp("dp1")
    _torchrun(root, "one", torch_extensions_dir, 1, *MB18)
    return root / "one"


@pytest.fixture(scope="module")
def layout_run(tmp_path_factory, torch_extensions_dir):
    """``layout_run(name)``: the 20-step demo trained once at layout ``name`` (LAYOUTS), shared
    by every test that needs it."""
    root = tmp_path_factory.mktemp("layouts")

    def run(name: str) -> Path:
        if not (root / name / "checkpoints" / "step_00000020").is_dir():
            nproc, extra = LAYOUTS[name]
            _torchrun(root, name, torch_extensions_dir, nproc, *extra)
        return root / name

    return run


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_dp2_zero_matches_one_process(single, layout_run, stage):
    run = layout_run(f"z{stage}")
    _assert_matches_single(single, run)
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["world_size"] == 2 and "zero=" + str(stage) in prov["topology"]
    if stage == 3:
        # each rank holds about half of every parameter (padding aside)
        assert 0.45 <= prov["params_local_fraction"] <= 0.55, prov["params_local_fraction"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tp2", "dp2xtp2"])
def test_tensor_parallel_matches_one_process(single, layout_run, name):
    """tp2 (micro-batch 18) and dp2 x tp2 (2 x 9) see the same 18 samples a step as one process."""
    run = layout_run(name)
    _assert_matches_single(single, run)
    ck = run / "checkpoints" / "step_00000020"
    assert (ck / "mp_rank_01_model_states.pt").is_file()  # one file per tensor-parallel rank
    if name == "tp2":
        # shard_tensor is the exact inverse of consolidate's merge
        from scigpt.parallel.reshard import consolidate, shard_tensor

        full = consolidate(ck)
        saved = torch.load(ck / "mp_rank_01_model_states.pt", weights_only=False)["module"]
        for key, value in saved.items():
            assert torch.equal(shard_tensor(key, full[key], heads=4, tp=2, rank=1), value), key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pp2", "tp2xpp2"])
def test_pipeline_parallel_matches_one_process(single, layout_run, name):
    """pp2 (2 processes) and tp2 x pp2 (4): two micro-batches of 9 through the 1F1B schedule."""
    run = layout_run(name)
    _assert_matches_single(single, run)
    ck = run / "checkpoints" / "step_00000020"
    tp = 2 if name.startswith("tp2") else 1
    # DeepSpeed's pipeline format: one file per layer (embed, 3 blocks, head) and TP rank
    assert len(list(ck.glob("layer_*-model_states.pt"))) == 5 * tp
    info = json.loads((ck / "scigpt.json").read_text())
    assert info["layout"] == {"dp": 1, "tp": tp, "pp": 2, "zero_stage": 1}


@pytest.mark.slow
def test_reshard_checkpoints_load_at_one_process_and_tp2(
    layout_run, tmp_path, torch_extensions_dir
):
    """Checkpoints saved at tp2, pp2 and dp2-ZeRO-3 load at one process and at tp2 with the
    same forecasts."""
    ckpts = [str(layout_run(n) / "checkpoints" / "step_00000020") for n in ("tp2", "pp2", "z3")]
    env = job_env(torch_extensions_dir)
    probe = [str(Path(__file__).parent / "probes" / "reshard_probe.py"), str(tmp_path), *ckpts]
    for cmd in (
        [sys.executable, *probe],
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), *probe],
    ):  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
    one = torch.load(tmp_path / "forecasts_tp1.pt")
    two = torch.load(tmp_path / "forecasts_tp2.pt")
    assert sorted(one) == sorted(two) == ["pp2", "tp2", "z3"]
    for name in one:
        # the trained increment over persistence is not trivially zero
        assert one[name].abs().max() > 1e-3, name
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    # the three layouts trained the same model (relative 1e-5 over 20 steps)
    torch.testing.assert_close(one["pp2"], one["tp2"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one["z3"], one["tp2"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_resume_pp2_checkpoint_at_one_process(layout_run, tmp_path, torch_extensions_dir):
    """A pp2 checkpoint resumes at one process: weights and data position exactly (step 21's
    loss equals that of a pp2 resume), with a warning that the optimizer state restarts."""
    import shutil

    src = layout_run("pp2")
    runs = {}
    for name, nproc, extra in (("same", 2, LAYOUTS["pp2"][1]), ("moved", 1, MB9x2)):
        shutil.copytree(src, tmp_path / name)
        runs[name] = _torchrun(tmp_path, name, torch_extensions_dir, nproc, *extra, "--resume",
                               steps=22)  # fmt: skip
    moved = "from world=2 dp=1 tp=1 pp=2 zero=1 to world=1 dp=1 tp=1 pp=1 zero=1"
    assert f"resharding step_00000020 {moved}" in runs["moved"].stderr
    assert "optimizer state (AdamW moments) restarts" in runs["moved"].stderr
    a, b = _curves(tmp_path / "same"), _curves(tmp_path / "moved")
    assert b[21][0] == pytest.approx(a[21][0], rel=1e-6)
    assert sorted(b) == list(range(1, 23))
    # Both score the test at the best validation checkpoint, a pp2 one: loaded as saved by the
    # pp2 resume, resharded into one process by the moved one (the same forecasts, fp32 1e-5).
    tests = [[r for r in read_metrics(tmp_path / n / "metrics.jsonl") if r["kind"] == "test"][-1]
             for n in ("same", "moved")]  # fmt: skip
    best = (tmp_path / "moved" / "checkpoints" / "best").read_text()
    assert tests[0]["checkpoint_step"] == tests[1]["checkpoint_step"] == int(best[5:]) < 22
    assert tests[1]["rmse_model"] == pytest.approx(tests[0]["rmse_model"], rel=1e-5)


@pytest.mark.slow
def test_dp2_bf16_close_to_fp32(single, layout_run):
    a, b = _curves(single), _curves(layout_run("bf16"))
    # bf16 has 8 mantissa bits: the curves agree to a few percent, not to 1e-5
    for k in a:
        assert b[k][0] == pytest.approx(a[k][0], rel=0.05), (k, a[k], b[k])


@pytest.mark.slow
def test_planner_predicts_what_each_rank_holds(single, layout_run):
    """`scigpt plan`'s parameter and optimizer-state bytes per rank against what every rank of
    every layout run allocated (memory.json, counted from the engine's tensors): within 10%."""
    import yaml

    from scigpt.config_loader import validate
    from scigpt.models.vit import ModelSpec
    from scigpt.parallel import planner

    checked = 0
    for run in [single, *(layout_run(name) for name in LAYOUTS)]:
        mem = json.loads((run / "memory.json").read_text())
        cfg = validate(yaml.safe_load((run / "config.yaml").read_text()))
        lay = planner.Layout(**mem["layout"], activation_checkpointing="none")
        spec = ModelSpec(num_vars=14, history=cfg.data.history)  # the demo's 14 variables
        for r in mem["ranks"]:
            pred = planner.predict_memory(
                cfg.model, spec, lay, tokens=121, micro_batch=cfg.schedule.micro_batch_size,
                vars_per_sample=14, precision=cfg.precision, stage=(r["rank"] // lay.tp) % lay.pp,
                grad_accum=cfg.schedule.grad_accum,
            )  # fmt: skip
            assert pred.params == pytest.approx(r["params"], rel=0.10), (run.name, r, pred)
            assert pred.optimizer == pytest.approx(r["optimizer"], rel=0.10), (run.name, r, pred)
            checked += 1
    assert checked == 1 + sum(n for n, _ in LAYOUTS.values())


@pytest.mark.slow
def test_two_sources_mixed_with_accumulation(tmp_path, torch_extensions_dir):
    """Two grid sources sharing one variable registry, weights 2:1, gradients accumulated over
    micro-batches of different sources."""
    import yaml

    src = "pkg:sample_data/era5_rhine_2020-01-01"
    cfg = {
        "name": "two",
        "data": {
            "sources": [
                {"name": "winds", "path": src, "unit": "all", "weight": 2.0,
                 "variables": ["u10", "v10", "u850", "v850"]},
                {"name": "moist", "path": src, "unit": "all", "weight": 1.0,
                 "variables": ["q850", "tcw", "u10"]},
            ],
            "splits": {
                "train": {"start": "2020-01-01T00:00", "end": "2020-01-01T19:00"},
                "test": {"start": "2020-01-01T19:00", "end": "2020-01-01T23:00"},
            },
        },
        "model": {"preset": "vit-tiny"},
        "schedule": {"steps": 12, "warmup_steps": 2, "micro_batch_size": 4, "grad_accum": 2},
        "logging": {"every": 12, "progress": False},
        "runtime": {"threads": 1},
    }  # fmt: skip
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "scigpt", "train", str(path), "--runs-dir", str(tmp_path),
         "--run-name", "two"],
        capture_output=True, text=True, timeout=600, env=job_env(torch_extensions_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    train = [r for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if r["kind"] == "train"]
    counts = train[-1]["micro_batches_per_source"]
    assert sum(counts) == 24 and counts[0] > counts[1] > 0  # 12 steps x 2 micro-batches
    ckpt = tmp_path / "two" / "checkpoints" / "step_00000012" / "mp_rank_00_model_states.pt"
    states = torch.load(ckpt, map_location="cpu", weights_only=False)  # trusted run directory
    names = [v["name"] for v in states["variables"]]
    assert names == ["u10", "v10", "u850", "v850", "q850", "tcw"]  # u10 shared
    assert states["source_stats"]["moist"]["variables"] == ["q850", "tcw", "u10"]


@pytest.mark.slow
def test_export_packages_identical_across_layouts(layout_run, tmp_path):
    """Packages exported from dp2-ZeRO-3, tp2 and pp2 checkpoints hold the same tensors (each
    layout matches one process to rtol 1e-5 / atol 5e-6, so two layouts to about twice that);
    each checkpoint's weight diagnostics read sharded equal its package's."""
    from scigpt.export.package import export_run, export_tensors_equal

    pkgs = {n: export_run(layout_run(n), tmp_path / n) for n in ("z3", "tp2", "pp2")}
    export_tensors_equal(pkgs["z3"], pkgs["tp2"], rtol=1e-5, atol=1e-5)
    export_tensors_equal(pkgs["z3"], pkgs["pp2"], rtol=1e-5, atol=1e-5)
    _diagnostics_sharded_equal_consolidated(layout_run, pkgs)


def _diagnostics_sharded_equal_consolidated(layout_run, pkgs: dict[str, Path]) -> None:
    """HTSR diagnostics of a tp2, pp2 and ZeRO-3 checkpoint read shard by shard (files memory-
    mapped, ZeRO-3 partitions gathered lazily, one matrix at a time) equal those of the same
    checkpoint consolidated — its exported package, read through safetensors, and for ZeRO-3
    also DeepSpeed's own eager merge — to 1e-10 on every number of the table."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from scigpt.diagnostics.htsr import analyze_state
    from scigpt.export.loader import load_pretrained
    from scigpt.export.writer import checkpoint_weights

    def table(weights) -> list[dict]:
        rows = [d.row() for d in analyze_state(weights, min_evals=16, workers=2)]
        assert sum(r["status"] == "ok" for r in rows) >= 4, rows  # fitted, not all too small
        return rows

    def same(a: list[dict], b: list[dict], what: str) -> None:
        assert [r["name"] for r in a] == [r["name"] for r in b], what
        for ra, rb in zip(a, b, strict=True):
            for k, va in ra.items():
                if isinstance(va, float):
                    assert va == pytest.approx(rb[k], rel=1e-10, abs=1e-10, nan_ok=True), (
                        what, ra["name"], k)  # fmt: skip
                else:
                    assert va == rb[k], (what, ra["name"], k)

    for name in ("tp2", "pp2", "z3"):
        ckpt = layout_run(name) / "checkpoints" / "step_00000020"
        streamed = table(checkpoint_weights(ckpt))
        package = load_pretrained(pkgs[name], device="cpu").model.state_dict()
        same(streamed, table(package), f"{name}: sharded vs package")
        if name == "z3":
            eager = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), ckpt.name)
            same(streamed, table(eager), "z3: lazy vs DeepSpeed's eager merge")
