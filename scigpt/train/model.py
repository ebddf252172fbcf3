"""The run's model: its objectives and heads, the single-device model (on the meta device: its
sizes), and that model in the run's layout (pipeline stages, ZeRO-3 construction, tensor
parallelism, activation checkpointing).

The layout step is the seam where ``scigpt.parallel`` takes over (issue 21's
``parallel/parallelize.py``): ``layout_model`` is the one call the trainer makes.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from scigpt.config import RunConfig
from scigpt.models.objectives import Objectives


def objectives_of(cfg: RunConfig, reg_names: list[str]) -> Objectives:
    """The run's training objectives, variable weights at their registry ids."""
    oc = cfg.objectives
    unknown = sorted(set(oc.variable_weights) - set(reg_names))
    if unknown:
        raise ValueError(
            f"objectives.variable_weights names {unknown}, not variables of the run "
            f"({reg_names}): use canonical names such as {reg_names[0]!r}"
        )
    return Objectives(
        forecast=oc.forecast, masked=oc.masked, mask_ratio=oc.mask_ratio, pooled=oc.pooled,
        pooled_kind=oc.pooled_kind, series_forecast=oc.series_forecast,
        quantiles=tuple(oc.quantiles),
        variable_weights={reg_names.index(k): w for k, w in oc.variable_weights.items()},
    )  # fmt: skip


def pooled_outputs(cfg: RunConfig, base: nn.Module | None) -> int:
    """The pooled head's outputs: the run's targets (or classes), else the package's size."""
    oc = cfg.objectives
    if oc.pooled:
        return oc.pooled_classes if oc.pooled_kind == "classification" else len(oc.pooled_targets)
    return base.spec.num_targets if base is not None else 0


def heads_record(cfg: RunConfig, lead: int) -> dict[str, Any]:
    """A new model's heads record (checkpoints and exports carry it): one forecast head at
    ``lead``, the pooled head's kind and targets."""
    oc = cfg.objectives
    pooled = {"kind": oc.pooled_kind, "targets": list(oc.pooled_targets)} if oc.pooled else None
    return {"leads": {"head": lead}, "forecast_head": None, "pooled": pooled}
