"""Loss primitives the training objectives and the evaluation scores share.

They live in the models layer (beside ``objectives``) so that models import nothing above them;
``scigpt.eval.metrics`` re-exports them for its scores.
"""

from __future__ import annotations

import torch


def lat_weights(lat_deg: torch.Tensor) -> torch.Tensor:
    """cos(latitude) weights normalised to mean 1 over the grid rows. (H,) → (H,)."""
    w = torch.cos(torch.deg2rad(lat_deg.double())).clamp_min(0)
    if float(w.sum()) == 0:
        raise ValueError("all latitudes are at the poles: area weights are zero everywhere")
    return (w / w.mean()).to(torch.float32)


def weighted_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor | None = None,
    var_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Area- (and variable-) weighted MSE over every element, in fp32: the forecast loss.

    pred, target: (B, V, H, W); weights: (H,) per row; var_weights: (V,); mask: (B, V, H, W)
    bool, True where valid.
    """
    w = weights.to(pred.device)[None, None, :, None]  # (1, 1, H, 1)
    if var_weights is not None:
        w = w * var_weights[None, :, None, None]
    w = w.expand_as(pred)
    if mask is not None:
        w = w * mask
    err = (pred.float() - target.float()) ** 2
    return (w * err).sum() / w.sum().clamp_min(1e-12)


__all__ = ["lat_weights", "weighted_mse"]
