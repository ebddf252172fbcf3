"""Run directories: one writer at a time (the lock file on a shared filesystem), metrics that stay
one record per step through kills and resumes, device-hours over every segment, run names.

The lock is exercised with real processes (a holder in another process, several processes
breaking one stale lock at once); the trainer's use of it is tested in tests/test_engine.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scigpt.rundir import MAX_RUN_NAME, RunDir, check_run_name, read_metrics
from scigpt.runlock import (
    LOCK_NAME,
    Holder,
    RunLock,
    RunLocked,
    RunLockLost,
    parse_scontrol_job,
    stale_reason,
)

REPO = Path(__file__).resolve().parents[1]

# A process that takes the lock of argv[1] and holds it until killed.
_HOLDER = """
import sys, time
from pathlib import Path
from scigpt.runlock import RunLock
lock = RunLock(Path(sys.argv[1]), heartbeat_s=0.2, stale_s=30).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _write_lock(run: Path, **fields) -> Path:
    """A lock file as another holder would have written it."""
    me = Holder.current()
    rec = {**me.__dict__, "token": "other", **fields}
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK_NAME
    path.write_text(json.dumps(rec))
    return path


def test_live_holder_is_refused_by_name_and_its_death_frees_the_lock(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked) as exc:
            RunLock(run, heartbeat_s=0.2, stale_s=30).acquire()
        msg = str(exc.value)
        assert f"pid {proc.pid} on {socket.gethostname()}" in msg and "--break-lock" in msg
        beat = (run / LOCK_NAME).stat().st_mtime
        time.sleep(0.6)
        assert (run / LOCK_NAME).stat().st_mtime > beat  # the holder's heartbeat
    finally:
        proc.kill()
        proc.wait()
    lock = RunLock(run, heartbeat_s=0.2, stale_s=30).acquire()  # its process has ended
    assert f"its process {proc.pid}" in lock.broke
    lock.release()
    assert not (run / LOCK_NAME).exists()


def test_stale_heartbeat_other_host_and_break_lock(tmp_path):
    run = tmp_path / "run"
    path = _write_lock(run, host="node-elsewhere", pid=1)
    with pytest.raises(RunLocked, match="pid 1 on node-elsewhere"):
        RunLock(run, heartbeat_s=1, stale_s=60).acquire()
    old = time.time() - 61
    os.utime(path, (old, old))
    lock = RunLock(run, heartbeat_s=1, stale_s=60).acquire()
    assert "heartbeat is 61 s old" in lock.broke
    lock.release()
    _write_lock(run, host="node-elsewhere", pid=1)  # fresh again: only --break-lock takes it
    lock = RunLock(run, heartbeat_s=1, stale_s=60).acquire(break_lock=True)
    assert "--break-lock" in lock.broke and lock.current_holder().token == lock.holder.token
    lock.release()


def test_an_earlier_incarnation_of_the_same_slurm_job_is_stale(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    # The holder: the same job before its requeue, on another node (its pid cannot be checked).
    _write_lock(run, host="node-elsewhere", pid=1, job_id="4242", restart_count=0)
    lock = RunLock(run, heartbeat_s=1, stale_s=60).acquire()
    assert "Slurm job 4242 was requeued (restart 0 -> 1)" in lock.broke
    assert lock.holder.job_id == "4242" and lock.holder.restart_count == 1
    lock.release()


def test_scontrol_states_decide_staleness():
    # `scontrol show job -o` output (Slurm 23.11 field order, abridged)
    line = ("JobId=4242 JobName=scigpt UserId=u(1000) GroupId=u(1000) Priority=1 Account=a "
            "QOS=normal JobState=PENDING Reason=BeginTime Dependency=(null) Requeue=1 Restarts=1 "
            "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:30:00")  # fmt: skip
    assert parse_scontrol_job(line) == ("PENDING", 1)
    me = Holder.current()
    other = Holder("node-elsewhere", 1, None, "4242", 0, "t", "2026", "scigpt train")
    cases = {
        ("PENDING", 1): "is PENDING",  # requeued, waiting: the old incarnation has ended
        ("RUNNING", 1): "now runs restart 1",
        ("GONE", 0): "no longer knows job 4242",
        ("RUNNING", 0): None,  # the holder's own incarnation runs: alive
        ("COMPLETING", 0): None,
    }
    for state, want in cases.items():
        why = stale_reason(other, 1.0, me=me, stale_s=60, job_state=lambda _j, s=state: s)
        assert (why is None) if want is None else (want in why), (state, why)


def test_a_taken_over_holder_notices_and_writes_nothing(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    first = RunLock(run.path, heartbeat_s=0.1, stale_s=5)
    run.run_lock = first.acquire()
    log = run.open_metrics()
    log.append({"kind": "train", "loss": 1.0}, 1)
    second = RunLock(run.path, heartbeat_s=0.1, stale_s=5).acquire(break_lock=True)
    deadline = time.monotonic() + 10
    while not first.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.lost  # its heartbeat found another token
    with pytest.raises(RunLockLost, match="taken over"):
        log.append({"kind": "train", "loss": 2.0}, 2)
    first.release()  # must not remove the new holder's lock
    assert second.current_holder().token == second.holder.token
    second.release()
    assert [r["step"] for r in read_metrics(run.metrics_path)] == [1]


_BREAKER = """
import sys, time
from pathlib import Path
from scigpt.runlock import RunLock, RunLocked
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
try:
    lock = RunLock(Path(sys.argv[1]), heartbeat_s=1, stale_s=60).acquire()
    print("won", flush=True)
    time.sleep(3)
    lock.release()
except RunLocked:
    print("refused", flush=True)
"""


def test_processes_breaking_one_stale_lock_at_once_leave_one_winner(tmp_path):
    run = tmp_path / "run"
    path = _write_lock(run, host="node-elsewhere", pid=1)
    old = time.time() - 120
    os.utime(path, (old, old))
    start = time.time() + 3  # every process imports first, then all go at once
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BREAKER, str(run), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(6)
    ]
    results = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert results == ["refused"] * 5 + ["won"], results
    assert not path.exists()
    assert not list(run.glob(f"{LOCK_NAME}.stale-*"))


def _records(*steps_kinds) -> str:
    return "".join(
        json.dumps({"step": s, "kind": k, "loss": s / 10}) + "\n" for s, k in steps_kinds
    )


def test_resume_keeps_one_record_per_step(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    # A first segment killed after step 3 (its last line cut mid-write), then preempted at 5.
    text = _records((1, "train"), (2, "train"), (2, "val"), (3, "train"), (4, "train"))
    run.metrics_path.write_text(text + '{"step": 5, "kind": "tr')
    assert [r["step"] for r in read_metrics(run.metrics_path)] == [1, 2, 2, 3, 4]
    assert run.resume_metrics(2) == 2  # from the step-2 checkpoint: 3 and 4 go (and the torn 5)
    assert run.metrics_path.read_text() == _records((1, "train"), (2, "train"), (2, "val"))
    assert run.resume_metrics(2) == 0
    run.metrics_path.write_text(_records((1, "train"), (2, "train"), (2, "test")))
    assert run.finished(2)["kind"] == "test" and run.finished(3) is None  # longer schedule
    assert run.resume_metrics(2) == 1  # a test record is always written again
    assert run.resume_metrics(0) == 2  # no checkpoint: everything goes
    run.metrics_path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(run.metrics_path)


def test_device_hours_add_every_segment(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    first = run.begin_segment(start_step=0, world_size=4)
    first.start()
    time.sleep(0.05)
    first.at(7)
    first.flush()  # what a heartbeat writes before a kill
    second = run.begin_segment(start_step=0, world_size=2)  # the resume finds it "running"
    second.start()
    second.close("completed")
    segs = run.segments()
    assert [s["state"] for s in segs] == ["killed", "completed"]
    assert segs[0]["last_step"] == 7 and segs[0]["train_s"] >= 0.05
    want = (segs[0]["train_s"] * 4 + segs[1]["train_s"] * 2) / 3600
    assert run.device_hours() == pytest.approx(want, rel=1e-12)


def test_run_names_are_one_bounded_directory_name():
    assert check_run_name("a" * MAX_RUN_NAME)
    with pytest.raises(ValueError, match=f"201 characters: use at most {MAX_RUN_NAME}"):
        check_run_name("a" * (MAX_RUN_NAME + 1))
    with pytest.raises(ValueError, match="letters, digits"):
        check_run_name("../escape")
    from scigpt.slurm import submit

    assert submit.check_run_name is check_run_name  # one check, beside RunDir


def test_run_paths_are_the_run_directory_layout(tmp_path):
    """Commands find a run's files through RunDir (export, evaluate, sweep, transfer): the
    paths are the documented layout. < 0.1 s."""
    run = RunDir.create(tmp_path, "r", {"name": "r"})
    p = tmp_path / "r"
    assert (run.metrics_path, run.provenance_path, run.checkpoints) == (
        p / "metrics.jsonl",
        p / "provenance.json",
        p / "checkpoints",
    )
    assert (run.test_table, run.evaluate_dir) == (
        p / "eval" / "test_rmse.csv",
        p / "eval" / "evaluate",
    )
    assert run.is_run() and not RunDir(tmp_path / "nothing").is_run()
