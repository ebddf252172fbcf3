"""Chronos-style series tokens: mean scaling and uniform bins (Ansari et al. 2024, §3.1).

A window's context ``x_1..x_C`` is divided by its mean absolute value
``s = Σ|x_i|·m_i / Σ m_i`` over the observed values (``m`` the observation mask; ``s`` = 1 when it
is not > 0: an all-zero or all-missing context), so a series' level does not matter. The scaled
values are quantised into ``n_tokens − n_special − 1`` uniform bins whose centres span
``[low, high]``; the bin edges are the midpoints between centres, open at both ends (values past
the limits take the end bins). A value's token id is ``bucketize(x/s, edges, right=True) +
n_special`` clamped to the vocabulary; a missing value is PAD (0); EOS (1) may end a sequence.
Decoding maps a bin id back to its centre times the scale.

The horizon is tokenised with the *context's* scale (no look-ahead). This equals the
``chronos-forecasting`` package's ``MeanScaleUniformBins`` (chronos/chronos.py) at the same
settings — ``tests/test_series_tokens.py`` checks it against the package — so the vocabulary and
the scaling are Chronos's, while the network reading the tokens is SciGPT's.
"""

from __future__ import annotations

import torch

from scigpt.config_series import EOS_ID, N_SPECIAL, PAD_ID, BinSettings


class MeanScaleUniformBins:
    """Tokenise (…, L) series: ``encode``/``decode`` and Chronos's context/label transforms."""

    def __init__(self, settings: BinSettings | None = None):
        self.settings = s = settings or BinSettings()
        # n_tokens − n_special − 1 centres, as Chronos (its decode subtracts n_special + 1)
        # on the CPU whatever the default device (models are built on meta)
        self.centers = torch.linspace(s.low, s.high, s.n_tokens - N_SPECIAL - 1, device="cpu")
        mids = (self.centers[1:] + self.centers[:-1]) / 2
        edge = torch.tensor([1e20], device="cpu")
        self.boundaries = torch.cat([-edge, mids, edge])

    @property
    def n_tokens(self) -> int:
        return self.settings.n_tokens

    @staticmethod
    def scale(context: torch.Tensor) -> torch.Tensor:
        """(…, C) → (…,): mean |x| over the observed (non-NaN) context values; 1 where that is
        not > 0 (all zero, all missing)."""
        x = context.float()
        observed = ~torch.isnan(x)
        total = torch.where(observed, x.abs(), torch.zeros_like(x)).sum(-1)
        s = total / observed.sum(-1)  # 0/0 → NaN: all missing
        return torch.where(s > 0, s, torch.ones_like(s))

    def encode(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """(…, L) values, (…,) scale → (…, L) int64 token ids (PAD where NaN)."""
        x = values.float()
        scaled = x / scale.unsqueeze(-1)
        ids = torch.bucketize(scaled, self.boundaries.to(x.device), right=True) + N_SPECIAL
        ids = ids.clamp(0, self.n_tokens - 1)
        return torch.where(torch.isnan(x), torch.full_like(ids, PAD_ID), ids)

    def decode(self, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Token ids (…, L) → bin centres × scale (…, L); special ids decode to the lowest bin,
        as Chronos's ``output_transform``."""
        idx = (ids - N_SPECIAL - 1).clamp(0, len(self.centers) - 1)
        return self.centers.to(ids.device)[idx] * scale.unsqueeze(-1)

    def values_of_bins(self) -> torch.Tensor:
        """(n_tokens,) the scaled value each token id decodes to (specials: the lowest bin)."""
        return self.decode(torch.arange(self.n_tokens, device="cpu"), torch.ones((), device="cpu"))

    def context_tokens(
        self, context: torch.Tensor, *, eos: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Chronos's ``context_input_transform`` (without its truncation to a context length):
        (ids, observed mask, scale); ``eos`` appends EOS (mask True)."""
        scale = self.scale(context)
        ids, mask = self.encode(context, scale), ~torch.isnan(context)
        return (*self._eos(ids, mask, eos), scale)

    def label_tokens(
        self, label: torch.Tensor, scale: torch.Tensor, *, eos: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Chronos's ``label_input_transform``: the horizon at the context's ``scale``."""
        return self._eos(self.encode(label, scale), ~torch.isnan(label), eos)

    @staticmethod
    def _eos(ids: torch.Tensor, mask: torch.Tensor, eos: bool):
        if not eos:
            return ids, mask
        shape = (*ids.shape[:-1], 1)
        ids = torch.cat([ids, torch.full(shape, EOS_ID, dtype=ids.dtype, device=ids.device)], -1)
        return ids, torch.cat([mask, torch.ones(shape, dtype=torch.bool, device=ids.device)], -1)


__all__ = ["EOS_ID", "N_SPECIAL", "PAD_ID", "BinSettings", "MeanScaleUniformBins"]
