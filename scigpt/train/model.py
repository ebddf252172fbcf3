"""The run's model: its objectives and heads, the single-device model (on the meta device: its
sizes), and that model in the run's layout (pipeline stages, ZeRO-3 construction, tensor
parallelism, activation checkpointing).

The layout step is the seam where ``scigpt.parallel`` takes over (issue 21's
``parallel/parallelize.py``): ``layout_model`` is the one call the trainer makes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scigpt.config import RunConfig
from scigpt.models.build import build_model_zero3, materialise
from scigpt.models.objectives import Objectives
from scigpt.models.vit import ModelSpec, SciGPTModel
from scigpt.parallel.checkpointing import apply_activation_checkpointing
from scigpt.parallel.engine import deepspeed_config
from scigpt.parallel.pipeline import build_pipeline
from scigpt.parallel.tensor_parallel import apply_tensor_parallel
from scigpt.parallel.topology import ProcessGroups, Topology


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
        pooled_kind=oc.pooled_kind,
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


def layout_model(
    meta: SciGPTModel, cfg: RunConfig, spec: ModelSpec, *, topo: Topology,
    groups: ProcessGroups | None, device: torch.device, objectives: Objectives, n_params: int,
) -> nn.Module:  # fmt: skip
    """``meta`` (the single-device model on the meta device) built in the run's layout:
    activation checkpointing patched into its blocks (it survives materialisation, pipelining
    and tensor parallelism), then pipeline stages, or ZeRO-3 construction, or the whole model
    materialised (and split by tensor parallelism)."""
    ac = cfg.parallel.activation_checkpointing
    if ac != "none":
        apply_activation_checkpointing(meta, ac)
    if topo.pp > 1:
        return build_pipeline(
            meta, topo=topo, groups=groups, device=device, seed=cfg.seed, objectives=objectives,
            partition=cfg.parallel.pp_partition, dynamic_shape=len(cfg.data.sources) > 1,
        )  # fmt: skip
    if topo.zero_stage == 3:
        model = build_model_zero3(
            cfg.model, spec, deepspeed_config(cfg, topo, n_params), device=device, seed=cfg.seed
        )
        if ac != "none":
            apply_activation_checkpointing(model, ac)
        return model
    model = materialise(meta, device, seed=cfg.seed)
    if topo.tp > 1:
        apply_tensor_parallel(model, groups.tp_group)
    return model
