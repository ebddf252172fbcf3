"""Output heads: forecast, masked-patch reconstruction, pooled per-sample targets.

Per-variable decoders are rows of one weight tensor indexed by variable id (like the patch
embeddings), so adding a variable appends a row.
"""

from __future__ import annotations

import math

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


class SeriesForecastHead(nn.Module):
    """Horizon tokens → each channel's forecast of its p samples per token, one of:

    * bins (Chronos-style tokenizer): logits over the token vocabulary, ``(B, C, N, p, n_tokens)``:
      a per-variable, per-position projection of the token, scored against an output table of
      the vocabulary (``(W[v, j] · h) · E_outᵀ + b``), added to a persistence prior, the log of a
      Laplace density around the channel's last known value x̂ in the context's scaled units,
      ``−|c_k − x̂| / β_v`` (c_k the bin centres, β_v a learned width per variable, 0.1 at
      first): the untrained head forecasts "about the same as now", as the grid model's
      residual and the quantile head below do, and training learns the departures. Chronos has
      no such prior: it learns everything from its large corpus; one station's windows are not
      enough to learn the identity map over 4096 bins;
    * quantiles (patch tokenizer): ``(B, C, N, p, Q)`` values in normalised units, a
      per-variable linear decoder added to the channel's last observed context value
      (zero-initialised: the untrained head forecasts persistence at every quantile).
    """

    def __init__(self, num_vars: int, dim: int, patch: int, n_tokens: int, n_quantiles: int):
        super().__init__()
        self.patch, self.n_tokens, self.n_quantiles = patch, n_tokens, n_quantiles
        self.norm = nn.LayerNorm(dim)
        self.bin_proj = nn.Parameter(torch.empty(num_vars, patch * dim, dim)) if n_tokens else None
        self.bin_out = nn.Parameter(torch.empty(n_tokens, dim)) if n_tokens else None
        self.bin_bias = nn.Parameter(torch.empty(n_tokens)) if n_tokens else None
        self.bin_log_width = nn.Parameter(torch.empty(num_vars)) if n_tokens else None
        q = patch * n_quantiles
        self.quantile = nn.Parameter(torch.empty(num_vars, q, dim)) if n_quantiles else None
        self.quantile_bias = nn.Parameter(torch.empty(num_vars, q)) if n_quantiles else None

    def init_weights(self) -> None:
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        if self.n_tokens:
            nn.init.trunc_normal_(self.bin_proj, std=0.02)
            nn.init.trunc_normal_(self.bin_out, std=0.02)
            nn.init.zeros_(self.bin_bias)
            nn.init.constant_(self.bin_log_width, math.log(0.1))
        if self.n_quantiles:
            nn.init.zeros_(self.quantile)
            nn.init.zeros_(self.quantile_bias)

    def logits(
        self, x: torch.Tensor, var_ids: torch.Tensor, last: torch.Tensor, centres: torch.Tensor
    ) -> torch.Tensor:
        """(B, N, D) horizon tokens, (B, C) last known values (scaled), (n_tokens,) each token's
        bin centre → (B, C, N, p, n_tokens) bin logits."""
        if self.bin_proj is None:
            raise ValueError("this model has no bin vocabulary (ModelSpec.bins)")
        h = torch.einsum("bnd,vkd->bvnk", self.norm(x), self.bin_proj[var_ids])
        b, c, n, _ = h.shape
        h = h.reshape(b, c, n, self.patch, -1)  # (B, C, N, p, D)
        width = self.bin_log_width[var_ids].exp()[None, :, None, None, None]
        prior = -(centres.to(h) - last[:, :, None, None, None].to(h)).abs() / width
        return h @ self.bin_out.t() + self.bin_bias + prior

    def quantiles(self, x: torch.Tensor, var_ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(B, N, D) horizon tokens, (B, C) last observed values → (B, C, N, p, Q)."""
        if self.quantile is None:
            raise ValueError("this model has no quantile head (ModelSpec.quantiles)")
        out = torch.einsum("bnd,vkd->bvnk", self.norm(x), self.quantile[var_ids])
        out = out + self.quantile_bias[var_ids][None, :, None, :]
        b, c, n, _ = out.shape
        return out.reshape(b, c, n, self.patch, self.n_quantiles) + last[:, :, None, None, None]
