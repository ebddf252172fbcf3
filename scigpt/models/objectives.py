"""Training objectives and their weighted combination.

* forecast — grids: area-weighted MSE of the next-step (or lead-time) forecast, per-variable
  weights; cos(latitude) weights for geographic grids, uniform for Cartesian (PDE) ones;
* masked — MAE-style masked-patch reconstruction: a random ``mask_ratio`` of the tokens is
  replaced by the mask token, and the decoder of the batch's modality reconstructs every
  variable's values of the masked patches (loss on masked, valid values only);
* pooled — per-sample targets from mean-pooled tokens: regression (MSE, NaN targets ignored) or
  classification (cross-entropy on integer classes);
* series_forecast — series windows of a source with a ``horizon``: the horizon's tokens are
  replaced by the mask token (their times stay known) and one bidirectional pass over context
  and horizon forecasts them — next-patch prediction of the whole horizon at once. Binned
  sources (Chronos-style tokens): cross-entropy over the vocabulary of each horizon value's
  token (PAD, a missing value, is left out); patch sources: the pinball (quantile) loss of
  ``quantiles`` levels in normalised units (Koenker & Bassett 1978), averaged over levels.

``total_loss`` sums the enabled ones with their weights and returns the parts for logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from scigpt.models.losses import lat_weights, weighted_mse
from scigpt.models.patch_embed import pad_to_multiple
from scigpt.models.series_tokens import PAD_ID
from scigpt.models.tokenizer import GRID


@dataclass
class Objectives:
    forecast: float = 1.0
    masked: float = 0.0
    mask_ratio: float = 0.5
    pooled: float = 0.0
    pooled_kind: str = "regression"  # or "classification"
    # variable id → loss weight (default 1): emphasise or silence variables
    variable_weights: dict[int, float] = field(default_factory=dict)
    geographic: bool = True  # grid coordinates are lat/lon (area weighting applies)
    series_forecast: float = 0.0
    quantiles: tuple[float, ...] = ()  # levels of the patch tokenizer's quantile head


def _var_weights(var_ids: torch.Tensor, weights: dict[int, float]) -> torch.Tensor:
    w = [weights.get(int(v), 1.0) for v in var_ids.tolist()]
    return torch.tensor(w, dtype=torch.float32, device=var_ids.device)


def forecast_loss(pred: torch.Tensor, batch: dict, obj: Objectives) -> torch.Tensor:
    """Weighted MSE over (B, V, H, W): area × variable weights × validity mask."""
    h = pred.shape[-2]
    area = lat_weights(batch["lat"]) if obj.geographic else torch.ones(h, device=pred.device)
    vw = _var_weights(batch["var_ids"], obj.variable_weights)
    return weighted_mse(pred, batch["target"], area, batch.get("mask"), vw)


def patch_targets(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Every variable's values per token, the same cut the tokenizer makes: (B, V, N, K), and
    their validity mask."""
    f = batch["fields"]
    if int(batch.get("modality_id", GRID)) == GRID:
        tok = model.tokenizer.embed
        _, ph, pw = tok.patch
        x = pad_to_multiple(f, ph, pw)  # (B, V, T, H', W')
        b, v, t, hh, ww = x.shape
        gh, gw = hh // ph, ww // pw
        x = x.reshape(b, v, t, gh, ph, gw, pw).permute(0, 1, 3, 5, 2, 4, 6)
        vals = x.reshape(b, v, gh * gw, t * ph * pw)
        return vals, torch.ones_like(vals, dtype=torch.bool)
    p = model.tokenizer.series_patch
    b, c, length = f.shape
    vals = f.reshape(b, c, length // p, p)
    m = batch.get("mask")
    valid = m.reshape(b, c, length // p, p) if m is not None else torch.ones_like(vals).bool()
    return vals, valid


def random_token_mask(
    model, batch: dict, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, N) bool: exactly ``round(ratio · N)`` (at least 1) random tokens per sample, drawn
    on the CPU (the same mask on any device for a given generator)."""
    n = model.tokenizer.num_tokens(batch)
    b = batch["fields"].shape[0]
    scores = torch.rand(b, n, generator=generator, device="cpu").to(batch["fields"].device)
    k = max(1, round(ratio * n))
    return scores.argsort(dim=1).argsort(dim=1) < k


def masked_loss(
    model, batch: dict, obj: Objectives, generator: torch.Generator | None = None
) -> torch.Tensor:
    """MAE-style: mask a random fraction of tokens, reconstruct their patches (B, V, N, K)."""
    token_mask = random_token_mask(model, batch, obj.mask_ratio, generator)
    x = model.encode(batch, token_mask)
    grid = int(batch.get("modality_id", GRID)) == GRID
    pred = model.reconstruct(x, batch["var_ids"], grid)  # (B, V, N, K)
    target, valid = patch_targets(model, batch)
    w = valid * token_mask[:, None, :, None]
    w = w * _var_weights(batch["var_ids"], obj.variable_weights)[None, :, None, None]
    return (w * (pred.float() - target.float()) ** 2).sum() / w.sum().clamp_min(1e-12)


def pooled_loss(model, batch: dict, obj: Objectives, x: torch.Tensor | None = None):
    if model.pooled is None:
        raise ValueError("objectives.pooled > 0 needs a pooled head: set the number of targets")
    out = model.pooled(model.encode(batch) if x is None else x).float()  # (B, K)
    y = batch["targets"].to(out.dtype)
    if obj.pooled_kind == "classification":
        return F.cross_entropy(out, y[:, 0].long())
    ok = torch.isfinite(y)
    return ((out - torch.nan_to_num(y)) ** 2 * ok).sum() / ok.sum().clamp_min(1)


def horizon_mask(model, batch: dict, reveal: int = 0) -> torch.Tensor:
    """(B, N) bool: the tokens of a forecast window's horizon (after ``batch["context"]``)
    past its first ``reveal`` tokens, which count as known (sampling reveals them one by one)."""
    p = model.tokenizer.series_patch
    b, _, length = batch["fields"].shape
    start = int(batch["context"]) // p + reveal
    mask = torch.zeros(b, length // p, dtype=torch.bool, device=batch["fields"].device)
    mask[:, start:] = True
    return mask


def last_observed(fields: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, C, L) → (B, C): each channel's last observed value (0, the normalised mean, if none)."""
    if mask is None:
        return fields[..., -1]
    pos = torch.arange(fields.shape[-1], device=fields.device).expand_as(fields)
    last = torch.where(mask, pos, torch.full_like(pos, -1)).amax(-1)  # (B, C)
    vals = fields.gather(-1, last.clamp_min(0)[..., None])[..., 0]
    return torch.where(last >= 0, vals, torch.zeros_like(vals))


def forecast_anchor(model, batch: dict, known: int, n: int, keep: torch.Tensor) -> torch.Tensor:
    """(B, C', n): the series head's anchor (``SeriesForecastHead.anchor``) for the n samples
    after the first ``known`` ones of the channels ``keep``: from each channel's last observed
    value, in normalised units (patch) or in the context's scaled units (bins)."""
    f, m = batch["fields"], batch.get("mask")
    last = last_observed(f[..., :known], None if m is None else m[..., :known])[:, keep]
    step = int(batch["step_ns"])
    t_last = batch["times"] + (known - 1) * step
    var_ids = batch["var_ids"][keep]
    head = model.series_head
    if batch.get("tokenizer") == "bins":
        scale = model.tokenizer.bin_scale(batch)
        t_ref = batch["times"] + (int(batch["context"]) - 1) * step // 2  # the context's middle
        return head.anchor(var_ids, last / scale[:, keep], t_last, step, n, log_ratio=True,
                           t_ref=t_ref)  # fmt: skip
    return head.anchor(var_ids, last, t_last, step, n)


def series_forecast_outputs(
    model, batch: dict, reveal: int = 0, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """The forecast of a window's horizon tokens past the first ``reveal``: bin logits
    (B, C', Nh, p, n_tokens) for binned batches, quantiles (B, C', Nh, p, Q) in normalised units
    otherwise (around the head's anchor), for the channels ``keep`` (C,) bool (default all:
    C' = C; input channels need no forecast)."""
    p = model.tokenizer.series_patch
    start = int(batch["context"]) // p + reveal
    x = model.encode(batch, horizon_mask(model, batch, reveal))[:, start:]  # (B, Nh, D)
    keep = torch.ones_like(batch["var_ids"], dtype=torch.bool) if keep is None else keep
    known = start * p
    anchor = forecast_anchor(model, batch, known, batch["fields"].shape[-1] - known, keep)
    var_ids = batch["var_ids"][keep]
    if batch.get("tokenizer") == "bins":
        centres = model.tokenizer.bins.values_of_bins()
        return model.series_head.logits(x, var_ids, anchor, centres)
    return model.series_head.quantiles(x, var_ids, anchor)


def hide_inputs(batch: dict, start: int, hidden: torch.Tensor) -> dict:
    """The batch with the ``hidden`` (C,) bool channels unknown from sample ``start`` on: input
    channels (forcing, flags — weight 0 in ``objectives.variable_weights``) are not forecast, so
    no horizon value of theirs is ever seen, neither their truth while training nor a draw while
    sampling (binned: PAD tokens; patch: the normalised mean, 0)."""
    if not bool(hidden.any()):
        return batch
    f = batch["fields"].clone()
    m = batch["mask"].clone() if batch.get("mask") is not None else torch.ones_like(f).bool()
    f[:, hidden, start:] = 0
    m[:, hidden, start:] = False
    return {**batch, "fields": f, "mask": m}


def unforecast(batch: dict, weights: dict[int, float]) -> torch.Tensor:
    """(C,) bool: the batch's channels weighted 0, which are inputs only."""
    return _var_weights(batch["var_ids"], weights) == 0


def pinball_loss(q: torch.Tensor, y: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Elementwise mean over levels of max(τ(y − q), (τ − 1)(y − q)): q (…, Q), y (…)."""
    e = y[..., None] - q
    return torch.maximum(levels * e, (levels - 1) * e).mean(-1)


def series_forecast_loss(
    model,
    batch: dict,
    obj: Objectives,
    generator: torch.Generator | None = None,
    reveal: int | None = None,
) -> torch.Tensor:
    """Half the micro-batches reveal a random prefix of the horizon (1 … Nh − 1 tokens, its true
    values) and forecast the rest, so that sampling, which reveals its own draws token by token
    (``scigpt.eval.series_infer``), asks the network what it was trained on. ``reveal``: that
    many tokens instead of a random draw (validation: 0)."""
    if model.series_head is None:
        raise ValueError("objectives.series_forecast > 0 needs a series head (ModelSpec.bins or "
                         "ModelSpec.quantiles)")  # fmt: skip
    p = model.tokenizer.series_patch
    n_h = (batch["fields"].shape[-1] - int(batch["context"])) // p
    if reveal is None:
        draw = torch.rand(2, generator=generator, device="cpu")
        reveal = int(draw[1] * (n_h - 1)) + 1 if n_h > 1 and draw[0] < 0.5 else 0
    inputs = unforecast(batch, obj.variable_weights)
    batch = hide_inputs(batch, int(batch["context"]), inputs)
    keep = ~inputs
    ctx = int(batch["context"]) + reveal * p
    out = series_forecast_outputs(model, batch, reveal, keep).float()
    b, c, nh, p = out.shape[:4]
    vw = _var_weights(batch["var_ids"][keep], obj.variable_weights)[None, :, None, None]
    if batch.get("tokenizer") == "bins":
        ids, _ = model.tokenizer.bin_ids(batch)
        labels = ids[:, keep, ctx:].reshape(b, c, nh, p)
        ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1),
                             reduction="none").reshape(b, c, nh, p)  # fmt: skip
        w = (labels != PAD_ID) * vw
        return (w * ce).sum() / w.sum().clamp_min(1e-12)
    y = batch["fields"][:, keep, ctx:].float().reshape(b, c, nh, p)
    m = batch.get("mask")
    valid = m[:, keep, ctx:].reshape(b, c, nh, p) if m is not None else torch.ones_like(y).bool()
    levels = torch.tensor(obj.quantiles, dtype=out.dtype, device=out.device)
    w = valid * vw
    return (w * pinball_loss(out, y, levels)).sum() / w.sum().clamp_min(1e-12)


def total_loss(
    model, batch: dict, obj: Objectives, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the enabled objectives that apply to this batch's modality."""
    parts: dict[str, torch.Tensor] = {}
    grid = int(batch.get("modality_id", GRID)) == GRID
    x = None
    if obj.forecast and grid and "target" in batch:
        x = model.encode(batch)
        parts["forecast"] = obj.forecast * forecast_loss(model.forecast(batch, x), batch, obj)
    forecasting = obj.series_forecast and not grid and "context" in batch
    if forecasting:
        parts["series_forecast"] = obj.series_forecast * series_forecast_loss(
            model, batch, obj, generator
        )
    if obj.masked and batch.get("tokenizer") != "bins":  # binned sources forecast only
        parts["masked"] = obj.masked * masked_loss(model, batch, obj, generator)
    if obj.pooled and "targets" in batch:
        parts["pooled"] = obj.pooled * pooled_loss(model, batch, obj, x)
    if not parts:
        raise ValueError(
            "no objective applies to this batch: enable forecast (grids with targets), "
            "masked, pooled (batches with targets) or series_forecast (series with a horizon)"
        )
    loss = torch.stack(list(parts.values())).sum()
    return loss, {k: float(v.detach()) for k, v in parts.items()}
