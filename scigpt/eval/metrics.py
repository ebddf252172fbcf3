"""Area-weighted scores following WeatherBench 2 (Rasp et al. 2024).

RMSE convention (the one ClimaX#59 tripped over): the weighted squared error is averaged over
space *and* time first, and the square root is taken last.
"""

from __future__ import annotations

import torch

from scigpt.models.losses import lat_weights, weighted_mse  # noqa: F401  (re-exported)


def weighted_rmse_per_channel(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """RMSE per channel: sqrt of the area-weighted mean over samples and space. → (V,)

    pred, target: (N, V, H, W) — N forecasts (times); weights: (H,).
    """
    w = weights[None, None, :, None].expand_as(pred).double()
    if mask is not None:
        w = w * mask
    se = w * (pred.double() - target.double()) ** 2
    return torch.sqrt(se.sum(dim=(0, 2, 3)) / w.sum(dim=(0, 2, 3)).clamp_min(1e-12)).float()
