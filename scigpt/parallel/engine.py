"""DeepSpeed engine construction. The DeepSpeed config is generated from the typed config,
never hand-written, so a run's YAML stays the single source of truth.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from scigpt.config import RunConfig
from scigpt.layout_rules import check_layout
from scigpt.parallel import memory_model
from scigpt.parallel.topology import Topology


def bucket_elements(cfg: RunConfig, n_params: int) -> int:
    """ZeRO reduce/all-gather bucket size in elements.

    DeepSpeed allocates a fresh bucket of this size every micro-step (stage_1_and_2.py,
    ``setup_buckets``). Its default, 5e8 elements, is 2 GB of fp32 per step that buys nothing
    for a model smaller than the bucket, so cap it at the parameter count
    (benchmarks/engine_overhead.py measures both); the rule is memory_model.bucket_elements.
    """
    if cfg.parallel.bucket_elements is not None:
        return cfg.parallel.bucket_elements
    return memory_model.bucket_elements(n_params)


def deepspeed_config(cfg: RunConfig, topo: Topology, n_params: int) -> dict[str, Any]:
    s = cfg.schedule
    bucket = bucket_elements(cfg, n_params)
    return {
        "train_micro_batch_size_per_gpu": s.micro_batch_size,
        "gradient_accumulation_steps": s.grad_accum,
        "train_batch_size": s.micro_batch_size * s.grad_accum * topo.dp,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {
            "stage": topo.zero_stage,
            "reduce_bucket_size": bucket,
            "allgather_bucket_size": bucket,
        },
        "bf16": {"enabled": cfg.precision == "bf16"},
        # Our optimiser is torch's (fused) AdamW, which ZeRO partitions like its own.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # SciGPT logs its own metrics
        "wall_clock_breakdown": False,
    }


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms, biases, embeddings' rows)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            # ZeRO-3 partitioned parameters keep their true shape in ds_shape.
            ndim = len(getattr(p, "ds_shape", p.shape))
            # no_weight_decay: set by fine-tuning on tensors whose old rows must stay exact
            exempt = getattr(p, "no_weight_decay", False)
            (decay if ndim >= 2 and not exempt else no_decay).append(p)
    o = cfg.optim
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # An empty group (a frozen backbone leaves only biases/rows trainable) would be dropped by
    # DeepSpeed's ZeRO optimizer and misalign the LR scheduler's per-group lists.
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters: check finetune.mode / finetune.train")
    # torch's fused AdamW replaces apex's FusedAdam (CPU and CUDA since torch 2.4).
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=True)


def build_engine(model: torch.nn.Module, cfg: RunConfig, topo: Topology, mpu=None):
    """Wrap ``model`` in a DeepSpeed engine. Returns (engine, scheduler). ``mpu``: the run's
    ProcessGroups when tensor or sequence parallelism is on (ZeRO then works over data-parallel
    ranks; with sp > 1 over the dp x sp ranks, DeepSpeed's Ulysses path).
    With pp > 1 ``model`` is the stage's ``PipelineModule`` (parallel.pipeline), which brings
    its own process grid, and the engine is DeepSpeed's ``PipelineEngine``."""
    m = cfg.model
    check_layout(
        dp=topo.dp, tp=topo.tp, pp=topo.pp, sp=topo.sp, zero_stage=topo.zero_stage,
        activation_checkpointing=topo.activation_checkpointing, heads=m.heads,
        embed_dim=m.embed_dim, mlp_ratio=m.mlp_ratio, depth=m.depth, precision=cfg.precision,
    )  # fmt: skip
    if topo.pp > 1:
        from deepspeed.pipe import PipelineModule  # optional heavy dependency

        if not isinstance(model, PipelineModule) or mpu is not None:
            raise ValueError(
                f"parallel.pp={topo.pp} needs the model as a PipelineModule "
                "(scigpt.parallel.pipeline.build_pipeline) and no mpu"
            )
    import deepspeed  # optional heavy dependency: imported when an engine is built

    optimizer = build_optimizer(model, cfg)
    s = cfg.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, warmup=s.warmup_steps, total=s.steps, min_ratio=s.min_lr_ratio
        ),
    )
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, topo, sum(p.numel() for p in model.parameters())),
        mpu=mpu,
    )
    return engine, scheduler
