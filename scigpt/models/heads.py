"""Output heads: forecast, masked-patch reconstruction, pooled per-sample targets.

Per-variable decoders are rows of one weight tensor indexed by variable id (like the patch
embeddings), so adding a variable appends a row.
"""

from __future__ import annotations

import math

import torch
from torch import nn

N_HARMONICS = 3  # of the anchor's seasonal curve: annual, semi-annual, 4-monthly
YEAR_NS = 365.2425 * 86_400e9
# The anchor's few parameters are scaled up so that Adam, whose steps are about lr in size
# whatever the gradient, moves them as far in a few hundred steps as the dynamics ask: the
# damping rate r = exp(DAMPING_SCALE·θ) per step (θ = −0.7: r ≈ 9e-4, φ = e^−r ≈ 0.999, about
# persistence; daily discharge wants φ ≈ 0.9, θ ≈ −0.22), the seasonal curve SEASON_SCALE × its
# Fourier coefficients (normalised units, whose seasonal swings are of order 1).
DAMPING_SCALE, INITIAL_DAMPING, SEASON_SCALE = 10.0, -0.7, 3.0


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
      the vocabulary (``(W[v, j] · h) · E_outᵀ + b``), added to a prior, the log of a Laplace
      density ``−|c_k − a| / (β_v h^γ_v)`` around the anchor a at lead h (c_k the bin centres,
      β_v a learned width per variable, 0.1 of the context's mean at first, widening like a
      random walk's √h at first, γ_v learned);
    * quantiles (patch tokenizer): ``(B, C, N, p, Q)`` values in normalised units, a
      per-variable linear decoder (zero-initialised) added to the anchor.

    The anchor (``anchor``) is damped persistence towards a learned seasonal curve; it starts as
    persistence, so the untrained head forecasts "about the same as now", as the grid model's
    residual does, and training learns the departures. Chronos has neither prior nor anchor: it
    learns everything from a large corpus; one station's few hundred windows are not enough to
    learn the identity map over 4096 bins, or the seasonal level to which a departure returns.
    """

    def __init__(self, num_vars: int, dim: int, patch: int, n_tokens: int, n_quantiles: int):
        super().__init__()
        self.patch, self.n_tokens, self.n_quantiles = patch, n_tokens, n_quantiles
        self.norm = nn.LayerNorm(dim)
        self.bin_proj = nn.Parameter(torch.empty(num_vars, patch * dim, dim)) if n_tokens else None
        self.bin_out = nn.Parameter(torch.empty(n_tokens, dim)) if n_tokens else None
        self.bin_bias = nn.Parameter(torch.empty(n_tokens)) if n_tokens else None
        self.bin_log_width = nn.Parameter(torch.empty(num_vars)) if n_tokens else None
        self.bin_width_growth = nn.Parameter(torch.empty(num_vars)) if n_tokens else None
        q = patch * n_quantiles
        self.quantile = nn.Parameter(torch.empty(num_vars, q, dim)) if n_quantiles else None
        self.quantile_bias = nn.Parameter(torch.empty(num_vars, q)) if n_quantiles else None
        # the anchor's seasonal curve (Fourier coefficients per variable) and damping rate
        self.season = nn.Parameter(torch.empty(num_vars, 2 * N_HARMONICS + 1))
        self.log_damping = nn.Parameter(torch.empty(num_vars))

    def init_weights(self) -> None:
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        if self.n_tokens:
            nn.init.trunc_normal_(self.bin_proj, std=0.02)
            nn.init.trunc_normal_(self.bin_out, std=0.02)
            nn.init.zeros_(self.bin_bias)
            nn.init.constant_(self.bin_log_width, math.log(0.1))
            nn.init.constant_(self.bin_width_growth, 0.5)  # a random walk's √h at first
        if self.n_quantiles:
            nn.init.zeros_(self.quantile)
            nn.init.zeros_(self.quantile_bias)
        nn.init.zeros_(self.season)
        nn.init.constant_(self.log_damping, INITIAL_DAMPING)

    def logits(
        self, x: torch.Tensor, var_ids: torch.Tensor, anchor: torch.Tensor, centres: torch.Tensor
    ) -> torch.Tensor:
        """(B, N, D) horizon tokens, (B, C, N·p) the prior's centres (``anchor``, in the context's
        scaled units), (n_tokens,) each token's bin centre → (B, C, N, p, n_tokens) logits."""
        if self.bin_proj is None:
            raise ValueError("this model has no bin vocabulary (ModelSpec.bins)")
        h = torch.einsum("bnd,vkd->bvnk", self.norm(x), self.bin_proj[var_ids])
        b, c, n, _ = h.shape
        h = h.reshape(b, c, n, self.patch, -1)  # (B, C, N, p, D)
        # the prior widens with the lead h (1, 2, … samples after the last known one): β_v h^γ_v
        lead = torch.arange(1, n * self.patch + 1, device=h.device, dtype=h.dtype)
        growth = lead[None, :] ** self.bin_width_growth[var_ids][:, None]  # (C, n·p)
        width = self.bin_log_width[var_ids].exp()[:, None] * growth
        width = width.reshape(1, c, n, self.patch, 1)
        centre = anchor.reshape(b, c, n, self.patch)[..., None].to(h)
        prior = -(centres.to(h) - centre).abs() / width
        return h @ self.bin_out.t() + self.bin_bias + prior

    def seasonal(self, var_ids: torch.Tensor, t_ns: torch.Tensor) -> torch.Tensor:
        """s_v(t): the learned seasonal curve of each variable at times ``t_ns`` (B, …) →
        (B, C, …): a Fourier series in the phase of the year (N_HARMONICS harmonics)."""
        phase = 2 * math.pi * ((t_ns.double() / YEAR_NS) % 1.0).to(self.season.dtype)
        k = torch.arange(1, N_HARMONICS + 1, device=phase.device, dtype=phase.dtype)
        ang = phase[..., None] * k  # (B, …, K)
        basis = torch.cat([torch.ones_like(ang[..., :1]), ang.cos(), ang.sin()], -1)
        coef = SEASON_SCALE * self.season[var_ids]  # (C, 2K+1)
        out = torch.einsum("b...k,ck->bc...", basis, coef)
        return out

    def anchor(
        self, var_ids: torch.Tensor, last: torch.Tensor, t_last: torch.Tensor, step_ns: int,
        n: int, *, log_ratio: bool = False, t_ref: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """(B, C, n) the forecast's centre at the n samples after the last known one: damped
        persistence towards a learned seasonal curve, ``s(t) + φ^h (x̂ − s(t₀))``, φ per step
        near 1 at first (persistence) — training learns how fast a departure from the season
        fades, the statistical forecaster's damped anomaly persistence. ``log_ratio`` (binned
        tokens, in units of the context's mean): the curve is a log seasonal factor relative to
        the context's middle ``t_ref``, the centre ``φ^h x̂ + (1 − φ^h) exp(s(t) − s(t_ref))``."""
        h = torch.arange(1, n + 1, device=last.device, dtype=last.dtype)  # (n,)
        rate = torch.exp(DAMPING_SCALE * self.log_damping[var_ids])  # (C,) per step
        phi = torch.exp(-rate[:, None] * h)  # (C, n)
        t = t_last[:, None] + step_ns * h.to(torch.int64)[None]  # (B, n)
        s_t = self.seasonal(var_ids, t)  # (B, C, n)
        if log_ratio:
            ref = self.seasonal(var_ids, t_ref)  # (B, C)
            return phi * last[..., None] + (1 - phi) * torch.exp(s_t - ref[..., None])
        s0 = self.seasonal(var_ids, t_last)  # (B, C)
        return s_t + phi * (last - s0)[..., None]

    def quantiles(
        self, x: torch.Tensor, var_ids: torch.Tensor, anchor: torch.Tensor
    ) -> torch.Tensor:
        """(B, N, D) horizon tokens, (B, C, N·p) anchor (``anchor``) → (B, C, N, p, Q)."""
        if self.quantile is None:
            raise ValueError("this model has no quantile head (ModelSpec.quantiles)")
        out = torch.einsum("bnd,vkd->bvnk", self.norm(x), self.quantile[var_ids])
        out = out + self.quantile_bias[var_ids][None, :, None, :]
        b, c, n, _ = out.shape
        out = out.reshape(b, c, n, self.patch, self.n_quantiles)
        return out + anchor.reshape(b, c, n, self.patch)[..., None]
