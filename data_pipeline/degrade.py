"""Degradations for the downscaling (super-resolution) task: a fine frame → its coarse input.

All three act on normalised fields (an affine map of the physical ones, so a block mean of the
normalised field is the normalised block mean), shaped (..., H, W) with H and W divisible by
``factor``:

* ``block_mean`` — conservative block averages (``coarsen``): each coarse cell holds the mean of
  its ``factor × factor`` fine cells, so every coarse cell's mean is conserved exactly;
* ``bicubic`` — ``torch.nn.functional.interpolate(mode="bicubic", antialias=True,
  align_corners=False)`` to the coarse size (SuperBench's bicubic degradation);
* ``bicubic+noise`` — the bicubic one plus Gaussian noise of standard deviation ``noise`` (in
  normalised units), drawn from a generator seeded per sample, so runs reproduce and resume
  bitwise whatever the order, workers or ranks that read the samples.

``bicubic_upsample`` is the one way the coarse input goes back to the fine grid: the model's
input (and residual), the bicubic baseline of evaluation and the CNN baseline's input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .coarsen import coarsen

DEGRADATIONS = ("block_mean", "bicubic", "bicubic+noise")


def _check(fine: torch.Tensor, factor: int) -> None:
    h, w = fine.shape[-2:]
    if factor < 2 or h % factor or w % factor:
        raise ValueError(
            f"a {h} x {w} grid cannot be coarsened by factor {factor}: the grid must be a "
            "multiple of the factor (>= 2); crop it (data.downscale.crop) or change the factor"
        )


def _as4d(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    lead = x.shape[:-2]
    return x.reshape(-1, 1, *x.shape[-2:]), lead


def block_mean(fine: torch.Tensor, factor: int) -> torch.Tensor:
    """Conservative ``factor × factor`` block means (``coarsen``, equal cell weights, summed in
    float64) of (..., H, W) → (..., H/f, W/f), in ``fine``'s dtype."""
    _check(fine, factor)
    return torch.from_numpy(coarsen(fine.detach().cpu().numpy(), factor)).to(fine.dtype)


def bicubic_downsample(fine: torch.Tensor, factor: int) -> torch.Tensor:
    """Anti-aliased bicubic down-sampling (torch's) of (..., H, W) → (..., H/f, W/f)."""
    _check(fine, factor)
    x, lead = _as4d(fine.float())
    h, w = fine.shape[-2:]
    out = F.interpolate(
        x, size=(h // factor, w // factor), mode="bicubic", align_corners=False, antialias=True
    )
    return out.reshape(*lead, h // factor, w // factor).to(fine.dtype)


def bicubic_upsample(coarse: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic up-sampling (torch's, ``align_corners=False``) of (..., h, w) → (..., h·f, w·f)."""
    x, lead = _as4d(coarse.float())
    h, w = coarse.shape[-2:]
    out = F.interpolate(x, size=(h * factor, w * factor), mode="bicubic", align_corners=False)
    return out.reshape(*lead, h * factor, w * factor).to(coarse.dtype)


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The noise generator of sample ``index`` of a dataset seeded ``seed`` (order-free)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index * 7_919 + 17) % 2**63)


def degrade(
    fine: torch.Tensor,
    factor: int,
    kind: str,
    *,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The coarse input of ``fine`` (..., H, W) under degradation ``kind``."""
    if kind == "block_mean":
        return block_mean(fine, factor)
    if kind == "bicubic":
        return bicubic_downsample(fine, factor)
    if kind == "bicubic+noise":
        if generator is None:
            raise ValueError("bicubic+noise needs a generator (sample_generator(seed, index))")
        coarse = bicubic_downsample(fine, factor)
        eps = torch.randn(coarse.shape, generator=generator, dtype=torch.float32)
        return coarse + noise * eps.to(coarse.dtype)
    raise ValueError(f"unknown degradation {kind!r}: choose one of {list(DEGRADATIONS)}")


__all__ = [
    "DEGRADATIONS",
    "bicubic_downsample",
    "bicubic_upsample",
    "block_mean",
    "degrade",
    "sample_generator",
]
