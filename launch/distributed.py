"""Start and stop torch.distributed (and DeepSpeed's comm layer) from a discovered `RankInfo`.

The process group is created once per process and is reached through ``torch.distributed``'s
default group; this module keeps no process groups of its own (DESIGN.md, boundary 2). The
parallel topology builds its sub-groups from that default group.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from scigpt.launch.env import RankInfo, discover

__all__ = ["destroy_distributed", "init_distributed"]

# What init_distributed() started with, so a second call (or a caller that passed no info) gets
# the same answer, including the launcher, rather than re-running discovery: once RANK etc. are
# exported, discovery would report "torchrun" for what was an OpenMPI or Slurm job, and on the
# OpenMPI path it would need another collective broadcast.
_current: RankInfo | None = None


def init_distributed(
    info: RankInfo | None = None, *, backend: str | None = None, timeout_s: float = 300
) -> RankInfo:
    """Initialise the default process group and DeepSpeed's comm layer; return the layout.

    `info` defaults to `discover()`. `backend` defaults to "nccl" when CUDA is available, else
    "gloo". Idempotent: if torch.distributed is already initialised, the layout is checked
    against the live group and returned.
    """
    global _current
    if dist.is_initialized():
        info = info or _current or discover()
        _check_matches_group(info)
        _init_deepspeed_comm(dist.get_backend(), timeout_s)
        _current = info
        return info

    info = info or discover()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "nccl" in backend:
        _set_cuda_device(info)

    # torch's env:// rendezvous and DeepSpeed read these; exporting them makes every launcher
    # look like torchrun from here on, including to code that reads the environment itself.
    os.environ.update(
        MASTER_ADDR=info.master_addr,
        MASTER_PORT=str(info.master_port),
        RANK=str(info.rank),
        WORLD_SIZE=str(info.world_size),
        LOCAL_RANK=str(info.local_rank),
        LOCAL_WORLD_SIZE=str(info.local_world_size),
    )
    _init_deepspeed_comm(backend, timeout_s)
    _check_matches_group(info)
    _current = info
    return info


def destroy_distributed() -> None:
    """Tear down the default process group (no-op if none); `init_distributed` may run again."""
    global _current
    _current = None
    if not dist.is_initialized():
        return
    ds_comm = sys.modules.get("deepspeed.comm")
    if ds_comm is not None and ds_comm.is_initialized():
        # DeepSpeed caches group handles (deepspeed.utils.groups); its destroy releases them too.
        ds_comm.destroy_process_group()
    else:
        dist.destroy_process_group()


def _init_deepspeed_comm(backend: str, timeout_s: float) -> None:
    # Imported here: importing deepspeed takes seconds and probes for accelerators, which
    # rank discovery and the tests of it do not need.
    import deepspeed

    # auto_mpi_discovery=False: ranks are already in the environment, and DeepSpeed's own MPI
    # discovery would initialise MPI and override MASTER_ADDR with `hostname -I`. When torch
    # is already initialised, this only wraps the existing group in DeepSpeed's comm backend.
    deepspeed.init_distributed(
        dist_backend=backend,
        auto_mpi_discovery=False,
        timeout=timedelta(seconds=timeout_s),
        verbose=False,
    )


def _set_cuda_device(info: RankInfo) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(
            "backend 'nccl' needs CUDA, but torch.cuda.is_available() is False; "
            "use backend='gloo' on CPU-only machines"
        )
    count = torch.cuda.device_count()
    if count >= info.local_world_size:
        device = info.local_rank
    elif count == 1:
        # The scheduler gave each task its own GPU (srun --gpus-per-task=1, or a per-rank
        # CUDA_VISIBLE_DEVICES), so every task sees its GPU as device 0.
        device = 0
    else:
        raise RuntimeError(
            f"{info.local_world_size} ranks on this node but {count} visible GPUs "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
            "start one rank per GPU, or give each rank exactly one GPU"
        )
    torch.cuda.set_device(device)


def _check_matches_group(info: RankInfo) -> None:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if (rank, world_size) != (info.rank, info.world_size):
        raise RuntimeError(
            f"the initialised process group is rank {rank} of {world_size}, but the rank info "
            f"says rank {info.rank} of {info.world_size} (launcher {info.launcher!r}); call "
            "destroy_distributed() before initialising with a different layout"
        )
