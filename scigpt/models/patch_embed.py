"""Per-variable tubelet patch embedding for gridded fields (ClimaX-style).

Parameter layout is the contract with the fused Triton kernel (kernels issue): ONE weight tensor
``(num_vars, dim, pt, ph, pw)`` and one bias ``(num_vars, dim)``, indexed by variable id, not a
dict of modules. Adding a variable at fine-tune time appends a row.

    tokens[b, v, n, :] = W[var_ids[v]] · tubelet(x[b, v], n) + bias[var_ids[v]]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Zero-pad the last two dims (H, W) at the bottom/right to multiples of (ph, pw).

    Zero is the mean of a normalised field, so padding adds no spurious signal.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % ph, (-w) % pw
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


class GridPatchEmbed(nn.Module):
    def __init__(self, num_vars: int, dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.num_vars, self.dim, self.patch = num_vars, dim, patch
        pt, ph, pw = patch
        self.weight = nn.Parameter(torch.empty(num_vars, dim, pt, ph, pw))
        self.bias = nn.Parameter(torch.empty(num_vars, dim))

    def init_weights(self) -> None:
        # Same fan-in scaling as a Conv3d of one input channel.
        fan_in = math.prod(self.patch)
        nn.init.trunc_normal_(self.weight, std=1.0 / math.sqrt(fan_in))
        nn.init.zeros_(self.bias)

    def grid_shape(self, h: int, w: int) -> tuple[int, int]:
        _, ph, pw = self.patch
        return -(-h // ph), -(-w // pw)

    def forward(self, x: torch.Tensor, var_ids: torch.Tensor) -> torch.Tensor:
        """x: (B, V, T, H, W) with T == pt; var_ids: (V,) → tokens (B, V, N, D)."""
        pt, ph, pw = self.patch
        b, v, t, _, _ = x.shape
        if t != pt:
            raise ValueError(f"input has {t} time frames but the patch embedding expects {pt}")
        x = pad_to_multiple(x, ph, pw)
        gh, gw = x.shape[-2] // ph, x.shape[-1] // pw
        # (B, V, T, gh, ph, gw, pw) -> (B, V, gh, gw, T, ph, pw) -> (B, V, N, K)
        x = x.reshape(b, v, t, gh, ph, gw, pw).permute(0, 1, 3, 5, 2, 4, 6)
        x = x.reshape(b, v, gh * gw, t * ph * pw)
        w = self.weight[var_ids].flatten(2)  # (V, D, K)
        tokens = torch.einsum("bvnk,vdk->bvnd", x, w)  # (B, V, N, D)
        return tokens + self.bias[var_ids][None, :, None, :]


class SeriesPatchEmbed(nn.Module):
    """Per-channel 1-D patch embedding for waveforms and station series, weights indexed by
    variable id like :class:`GridPatchEmbed`:

        tokens[b, c, n, :] = W[var_ids[c]] · x[b, c, n·p : (n+1)·p] + bias[var_ids[c]]
    """

    def __init__(self, num_vars: int, dim: int, patch: int):
        super().__init__()
        self.num_vars, self.dim, self.patch = num_vars, dim, patch
        self.weight = nn.Parameter(torch.empty(num_vars, dim, patch))
        self.bias = nn.Parameter(torch.empty(num_vars, dim))

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.weight, std=1.0 / math.sqrt(self.patch))
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, var_ids: torch.Tensor) -> torch.Tensor:
        """x: (B, C, L) with L a multiple of the patch → tokens (B, C, N, D)."""
        b, c, length = x.shape
        if length % self.patch:
            raise ValueError(f"series length {length} is not a multiple of patch {self.patch}")
        x = x.reshape(b, c, length // self.patch, self.patch)  # (B, C, N, p)
        tokens = torch.einsum("bcnp,cdp->bcnd", x, self.weight[var_ids])
        return tokens + self.bias[var_ids][None, :, None, :]


class SeriesBinEmbed(nn.Module):
    """Chronos-style series tokens (``scigpt.models.series_tokens``) → embeddings: one
    (n_tokens × D) table per series modality (waveform, station series); a patch of p samples
    is one token, ``Σ_j w_j ⊙ table[id_j]`` with a learned weight per position in the patch
    (p = 1 is Chronos's one token per value).

    The bins' rows start as sinusoidal features of their bin's value, so neighbouring bins start
    close — an ordinal vocabulary the network does not have to discover from scratch (Chronos
    learns its table from random; with a station's few thousand windows that is slow).
    """

    def __init__(self, n_tokens: int, dim: int, patch: int, values: Callable[[], torch.Tensor]):
        super().__init__()
        self.patch = patch
        self.table = nn.Parameter(torch.empty(2, n_tokens, dim))  # (waveform, series)
        self.mix = nn.Parameter(torch.empty(patch, dim))
        self._values = values  # () → (n_tokens,) the scaled value of each token id (CPU)

    def init_weights(self) -> None:
        n, d = self.table.shape[1:]
        half = d // 2
        # frequencies log-spaced over the scaled range: coarse and fine level differences
        freq = torch.logspace(-1.5, 1.0, half, device=self.table.device)
        v = self._values().to(self.table.device)[:, None] * freq[None]  # (n, half)
        feats = torch.cat([torch.sin(v), torch.cos(v)], 1)
        feats = torch.cat([feats, torch.zeros(n, d - 2 * half, device=feats.device)], 1)
        nn.init.trunc_normal_(self.table, std=0.02)
        self.table.data += feats[None]
        nn.init.constant_(self.mix, 1.0 / self.patch)

    def forward(self, ids: torch.Tensor, modality: int) -> torch.Tensor:
        """ids: (B, C, L) token ids, L a multiple of the patch → tokens (B, C, N, D)."""
        b, c, length = ids.shape
        if length % self.patch:
            raise ValueError(f"series length {length} is not a multiple of patch {self.patch}")
        emb = self.table[modality - 1][ids]  # (B, C, L, D)
        emb = emb.reshape(b, c, length // self.patch, self.patch, -1)
        return (emb * self.mix[None, None, None]).sum(3)  # (B, C, N, D)
