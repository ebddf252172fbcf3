"""Tensor parallelism against the single-device model, under a real launcher.

Run as ``torchrun --nproc_per_node 2 tests/probes/tp_probe.py``. Every rank builds the same
tiny model from one seed, keeps an untouched deep copy as the reference, shards the original over
the whole world, and compares outputs, gradients and three SGD steps. Each rank prints one JSON
line with its largest relative errors; tests/test_tensor_parallel.py asserts on them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from scigpt.config import ModelConfig
from scigpt.launch.distributed import destroy_distributed, init_distributed
from scigpt.models.build import build_model, materialise
from scigpt.models.objectives import Objectives
from scigpt.models.vit import ModelSpec
from scigpt.parallel.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    apply_tensor_parallel,
)

CFG = ModelConfig(patch_size=4, embed_dim=32, depth=2, heads=4)
STEPS, LR = 3, 1.0  # a large step, so a wrong gradient shows in the losses


def _batch(b: int = 3, v: int = 5, t: int = 2, h: int = 13, w: int = 10, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, v, h, w)
    mask[0, 1, :3] = 0  # some invalid values, so the mask is exercised
    return {
        "fields": torch.randn(b, v, t, h, w, generator=g),  # (B, V, T, H, W)
        "target": torch.randn(b, v, h, w, generator=g),  # (B, V, H, W)
        "mask": mask,
        "var_ids": torch.tensor([4, 0, 2, 1, 3])[:v],
        "lat": torch.linspace(60, 30, h),
        "lon": torch.linspace(-5, 20, w),
        "times": torch.arange(b, dtype=torch.int64) * 3_600_000_000_000,
    }


def _rel(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """max |a - b| / max(max |b|, floor)."""
    scale = max(b.abs().max().item(), floor)
    return (a - b).abs().max().item() / scale if scale else (a - b).abs().max().item()


def _expected_shard(name: str, full: torch.Tensor, heads: int, rank: int, tp: int) -> torch.Tensor:
    """This rank's slice of a full tensor, written out independently of tensor_parallel.py."""
    if ".attn.qkv." in name:  # rows (3, heads, head_dim): whole heads of q, k and v
        hl = heads // tp
        three = full.reshape(3, heads, -1, *full.shape[1:])
        return three[:, rank * hl : (rank + 1) * hl].reshape(-1, *full.shape[1:])
    if ".mlp.fc1." in name:  # contiguous rows
        return full.chunk(tp, dim=0)[rank]
    if name.endswith((".attn.proj.weight", ".mlp.fc2.weight")):  # contiguous columns
        return full.chunk(tp, dim=1)[rank]
    return full  # replicated


def _check_layers(group: dist.ProcessGroup) -> float:
    """gather_output=True and input_is_parallel=False against the full nn.Linear: outputs,
    input gradients and this rank's slice of the weight gradient."""
    rank, tp = dist.get_rank(group), dist.get_world_size(group)
    torch.manual_seed(1)
    full, x = nn.Linear(6, 8), torch.randn(3, 6)
    errs = []
    for split_dim, layer in (
        (0, ColumnParallelLinear(full, group, gather_output=True)),
        (1, RowParallelLinear(full, group, input_is_parallel=False)),
    ):
        full.zero_grad()
        x_ref, x_tp = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ref, y_tp = full(x_ref), layer(x_tp)  # (3, 8) both
        y_ref.square().sum().backward()
        y_tp.square().sum().backward()
        errs += [_rel(y_tp, y_ref), _rel(x_tp.grad, x_ref.grad)]
        errs.append(_rel(layer.weight.grad, full.weight.grad.chunk(tp, split_dim)[rank]))
    return max(errs)


def main() -> None:
    info = init_distributed()
    try:
        group = dist.new_group(list(range(info.world_size)))  # TP over the whole world
        rank, tp = dist.get_rank(group), dist.get_world_size(group)
        model = materialise(build_model(CFG, ModelSpec(5, 2)), "cpu", seed=0)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            # The forecast head starts at zero, which would block every upstream gradient.
            torch.manual_seed(1)
            nn.init.normal_(model.head.weight, std=0.02)
        ref = copy.deepcopy(model)
        batch, obj = _batch(), Objectives()

        ref_loss, _ = ref(batch, objectives=obj)
        ref_loss.backward()
        ref_out = ref(batch).detach()
        ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}

        apply_tensor_parallel(model, group)
        loss, _ = model(batch, objectives=obj)
        loss.backward()
        out = model(batch).detach()

        # A gradient that is mathematically zero is fp32 noise (the key bias of the variable
        # aggregation: softmax ignores a shift of every score), so each one is judged relative
        # to at least 1/1000 of the largest gradient, not to its own noise.
        floor = 1e-3 * max(g.abs().max().item() for g in ref_grads.values())
        shard_errs, repl_errs, sharded, missing = [], [], 0, []
        for name, p in model.named_parameters():
            if name not in ref_grads:
                continue
            if p.grad is None:
                missing.append(name)
                continue
            want = _expected_shard(name, ref_grads[name], CFG.heads, rank, tp)
            full_p = dict(ref.named_parameters())[name].detach()
            is_shard = p.shape != full_p.shape
            sharded += is_shard
            # The weights themselves too: a wrong slice with a lucky gradient must still fail.
            assert torch.equal(p.detach(), _expected_shard(name, full_p, CFG.heads, rank, tp))
            (shard_errs if is_shard else repl_errs).append(_rel(p.grad, want, floor))

        # Training: the same plain SGD on both; replicated parameters stay identical across
        # ranks because their gradients are (copy_to_tp all-reduces the activations' gradients).
        ref_state_shapes = {n: p.shape for n, p in ref.named_parameters()}
        ref_losses, tp_losses = [], []
        for net, losses in ((ref, ref_losses), (model, tp_losses)):
            opt = torch.optim.SGD(net.parameters(), lr=LR)
            for _ in range(STEPS):
                opt.zero_grad()
                step_loss, _ = net(batch, objectives=obj)
                step_loss.backward()
                opt.step()
                losses.append(step_loss.item())
        ref_params = dict(ref.named_parameters())
        param_errs = [
            # floor 1e-3 (weights start at std 0.02): the aggregation's key bias stays ~0 + noise
            _rel(p.detach(), _expected_shard(n, ref_params[n].detach(), CFG.heads, rank, tp), 1e-3)
            for n, p in model.named_parameters()
        ]
        loss_errs = [abs(a - b) / abs(b) for a, b in zip(tp_losses, ref_losses, strict=True)]

        # Replicated parameters must have received identical updates on every rank.
        digest = hashlib.sha256()
        for name, p in model.named_parameters():
            if name in ref_state_shapes and p.shape == ref_state_shapes[name]:
                digest.update(p.detach().numpy().tobytes())
        record = {
            "rank": rank,
            "tp": tp,
            "heads_local": model.blocks[0].attn.heads,
            "qkv_local_rows": model.blocks[0].attn.qkv.weight.shape[0],
            "sharded_params": int(sharded),
            "missing_grads": missing,
            "loss_rel": abs(loss.item() - ref_loss.item()) / abs(ref_loss.item()),
            "out_rel": _rel(out, ref_out),
            "out_changed": float((ref_out - batch["fields"][:, :, -1]).abs().max()),
            "grad_shard_rel": max(shard_errs),
            "grad_repl_rel": max(repl_errs),
            "min_block_grad": min(
                float(ref_grads[n].abs().max()) for n in ref_grads if n.startswith("blocks.")
            ),
            "sgd_loss_rel": max(loss_errs),
            "sgd_losses": tp_losses,
            "sgd_param_rel": max(param_errs),
            "layers_rel": _check_layers(group),
            "replicated_sha256": digest.hexdigest(),
        }
        # One write per line: ranks share the launcher's stdout pipe.
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
