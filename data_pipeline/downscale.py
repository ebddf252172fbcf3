"""Downscaling (super-resolution) samples: a fine frame, its degraded coarse input brought back
to the fine grid by bicubic up-sampling, and the fine frame as the target.

A sample is the grid batch of DESIGN.md §7 with one input frame: ``fields`` (V, 1, H, W) is
``bicubic_upsample(degrade(fine))``, ``target`` (V, H, W) the fine frame, ``mask`` its valid
points. So a model with ``residual: true`` predicts a correction of the bicubic field (an
untrained model, whose head starts at zero, *is* bicubic), and the forecast scores' persistence
baseline (the last input frame) is the bicubic baseline. The frames are the anchors of a
``ForecastDataset`` with history 1 and lead 1 (its target frame is not used), so splits, gaps and
normalisation are the forecast task's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .degrade import bicubic_upsample, degrade, sample_generator
from .loader import ForecastDataset, normalise
from .store import GridStore


def crop_in_patches(store: GridStore, crop: Sequence[int] | None) -> list[int] | None:
    """The store crop (row0, col0, rows, cols in the store's patch units) that covers the
    top-left ``crop`` = [h, w] grid points (cut to exactly h × w after reading)."""
    if crop is None:
        return None
    h, w = (int(c) for c in crop)
    if h > store.height or w > store.width:
        raise ValueError(
            f"data.downscale.crop={[h, w]} is larger than the {store.height} x {store.width} "
            f"grid of {store.source}: crop at most that"
        )
    ph, pw = store.patch[1], store.patch[2]
    return [0, 0, -(-h // ph), -(-w // pw)]


class DownscaleDataset(torch.utils.data.Dataset):
    """(bicubic-up-sampled coarse input → fine target) samples of a store's time block."""

    def __init__(
        self,
        store: GridStore,
        *,
        time_range: tuple[np.datetime64, np.datetime64],
        factor: int,
        degradation: str,
        noise: float = 0.0,
        seed: int = 0,
        crop: Sequence[int] | None = None,
        multiple: int = 1,
        gap: np.timedelta64 | None = None,
        var_ids: Sequence[int] | None = None,
        variables: Sequence[str] | None = None,
    ) -> None:
        self.base = ForecastDataset(
            store, time_range=time_range, history=1, lead=1, gap=gap, var_ids=var_ids,
            variables=variables, crop=crop_in_patches(store, crop),
        )  # fmt: skip
        h, w = (int(c) for c in crop) if crop is not None else (store.height, store.width)
        if h % multiple or w % multiple:
            raise ValueError(
                f"the {h} x {w} fine grid of {store.source} is not a multiple of both "
                f"data.downscale.factor and model.patch_size (of {multiple}): set "
                f"data.downscale.crop: [{h - h % multiple}, {w - w % multiple}] (or change the "
                "factor or the patch size)"
            )
        self.shape = (h, w)
        self.factor, self.degradation = int(factor), degradation
        self.noise, self.seed = float(noise), int(seed)
        self.variables = self.base.variables
        self.lead, self.time_step_ns = 1, self.base.time_step_ns
        lat, lon = self.base._lat, self.base._lon
        self.lat = lat[:h] if lat.ndim == 1 else lat[:h, :w]
        self.lon = lon[:w] if lon.ndim == 1 else lon[:h, :w]

    def __len__(self) -> int:
        return len(self.base)

    def fine(self, i: int) -> tuple[np.ndarray, np.ndarray, np.int64]:
        """Sample ``i``'s normalised fine frame (V, H, W) (NaN → 0), its mask and its time."""
        frames, _, time = self.base.raw_item(i)
        h, w = self.shape
        fine, mask = normalise(frames[0, :, :h, :w], self.base.mean32, self.base.std32)
        return fine, mask, time

    def coarse(self, fine: torch.Tensor, i: int) -> torch.Tensor:
        """The degraded input of sample ``i``'s fine frame (V, H/f, W/f)."""
        gen = sample_generator(self.seed, i) if self.degradation == "bicubic+noise" else None
        return degrade(fine, self.factor, self.degradation, noise=self.noise, generator=gen)

    def __getitem__(self, i: int) -> dict[str, Any]:
        fine_np, mask, time = self.fine(i)
        fine = torch.from_numpy(np.ascontiguousarray(fine_np))
        coarse = self.coarse(fine, i)
        return {
            "fields": bicubic_upsample(coarse, self.factor)[:, None].contiguous(),  # (V,1,H,W)
            "coarse": coarse,
            "target": fine,
            "mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "time": torch.tensor(time, dtype=torch.int64),
            "var_ids": self.base._var_ids,
            "modality_id": self.base._modality_id,
            "lat": self.lat,
            "lon": self.lon,
        }


BLOCKS = ("train", "val", "test")


def block_dataset(
    store: GridStore,
    downscale: Any,
    splits: Any,
    block: str,
    *,
    seed: int,
    patch_size: int,
    var_ids: Sequence[int] | None = None,
    variables: Sequence[str] | None = None,
) -> DownscaleDataset:
    """A run's ``block`` (train, val or test) of ``store`` as downscaling samples, from its
    ``data.downscale`` and splits configs; the noise of bicubic+noise is seeded per sample from
    the run's ``seed`` and the block (every block its own draws)."""
    rng = getattr(splits, block)
    if rng is None:
        raise ValueError(f"the config has no data.splits.{block}: add it")
    return DownscaleDataset(
        store, time_range=rng.bounds(), factor=downscale.factor,
        degradation=downscale.degradation, noise=downscale.noise,
        seed=seed * len(BLOCKS) + BLOCKS.index(block), crop=downscale.crop,
        multiple=math.lcm(downscale.factor, patch_size),
        gap=None if block == "train" else splits.gap_ns(), var_ids=var_ids, variables=variables,
    )  # fmt: skip


__all__ = ["DownscaleDataset", "block_dataset", "crop_in_patches"]
