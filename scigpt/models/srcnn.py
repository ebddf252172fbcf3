"""A small convolutional super-resolution network: the baseline a downscaling model must beat
besides bicubic interpolation.

SRCNN-like (Dong et al. 2016): it takes the bicubic-up-sampled coarse field on the fine grid (the
same input the SciGPT model gets) and adds a correction from three convolutions (5 × 5, 3 × 3,
3 × 3; ``width`` channels, GELU), the last zero-initialised, so the untrained network is bicubic
exactly, like the model. A few thousand parameters (4.0k for 3 variables, 5.1k for 5, at
width 16).
"""

from __future__ import annotations

import torch
from torch import nn


class SRCNN(nn.Module):
    """(B, V, H, W) bicubic-up-sampled fields → (B, V, H, W) fine fields."""

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 5, padding=2, padding_mode="replicate"),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, padding_mode="replicate"),
            nn.GELU(),
            nn.Conv2d(width, channels, 3, padding=1, padding_mode="replicate"),
        )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for conv in self.body:
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
                nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


__all__ = ["SRCNN"]
