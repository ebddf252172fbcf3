"""The SciGPT backbone: grid tokenizer → pre-LN ViT blocks → per-variable forecast head.

Single-device code (DESIGN.md §1): no torch.distributed, no deepspeed, no Triton. The model is a
flat sequence ``tokenizer`` → ``blocks[i]`` → ``head`` so the parallel layer can cut it into
pipeline stages and swap ``nn.Linear`` layers for tensor-parallel ones from outside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from scigpt.models.attention import get_attention
from scigpt.models.patch_embed import GridPatchEmbed, pad_to_multiple

_NS_PER_HOUR = 3_600_000_000_000
_NS_PER_DAY = 24 * _NS_PER_HOUR


@dataclass(frozen=True)
class ModelSpec:
    """What the model needs to know about its data, beyond ``ModelConfig``."""

    num_vars: int  # size of the variable registry (rows of the per-variable weights)
    history: int  # input frames per sample


def sphere_features(lat_deg: torch.Tensor, lon_deg: torch.Tensor, n_freq: int) -> torch.Tensor:
    """Position on the unit sphere and its harmonics: continuous across the dateline and poles.

    lat_deg, lon_deg: (N,) → (N, 3 + 6 * n_freq)
    """
    lat, lon = torch.deg2rad(lat_deg), torch.deg2rad(lon_deg)
    xyz = torch.stack(
        [torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], -1
    )  # (N, 3)
    k = torch.arange(1, n_freq + 1, dtype=xyz.dtype, device=xyz.device) * math.pi
    ang = xyz[:, :, None] * k  # (N, 3, F)
    return torch.cat([xyz, torch.sin(ang).flatten(1), torch.cos(ang).flatten(1)], -1)


def time_features(times_ns: torch.Tensor) -> torch.Tensor:
    """Time of day and day of year as sin/cos pairs. times_ns: (B,) int64 → (B, 4)."""
    tod = (times_ns % _NS_PER_DAY).double() / _NS_PER_DAY
    doy = (times_ns // _NS_PER_DAY).double() / 365.2425
    ang = 2 * math.pi * torch.stack([tod, doy], -1)
    return torch.cat([torch.sin(ang), torch.cos(ang)], -1).float()


def patch_centres(coord: torch.Tensor, patch: int) -> torch.Tensor:
    """Centre coordinate of each patch along one axis, extrapolating over padded cells."""
    n = coord.shape[0]
    n_pad = -(-n // patch) * patch
    step = (coord[-1] - coord[0]) / max(n - 1, 1)
    full = coord[0] + step * torch.arange(n_pad, dtype=coord.dtype, device=coord.device)
    full[:n] = coord
    return full.reshape(-1, patch).mean(-1)


class VariableAggregation(nn.Module):
    """Fold V variable tokens at one location into one token by cross-attention with a learned
    query (ClimaX, Nguyen et al. 2023), so sequence length does not grow with the variable count.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.empty(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attn._reset_parameters()  # in_proj (xavier) and both biases, not out_proj.weight
        nn.init.trunc_normal_(self.attn.out_proj.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, v, n, d = tokens.shape  # (B, V, N, D)
        kv = tokens.permute(0, 2, 1, 3).reshape(b * n, v, d)  # (B*N, V, D)
        q = self.query.expand(b * n, 1, d)
        out, _ = self.attn(q, kv, kv, need_weights=False)  # (B*N, 1, D)
        return out.reshape(b, n, d)


class GridTokenizer(nn.Module):
    """(B, V, T, H, W) fields → (B, N, D) tokens with variable, position and time encodings."""

    def __init__(self, num_vars: int, dim: int, heads: int, patch: int, history: int):
        super().__init__()
        self.patch = patch
        self.embed = GridPatchEmbed(num_vars, dim, (history, patch, patch))
        self.var_embed = nn.Parameter(torch.empty(num_vars, dim))
        self.aggregate = VariableAggregation(dim, heads)
        self.n_freq = 4
        self.pos = nn.Linear(3 + 6 * self.n_freq, dim)
        self.time = nn.Linear(4, dim)

    def init_weights(self) -> None:
        self.embed.init_weights()
        nn.init.trunc_normal_(self.var_embed, std=0.02)
        self.aggregate.init_weights()
        for lin in (self.pos, self.time):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(
        self,
        fields: torch.Tensor,
        var_ids: torch.Tensor,
        lat: torch.Tensor,
        lon: torch.Tensor,
        times: torch.Tensor,
    ) -> torch.Tensor:
        tokens = self.embed(fields, var_ids)  # (B, V, N, D)
        tokens = tokens + self.var_embed[var_ids][None, :, None, :]
        x = self.aggregate(tokens)  # (B, N, D)
        clat = patch_centres(lat, self.patch)  # (gh,)
        clon = patch_centres(lon, self.patch)  # (gw,)
        grid_lat = clat[:, None].expand(-1, clon.shape[0]).reshape(-1)
        grid_lon = clon[None, :].expand(clat.shape[0], -1).reshape(-1)
        pos = self.pos(sphere_features(grid_lat, grid_lon, self.n_freq).to(x.dtype))  # (N, D)
        tim = self.time(time_features(times).to(x.dtype))  # (B, D)
        return x + pos[None] + tim[:, None, :]


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


class ForecastHead(nn.Module):
    """Per-variable linear decoder from tokens to (ph, pw) pixels, weights indexed by var id.

    Zero-initialised, so with ``residual`` the untrained model is exactly persistence.
    """

    def __init__(self, num_vars: int, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.norm = nn.LayerNorm(dim)
        self.weight = nn.Parameter(torch.empty(num_vars, patch * patch, dim))
        self.bias = nn.Parameter(torch.empty(num_vars, patch * patch))

    def init_weights(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, var_ids: torch.Tensor, h: int, w: int) -> torch.Tensor:
        p = self.patch
        gh, gw = -(-h // p), -(-w // p)
        x = self.norm(x)  # (B, N, D)
        out = torch.einsum("bnd,vkd->bvnk", x, self.weight[var_ids])  # (B, V, N, p*p)
        out = out + self.bias[var_ids][None, :, None, :]
        b, v = out.shape[:2]
        out = out.reshape(b, v, gh, gw, p, p).permute(0, 1, 2, 4, 3, 5)
        return out.reshape(b, v, gh * p, gw * p)[..., :h, :w]  # (B, V, H, W)


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
    ):
        super().__init__()
        self.spec, self.residual = spec, residual
        self.tokenizer = GridTokenizer(spec.num_vars, embed_dim, heads, patch_size, spec.history)
        self.blocks = nn.ModuleList(
            Block(embed_dim, heads, mlp_ratio, dropout, attention) for _ in range(depth)
        )
        self.head = ForecastHead(spec.num_vars, embed_dim, patch_size)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (after ``to_empty`` from the meta device)."""
        self.tokenizer.init_weights()
        for blk in self.blocks:
            for mod in blk.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.trunc_normal_(mod.weight, std=0.02)
                    nn.init.zeros_(mod.bias)
                elif isinstance(mod, nn.LayerNorm):
                    nn.init.ones_(mod.weight)
                    nn.init.zeros_(mod.bias)
        nn.init.ones_(self.head.norm.weight)
        nn.init.zeros_(self.head.norm.bias)
        self.head.init_weights()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch per DESIGN.md §7 → prediction (B, V, H, W) in normalised units."""
        fields = batch["fields"]  # (B, V, T, H, W)
        var_ids = batch["var_ids"]
        h, w = fields.shape[-2:]
        x = self.tokenizer(fields, var_ids, batch["lat"], batch["lon"], batch["times"])
        for blk in self.blocks:
            x = blk(x)
        delta = self.head(x, var_ids, h, w)
        return fields[:, :, -1] + delta if self.residual else delta

    def num_tokens(self, h: int, w: int) -> int:
        gh, gw = self.tokenizer.embed.grid_shape(h, w)
        return gh * gw


__all__ = ["ModelSpec", "SciGPTModel", "pad_to_multiple"]
