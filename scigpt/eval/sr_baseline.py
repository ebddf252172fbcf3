"""Train a baseline super-resolution network with a run's budget: the run's steps (× grad_accum
micro-batches), micro-batch size, optimiser (``build_optimizer``: AdamW, decay on matrices),
learning-rate schedule (``lr_factor``: linear warm-up, cosine decay), gradient clipping, training
samples and seed, its checkpoint chosen on the same validation block every ``eval.every`` steps
(the lowest validation MSE; the test block plays no part). One function for any
``(B, V, H, W) → (B, V, H, W)`` network on downscaling samples
(``scigpt.data_pipeline.downscale``), in one process.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from scigpt.config import RunConfig
from scigpt.data_pipeline.loader import collate_forecast
from scigpt.parallel.engine import build_optimizer, lr_factor


def _batch(ds, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = collate_forecast([ds[i] for i in idx])
    return b["fields"][:, :, -1], b["target"], b["mask"].float()


@torch.no_grad()
def predict(net: torch.nn.Module, ds, batch_size: int = 8) -> torch.Tensor:
    """The network's fine fields for every sample of ``ds``: (N, V, H, W)."""
    was = net.training
    net.eval()
    dev = next(net.parameters()).device
    out = [
        net(_batch(ds, list(range(i, min(i + batch_size, len(ds)))))[0].to(dev)).cpu()
        for i in range(0, len(ds), batch_size)
    ]
    net.train(was)
    return torch.cat(out)


@torch.no_grad()
def val_mse(net: torch.nn.Module, ds) -> float:
    """Masked MSE over a block (normalised units)."""
    _, tgt, mask = _batch(ds, list(range(len(ds))))
    return float(((predict(net, ds) - tgt) ** 2 * mask).sum() / mask.sum().clamp_min(1))


def train_baseline(
    net: torch.nn.Module, train_ds, val_ds, cfg: RunConfig
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``net`` on ``train_ds`` with the budget of ``cfg``; returns the network at its best
    validation step (the last step without ``val_ds`` or ``eval.every``) and the choice."""
    s, every = cfg.schedule, cfg.eval.every
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = build_optimizer(net, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: lr_factor(k, warmup=s.warmup_steps, total=s.steps, min_ratio=s.min_lr_ratio)
    )
    dev = next(net.parameters()).device
    order: list[int] = []
    best, best_step, best_state = math.inf, s.steps, None
    net.train()
    for step in range(1, s.steps + 1):
        opt.zero_grad(set_to_none=True)
        for _ in range(s.grad_accum):
            while len(order) < s.micro_batch_size:  # epochs of fresh permutations
                order += torch.randperm(len(train_ds), generator=gen).tolist()
            idx, order = order[: s.micro_batch_size], order[s.micro_batch_size :]
            x, y, m = (t.to(dev) for t in _batch(train_ds, idx))
            loss = ((net(x) - y) ** 2 * m).sum() / m.sum().clamp_min(1)
            (loss / s.grad_accum).backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        if val_ds is not None and every and step % every == 0:
            score = val_mse(net, val_ds)
            if score < best:
                best, best_step = score, step
                best_state = copy.deepcopy(net.state_dict())
    if best_state is not None:
        net.load_state_dict(best_state)
    return net, {"best_val_mse": best, "best_step": best_step, "steps": s.steps}


__all__ = ["predict", "train_baseline", "val_mse"]
