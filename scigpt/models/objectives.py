"""Training objectives and their weighted combination.

* forecast — grids: area-weighted MSE of the next-step (or lead-time) forecast, per-variable
  weights; cos(latitude) weights for geographic grids, uniform for Cartesian (PDE) ones;
* masked — MAE-style masked-patch reconstruction: a random ``mask_ratio`` of the tokens is
  replaced by the mask token, and the decoder of the batch's modality reconstructs every
  variable's values of the masked patches (loss on masked, valid values only);
* pooled — per-sample targets from mean-pooled tokens: regression (MSE, NaN targets ignored) or
  classification (cross-entropy on integer classes).

``total_loss`` sums the enabled ones with their weights and returns the parts for logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from scigpt.models.losses import lat_weights, weighted_mse
from scigpt.models.patch_embed import pad_to_multiple
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
    if obj.masked:
        parts["masked"] = obj.masked * masked_loss(model, batch, obj, generator)
    if obj.pooled and "targets" in batch:
        parts["pooled"] = obj.pooled * pooled_loss(model, batch, obj, x)
    if not parts:
        raise ValueError(
            "no objective applies to this batch: enable forecast (grids with targets), "
            "masked, or pooled (batches with targets)"
        )
    loss = torch.stack(list(parts.values())).sum()
    return loss, {k: float(v.detach()) for k, v in parts.items()}
