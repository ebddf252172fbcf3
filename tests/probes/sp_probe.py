"""Ulysses sequence parallelism with the Triton attention kernel, under a real launcher.

Run as ``TRITON_INTERPRET=1 torchrun --nproc_per_node 2 tests/probes/sp_probe.py`` (fp32: the
interpreter's bf16 ``tl.dot`` is broken). Every rank builds the same tiny model (head dim 32,
the kernel's smallest) from one seed, keeps an untouched deep copy with PyTorch's fp32 ``math``
attention as the reference, makes the original sequence-parallel over the world with the Triton
kernel as its local attention, and compares the loss and the gradients (summed over the ranks,
as DeepSpeed reduces them). The grid has 10 rows: 3 patch rows, padded to 4 for sp2. Each rank
writes one JSON file (sp_probe_rank<r>.json in the working directory: the ranks share one stdout
pipe, where two lines can interleave); tests/test_sequence_parallel.py asserts on them.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from scigpt.config import ModelConfig
from scigpt.launch.distributed import destroy_distributed, init_distributed
from scigpt.models.attention import get_attention
from scigpt.models.build import build_model, materialise
from scigpt.models.objectives import Objectives
from scigpt.models.vit import ModelSpec
from scigpt.parallel.parallelize import register_kernels
from scigpt.parallel.sequence import apply_sequence_parallel
from scigpt.parallel.topology import ProcessGroups, Topology

ATTENTION = os.environ.get("SP_PROBE_ATTENTION", "triton")  # the local attention under test
CFG = ModelConfig(patch_size=4, embed_dim=64, depth=2, heads=2, attention=ATTENTION)


def _batch(b: int = 2, v: int = 3, t: int = 2, h: int = 10, w: int = 12) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(b, v, h, w)
    mask[0, 1, :3] = 0  # some invalid values, so the mask is exercised
    return {
        "fields": torch.randn(b, v, t, h, w, generator=g),
        "target": torch.randn(b, v, h, w, generator=g),
        "mask": mask,
        "var_ids": torch.tensor([2, 0, 1]),
        "lat": torch.linspace(60, 30, h),
        "lon": torch.linspace(-5, 20, w),
        "times": torch.arange(b, dtype=torch.int64) * 3_600_000_000_000,
    }


def main() -> None:
    info = init_distributed()
    rank, world = info.rank, info.world_size
    register_kernels()
    topo = Topology(dp=1, sp=world)
    groups = ProcessGroups(topo, rank)
    model = materialise(build_model(CFG, ModelSpec(3, 2)), "cpu", seed=0)
    torch.manual_seed(0)  # the same head on every rank
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head blocks block gradients
    ref = copy.deepcopy(model)
    for blk in ref.blocks:
        blk.attn.attn_fn = get_attention("math")
    apply_sequence_parallel(model, world, groups.sp_group, groups.sp_rank)

    batch = _batch()
    loss, _ = model(batch, Objectives())
    loss.backward()
    ref_loss, _ = ref(batch, Objectives())
    ref_loss.backward()
    worst, worst_name = 0.0, ""
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        if q.grad is None:
            continue
        g = p.grad.clone() if p.grad is not None else torch.zeros_like(q)
        dist.all_reduce(g, group=groups.sp_group)  # the bands' parts sum to the sample's
        rel = ((g - q.grad).abs().max() / q.grad.abs().max().clamp_min(1e-12)).item()
        if rel > worst:
            worst, worst_name = rel, name
    with torch.no_grad():
        out, ref_out = model(batch), ref(batch)
    record = {
        "rank": rank,
        "loss": loss.item(),
        "ref_loss": ref_loss.item(),
        "loss_rel": abs(loss.item() - ref_loss.item()) / abs(ref_loss.item()),
        "grad_rel": worst,
        "grad_worst": worst_name,
        "out_rel": ((out - ref_out).abs().max() / ref_out.abs().max()).item(),
        "out_shape": list(out.shape),
        "block_grad": ref.blocks[0].attn.qkv.weight.grad.abs().max().item(),
        "local_attention": getattr(model.blocks[0].attn.attn_fn.local, "__name__", "?"),
    }
    # One file per rank (the ranks share one stdout pipe, and two lines can interleave).
    Path(f"sp_probe_rank{rank}.json").write_text(json.dumps(record))
    destroy_distributed()


if __name__ == "__main__":
    main()
