"""Rank discovery: turn whatever launched this process into one `RankInfo`.

Four launchers are understood, tried in this order (the first that is present wins):

1. torchrun / the DeepSpeed launcher: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
   ``LOCAL_WORLD_SIZE`` (DeepSpeed: ``LOCAL_SIZE``), ``MASTER_ADDR``, ``MASTER_PORT``.
   They come first because whoever sets them has already decided the layout; torchrun started
   by ``srun`` also carries ``SLURM_*`` variables that describe torchrun itself, not its workers.
2. OpenMPI: ``OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}``. ``mpirun`` inside a Slurm
   allocation inherits the allocation's ``SLURM_*`` variables (``SLURM_PROCID=0`` in every
   rank), so OpenMPI must be checked before Slurm or every rank would think it is rank 0.
3. Slurm (``srun``): ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, the tasks-per-node
   layout and ``SLURM_NODEID``.
4. Nothing: a single process on 127.0.0.1.

``MASTER_ADDR``/``MASTER_PORT``, where set, override what OpenMPI and Slurm discovery would
choose, so a site can pin the rendezvous host or port.

This module imports neither torch nor mpi4py at import time; mpi4py is imported only when an
OpenMPI job has no ``MASTER_ADDR`` and rank 0's address must be broadcast.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RankInfo", "discover", "expand_nodelist", "slurm_master_addr"]

# torch.distributed's own default rendezvous port (TORCH_DISTRIBUTED_DEFAULT_PORT in DeepSpeed);
# used when MASTER_ADDR is given without MASTER_PORT, so we agree with what torchrun would pick.
DEFAULT_MASTER_PORT = 29500

# Slurm port window: every task derives the same port from the job id without communicating.
# 15000-34999 avoids well-known service ports and mostly avoids the Linux ephemeral range
# (32768+), where an outgoing connection could briefly hold the port; MASTER_PORT overrides it.
_SLURM_PORT_BASE = 15000
_SLURM_PORT_SPAN = 20000

_TORCHRUN_FIX = (
    "launch with torchrun or the deepspeed launcher (which set RANK, WORLD_SIZE, LOCAL_RANK, "
    "MASTER_ADDR and MASTER_PORT together), or unset RANK/WORLD_SIZE so OpenMPI/Slurm "
    "discovery is used"
)
_OMPI_FIX = "launch with OpenMPI's mpirun, which sets all OMPI_COMM_WORLD_* variables"
_SLURM_FIX = "launch the tasks with srun inside the allocation, which sets all SLURM_* variables"


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in the job, and where the rendezvous (rank 0) listens."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" | "openmpi" | "slurm" | "single"

    def __post_init__(self) -> None:
        # Caught here as well as in discover() because a RankInfo can also be built by hand.
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank ({self.rank}) must be in [0, world_size={self.world_size})")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(
                f"local_rank ({self.local_rank}) must be in "
                f"[0, local_world_size={self.local_world_size})"
            )
        if self.local_world_size > self.world_size:
            raise ValueError(
                f"local_world_size ({self.local_world_size}) must not exceed "
                f"world_size ({self.world_size})"
            )
        if not 0 < self.master_port < 65536:
            raise ValueError(f"master_port ({self.master_port}) must be in 1..65535")


def discover(env: Mapping[str, str] | None = None, *, mpi_comm: Any = None) -> RankInfo:
    """Work out this process's rank layout from the launcher's environment variables.

    `env` defaults to ``os.environ``. `mpi_comm` (default ``MPI.COMM_WORLD``) is used only for
    an OpenMPI job without ``MASTER_ADDR``, to broadcast rank 0's host and a free port; that
    path is collective, so every rank must call `discover`. Malformed or half-set variables
    raise ``ValueError`` naming the variable, its value and the fix.
    """
    env = os.environ if env is None else env
    if "RANK" in env or "WORLD_SIZE" in env:
        return _from_torchrun(env)
    if "OMPI_COMM_WORLD_RANK" in env or "OMPI_COMM_WORLD_SIZE" in env:
        return _from_openmpi(env, mpi_comm)
    if "SLURM_PROCID" in env:
        return _from_slurm(env)
    return _single(env)


# --- per-launcher readers ---------------------------------------------------------------------


def _from_torchrun(env: Mapping[str, str]) -> RankInfo:
    rank = _get_int(env, "RANK", partner="WORLD_SIZE", fix=_TORCHRUN_FIX)
    world_size = _get_int(env, "WORLD_SIZE", partner="RANK", fix=_TORCHRUN_FIX, minimum=1)
    local_rank = _get_int(env, "LOCAL_RANK", partner="RANK", fix=_TORCHRUN_FIX)
    # torchrun sets LOCAL_WORLD_SIZE; the DeepSpeed launcher sets LOCAL_SIZE instead.
    local_name = "LOCAL_WORLD_SIZE" if "LOCAL_WORLD_SIZE" in env else "LOCAL_SIZE"
    local_world_size = _get_int(env, local_name, partner="RANK", fix=_TORCHRUN_FIX, minimum=1)
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", local_name)
    _check_layout(rank, world_size, local_rank, local_world_size, names, _TORCHRUN_FIX)
    master_addr = _require(env, "MASTER_ADDR", partner="RANK", fix=_TORCHRUN_FIX)
    master_port = _port(_require(env, "MASTER_PORT", partner="RANK", fix=_TORCHRUN_FIX))
    return RankInfo(
        rank, local_rank, world_size, local_world_size, master_addr, master_port, "torchrun"
    )


def _from_openmpi(env: Mapping[str, str], mpi_comm: Any) -> RankInfo:
    names = (
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    )
    rank = _get_int(env, names[0], partner=names[1], fix=_OMPI_FIX)
    world_size = _get_int(env, names[1], partner=names[0], fix=_OMPI_FIX, minimum=1)
    local_rank = _get_int(env, names[2], partner=names[0], fix=_OMPI_FIX)
    local_world_size = _get_int(env, names[3], partner=names[0], fix=_OMPI_FIX, minimum=1)
    _check_layout(rank, world_size, local_rank, local_world_size, names, _OMPI_FIX)

    if env.get("MASTER_ADDR"):
        master_addr = env["MASTER_ADDR"]
        master_port = _port(env.get("MASTER_PORT") or str(DEFAULT_MASTER_PORT))
    else:
        # No agreed rendezvous: rank 0 names its own host and a free port, and MPI tells the rest.
        master_addr, bcast_port = _mpi_broadcast_rendezvous(mpi_comm, rank, world_size)
        master_port = _port(env["MASTER_PORT"]) if env.get("MASTER_PORT") else bcast_port
    return RankInfo(
        rank, local_rank, world_size, local_world_size, master_addr, master_port, "openmpi"
    )


def _from_slurm(env: Mapping[str, str]) -> RankInfo:
    rank = _get_int(env, "SLURM_PROCID", partner="SLURM_NTASKS", fix=_SLURM_FIX)
    world_size = _get_int(env, "SLURM_NTASKS", partner="SLURM_PROCID", fix=_SLURM_FIX, minimum=1)
    local_rank = _get_int(env, "SLURM_LOCALID", partner="SLURM_PROCID", fix=_SLURM_FIX)
    local_name, local_world_size = _slurm_local_world_size(env)
    names = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", local_name)
    _check_layout(rank, world_size, local_rank, local_world_size, names, _SLURM_FIX)

    master_addr = env.get("MASTER_ADDR") or slurm_master_addr(env)
    if env.get("MASTER_PORT"):
        master_port = _port(env["MASTER_PORT"])
    elif env.get("SLURM_JOB_ID"):
        job_id = _get_int(env, "SLURM_JOB_ID", partner="SLURM_PROCID", fix=_SLURM_FIX)
        # Deterministic in the job id, so all tasks agree with no communication, and two jobs
        # sharing a node are unlikely to collide.
        master_port = _SLURM_PORT_BASE + job_id % _SLURM_PORT_SPAN
    else:
        raise ValueError(
            "SLURM_PROCID is set but neither MASTER_PORT nor SLURM_JOB_ID is; run under srun "
            "(which sets SLURM_JOB_ID) or export MASTER_PORT to every task"
        )
    return RankInfo(
        rank, local_rank, world_size, local_world_size, master_addr, master_port, "slurm"
    )


def _single(env: Mapping[str, str]) -> RankInfo:
    master_addr = env.get("MASTER_ADDR") or "127.0.0.1"
    master_port = _port(env["MASTER_PORT"]) if env.get("MASTER_PORT") else _free_port()
    return RankInfo(0, 0, 1, 1, master_addr, master_port, "single")


# --- Slurm helpers ----------------------------------------------------------------------------


def _slurm_local_world_size(env: Mapping[str, str]) -> tuple[str, int]:
    """Tasks on this node, and the variable it came from (for error messages)."""
    # The per-node list (e.g. "4(x2),3") is preferred over SLURM_NTASKS_PER_NODE: with
    # --ntasks-per-node=4 -n 7 the last node runs 3 tasks, which only the list says. The step's
    # list describes this srun; the job's may describe a larger allocation.
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if name in env:
            counts = _expand_tasks_per_node(env[name], name)
            node_id = _get_int(env, "SLURM_NODEID", partner=name, fix=_SLURM_FIX)
            if node_id >= len(counts):
                raise ValueError(
                    f"SLURM_NODEID={node_id} is out of range for {name}={env[name]!r} "
                    f"({len(counts)} nodes); {_SLURM_FIX}"
                )
            return name, counts[node_id]
    if "SLURM_NTASKS_PER_NODE" in env:
        name = "SLURM_NTASKS_PER_NODE"
        return name, _get_int(env, name, partner="SLURM_PROCID", fix=_SLURM_FIX, minimum=1)
    raise ValueError(
        "SLURM_PROCID is set but none of SLURM_STEP_TASKS_PER_NODE, SLURM_TASKS_PER_NODE or "
        f"SLURM_NTASKS_PER_NODE is, so the tasks per node are unknown; {_SLURM_FIX}"
    )


_TASKS_PER_NODE_ITEM = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def _expand_tasks_per_node(value: str, name: str) -> list[int]:
    """Slurm's compressed per-node counts: "4(x2),3" -> [4, 4, 3]."""
    counts: list[int] = []
    for item in value.split(","):
        match = _TASKS_PER_NODE_ITEM.match(item.strip())
        if match is None:
            raise ValueError(
                f"{name}={value!r} is not Slurm's tasks-per-node format "
                f"(e.g. '4(x2),3'); {_SLURM_FIX}"
            )
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def slurm_master_addr(env: Mapping[str, str]) -> str:
    """First host of the step's (else the job's) node list: where Slurm places task 0.

    Uses ``scontrol show hostnames`` when ``scontrol`` is on the PATH given in `env`, as that is
    Slurm's own parser; otherwise (or if it fails) `expand_nodelist`.
    """
    # A step may run on a subset of the allocation; task 0 sits on the step's first node.
    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if env.get(name):
            nodelist = env[name]
            break
    else:
        raise ValueError(
            "no SLURM_STEP_NODELIST or SLURM_JOB_NODELIST is set, so rank 0's host is unknown; "
            "run under srun or export MASTER_ADDR"
        )

    scontrol = shutil.which("scontrol", path=env.get("PATH", os.defpath))
    if scontrol is not None:
        try:
            out = subprocess.run(
                [scontrol, "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""  # fall through to our own parser, which reads the same syntax
        hosts = out.split()
        if hosts:
            return hosts[0]
    return expand_nodelist(nodelist)[0]


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand Slurm hostlist syntax, in Slurm's order.

    ``"node[01-03,07],gpu5"`` -> node01 node02 node03 node07 gpu5; ``"a[1-2]-ib,b"`` -> a1-ib
    a2-ib b; several bracket groups give their product (``"r[1-2]n[1-2]"`` -> r1n1 r1n2 r2n1
    r2n2). A range is zero-padded to the width of its lower bound, as Slurm does (``[08-10]``
    -> 08 09 10, ``[8-10]`` -> 8 9 10).
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist):
        hosts += _expand_host(item, nodelist)
    if not hosts:
        raise ValueError(f"node list {nodelist!r} is empty")
    return hosts


def _split_top_level(nodelist: str) -> list[str]:
    """Split on commas that are outside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(nodelist):
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"node list {nodelist!r} has nested '['")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"node list {nodelist!r} has ']' without '['")
        elif char == "," and depth == 0:
            items.append(nodelist[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"node list {nodelist!r} has '[' without ']'")
    items.append(nodelist[start:])
    return [item.strip() for item in items if item.strip()]


def _expand_host(pattern: str, nodelist: str) -> list[str]:
    open_at = pattern.find("[")
    if open_at < 0:
        return [pattern]
    close_at = pattern.index("]", open_at)  # balanced: checked by _split_top_level
    prefix, body, rest = pattern[:open_at], pattern[open_at + 1 : close_at], pattern[close_at + 1 :]
    suffixes = _expand_host(rest, nodelist) if rest else [""]
    return [
        prefix + number + suffix for number in _expand_ranges(body, nodelist) for suffix in suffixes
    ]


def _expand_ranges(body: str, nodelist: str) -> list[str]:
    numbers: list[str] = []
    for part in body.split(","):
        match = _RANGE.match(part.strip())
        if match is None:
            raise ValueError(
                f"node list {nodelist!r}: {part!r} is not a number or a range like 01-04"
            )
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"node list {nodelist!r}: range {part!r} runs backwards")
        width = len(low)  # Slurm pads to the width of the lower bound
        numbers += [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    return numbers


# --- OpenMPI helper ---------------------------------------------------------------------------


def _mpi_broadcast_rendezvous(mpi_comm: Any, rank: int, world_size: int) -> tuple[str, int]:
    """Rank 0's hostname and a free port on it, agreed by every rank through MPI."""
    if mpi_comm is None:
        try:
            # Imported only here: importing mpi4py initialises MPI, which nothing else needs.
            from mpi4py import MPI
        except ImportError as err:
            raise RuntimeError(
                f"OpenMPI launch detected (OMPI_COMM_WORLD_RANK={rank}) without MASTER_ADDR, and "
                "mpi4py is not installed to find rank 0's address; install it "
                "(pip install 'scigpt[mpi]'), or pass the rendezvous to every rank: "
                "mpirun -x MASTER_ADDR=<rank-0 host> -x MASTER_PORT=<port> ..."
            ) from err
        mpi_comm = MPI.COMM_WORLD
    if mpi_comm.Get_size() != world_size or mpi_comm.Get_rank() != rank:
        raise RuntimeError(
            f"MPI communicator says rank {mpi_comm.Get_rank()} of {mpi_comm.Get_size()} but "
            f"OMPI_COMM_WORLD_* says rank {rank} of {world_size}; pass mpi_comm=MPI.COMM_WORLD"
        )
    # The port is free on rank 0 now; another process could take it before the store binds,
    # a small window that torchrun's own --master_port=0 handling accepts too.
    payload = (socket.gethostname(), _free_port()) if rank == 0 else None
    master_addr, master_port = mpi_comm.bcast(payload, root=0)
    return master_addr, master_port


# --- parsing helpers --------------------------------------------------------------------------


def _require(env: Mapping[str, str], name: str, *, partner: str, fix: str) -> str:
    if not env.get(name, "").strip():
        raise ValueError(f"{partner} is set but {name} is missing or empty; {fix}")
    return env[name]


def _get_int(env: Mapping[str, str], name: str, *, partner: str, fix: str, minimum: int = 0) -> int:
    raw = _require(env, name, partner=partner, fix=fix)
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer; {fix}") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be >= {minimum}; {fix}")
    return value


def _port(raw: str) -> int:
    try:
        port = int(raw.strip())
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ValueError(f"MASTER_PORT={raw!r} is not a port number in 1..65535; set it to one")
    return port


def _check_layout(
    rank: int,
    world_size: int,
    local_rank: int,
    local_world_size: int,
    names: tuple[str, str, str, str],
    fix: str,
) -> None:
    """Name the offending variables (RankInfo's own check only knows field names)."""
    rank_n, world_n, local_n, local_world_n = names
    if rank >= world_size:
        raise ValueError(f"{rank_n}={rank} must be < {world_n}={world_size}; {fix}")
    if local_rank >= local_world_size:
        raise ValueError(
            f"{local_n}={local_rank} must be < {local_world_n}={local_world_size}; {fix}"
        )
    if local_world_size > world_size:
        raise ValueError(
            f"{local_world_n}={local_world_size} must be <= {world_n}={world_size}; {fix}"
        )


def _free_port() -> int:
    """A TCP port that is free on this host right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
