"""``data.downscale``: the settings of the downscaling (super-resolution) task.

Its own module so that ``scigpt.config`` stays one screenful of concepts; ``DataConfig`` holds it
and ``RunConfig`` asks ``check_crop`` with the model's patch size.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DownscaleConfig(BaseModel):
    """``data.task: downscale``: the coarse input is made from each fine frame by
    ``degradation`` (``scigpt.data_pipeline.degrade``) at ``factor``; the model sees it
    bicubic-up-sampled to the fine grid and predicts the fine frame."""

    # the same strictness as scigpt.config._Strict
    model_config = ConfigDict(
        extra="forbid", strict=True, validate_default=True, allow_inf_nan=False
    )

    factor: Annotated[int, Field(ge=2)] = 4
    degradation: Literal["block_mean", "bicubic", "bicubic+noise"] = "block_mean"
    noise: Annotated[float, Field(ge=0)] = 0.0  # σ in normalised units; bicubic+noise only
    # [h, w] grid points from the top-left corner (e.g. 40 x 40 of the 41 x 41 ERA5 sample)
    crop: list[Annotated[int, Field(gt=0)]] | None = Field(default=None, min_length=2, max_length=2)

    @model_validator(mode="after")
    def _noise(self) -> DownscaleConfig:
        if self.noise and self.degradation != "bicubic+noise":
            raise ValueError(
                f"data.downscale.noise={self.noise} applies to degradation: bicubic+noise only "
                f"(this one is {self.degradation}): remove noise or change the degradation"
            )
        if self.degradation == "bicubic+noise" and not self.noise:
            raise ValueError(
                "data.downscale.degradation=bicubic+noise needs noise > 0 (σ in normalised "
                "units, e.g. 0.05): set it, or use degradation: bicubic"
            )
        return self

    def check_crop(self, patch_size: int) -> None:
        """The crop must be a multiple of the factor (degradation) and the patch (tokens)."""
        if self.crop is None:
            return
        mult = math.lcm(self.factor, patch_size)
        if any(c % mult for c in self.crop):
            fix = [c - c % mult for c in self.crop]
            raise ValueError(
                f"data.downscale.crop={list(self.crop)} is not a multiple of both data."
                f"downscale.factor={self.factor} and model.patch_size={patch_size} (of "
                f"{mult}): crop to {fix}, or change the factor or the patch size"
            )


def check_downscale_task(task: str, downscale: DownscaleConfig | None, history: int) -> None:
    """``data.task: downscale`` and ``data.downscale`` go together, with one input frame."""
    if (task == "downscale") != (downscale is not None):
        raise ValueError(
            "data.task=downscale and data.downscale go together: set data.downscale "
            "({factor: 4, degradation: block_mean}) with task: downscale, or neither"
        )
    if task == "downscale" and history != 1:
        raise ValueError(
            f"data.task=downscale maps one frame to its fine version: set data.history: 1 "
            f"(it is {history})"
        )


__all__ = ["DownscaleConfig", "check_downscale_task"]
