"""Activation bytes per rank under Ulysses sequence parallelism: ``scigpt plan``'s prediction
(``scigpt.parallel.memory_model``) against what each rank's forward really keeps for backward.

Every rank builds the same model, applies sequence parallelism exactly as ``parallelize`` does
(``scigpt.parallel.sequence``), runs one training forward of one batch and counts the storages
autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``; parameters excluded,
each storage once) — the activation memory a rank holds at the end of its forward, on CPU
(gloo) or GPU alike. Run it at each sp, one launch per sp:

    for n in 1 2 4; do OMP_NUM_THREADS=1 torchrun --nproc_per_node $n benchmarks/sp_memory.py; done

Rank 0 prints one line per rank: measured bytes, predicted bytes and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from scigpt.launch.distributed import destroy_distributed, init_distributed
from scigpt.models.build import build_model, materialise
from scigpt.models.objectives import Objectives
from scigpt.models.vit import ModelSpec
from scigpt.parallel.memory_model import predict_memory
from scigpt.parallel.planner import load_model
from scigpt.parallel.sequence import apply_sequence_parallel
from scigpt.parallel.topology import ProcessGroups, Topology


def _batch(b: int, v: int, t: int, h: int, w: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "fields": torch.randn(b, v, t, h, w, generator=g),
        "target": torch.randn(b, v, h, w, generator=g),
        "mask": torch.ones(b, v, h, w),
        "var_ids": torch.arange(v),
        "lat": torch.linspace(60, 30, h),
        "lon": torch.linspace(-5, 40, w),
        "times": torch.arange(b, dtype=torch.int64) * 3_600_000_000_000,
    }


def saved_bytes(model: torch.nn.Module, fn) -> int:
    """Bytes of the storages autograd saves for backward while ``fn()`` runs (parameters and
    their views excluded, each storage once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit-tiny")
    ap.add_argument("--grid", default="124x240", help="HxW (124 rows: 31 patch rows, a prime)")
    ap.add_argument("--vars", type=int, default=14)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--attention", default="sdpa")
    args = ap.parse_args()
    h, w = (int(x) for x in args.grid.split("x"))

    info = init_distributed()  # torch.distributed and DeepSpeed's comm (DistributedAttention)
    rank, world = info.rank, info.world_size
    topo = Topology(dp=1, sp=world)
    groups = ProcessGroups(topo, rank)
    cfg = load_model(args.model).model_copy(update={"attention": args.attention})
    spec = ModelSpec(num_vars=args.vars, history=2)
    model = materialise(build_model(cfg, spec), "cpu", seed=0)
    torch.manual_seed(0)  # the same head on every rank
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head would save nothing
    if world > 1:
        apply_sequence_parallel(model, world, groups.sp_group, groups.sp_rank)
    batch = _batch(args.batch, args.vars, 2, h, w)
    measured = saved_bytes(model, lambda: model(batch, Objectives())[0])
    tokens = model.num_tokens(h, w)
    # The rows sp pads (patch rows rounded up to a multiple of sp) are tokens a rank holds too.
    gh, gw = model.tokenizer.embed.grid_shape(h, w)
    padded = -(-gh // world) * world * gw
    pred = predict_memory(
        cfg, spec, topo, tokens=padded, micro_batch=args.batch, vars_per_sample=args.vars,
        precision="fp32",
    ).activations  # fmt: skip
    rows = [None] * world
    dist.all_gather_object(rows, {"rank": rank, "measured": measured, "predicted": pred})
    if rank == 0:
        for r in rows:
            ratio = r["predicted"] / r["measured"]
            rec = {"model": args.model, "grid": args.grid, "tokens": tokens, "sp": world, **r}
            print(json.dumps({**rec, "predicted/measured": round(ratio, 3)}))
    dist.barrier()
    destroy_distributed()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
