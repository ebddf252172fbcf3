"""Build a model from its config on the ``meta`` device, then materialise (DESIGN.md §8)."""

from __future__ import annotations

import itertools

import torch

from scigpt.config import ModelConfig
from scigpt.models.vit import ModelSpec, SciGPTModel


def build_model(cfg: ModelConfig, spec: ModelSpec, *, device: str | torch.device = "meta"):
    """Construct without allocating: the parallel layer materialises only its local slice."""
    with torch.device(device):
        return SciGPTModel(
            spec,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            dropout=cfg.dropout,
            residual=cfg.residual,
            attention=cfg.attention,
            series_patch=cfg.series_patch,
        )


def materialise(model: SciGPTModel, device: str | torch.device, seed: int) -> SciGPTModel:
    """Allocate storage on ``device`` and initialise deterministically from ``seed``."""
    model = model.to_empty(device=device)
    # to_empty leaves garbage; NaN makes any parameter that init_weights forgets fail loudly.
    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            if t.is_floating_point():
                t.fill_(float("nan"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.init_weights()
    missed = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if missed:
        raise RuntimeError(f"init_weights left these parameters uninitialised: {missed}")
    return model


def build_model_zero3(
    cfg: ModelConfig, spec: ModelSpec, ds_config: dict, *, device: str | torch.device, seed: int
) -> SciGPTModel:
    """ZeRO-3: construct inside ``deepspeed.zero.Init`` so each parameter is partitioned over
    the data-parallel ranks as soon as it exists — no rank ever holds the whole model. Each init
    step gathers only its own parameters; rank 0's values (drawn from ``seed`` in the order of a
    plain build, so both builds start identical) are broadcast to the others."""
    import deepspeed

    with deepspeed.zero.Init(config_dict_or_path=ds_config, remote_device=None):
        model = build_model(cfg, spec, device=device)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for params, init in model.init_steps():
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                init()
    return model


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops_per_token(model: SciGPTModel, seq_len: int) -> float:
    """Matmul FLOPs of one forward pass per token, for MFU (PaLM appendix B): the tokenizer,
    variable aggregation, blocks, attention and forecast head (scigpt.models.sizing).
    Training (fwd + bwd) is 3x this."""
    from scigpt.models.sizing import forward_flops_per_token as flops

    return flops(model, seq_len)
