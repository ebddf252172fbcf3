"""Sampling series forecasts from a trained model: sample paths and quantiles of a window's
horizon (``scigpt predict``, ``scigpt evaluate``, the trainer's test).

A path is drawn token by token, as Chronos draws its tokens: the horizon's first token is drawn
from the model's forecast given the context, written into the window as known values, then the
next one given context and the draws so far, and so on (the training objective reveals random
horizon prefixes for this reason: ``scigpt.models.objectives.series_forecast_loss``). Within a
token of p samples, values are drawn from their p marginal forecasts.

* binned sources: each value's token is drawn from the softmax over the vocabulary (optionally
  sharpened by a ``temperature``) and decoded to its bin's centre × the context's scale;
* patch sources: from the quantile forecast by inverse transform sampling — u ~ U(0, 1), the
  value at u of the piecewise-linear quantile function through the levels (sorted, so crossing
  quantiles cannot produce a non-monotone one), held at the end levels beyond them.

Draws use one ``torch.Generator`` on the CPU, so a seed gives the same paths on any device.
Paths are in the batch's units: physical for binned sources, normalised for patch sources
(``denormalise`` with the dataset's statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from scigpt.models.objectives import forecast_anchor, hide_inputs, horizon_mask
from scigpt.models.series_tokens import N_SPECIAL

_REPEATED = ("fields", "mask", "times", "lat", "lon", "depth", "targets")


def _repeat(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """Each window ``n`` times, consecutively: (B, …) → (B·n, …)."""
    return {
        k: (v.repeat_interleave(n, 0) if k in _REPEATED and torch.is_tensor(v) else v)
        for k, v in batch.items()
    }


def _inverse_cdf(q: torch.Tensor, levels: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """q (…, Q) quantiles at ``levels`` (Q,), u (…) in (0, 1) → the piecewise-linear quantile
    function at u, constant beyond the end levels."""
    q = q.sort(-1).values
    lv = levels.to(q)
    uu = u.clamp(float(lv[0]), float(lv[-1]))
    i = torch.searchsorted(lv, uu.contiguous()).clamp(1, len(lv) - 1)  # (…)
    lo, hi = lv[i - 1], lv[i]
    qlo = q.gather(-1, (i - 1)[..., None])[..., 0]
    qhi = q.gather(-1, i[..., None])[..., 0]
    w = (uu - lo) / (hi - lo)
    return qlo + w * (qhi - qlo)


@torch.no_grad()
def sample_paths(
    model,
    batch: dict[str, Any],
    n_samples: int,
    *,
    levels: tuple[float, ...] = (),
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    paths: bool = True,
    inputs_only: Sequence[int] = (),
) -> torch.Tensor:
    """(B, C, H, S): ``n_samples`` paths of each window's horizon (H = window − context samples).
    ``levels``: the quantile levels of a patch model's head (its ``spec.quantiles``).
    ``paths=False``: draw every lead from its marginal forecast given the context alone, in one
    pass (Nh times cheaper; the draws of one sample are then not a coherent path, which per-lead
    scores — MASE, WQL, CRPS by lead — do not need). ``inputs_only``: variable ids of channels
    that are not forecast (forcing; ``objectives.hide_inputs``): their horizon stays unknown
    and their draws are NaN."""
    if model.series_head is None:
        raise ValueError("this model has no series forecast head: train it with "
                         "objectives.series_forecast > 0")  # fmt: skip
    gen = generator or torch.Generator().manual_seed(0)
    p = model.tokenizer.series_patch
    ctx = int(batch["context"])
    b, c, length = batch["fields"].shape
    n_h = (length - ctx) // p
    if batch.get("tokenizer") != "bins" and not levels:
        raise ValueError("sampling a patch model's forecast needs its quantile levels")
    keep = _forecast_channels(batch, inputs_only)
    batch = hide_inputs(batch, ctx, torch.ones_like(keep))  # the horizon is unknown
    lv = torch.tensor(levels, dtype=torch.float32)
    if not paths:  # one pass: each window's forecast, n_samples draws from it
        x = model.encode(batch, horizon_mask(model, batch))[:, ctx // p :]  # (B, Nh, D)
        dist = _distribution(model, batch, x, ctx, keep)
        u = torch.rand(b, n_samples, int(keep.sum()), n_h, p, generator=gen, device="cpu")
        vals = _sample(model, dist, u.to(x.device), lv)  # (B, S, C', H)
        out = torch.full((b, n_samples, c, length - ctx), torch.nan, device=x.device)
        out[:, :, keep] = vals.float()
        return out.permute(0, 2, 3, 1)  # (B, C, H, S)
    rep = _repeat(batch, n_samples)
    fields, mask = rep["fields"], rep["mask"]
    for k in range(n_h):
        cur = {**rep, "fields": fields, "mask": mask}
        start = ctx // p + k
        x = model.encode(cur, horizon_mask(model, cur, k))[:, start : start + 1]  # (B·S, 1, D)
        lo, hi = ctx + k * p, ctx + (k + 1) * p
        u = torch.rand(b * n_samples, 1, int(keep.sum()), 1, p, generator=gen, device="cpu")
        vals = _sample(model, _distribution(model, cur, x, lo, keep), u.to(x.device), lv)
        fields[:, keep, lo:hi] = vals[:, 0].to(fields.dtype)  # input channels stay unknown
        mask[:, keep, lo:hi] = True
    out = fields[..., ctx:].float().reshape(b, n_samples, c, length - ctx)
    out[:, :, ~keep] = torch.nan
    return out.permute(0, 2, 3, 1)  # (B, C, H, S)


def _forecast_channels(batch: dict[str, Any], inputs_only: Sequence[int]) -> torch.Tensor:
    """(C,) bool: the batch's channels that are forecast (not in ``inputs_only``)."""
    ids = batch["var_ids"]
    inputs = torch.as_tensor(list(inputs_only), dtype=torch.long, device=ids.device)
    return ~torch.isin(ids, inputs)


def _distribution(model, batch, x, lo, keep):
    """The forecast distribution of tokens ``x`` (B', n, D) whose first sample is at ``lo``,
    channels ``keep``: ("bins", cdf (B', C', n, p, K), scale (B', C')) or ("quantiles",
    q (B', C', n, p, Q))."""
    var_ids = batch["var_ids"][keep]
    anchor = forecast_anchor(model, batch, lo, x.shape[1] * model.tokenizer.series_patch, keep)
    if batch.get("tokenizer") == "bins":
        scale = model.tokenizer.bin_scale(batch)  # the context's scale (no look-ahead)
        centres = model.tokenizer.bins.values_of_bins()
        logits = model.series_head.logits(x, var_ids, anchor, centres).float()
        logits[..., :N_SPECIAL] = -torch.inf  # a forecast value is a bin, never PAD/EOS
        return "bins", torch.softmax(logits, -1).cumsum(-1), scale[:, keep]
    return "quantiles", model.series_head.quantiles(x, var_ids, anchor).float(), None


def _sample(model, dist, u: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
    """u (B', S, C', n, p) uniforms → values (B', S, C', n·p) by inverse transform sampling."""
    kind, d, scale = dist
    bb, s, c, n, p = u.shape
    if kind == "bins":
        cdf = d[:, None].expand(bb, s, *d.shape[1:]).contiguous()  # (B', S, C', n, p, K)
        ids = torch.searchsorted(cdf, u[..., None].to(cdf).contiguous()).clamp_max(
            cdf.shape[-1] - 1
        )
        ids = ids[..., 0].reshape(bb, s, c, n * p)
        sc = scale[:, None].expand(bb, s, c)
        return model.tokenizer.bins.decode(ids, sc)
    q = d[:, None].expand(bb, s, *d.shape[1:])  # (B', S, C', n, p, Q)
    return _inverse_cdf(q, lv.to(q.device), u).reshape(bb, s, c, n * p)


@torch.no_grad()
def forecast_quantiles(
    model,
    batch: dict[str, Any],
    taus: Sequence[float],
    *,
    levels: tuple[float, ...] = (),
    inputs_only: Sequence[int] = (),
) -> torch.Tensor:
    """(B, C, H, Q): each lead's forecast quantiles at ``taus``, exactly, from the context in
    one pass — binned: the lowest bin whose cumulative probability reaches τ, decoded; patch:
    the head's piecewise-linear quantile function (``levels``) at τ. Input channels: NaN."""
    p = model.tokenizer.series_patch
    ctx = int(batch["context"])
    b, c, length = batch["fields"].shape
    if batch.get("tokenizer") != "bins" and not levels:
        raise ValueError("a patch model's quantiles need its head's levels")
    keep = _forecast_channels(batch, inputs_only)
    batch = hide_inputs(batch, ctx, torch.ones_like(keep))
    x = model.encode(batch, horizon_mask(model, batch))[:, ctx // p :]  # (B, Nh, D)
    dist = _distribution(model, batch, x, ctx, keep)
    # the inverse CDF at τ: the same map that turns uniforms into draws
    t = torch.tensor(list(taus), dtype=torch.float32, device=x.device)
    u = t[None, :, None, None, None].expand(b, len(taus), int(keep.sum()), x.shape[1], p)
    vals = _sample(model, dist, u, torch.tensor(levels, dtype=torch.float32))  # (B, Q, C', H)
    out = torch.full((b, len(taus), c, length - ctx), torch.nan, device=x.device)
    out[:, :, keep] = vals.float()
    return out.permute(0, 2, 3, 1)  # (B, C, H, Q)


__all__ = ["forecast_quantiles", "sample_paths"]
