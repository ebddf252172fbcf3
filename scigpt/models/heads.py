"""Output heads: forecast, masked-patch reconstruction, pooled per-sample targets.

Per-variable decoders are rows of one weight tensor indexed by variable id (like the patch
embeddings), so adding a variable appends a row.
"""

from __future__ import annotations

import torch
from torch import nn


class ForecastHead(nn.Module):
    """Per-variable linear decoder from grid tokens to (ph, pw) pixels.

    Zero-initialised, so with the residual connection the untrained model is exactly
    persistence.
    """

    def __init__(self, num_vars: int, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.norm = nn.LayerNorm(dim)
        self.weight = nn.Parameter(torch.empty(num_vars, patch * patch, dim))
        self.bias = nn.Parameter(torch.empty(num_vars, patch * patch))

    def init_weights(self) -> None:
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
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


class ReconstructionHead(nn.Module):
    """MAE-style decoders, one per modality: token → the variable's patch values.

    grid: (pt·ph·pw) values per variable and token; series: (patch) samples per channel.
    """

    def __init__(self, num_vars: int, dim: int, grid_values: int, series_values: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.grid = nn.Parameter(torch.empty(num_vars, grid_values, dim))
        self.grid_bias = nn.Parameter(torch.empty(num_vars, grid_values))
        self.series = nn.Parameter(torch.empty(num_vars, series_values, dim))
        self.series_bias = nn.Parameter(torch.empty(num_vars, series_values))

    def init_weights(self) -> None:
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        for w in (self.grid, self.series):
            nn.init.trunc_normal_(w, std=0.02)
        nn.init.zeros_(self.grid_bias)
        nn.init.zeros_(self.series_bias)

    def forward(self, x: torch.Tensor, var_ids: torch.Tensor, grid: bool) -> torch.Tensor:
        """(B, N, D) → (B, V, N, K) patch values per variable and token."""
        w, b = (self.grid, self.grid_bias) if grid else (self.series, self.series_bias)
        out = torch.einsum("bnd,vkd->bvnk", self.norm(x), w[var_ids])
        return out + b[var_ids][None, :, None, :]


class PooledHead(nn.Module):
    """Mean-pooled tokens → per-sample targets (regression values or class logits)."""

    def __init__(self, dim: int, outputs: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, outputs)

    def init_weights(self) -> None:
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x.mean(1)))  # (B, outputs)
