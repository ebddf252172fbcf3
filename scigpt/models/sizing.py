"""Parameter counts and model FLOPs of a SciGPT model, from its config alone.

Nothing here instantiates a module: a 30B configuration is sized as fast as a tiny one, and the
numbers are checked against the built model (``sum(p.numel())`` on the meta device) and against
``torch.utils.flop_counter.FlopCounterMode`` on real forward/backward passes (tests/test_sizing.py).

Notation: D = ``embed_dim``, L = ``depth``, F = ``int(D * mlp_ratio)`` (MLP width),
p = ``patch_size``, T = ``history``, K = T·p² (values of one grid tubelet), s = ``series_patch``,
R = ``spec.num_vars`` (rows of the variable registry), V = variables present in a sample,
N = tokens per sample.

What ``flops_per_token`` counts (PaLM, Chowdhery et al. 2022, appendix B): *model* FLOPs of the
matrix multiplications only — 2 FLOPs (multiply + add) per weight per token for every matmul,
biases, norms, activations, softmax and elementwise ops not counted, activation recomputation not
counted. Forward, per token:

    embed      grid: V · 2·K·D              (per-variable tubelet embedding)
               series: V · 2·s·D
    aggregate  V · 2·(2·D²)                 (per-variable key and value projections)
               + V · 2·(2·D)                (query·key scores and weighted sum of values)
               + 2·D²                        (output projection)
    encodings  2·(POS_FEATURES + TIME_FEATURES)·D   (position and time linears)
    blocks     L · 2·(3D² + D² + 2·D·F)     (qkv, proj, fc1, fc2: 2 × the blocks' matrices)
    attention  L · 4·N·D                    (QKᵀ and PV, non-causal: every query sees N keys)
    head       forecast: V · 2·D·p²; reconstruct: V · 2·D·K (grid) or V · 2·D·s (series);
               pooled: 2·D·targets / N (one output per sample); none: 0

Training = 3 × forward (the backward pass costs two matmuls per forward matmul). The embedding
and encoding matmuls take inputs that need no gradient, so autograd runs only their weight
gradient: a backward-exact count is 3 × forward − (embed + encodings); ``flops_breakdown``
returns the parts so that difference can be computed (the tests check both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scigpt.config import ModelConfig
from scigpt.models.encodings import POS_FEATURES, TIME_FEATURES
from scigpt.models.tokenizer import N_MODALITIES
from scigpt.models.vit import ModelSpec

Modality = Literal["grid", "series"]
Head = Literal["forecast", "reconstruct", "pooled", "none"]


@dataclass(frozen=True)
class _Dims:
    dim: int
    depth: int
    hidden: int  # MLP width, int(dim * mlp_ratio) exactly as vit.Block builds it
    patch: int
    history: int
    series_patch: int
    registry: int  # spec.num_vars
    targets: int  # spec.num_targets

    @classmethod
    def of(cls, cfg: ModelConfig, spec: ModelSpec) -> _Dims:
        return cls(
            dim=cfg.embed_dim,
            depth=cfg.depth,
            hidden=int(cfg.embed_dim * cfg.mlp_ratio),
            patch=cfg.patch_size,
            history=spec.history,
            series_patch=cfg.series_patch,
            registry=spec.num_vars,
            targets=spec.num_targets,
        )

    @property
    def tubelet(self) -> int:  # K: values of one (T, p, p) grid tubelet
        return self.history * self.patch**2


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def param_count(cfg: ModelConfig, spec: ModelSpec) -> dict[str, int]:
    """Parameters of ``build_model(cfg, spec)``, computed from the architecture.

    Keys (``total`` = tokenizer + mask_token + blocks + norm + heads):
      tokenizer   patch embeddings (grid and series), variable/modality embeddings, variable
                  aggregation, position and time linears
      mask_token  the learned token of masked-patch objectives
      blocks      the backbone: every block's matrices, biases and LayerNorms
      blocks_matmul  the blocks' weight matrices only (the "N" of 6·N·tokens estimates)
      norm        the final LayerNorm
      forecast_head, reconstruct_head, pooled_head; heads = their sum
      per_variable   parameters that are rows of the variable registry (grow with num_vars)
      total
    """
    d = _Dims.of(cfg, spec)
    D, R, K, s = d.dim, d.registry, d.tubelet, d.series_patch
    norm = 2 * D  # LayerNorm weight + bias
    grid_embed = R * D * K + R * D
    series_embed = R * D * s + R * D
    var_embed = R * D
    aggregate = D + D * D + 2 * _linear(D, D) + R  # query, k (no bias), v/o, per-variable gate
    tokenizer = (
        grid_embed
        + series_embed
        + var_embed
        + aggregate
        + N_MODALITIES * D
        + _linear(POS_FEATURES, D)
        + _linear(TIME_FEATURES, D)
    )
    block_matmul = 3 * D * D + D * D + 2 * D * d.hidden  # qkv, proj, fc1, fc2
    block = block_matmul + 3 * D + D + d.hidden + D + 2 * norm  # + biases + 2 LayerNorms
    forecast = norm + R * d.patch**2 * D + R * d.patch**2
    reconstruct = norm + R * K * D + R * K + R * s * D + R * s
    pooled = norm + _linear(D, d.targets) if d.targets else 0
    per_variable = R * (D * (K + 1) + D * (s + 1) + D + 1)  # embeddings, var_embed, gate
    per_variable += R * (d.patch**2 * (D + 1) + K * (D + 1) + s * (D + 1))  # head rows
    out = {
        "tokenizer": tokenizer,
        "mask_token": D,
        "blocks": d.depth * block,
        "blocks_matmul": d.depth * block_matmul,
        "norm": norm,
        "forecast_head": forecast,
        "reconstruct_head": reconstruct,
        "pooled_head": pooled,
        "heads": forecast + reconstruct + pooled,
        "per_variable": per_variable,
    }
    out["total"] = out["tokenizer"] + D + out["blocks"] + norm + out["heads"]
    return out


def flops_breakdown(
    cfg: ModelConfig,
    spec: ModelSpec,
    seq_len: int,
    *,
    num_vars: int | None = None,
    modality: Modality = "grid",
    head: Head = "forecast",
) -> dict[str, float]:
    """Forward matmul FLOPs per token, by part (see the module docstring for each formula).

    ``seq_len``: tokens per sample (N; ``grid_tokens``/``series_tokens``). ``num_vars``:
    variables (channels) present in each sample (V; default ``spec.num_vars``, every registered
    variable). ``head``: the head the objective runs. Keys: embed, aggregate, encodings, blocks,
    attention, head, forward (their sum).
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len={seq_len} must be positive: tokens per sample")
    if modality not in ("grid", "series"):
        raise ValueError(f"modality={modality!r}: choose 'grid' or 'series'")
    if head not in ("forecast", "reconstruct", "pooled", "none"):
        raise ValueError(f"head={head!r}: choose forecast, reconstruct, pooled or none")
    if modality == "series" and head == "forecast":
        raise ValueError("the forecast head decodes grids: use head='reconstruct' for series")
    d = _Dims.of(cfg, spec)
    D, N = d.dim, seq_len
    V = spec.num_vars if num_vars is None else num_vars
    if V <= 0:
        raise ValueError(f"num_vars={V} must be positive: variables present in a sample")
    values = d.tubelet if modality == "grid" else d.series_patch  # inputs per variable-token
    parts = {
        "embed": V * 2.0 * values * D,
        "aggregate": V * 2.0 * 2 * D * D + V * 2.0 * 2 * D + 2.0 * D * D,
        "encodings": 2.0 * (POS_FEATURES + TIME_FEATURES) * D,
        "blocks": 2.0 * d.depth * (4 * D * D + 2 * D * d.hidden),
        "attention": 4.0 * d.depth * N * D,
    }
    if head == "forecast":
        parts["head"] = V * 2.0 * D * d.patch**2
    elif head == "reconstruct":
        parts["head"] = V * 2.0 * D * values
    elif head == "pooled":
        if not d.targets:
            raise ValueError("head='pooled' needs spec.num_targets > 0 (no pooled head is built)")
        parts["head"] = 2.0 * D * d.targets / N
    else:
        parts["head"] = 0.0
    parts["forward"] = sum(parts.values())
    return parts


def flops_per_token(
    cfg: ModelConfig,
    spec: ModelSpec,
    seq_len: int,
    *,
    training: bool = True,
    num_vars: int | None = None,
    modality: Modality = "grid",
    head: Head = "forecast",
) -> float:
    """Model FLOPs per token: forward matmuls of tokenizer + backbone + head, ×3 when
    ``training`` (forward + backward, PaLM appendix B). Arguments as ``flops_breakdown``."""
    fwd = flops_breakdown(cfg, spec, seq_len, num_vars=num_vars, modality=modality, head=head)
    return (3.0 if training else 1.0) * fwd["forward"]


def grid_tokens(cfg: ModelConfig, h: int, w: int) -> int:
    """Tokens of an (h, w) grid: the patch embedding pads up to whole patches."""
    p = cfg.patch_size
    return -(-h // p) * -(-w // p)


def series_tokens(cfg: ModelConfig, length: int) -> int:
    """Tokens of a waveform/series window of ``length`` samples (a multiple of the patch)."""
    return length // cfg.series_patch


def config_of(model) -> tuple[ModelConfig, ModelSpec]:
    """The (ModelConfig, ModelSpec) widths of a built ``SciGPTModel`` (before tensor parallelism
    shards it), read from its module shapes."""
    blk = model.blocks[0]
    dim, hidden = blk.mlp.fc1.in_features, blk.mlp.fc1.out_features
    # mlp_ratio such that int(dim * ratio) == hidden, as Block computes it (no float round-down).
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    cfg = ModelConfig(
        patch_size=model.tokenizer.patch,
        embed_dim=dim,
        depth=len(model.blocks),
        heads=blk.attn.heads,
        mlp_ratio=ratio,
        series_patch=model.tokenizer.series_patch,
    )
    return cfg, model.spec


def forward_flops_per_token(model, seq_len: int) -> float:
    """Drop-in for ``scigpt.models.build.forward_flops_per_token``: forward model FLOPs per token
    of a grid forecast (every registered variable present), for MFU. Training is 3× this."""
    cfg, spec = config_of(model)
    return flops_per_token(cfg, spec, seq_len, training=False)


__all__ = [
    "config_of",
    "flops_breakdown",
    "flops_per_token",
    "forward_flops_per_token",
    "grid_tokens",
    "param_count",
    "series_tokens",
]
