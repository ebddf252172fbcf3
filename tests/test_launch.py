"""Rank discovery and torch.distributed start-up (scigpt.launch.env, scigpt.launch.distributed).

Discovery is checked on literal launcher environments; the two slow tests start real jobs
(mpirun, torchrun) and require the ranks to agree on an all-reduce.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from scigpt.launch.env import RankInfo, discover, expand_nodelist, slurm_master_addr
from tests.conftest import LAUNCH_VARS, free_port, job_env, run_job

# --- literal launcher environments -------------------------------------------------------------

# What `srun torchrun --nproc_per_node 2 ...` gives worker 3 of 8: torchrun's variables plus the
# srun task's own SLURM_* (which describe the torchrun process, not the worker).
TORCHRUN_UNDER_SRUN = {
    "RANK": "3",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "gpu007",
    "MASTER_PORT": "29400",
    "SLURM_PROCID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "1",
    "SLURM_TASKS_PER_NODE": "1(x4)",
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NODELIST": "gpu[007-010]",
}

# The DeepSpeed launcher (`deepspeed --num_gpus 4 train.py` on the second of two nodes).
DEEPSPEED_LAUNCHER = {
    "RANK": "6",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "2",
    "LOCAL_SIZE": "4",
    "CROSS_RANK": "1",
    "CROSS_SIZE": "2",
    "MASTER_ADDR": "10.1.2.3",
    "MASTER_PORT": "29500",
}

OPENMPI = {
    "OMPI_COMM_WORLD_RANK": "5",
    "OMPI_COMM_WORLD_SIZE": "8",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
    "OMPI_COMM_WORLD_NODE_RANK": "1",
    "MASTER_ADDR": "head.cluster",
    "MASTER_PORT": "23456",
}

# srun task 5 of 8, 4 tasks on each of two nodes.
SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NODELIST": "gpu[007-008]",
}

# `mpirun -n 8` inside `salloc -N 2`: every rank inherits the allocation's SLURM_* variables,
# which describe the single batch step (rank 0 of 1), not the MPI ranks.
MPIRUN_IN_SLURM = {
    **{k: v for k, v in OPENMPI.items() if not k.startswith("MASTER_")},
    "MASTER_ADDR": "gpu007",
    "SLURM_PROCID": "0",
    "SLURM_NTASKS": "1",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_TASKS_PER_NODE": "1",
    "SLURM_JOB_ID": "77",
    "SLURM_JOB_NODELIST": "gpu[007-008]",
}


def _no_scontrol(tmp_path: Path) -> dict[str, str]:
    """A PATH with no scontrol on it, so slurm_master_addr uses its own parser."""
    empty = tmp_path / "empty_bin"
    empty.mkdir(exist_ok=True)
    return {"PATH": str(empty)}


def test_torchrun_wins_over_slurm_variables() -> None:
    info = discover(TORCHRUN_UNDER_SRUN)
    assert info == RankInfo(
        rank=3,
        local_rank=1,
        world_size=8,
        local_world_size=2,
        master_addr="gpu007",
        master_port=29400,
        launcher="torchrun",
    )


def test_deepspeed_launcher_local_size() -> None:
    info = discover(DEEPSPEED_LAUNCHER)
    assert info == RankInfo(6, 2, 8, 4, "10.1.2.3", 29500, "torchrun")


def test_openmpi_with_master_addr() -> None:
    # MASTER_ADDR is given, so no MPI call is made (mpi_comm would be needed otherwise).
    assert discover(OPENMPI) == RankInfo(5, 1, 8, 4, "head.cluster", 23456, "openmpi")


def test_openmpi_master_addr_without_port_uses_torch_default() -> None:
    env = {k: v for k, v in OPENMPI.items() if k != "MASTER_PORT"}
    assert discover(env).master_port == 29500


def test_openmpi_without_master_addr_needs_mpi4py(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `from mpi4py import MPI` raise ImportError, as on a
    # machine without mpi4py.
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    env = {k: v for k, v in OPENMPI.items() if not k.startswith("MASTER_")}
    with pytest.raises(RuntimeError, match=r"mpi4py is not installed.*-x MASTER_ADDR"):
        discover(env)


def test_mpirun_inside_slurm_allocation_uses_openmpi_ranks() -> None:
    info = discover(MPIRUN_IN_SLURM)
    assert (info.launcher, info.rank, info.world_size) == ("openmpi", 5, 8)
    assert (info.local_rank, info.local_world_size) == (1, 4)
    assert info.master_addr == "gpu007"


def test_slurm_without_scontrol(tmp_path: Path) -> None:
    info = discover({**SLURM, **_no_scontrol(tmp_path)})
    # Port: 15000 + 123456 % 20000, the same on every task of job 123456.
    assert info == RankInfo(5, 1, 8, 4, "gpu007", 18456, "slurm")


def test_slurm_port_is_shared_by_all_tasks_and_differs_between_jobs(tmp_path: Path) -> None:
    path = _no_scontrol(tmp_path)
    ports = {
        discover({**SLURM, **path, "SLURM_PROCID": str(rank)}).master_port for rank in range(8)
    }
    assert len(ports) == 1
    assert discover({**SLURM, **path, "SLURM_JOB_ID": "123457"}).master_port != ports.pop()


def test_slurm_step_nodelist_preferred_and_master_overrides(tmp_path: Path) -> None:
    env = {**SLURM, **_no_scontrol(tmp_path), "SLURM_STEP_NODELIST": "gpu[012-013]"}
    assert discover(env).master_addr == "gpu012"
    env.update(MASTER_ADDR="10.9.9.9", MASTER_PORT="40000")
    info = discover(env)
    assert (info.master_addr, info.master_port) == ("10.9.9.9", 40000)


def test_slurm_uneven_tasks_per_node(tmp_path: Path) -> None:
    # `srun -n 7 --ntasks-per-node 4`: the second node runs 3 tasks, which only the list says.
    env = {
        **SLURM,
        **_no_scontrol(tmp_path),
        "SLURM_NTASKS": "7",
        "SLURM_TASKS_PER_NODE": "4,3",
        "SLURM_NTASKS_PER_NODE": "4",
    }
    assert discover(env).local_world_size == 3
    uniform = {k: v for k, v in env.items() if k != "SLURM_TASKS_PER_NODE"}
    assert discover(uniform).local_world_size == 4


def test_slurm_master_addr_uses_scontrol_when_on_path(tmp_path: Path) -> None:
    # A stand-in scontrol whose answer our own parser could never give, so the test tells which
    # of the two produced the address; it also records how it was called.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(
        '#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\nprintf "from-scontrol-1\\nother\\n"\n'
    )
    scontrol.chmod(0o755)
    env = {**SLURM, "PATH": str(bin_dir), "SLURM_STEP_NODELIST": "gpu[012-013]"}
    assert slurm_master_addr(env) == "from-scontrol-1"
    assert (bin_dir / "args").read_text().split() == ["show", "hostnames", "gpu[012-013]"]


def test_single_process() -> None:
    info = discover({})
    assert (info.rank, info.local_rank, info.world_size, info.local_world_size) == (0, 0, 1, 1)
    assert (info.master_addr, info.launcher) == ("127.0.0.1", "single")
    assert 0 < info.master_port < 65536
    assert discover({"MASTER_PORT": "31337"}).master_port == 31337


TORCHRUN_MIN = {
    "RANK": "0",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "0",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}
OMPI_MIN = {k: v for k, v in OPENMPI.items() if k.startswith("OMPI_")}


def _without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({**TORCHRUN_MIN, "RANK": "x"}, "RANK='x' is not an integer"),
        ({**TORCHRUN_MIN, "RANK": "2"}, "RANK=2 must be < WORLD_SIZE=2"),
        ({**TORCHRUN_MIN, "WORLD_SIZE": "0"}, "WORLD_SIZE='0' must be >= 1"),
        ({**TORCHRUN_MIN, "LOCAL_RANK": "-1"}, "LOCAL_RANK='-1' must be >= 0"),
        ({**TORCHRUN_MIN, "LOCAL_RANK": "2"}, "LOCAL_RANK=2 must be < LOCAL_WORLD_SIZE=2"),
        ({**TORCHRUN_MIN, "MASTER_PORT": "70000"}, "MASTER_PORT='70000'"),
        (_without(TORCHRUN_MIN, "WORLD_SIZE"), "RANK is set but WORLD_SIZE is missing"),
        (_without(TORCHRUN_MIN, "RANK"), "WORLD_SIZE is set but RANK is missing"),
        (_without(TORCHRUN_MIN, "MASTER_ADDR"), "RANK is set but MASTER_ADDR is missing"),
        (_without(TORCHRUN_MIN, "LOCAL_WORLD_SIZE"), "LOCAL_SIZE is missing"),
        ({**OMPI_MIN, "OMPI_COMM_WORLD_SIZE": "four"}, "OMPI_COMM_WORLD_SIZE='four'"),
        ({**OMPI_MIN, "OMPI_COMM_WORLD_RANK": "8"}, "OMPI_COMM_WORLD_RANK=8 must be <"),
        (_without(OMPI_MIN, "OMPI_COMM_WORLD_SIZE"), "OMPI_COMM_WORLD_SIZE is missing"),
        ({**SLURM, "SLURM_NTASKS": ""}, "SLURM_NTASKS is missing or empty"),
        ({**SLURM, "SLURM_LOCALID": "4"}, "SLURM_LOCALID=4 must be < SLURM_TASKS_PER_NODE=4"),
        ({**SLURM, "SLURM_TASKS_PER_NODE": "4(x"}, "SLURM_TASKS_PER_NODE='4(x'"),
        ({**SLURM, "SLURM_NODEID": "2"}, "SLURM_NODEID=2 is out of range"),
        (_without(SLURM, "SLURM_TASKS_PER_NODE"), "tasks per node are unknown"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT='http'"),
    ],
)
def test_malformed_values_name_the_variable(
    env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        discover({**env, **_no_scontrol(tmp_path)})


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("gpu5", ["gpu5"]),
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("a[1-2]-ib,b", ["a1-ib", "a2-ib", "b"]),
        ("n[8-10]", ["n8", "n9", "n10"]),  # no padding: low bound has one digit
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("x[098-101]", ["x098", "x099", "x100", "x101"]),
        ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
        ("c[3],d[9-9]", ["c3", "d9"]),
        ("nid[001-002],login1,gpu-[1-2]", ["nid001", "nid002", "login1", "gpu-1", "gpu-2"]),
    ],
)
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["", "n[1-", "n1-2]", "n[3-1]", "n[a]", "n[[1]]", "n[]"])
def test_expand_nodelist_rejects_malformed(nodelist: str) -> None:
    with pytest.raises(ValueError, match="node list"):
        expand_nodelist(nodelist)


# --- real multi-process launches ---------------------------------------------------------------

# Variables a launcher may have left in the test's own environment; the jobs below must
# discover their ranks from what mpirun / torchrun set, not from these.
_JOB_TIMEOUT_S = 240


def _run_job(cmd: list[str], env: dict[str, str], cwd: Path) -> list[dict]:
    records, report = run_job(cmd, env, cwd, _JOB_TIMEOUT_S)
    assert len(records) == 2, f"expected one record per rank\n{report}"
    return records


def _check_two_rank_allreduce(records: list[dict], launcher: str) -> None:
    assert [r["rank"] for r in records] == [0, 1]
    assert sorted(r["local_rank"] for r in records) == [0, 1]
    for record in records:
        assert record["world_size"] == 2
        assert record["local_world_size"] == 2
        assert record["launcher"] == launcher
        assert record["sum"] == 1 + 2  # each rank contributed rank + 1


@pytest.mark.slow
def test_mpirun_two_ranks_broadcast_rendezvous(torch_extensions_dir: str, tmp_path: Path) -> None:
    # Installed by `make test` (Debian openmpi-bin, PyPI mpi4py): missing is a failure, not a skip.
    assert shutil.which("mpirun"), "mpirun is not installed (Debian: openmpi-bin)"
    import mpi4py  # noqa: F401

    env = job_env(torch_extensions_dir)
    assert "MASTER_ADDR" not in env  # so rank 0's address must travel through mpi4py
    # By name, not by absolute path: OpenMPI treats /usr/bin/mpirun as --prefix /usr and puts
    # /usr/bin first on the ranks' PATH, so they would build DeepSpeed's op with the system
    # ninja instead of the venv's, and the two ninjas invalidate each other's cache (~60 s).
    cmd = ["mpirun", "-n", "2", "--oversubscribe", sys.executable, "-m"]
    records = _run_job([*cmd, "scigpt.launch._allreduce_probe"], env, tmp_path)
    _check_two_rank_allreduce(records, "openmpi")


@pytest.mark.slow
def test_torchrun_two_ranks(torch_extensions_dir: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    cmd += ["-m", "scigpt.launch._allreduce_probe"]
    records = _run_job(cmd, job_env(torch_extensions_dir), tmp_path)
    _check_two_rank_allreduce(records, "torchrun")


@pytest.mark.slow
def test_init_distributed_in_process_is_idempotent_and_restartable(
    torch_extensions_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    import torch.distributed as dist

    from scigpt.launch.distributed import destroy_distributed, init_distributed

    if dist.is_initialized():
        pytest.fail("another test left a process group initialised in this process")
    # delenv records the current state, so whatever init_distributed exports is undone after.
    for name in (*LAUNCH_VARS, "TORCH_EXTENSIONS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", torch_extensions_dir)

    # Given explicitly: the test's own environment may be inside a Slurm or MPI job.
    info = RankInfo(0, 0, 1, 1, "127.0.0.1", free_port(), "single")
    try:
        assert init_distributed(info, backend="gloo") == info
        assert (dist.get_rank(), dist.get_world_size(), dist.get_backend()) == (0, 1, "gloo")
        assert (os.environ["MASTER_PORT"], os.environ["WORLD_SIZE"]) == (str(info.master_port), "1")
        import deepspeed.comm

        assert deepspeed.comm.is_initialized()
        # A second call returns what the first started with, launcher included (rediscovery
        # from the exported variables would say "torchrun").
        assert init_distributed() == info
        with pytest.raises(RuntimeError, match="rank 0 of 2"):
            init_distributed(RankInfo(0, 0, 2, 1, "127.0.0.1", info.master_port, "single"))
    finally:
        destroy_distributed()
    assert not dist.is_initialized()
    destroy_distributed()  # a no-op now

    again = RankInfo(0, 0, 1, 1, "127.0.0.1", free_port(), "single")
    try:
        assert init_distributed(again, backend="gloo") == again
        value = torch.tensor([5])
        dist.all_reduce(value)
        assert value.item() == 5
    finally:
        destroy_distributed()
