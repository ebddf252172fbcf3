"""Ulysses sequence parallelism (Jacobs et al. 2023) through DeepSpeed's ``DistributedAttention``.

A grid sample's tokens are cut over the ``parallel.sp`` ranks of a sequence-parallel group: each
rank holds whole *patch rows* of the grid — its latitude band of the input fields, targets and
masks — so the tokenizer (per-variable patch embedding, variable aggregation, position and time
encodings) runs unchanged on the band and gives each token exactly the encodings it has in the
whole sample. Everything per token (LayerNorms, MLPs, heads) is local; only attention mixes
tokens: DeepSpeed's ``DistributedAttention`` all-to-alls (B, N/sp, h, d) into (B, N, h/sp, d),
runs the model's own attention function (sdpa, math or the Triton kernel) over every token for
h/sp heads, and all-to-alls back.

Rows. With ``gh = ceil(H / patch)`` patch rows, the grid is padded (bottom, zeros, as the patch
embedding pads) to ``gh' = ceil(gh / sp) · sp`` patch rows, ``gh' / sp`` per rank; ERA5's 721
latitudes at patch 4 are 181 patch rows (a prime), so sp = 2 pads one patch row. The rows past H
are masked everywhere: their tokens are masked as attention *keys* (the key-padding mask every
attention function takes), their pixels carry zero loss weight, and forecasts are cropped to H.
Their latitudes continue the grid's spacing, as ``encodings.patch_centres`` extrapolates.

Loss. The forecast loss of one process is ``Σ w·err / Σ w`` over the whole sample; each rank
computes its band's numerator over the *global* denominator (an all-reduce of Σ w, which holds
no parameters), so the ranks' losses sum to the sample's and their gradients sum to its
gradient. DeepSpeed (given the sequence-parallel ``mpu``, ``topology.ProcessGroups``) reduces
gradients over the dp × sp ranks and divides by dp only — exactly that sum. The value returned
(and logged) is the whole sample's loss on every rank; the gradient flows through the band's own.

Applied by ``parallelize`` only (step 2); the model stays single-device code: this module
replaces each ``Attention.attn_fn`` and the model's ``forward`` from outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from scigpt.layout_rules import check_layout
from scigpt.models.attention import AttentionFn
from scigpt.models.losses import lat_weights
from scigpt.models.objectives import Objectives
from scigpt.models.tokenizer import GRID
from scigpt.models.vit import SciGPTModel


@dataclass(frozen=True)
class RowSplit:
    """How ``sp`` ranks split an ``h``-row grid at ``patch``: ``rows`` pixel rows per rank."""

    h: int
    patch: int
    sp: int

    @property
    def patch_rows(self) -> int:
        return -(-self.h // self.patch)

    @property
    def padded_patch_rows(self) -> int:
        return -(-self.patch_rows // self.sp) * self.sp

    @property
    def rows(self) -> int:
        return self.padded_patch_rows // self.sp * self.patch

    @property
    def padded_h(self) -> int:
        return self.padded_patch_rows * self.patch

    def band(self, rank: int) -> slice:
        return slice(rank * self.rows, (rank + 1) * self.rows)


def padded_lat(lat: torch.Tensor, n: int) -> torch.Tensor:
    """``lat`` continued to ``n`` rows at its own spacing (``encodings.patch_centres``'s rule)."""
    h = lat.shape[0]
    step = (lat[-1] - lat[0]) / max(h - 1, 1)
    full = lat[0] + step * torch.arange(n, dtype=lat.dtype, device=lat.device)
    full[:h] = lat
    return full


def _pad_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad dim -2 (rows) of ``x`` to ``n`` (any dtype, bool masks too)."""
    pad = n - x.shape[-2]
    if not pad:
        return x
    return torch.cat([x, x.new_zeros((*x.shape[:-2], pad, x.shape[-1]))], dim=-2)


def shard_batch(batch: dict, split: RowSplit, rank: int) -> dict:
    """This rank's latitude band of a grid batch: fields, target, mask and lat cut by rows (the
    padded rows' mask is 0); everything else as it is."""
    band, n = split.band(rank), split.padded_h
    out = dict(batch)
    out["fields"] = _pad_rows(batch["fields"], n)[..., band, :]
    out["lat"] = padded_lat(batch["lat"], n)[band]
    if "target" in batch:
        out["target"] = _pad_rows(batch["target"], n)[..., band, :]
        mask = batch.get("mask")
        if mask is None:
            mask = torch.ones_like(batch["target"], dtype=torch.bool)
        out["mask"] = _pad_rows(mask, n)[..., band, :]
    return out


def key_padding_mask(split: RowSplit, width: int, batch: int, device) -> torch.Tensor | None:
    """(B, N') bool over the padded sequence, False on the tokens of the padding patch rows;
    None when sp divides the patch rows (no padding)."""
    if split.padded_patch_rows == split.patch_rows:
        return None
    gw = width
    keep = torch.arange(split.padded_patch_rows * gw, device=device) < split.patch_rows * gw
    return keep[None].expand(batch, -1)


class _Context:
    """Per-forward state the blocks' attention wrappers share: the key-padding mask of the
    latest forward (read again when activation checkpointing recomputes in backward)."""

    key_mask: torch.Tensor | None = None


class UlyssesAttention:
    """The model's attention function over the whole sequence from a token band per rank:
    DeepSpeed's ``DistributedAttention`` around ``local`` (any registered attention function).
    A plain callable, not a module: the model's parameters and state-dict names are unchanged."""

    def __init__(self, local: AttentionFn, group, ctx: _Context):
        from deepspeed.sequence.layer import DistributedAttention  # optional heavy dependency

        self.local, self.ctx = local, ctx
        # (B, N/sp, h, d) --all-to-all--> (B, N, h/sp, d): scatter heads (2), gather tokens (1)
        self.dist_attn = DistributedAttention(self._local_bnhd, group, scatter_idx=2, gather_idx=1)

    def _local_bnhd(self, q, k, v):
        out = self.local(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.ctx.key_mask)
        return out.transpose(1, 2)

    def __call__(self, q, k, v, key_padding_mask=None):
        """q, k, v (B, h, N/sp, d) → (B, h, N/sp, d)."""
        if key_padding_mask is not None:
            raise ValueError("sequence parallelism sets its own key-padding mask (padded rows)")
        out = self.dist_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0)
        return out.transpose(1, 2)


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    t = t.detach().clone()
    dist.all_reduce(t, group=group)
    return t


def _gather_rows(x: torch.Tensor, group, sp: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(sp)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=-2)


def _check_objectives(obj: Objectives, batch: dict) -> None:
    if obj.masked or obj.pooled:
        raise ValueError(
            "parallel.sp > 1 trains the forecast objective only in this release (masked-patch "
            "and pooled objectives need every token on one rank): set objectives.masked and "
            "objectives.pooled to 0, or parallel.sp: 1"
        )
    if "target" not in batch:
        raise ValueError("parallel.sp > 1 needs grid batches with forecast targets")


def sp_forward(
    model: SciGPTModel, ctx: _Context, group, sp: int, rank: int, batch: dict, objectives=None
):
    """``SciGPTModel.forward`` over a token band per rank: the whole forecast (gathered, cropped
    to H) without ``objectives``; with them, the loss (module docstring) and its parts."""
    if int(batch.get("modality_id", GRID)) != GRID:
        raise ValueError(
            "parallel.sp > 1 cuts grid samples by patch rows; series batches need parallel.sp: 1"
        )
    h, w = batch["fields"].shape[-2:]
    split = RowSplit(h, model.tokenizer.patch, sp)
    check_layout(tp=1, pp=1, sp=sp, zero_stage=1, patch_rows=split.patch_rows)
    local = shard_batch(batch, split, rank)
    gw = model.tokenizer.embed.grid_shape(h, w)[1]
    # Kept after the forward: activation checkpointing recomputes the attention in backward.
    ctx.key_mask = key_padding_mask(split, gw, batch["fields"].shape[0], batch["fields"].device)
    if objectives is None:
        pred = model.forecast(local, model.encode(local))  # (B, V, rows, W)
        return _gather_rows(pred.detach(), group, sp)[..., :h, :]
    _check_objectives(objectives, batch)
    pred = model.forecast(local, model.encode(local))
    area = (
        lat_weights(batch["lat"]) if objectives.geographic
        else torch.ones(h, device=pred.device)
    )  # fmt: skip
    area = _pad_rows(area.to(pred.device)[:, None], split.padded_h)[split.band(rank), 0]
    vw = [objectives.variable_weights.get(int(v), 1.0) for v in batch["var_ids"].tolist()]
    vw = torch.tensor(vw, dtype=torch.float32, device=pred.device)
    wts = area[None, None, :, None] * vw[None, :, None, None]
    wts = wts.expand_as(pred) * local["mask"]
    err = (pred.float() - local["target"].float()) ** 2
    den = _all_reduce(wts.sum(), group).clamp_min(1e-12)
    part = objectives.forecast * (wts * err).sum() / den
    whole = _all_reduce(part, group)
    # value: the whole sample's loss; gradient: this band's part of it
    loss = part + (whole - part.detach())
    return loss, {"forecast": float(whole)}


def apply_sequence_parallel(model: nn.Module, sp: int, group, rank: int) -> nn.Module:
    """Step 2 of ``parallelize``: with ``sp > 1``, every block's attention becomes Ulysses
    attention over ``group`` and ``model.forward`` runs on this rank's token band (in place;
    parameters and names unchanged). ``rank``: this process's rank in ``group``."""
    if sp == 1:
        return model
    if not isinstance(model, SciGPTModel):
        raise TypeError(f"sequence parallelism applies to a SciGPTModel, got {type(model)}")
    if getattr(model, "_sequence_parallel", False):
        raise ValueError("the model is already sequence-parallel")
    ctx = _Context()
    for blk in model.blocks:
        blk.attn.attn_fn = UlyssesAttention(blk.attn.attn_fn, group, ctx)
    model.forward = partial(sp_forward, model, ctx, group, sp, rank)
    model._sequence_parallel = True
    return model


__all__ = [
    "RowSplit",
    "UlyssesAttention",
    "apply_sequence_parallel",
    "key_padding_mask",
    "padded_lat",
    "shard_batch",
    "sp_forward",
]
