"""The SciGPT backbone: multimodal tokenizer → pre-LN ViT blocks → heads.

Single-device code (DESIGN.md §1): no torch.distributed, no deepspeed, no Triton. The model is a
flat sequence ``tokenizer`` → ``blocks[i]`` → heads, so the parallel layer can cut it into
pipeline stages and swap ``nn.Linear`` layers for tensor-parallel ones from outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from scigpt.models.attention import get_attention
from scigpt.models.heads import ForecastHead, PooledHead, ReconstructionHead, SeriesForecastHead
from scigpt.models.objectives import total_loss
from scigpt.models.series_tokens import BinSettings
from scigpt.models.tokenizer import GRID, MultimodalTokenizer


@dataclass(frozen=True)
class ModelSpec:
    """What the model needs to know about its data, beyond ``ModelConfig``."""

    num_vars: int  # size of the variable registry (rows of the per-variable weights)
    history: int  # input frames per grid sample
    num_targets: int = 0  # outputs of the pooled head (0: no pooled head)
    # series forecasting: the Chronos-style vocabulary of binned sources (None: no bin
    # embedding), and the quantile levels of patch sources' forecast head (empty: none)
    bins: BinSettings | None = None
    quantiles: tuple[float, ...] = ()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, attention: str):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_fn = get_attention(attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # heads from the weight shape, not self.heads: tensor parallelism shards qkv from outside.
        qkv = self.qkv(x).reshape(b, n, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        out = self.attn_fn(qkv[0], qkv[1], qkv[2], None)  # (B, h, N, hd)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))

    @property
    def head_dim(self) -> int:
        return self.proj.in_features // self.heads


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, attention: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attention)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SciGPTModel(nn.Module):
    def __init__(
        self,
        spec: ModelSpec,
        *,
        patch_size: int,
        embed_dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
        residual: bool,
        attention: str,
        series_patch: int = 50,
    ):
        super().__init__()
        self.spec, self.residual = spec, residual
        self.tokenizer = MultimodalTokenizer(
            spec.num_vars, embed_dim, heads, patch=patch_size, history=spec.history,
            series_patch=series_patch, bins=spec.bins,
        )  # fmt: skip
        self.mask_token = nn.Parameter(torch.empty(embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, heads, mlp_ratio, dropout, attention) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = ForecastHead(spec.num_vars, embed_dim, patch_size)
        self.reconstruct = ReconstructionHead(
            spec.num_vars, embed_dim, spec.history * patch_size**2, series_patch
        )
        self.pooled = PooledHead(embed_dim, spec.num_targets) if spec.num_targets else None
        n_bins = spec.bins.n_tokens if spec.bins is not None else 0
        self.series_head = (
            SeriesForecastHead(spec.num_vars, embed_dim, series_patch, n_bins, len(spec.quantiles))
            if n_bins or spec.quantiles else None
        )  # fmt: skip

    def init_steps(self) -> list[tuple[list[nn.Parameter], Callable[[], None]]]:
        """The initialisation, in order, as (parameters touched, init function) steps — so a
        ZeRO-3 build can gather one step's parameters at a time (scigpt.parallel.parallelize) and
        still draw exactly the random numbers of a plain build."""

        def block_init(blk: nn.Module) -> None:
            for mod in blk.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.trunc_normal_(mod.weight, std=0.02)
                    nn.init.zeros_(mod.bias)
                elif isinstance(mod, nn.LayerNorm):
                    nn.init.ones_(mod.weight)
                    nn.init.zeros_(mod.bias)

        def norm_init() -> None:
            nn.init.ones_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)

        steps = [
            (list(self.tokenizer.parameters()), self.tokenizer.init_weights),
            ([self.mask_token], lambda: nn.init.trunc_normal_(self.mask_token, std=0.02)),
        ]
        steps += [(list(b.parameters()), partial(block_init, b)) for b in self.blocks]
        steps += [
            (list(self.norm.parameters()), norm_init),
            (list(self.head.parameters()), self.head.init_weights),
            (list(self.reconstruct.parameters()), self.reconstruct.init_weights),
        ]
        if self.pooled is not None:
            steps.append((list(self.pooled.parameters()), self.pooled.init_weights))
        if self.series_head is not None:
            steps.append((list(self.series_head.parameters()), self.series_head.init_weights))
        return steps

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (after ``to_empty`` from the meta device)."""
        for _, fn in self.init_steps():
            fn()

    def encode(
        self, batch: dict[str, torch.Tensor], token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens after the backbone, (B, N, D). ``token_mask`` (B, N) bool: True tokens are
        replaced by the learned mask token before the blocks (masked-patch objectives)."""
        x = self.tokenizer(batch)
        if token_mask is not None:
            x = torch.where(token_mask[..., None], self.mask_token.to(x.dtype), x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forecast(self, batch: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Grid forecast (B, V, H, W) from encoded tokens, residual on the last input frame."""
        fields = batch["fields"]  # (B, V, T, H, W)
        h, w = fields.shape[-2:]
        delta = self.head(x, batch["var_ids"], h, w)
        return fields[:, :, -1] + delta if self.residual else delta

    def forward(self, batch: dict[str, torch.Tensor], objectives=None):
        """Grid batch (DESIGN.md §7) → forecast (B, V, H, W) in normalised units; or, given
        ``objectives`` (scigpt.models.objectives.Objectives), the weighted training loss and its
        parts — so engines that wrap ``forward`` (DeepSpeed) see the whole computation."""
        if objectives is not None:
            return total_loss(self, batch, objectives)
        if int(batch.get("modality_id", GRID)) != GRID:
            raise ValueError("forward() forecasts grids; use encode() + heads for series batches")
        return self.forecast(batch, self.encode(batch))

    def num_tokens(self, h: int, w: int) -> int:
        gh, gw = self.tokenizer.embed.grid_shape(h, w)
        return gh * gw

    @torch.no_grad()
    def add_variables(self, n: int) -> list[int]:
        """Append ``n`` variables to the registry; returns their ids. Their gates start at 0,
        so outputs are unchanged until training opens them (aggregation.py)."""
        old = self.spec.num_vars
        for mod, name in _PER_VARIABLE:
            owner = self
            for part in mod.split("."):
                owner = getattr(owner, part, None)
            p = getattr(owner, name, None)
            if p is None:  # a head this model does not have
                continue
            extra = torch.empty((n, *p.shape[1:]), dtype=p.dtype, device=p.device)
            nn.init.trunc_normal_(extra, std=0.02) if p.dim() > 1 else nn.init.zeros_(extra)
            setattr(owner, name, nn.Parameter(torch.cat([p, extra])))
        for mod in ("tokenizer.embed", "tokenizer.series_embed"):
            self.get_submodule(mod).num_vars = old + n
        self.spec = replace(self.spec, num_vars=old + n)
        return list(range(old, old + n))


# Every per-variable parameter: (module path, attribute). Rows are variable ids.
_PER_VARIABLE = [
    ("tokenizer.embed", "weight"),
    ("tokenizer.embed", "bias"),
    ("tokenizer.series_embed", "weight"),
    ("tokenizer.series_embed", "bias"),
    ("tokenizer", "var_embed"),
    ("tokenizer.aggregate", "gate"),
    ("head", "weight"),
    ("head", "bias"),
    ("reconstruct", "grid"),
    ("reconstruct", "grid_bias"),
    ("reconstruct", "series"),
    ("reconstruct", "series_bias"),
    ("series_head", "bin_proj"),
    ("series_head", "bin_log_width"),
    ("series_head", "bin_width_growth"),
    ("series_head", "season"),
    ("series_head", "log_damping"),
    ("series_head", "quantile"),
    ("series_head", "quantile_bias"),
]

__all__ = ["ModelSpec", "SciGPTModel"]
