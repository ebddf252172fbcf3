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


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops_per_token(model: SciGPTModel, seq_len: int) -> float:
    """Matmul FLOPs of one forward pass per token, for MFU (PaLM appendix B): the tokenizer,
    variable aggregation, blocks, attention and forecast head (scigpt.models.sizing).
    Training (fwd + bwd) is 3x this."""
    from scigpt.models.sizing import forward_flops_per_token as flops

    return flops(model, seq_len)
