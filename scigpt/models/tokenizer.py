"""Multimodal tokenizer: any batch (DESIGN.md §7) → (B, N, D) tokens.

Per modality a per-variable patch embedding (grids: (t, h, w) tubelets; waveforms and series: 1-D
patches), then a variable embedding, variable aggregation into one token per location/time,
and embeddings of the modality, of the position on the sphere (plus depth or elevation), and
of time (time of day, day of year, lead time). Variable ids index one registry shared by every
modality, so all per-variable parameters are rows of single tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from scigpt.models.aggregation import VariableAggregation
from scigpt.models.encodings import (
    POS_FEATURES,
    TIME_FEATURES,
    patch_centres,
    sphere_features,
    time_features,
)
from scigpt.models.patch_embed import GridPatchEmbed, SeriesBinEmbed, SeriesPatchEmbed
from scigpt.models.series_tokens import BinSettings, MeanScaleUniformBins

GRID, WAVEFORM, SERIES = 0, 1, 2  # modality ids (data_pipeline.variables.MODALITIES)
N_MODALITIES = 3


class MultimodalTokenizer(nn.Module):
    def __init__(
        self,
        num_vars: int,
        dim: int,
        heads: int,
        *,
        patch: int,
        history: int,
        series_patch: int,
        bins: BinSettings | None = None,
    ):
        super().__init__()
        self.patch, self.series_patch = patch, series_patch
        self.embed = GridPatchEmbed(num_vars, dim, (history, patch, patch))
        self.series_embed = SeriesPatchEmbed(num_vars, dim, series_patch)
        # Chronos-style tokens for series sources with ``tokenizer: bins`` (series_tokens.py)
        self.bins = MeanScaleUniformBins(bins) if bins is not None else None
        self.bin_embed = (
            SeriesBinEmbed(bins.n_tokens, dim, series_patch, self.bins.values_of_bins)
            if bins is not None else None
        )  # fmt: skip
        self.var_embed = nn.Parameter(torch.empty(num_vars, dim))
        self.aggregate = VariableAggregation(num_vars, dim, heads)
        self.modality = nn.Parameter(torch.empty(N_MODALITIES, dim))
        self.pos = nn.Linear(POS_FEATURES, dim)
        self.time = nn.Linear(TIME_FEATURES, dim)

    def init_weights(self) -> None:
        self.embed.init_weights()
        self.series_embed.init_weights()
        if self.bin_embed is not None:
            self.bin_embed.init_weights()
        nn.init.trunc_normal_(self.var_embed, std=0.02)
        nn.init.trunc_normal_(self.modality, std=0.02)
        self.aggregate.init_weights()
        for lin in (self.pos, self.time):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def num_tokens(self, batch: dict) -> int:
        f = batch["fields"]
        if batch.get("modality_id", GRID) == GRID:
            gh, gw = self.embed.grid_shape(*f.shape[-2:])
            return gh * gw
        return f.shape[-1] // self.series_patch

    def bin_ids(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """A binned series batch's token ids (B, C, L) and scales (B, C): each channel's mean
        |x| over its observed *context* values (``batch["context"]`` samples; no look-ahead),
        the whole window tokenised at that scale, missing values PAD. ``fields`` hold physical
        values (the dataset does not normalise binned sources), ``mask`` where observed."""
        if self.bins is None:
            raise ValueError(
                "this batch is binned (a source with tokenizer: bins) but the model has no bin "
                "vocabulary: build it with ModelSpec.bins"
            )
        x = self._observed(batch)
        scale = self.bins.scale(x[..., : int(batch["context"])])
        return self.bins.encode(x, scale), scale

    def bin_scale(self, batch: dict) -> torch.Tensor:
        """(B, C) the scales of ``bin_ids`` alone (the heads' anchor needs no token ids)."""
        return self.bins.scale(self._observed(batch)[..., : int(batch["context"])])

    @staticmethod
    def _observed(batch: dict) -> torch.Tensor:
        """The batch's fields as float32, NaN where not observed."""
        f = batch["fields"].float()
        m = batch.get("mask")
        return torch.where(m, f, torch.full_like(f, float("nan"))) if m is not None else f

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        fields, var_ids = batch["fields"], batch["var_ids"]
        modality = int(batch.get("modality_id", GRID))
        if modality == GRID:
            tokens = self.embed(fields, var_ids)  # (B, V, N, D)
        elif batch.get("tokenizer") == "bins":
            ids, _ = self.bin_ids(batch)
            tokens = self.bin_embed(ids, modality).to(fields.dtype)  # (B, C, N, D)
        else:
            tokens = self.series_embed(fields, var_ids)  # (B, C, N, D)
        tokens = tokens + self.var_embed[var_ids][None, :, None, :]
        x = self.aggregate(tokens, var_ids)  # (B, N, D)
        n = x.shape[1]
        lead = batch.get("lead_ns", 0)
        if modality == GRID:
            clat = patch_centres(batch["lat"], self.patch)  # (gh,)
            clon = patch_centres(batch["lon"], self.patch)  # (gw,)
            lat = clat[:, None].expand(-1, clon.shape[0]).reshape(-1)
            lon = clon[None, :].expand(clat.shape[0], -1).reshape(-1)
            pos = self.pos(sphere_features(lat, lon).to(x.dtype))[None]  # (1, N, D)
            tim = self.time(time_features(batch["times"], lead).to(x.dtype))[:, None]  # (B,1,D)
        else:
            pos = self.pos(
                sphere_features(batch["lat"], batch["lon"], batch.get("depth")).to(x.dtype)
            )[:, None]  # (B, 1, D): one station per sample
            # each token's own start time: window start + n · patch · step
            offs = torch.arange(n, device=x.device) * self.series_patch * int(batch["step_ns"])
            tok_t = batch["times"][:, None] + offs  # (B, N)
            tim = self.time(time_features(tok_t, lead).to(x.dtype))  # (B, N, D)
        return x + pos + tim + self.modality[modality]
