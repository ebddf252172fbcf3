"""The session's real single-node Slurm (tests/slurm_cluster.py) does what the Slurm tests need:
multi-task srun steps, per-task fake GPUs, refusal of impossible jobs, requeue and signals."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.slurm_cluster import (
    TERMINAL_STATES,
    SlurmCluster,
    SlurmError,
    is_transient,
    node_ready,
)

pytestmark = pytest.mark.slow  # real daemons and jobs, though each test takes a few seconds


def _lines(path: Path) -> list[str]:
    return sorted(path.read_text().split("\n")[:-1])


def _wait_for_file(slurm: SlurmCluster, job_id: int, path: Path, timeout: float = 180) -> None:
    """Until the job writes ``path`` (a loaded machine may take long to start it); fails at
    once if the job ends without it."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        info = slurm.job(job_id)
        if time.monotonic() > deadline or info["JobState"] in TERMINAL_STATES:
            raise AssertionError(f"{path} not written\n{slurm.describe(info)}")
        time.sleep(0.1)


def test_two_task_srun(slurm: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    script = (
        "#!/bin/bash\n"
        "srun bash -c 'echo $SLURM_PROCID $SLURM_LOCALID $SLURM_NTASKS $(hostname -s) $MARK'\n"
    )
    env = {**slurm.env, "MARK": "from-env"}  # sbatch exports its environment to the tasks
    job_id = slurm.submit(script, "--ntasks=2", f"--output={out}", env=env)
    info = slurm.wait(job_id, timeout=180)
    assert info["ExitCode"] == "0:0", slurm.describe(info)
    host = slurm.node
    expected = [f"0 0 2 {host} from-env", f"1 1 2 {host} from-env"]
    assert _lines(out) == expected, slurm.describe(info)


def test_gpus_per_task(slurm: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    script = "#!/bin/bash\nsrun bash -c 'echo $SLURM_PROCID $CUDA_VISIBLE_DEVICES'\n"
    job_id = slurm.submit(script, "--ntasks=2", "--gpus-per-task=1", f"--output={out}")
    info = slurm.wait(job_id, timeout=180)
    rows = [line.split() for line in _lines(out)]
    assert [r[0] for r in rows] == ["0", "1"], slurm.describe(info)
    devices = [r[1:] for r in rows]
    assert all(len(d) == 1 and "," not in d[0] for d in devices), devices
    assert devices[0] != devices[1], devices


def test_impossible_job_refused_at_submission(slurm: SlurmCluster, tmp_path: Path) -> None:
    """EnforcePartLimits=ALL: sbatch fails at once instead of the job pending forever."""
    before = slurm.run("squeue", "-h", "-o", "%i").stdout
    for args, error in (
        (["--nodes=5"], "Node count specification invalid"),
        (["--ntasks=2", "--gpus-per-task=3"], "Requested node configuration is not available"),
        (["--ntasks=9"], "More processors requested than permitted"),
    ):
        with pytest.raises(SlurmError, match=error):
            slurm.submit("#!/bin/bash\ntrue\n", *args, f"--output={tmp_path / 'o'}")
    assert slurm.run("squeue", "-h", "-o", "%i").stdout == before


REQUEUE_SELF = """\
#!/bin/bash
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
    scontrol requeue "$SLURM_JOB_ID"
    sleep 60  # the requeue ends this first run
    exit 3
fi
echo "restart $SLURM_RESTART_COUNT" > marker
"""


def test_requeue(slurm: SlurmCluster, tmp_path: Path) -> None:
    job_id = slurm.submit(REQUEUE_SELF, f"--output={tmp_path / 'out.txt'}", cwd=tmp_path)
    info = slurm.wait(job_id, timeout=180)
    assert info["Restarts"] == "1", slurm.describe(info)
    assert (tmp_path / "marker").read_text() == "restart 1\n", slurm.describe(info)


TRAP_REQUEUE = """\
#!/bin/bash
#SBATCH --signal=B:USR1@60
on_usr1() {
    echo "USR1 in run ${SLURM_RESTART_COUNT:-0}" >> signals
    scontrol requeue "$SLURM_JOB_ID"
    kill "$child"  # else it outlives the script: Slurm's proctrack/linuxproc loses it
    exit 0
}
trap on_usr1 USR1
if [ "${SLURM_RESTART_COUNT:-0}" != 0 ]; then
    echo "restart $SLURM_RESTART_COUNT" > marker
    exit 0
fi
touch ready
sleep 120 &  # bash runs a trap only between commands: wait (a builtin) is interruptible
child=$!
wait $child
"""


def test_usr1_trap_requeues(slurm: SlurmCluster, tmp_path: Path) -> None:
    job_id = slurm.submit(TRAP_REQUEUE, f"--output={tmp_path / 'out.txt'}", cwd=tmp_path)
    _wait_for_file(slurm, job_id, tmp_path / "ready")
    slurm.signal_batch(job_id, "USR1")
    info = slurm.wait(job_id, timeout=180)
    assert (tmp_path / "signals").read_text() == "USR1 in run 0\n", slurm.describe(info)
    assert (tmp_path / "marker").read_text() == "restart 1\n", slurm.describe(info)
    assert info["Restarts"] == "1", slurm.describe(info)
    deadline = time.monotonic() + 10  # the trap killed its `sleep`: nothing of the job is left
    while slurm.job_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not slurm.job_processes()


def test_release_leaves_a_job_that_is_no_longer_pending_alone(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    """A busy machine starts a requeued job between the test's look and its release (the
    flake "scontrol update JobId=7 StartTime=now failed: Job is no longer pending
    execution"): releasing a running or finished job, or one already released, is a no-op."""
    out = f"--output={tmp_path / 'out.txt'}"
    job_id = slurm.submit("#!/bin/bash\ntouch ready\nsleep 30\n", out, cwd=tmp_path)
    _wait_for_file(slurm, job_id, tmp_path / "ready")
    assert slurm.job(job_id)["JobState"] == "RUNNING"
    assert slurm.release(job_id) is False  # running: nothing to release, no error
    slurm.cancel(job_id)
    slurm.wait(job_id, {"CANCELLED"}, timeout=180)
    assert slurm.release(job_id) is False  # ended

    # A job that pends on its begin time is released once; a second call changes nothing.
    out = f"--output={tmp_path / 'later.txt'}"
    later = slurm.submit("#!/bin/bash\ntrue\n", "--begin=now+600", out, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while slurm.job(later).get("Reason") != "BeginTime" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert slurm.release(later) is True
    assert slurm.release(later) is False
    slurm.wait(later, timeout=180)


def test_busy_controller_messages_and_node_states() -> None:
    assert is_transient("slurm_load_jobs error: Socket timed out on send/recv operation")
    assert is_transient("Unable to contact slurm controller (connect failure)")
    assert not is_transient("slurm_load_jobs error: Invalid job id specified")
    assert all(node_ready(s) for s in ("idle", "mix", "alloc", "idle~", "mix-", "comp"))
    assert not any(node_ready(s) for s in ("idle*", "down*", "drain", "unk*", ""))
