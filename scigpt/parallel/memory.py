"""What each rank really holds: parameter and optimizer-state bytes, counted by storage.

Counted after the first optimizer step, from the engine's own tensors (no allocator statistics,
so the same on CPU and GPU), each storage once:

* ``params`` — the storages behind this rank's model parameters: its pipeline stage, its
  tensor-parallel slices, and under ZeRO-3 only its partition (``ds_tensor``); under ZeRO-1/2
  DeepSpeed's flat parameter buffer (alignment padding included);
* ``master`` — fp32 master partitions DeepSpeed keeps beside the parameters (ZeRO-1/2
  ``single_partition_of_fp32_groups``, ZeRO-3 ``fp32_partitioned_groups_flat``, the bf16
  optimizer's ``fp32_groups_flat_partition``, the unfused bf16 optimizer's ``fp32_groups``);
* ``moments`` — the optimizer's state tensors (AdamW's exp_avg and exp_avg_sq, step counters).

``scigpt plan`` predicts ``params`` and ``master + moments`` per rank; the trainer writes these
numbers to ``memory.json`` in the run directory, and the tests check the prediction against them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _storages(tensors: Iterable[torch.Tensor]) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            out[s.data_ptr()] = s.nbytes()
    return out


def _flatten(items) -> Iterable[torch.Tensor]:
    for item in items:
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, (list, tuple)):
            yield from _flatten(item)


def _params(module: torch.nn.Module) -> Iterable[torch.Tensor]:
    for p in module.parameters():
        yield p.ds_tensor if hasattr(p, "ds_tensor") else p


def rank_memory(engine) -> dict[str, int]:
    """Bytes this rank holds for parameters, master copies and optimizer moments."""
    opt = engine.optimizer
    params = _storages(_params(engine.module))
    master_lists = [
        getattr(opt, name, None) or []
        for name in (
            "single_partition_of_fp32_groups",
            "fp32_partitioned_groups_flat",
            "fp32_groups_flat_partition",
            "fp32_groups",  # FP16_UnfusedOptimizer (bf16 without ZeRO): lists per group
        )
    ]
    master = _storages(_flatten(master_lists))
    inner = getattr(opt, "optimizer", opt)  # DeepSpeed wraps torch's optimizer
    moments = _storages(
        v for state in inner.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    )
    for ptr in params:  # ZeRO-0 fp32: the optimizer steps the parameters themselves
        master.pop(ptr, None)
    return {
        "params": sum(params.values()),
        "master": sum(master.values()),
        "moments": sum(moments.values()),
        "optimizer": sum(master.values()) + sum(moments.values()),
    }
