"""Smallest end-to-end check of a launch: discover ranks, initialise, all-reduce, report.

Run under any launcher, e.g. ``mpirun -n 2 python -m scigpt.launch._allreduce_probe``. Each rank
prints one JSON line; with N ranks every line must show ``"sum": N * (N + 1) / 2``.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from scigpt.launch.distributed import destroy_distributed, init_distributed


def main() -> None:
    """All-reduce rank + 1 through DeepSpeed's comm layer and print the result as JSON."""
    info = init_distributed()
    try:
        import deepspeed.comm as ds_comm

        # NCCL reduces only CUDA tensors; init_distributed has set this rank's device.
        on_cuda = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if on_cuda else "cpu"
        value = torch.tensor([info.rank + 1], dtype=torch.int64, device=device)  # (1,)
        # Through DeepSpeed's wrapper rather than torch.distributed, so a launch that left
        # DeepSpeed's comm layer uninitialised fails here.
        ds_comm.all_reduce(value)
        record = {
            "rank": info.rank,
            "local_rank": info.local_rank,
            "world_size": info.world_size,
            "local_world_size": info.local_world_size,
            "launcher": info.launcher,
            "sum": int(value.item()),
        }
        # One write per line: ranks share the launcher's stdout pipe, and print() writes the
        # text and its newline separately, which lets two ranks' lines interleave.
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
