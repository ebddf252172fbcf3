"""Pipeline parallelism: the SciGPT model as a DeepSpeed ``PipelineModule``.

The model is a flat sequence (DESIGN.md §1), so its pipeline is its own layer list::

    layer 0            EmbedLayer   tokenizer (+ mask token)           (B,V,T,H,W) → (B,N,D)
    layers 1 … depth   PipeBlock    blocks[i]                            (B,N,D) → (B,N,D)
    layer depth + 1    HeadLayer    final norm + forecast head (+ the other heads, unused)

cut into ``pp`` contiguous stages by DeepSpeed (``parallel.pp_partition``: balanced parameter
counts, balanced block counts, or equal layer counts). Between stages travels one tuple
``(tokens, var_ids, grid_hw)``: the float tokens (whose gradient flows back) and two integer
tensors the head needs (DeepSpeed sends no gradient for those). The batch dict of DESIGN.md §7 is
flattened to the tensor tuples the engine needs by ``to_pipe``: the first stage reads the
inputs, the last stage the labels (target, mask, last input frame, latitudes, variable ids) and
computes the same ``forecast_loss`` as the one-process model.

Every rank materialises only its own stage's layers, straight from the meta-device model, with
exactly the values a one-process build gives them (``build.materialise_parts``: one seed per init
step). Tensor parallelism shards a stage's blocks as they are built, with the run's explicit
process groups (ranks laid out data ⊃ pipe ⊃ tensor, the same order ``ProcessGroups`` uses).

Checkpoints are DeepSpeed's pipeline format (``layer_XX-model_YY-model_states.pt``: one file per
layer and tensor-parallel rank); ``layer_to_model_key`` maps their keys back to the one-process
model's names, which is how ``reshard.consolidate`` merges them.

The pipeline trains the forecast objective; the masked and pooled objectives need the whole
model on one rank (``RunConfig`` refuses them with pp > 1).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from scigpt.models.build import materialise_parts
from scigpt.models.objectives import Objectives, forecast_loss
from scigpt.models.vit import SciGPTModel
from scigpt.parallel.tensor_parallel import tensor_parallel_block

PARTITIONS = {"parameters": "parameters", "blocks": "type:PipeBlock", "uniform": "uniform"}


def _materialise_layer(meta: SciGPTModel, index: int, device, seed: int) -> None:
    materialise_parts(meta, layer_parts(len(meta.blocks), index), device, seed)


class EmbedLayer(nn.Module):
    """Stage-0 layer: the multimodal tokenizer. Holds ``tokenizer`` and ``mask_token`` under the
    model's own names (the mask token is unused by the forecast objective but kept, so the
    consolidated state dict is the whole model's)."""

    def __init__(self, meta: SciGPTModel, index: int, device, seed: int, tp_group=None):
        super().__init__()
        _materialise_layer(meta, index, device, seed)
        self.tokenizer = meta.tokenizer
        self.mask_token = meta.mask_token

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        fields, var_ids, lat, lon, times, lead_ns = inputs
        batch = {
            "fields": fields, "var_ids": var_ids, "lat": lat, "lon": lon, "times": times,
            "lead_ns": lead_ns,
        }  # fmt: skip
        x = self.tokenizer(batch)
        hw = torch.tensor(fields.shape[-2:], dtype=torch.long, device=fields.device)
        return x, var_ids, hw


class PipeBlock(nn.Module):
    """One transformer block (tensor-parallel inside the stage when tp > 1); ``block.*`` in
    checkpoints is ``blocks.{i}.*`` of the model."""

    def __init__(self, meta: SciGPTModel, index: int, device, seed: int, tp_group=None):
        super().__init__()
        _materialise_layer(meta, index, device, seed)
        self.block = meta.blocks[index - 1]
        if tp_group is not None:
            tensor_parallel_block(self.block, tp_group)

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x, var_ids, hw = inputs
        return self.block(x), var_ids, hw


class HeadLayer(nn.Module):
    """Last layer: final norm and forecast head → the forecast increment (B, V, H, W). The
    reconstruction and pooled heads ride along unused, so checkpoints hold the whole model."""

    def __init__(self, meta: SciGPTModel, index: int, device, seed: int, tp_group=None):
        super().__init__()
        _materialise_layer(meta, index, device, seed)
        self.norm, self.head, self.reconstruct = meta.norm, meta.head, meta.reconstruct
        self.pooled = meta.pooled

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, var_ids, hw = inputs
        h, w = (int(v) for v in hw.tolist())
        return self.head(self.norm(x), var_ids, h, w)


def layer_parts(depth: int, index: int) -> list[str]:
    """The model paths layer ``index`` of the pipeline holds (for ``materialise_parts``)."""
    if index == 0:
        return ["tokenizer", "mask_token"]
    if index <= depth:
        return [f"blocks.{index - 1}"]
    return ["norm", "head", "reconstruct", "pooled"]


def layer_to_model_key(index: int, key: str, depth: int) -> str:
    """The one-process model's name of ``key`` in pipeline layer ``index``'s state dict."""
    if 1 <= index <= depth:
        if not key.startswith("block."):
            raise ValueError(f"pipeline layer {index} holds {key!r}: expected block.*")
        return f"blocks.{index - 1}." + key[len("block.") :]
    return key


def model_key_to_layer(key: str, depth: int) -> tuple[int, str]:
    """Inverse of ``layer_to_model_key``: (layer index, key within that layer)."""
    m = re.match(r"blocks\.(\d+)\.(.*)$", key)
    if m:
        return int(m.group(1)) + 1, "block." + m.group(2)
    if key.startswith(("tokenizer.", "mask_token")):
        return 0, key
    return depth + 1, key


def _layer_params(meta: SciGPTModel, index: int) -> int:
    """Trainable parameters of layer ``index`` (counted on the meta model: nothing allocated)."""
    total = 0
    for path in layer_parts(len(meta.blocks), index):
        owner_path, _, attr = path.rpartition(".")
        owner = meta.get_submodule(owner_path) if owner_path else meta
        if attr in owner._parameters:
            total += owner._parameters[attr].numel()
        elif getattr(owner, attr, None) is not None:
            total += sum(p.numel() for p in meta.get_submodule(path).parameters())
    return total


def pipeline_topology(dp: int, pp: int, tp: int):
    """DeepSpeed's process topology with our rank order: ``rank = (d · pp + p) · tp + t``."""
    from deepspeed.runtime.pipe.topology import ProcessTopology

    return ProcessTopology(axes=["data", "pipe", "model"], dims=[dp, pp, tp])


def _pipeline_class():
    from deepspeed.pipe import PipelineModule

    class SciGPTPipeline(PipelineModule):
        def __init__(self, *args, layer_counts: list[int], **kwargs):
            self._meta_counts = layer_counts
            super().__init__(*args, **kwargs)

        def _count_layer_params(self) -> list[int]:
            # Counted on the meta model: DeepSpeed would build (allocate) every layer to count.
            return list(self._meta_counts)

    return SciGPTPipeline


def build_pipeline(
    meta: SciGPTModel,
    *,
    topo,
    groups,
    device: torch.device,
    seed: int,
    objectives: Objectives,
    partition: str = "parameters",
    dynamic_shape: bool = False,
):
    """The pipeline module of the meta-built model ``meta``, holding this rank's stage only.

    ``topo``: the run's Topology; ``groups``: its ProcessGroups (tensor parallelism inside
    stages). ``objectives``: the forecast loss settings (area and variable weights).
    ``dynamic_shape``: micro-batches differ in shape (several sources).
    """
    from deepspeed.pipe import LayerSpec

    if partition not in PARTITIONS:
        raise ValueError(f"parallel.pp_partition={partition!r}: choose one of {sorted(PARTITIONS)}")
    depth = len(meta.blocks)
    tp_group = groups.tp_group if topo.tp > 1 else None
    specs = [
        LayerSpec(EmbedLayer if i == 0 else PipeBlock if i <= depth else HeadLayer,
                  meta, i, device, seed, tp_group)
        for i in range(depth + 2)
    ]  # fmt: skip
    residual = meta.residual

    def forecast_pipe_loss(delta: torch.Tensor, labels: tuple[torch.Tensor, ...]) -> torch.Tensor:
        target, mask, last, lat, var_ids = labels
        pred = last.to(delta.dtype) + delta if residual else delta
        batch = {"target": target, "mask": mask, "lat": lat, "var_ids": var_ids}
        return forecast_loss(pred, batch, objectives)

    return _pipeline_class()(
        layers=specs,
        topology=pipeline_topology(topo.dp, topo.pp, topo.tp),
        loss_fn=forecast_pipe_loss,
        partition_method=PARTITIONS[partition],
        dynamic_shape=dynamic_shape,
        layer_counts=[_layer_params(meta, i) for i in range(depth + 2)],
    )


# ---- batches ------------------------------------------------------------------------------------


def to_pipe(batch: dict[str, Any]) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """The grid batch (DESIGN.md §7) as DeepSpeed's (inputs, labels) tensor tuples."""
    fields = batch["fields"]
    lead = batch.get("lead_ns", 0)
    lead_t = lead if isinstance(lead, torch.Tensor) else torch.tensor(int(lead))
    inputs = (fields, batch["var_ids"], batch["lat"], batch["lon"], batch["times"], lead_t)
    mask = batch.get("mask")
    if mask is None:
        mask = torch.ones_like(batch["target"])
    labels = (batch["target"], mask, fields[:, :, -1], batch["lat"], batch["var_ids"])
    return inputs, labels


class PipelineForecaster(nn.Module):
    """The pipeline engine behind the ``model(batch) → forecast`` interface evaluation uses.

    Every rank calls it with the same batch; the last stage computes the forecast and broadcasts
    it over the pipeline group, so every rank returns the whole (B, V, H, W) forecast.
    """

    def __init__(self, engine, residual: bool):
        super().__init__()
        self.engine, self.residual = engine, residual
        self.stage = engine.module  # parameters() → this stage's dtype

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        eng = self.engine
        inputs, labels = to_pipe(batch)
        eng.reset_activation_shape()  # evaluation batches may differ from training's
        # DeepSpeed 0.19.8's eval_batch adds the last-stage outputs to the training loss
        # accumulator, which it resets only in train_batch: clear it first.
        eng.total_loss = None
        _, delta = eng.eval_batch(
            iter([(inputs, labels)]), return_logits=True, compute_loss=False,
            num_micro_batches=1,
        )  # fmt: skip
        eng.reset_activation_shape()
        fields = batch["fields"]
        b, v, _, h, w = fields.shape
        out = torch.empty((b, v, h, w), dtype=torch.float32, device=fields.device)
        if eng.is_last_stage():
            last = fields[:, :, -1].float()
            out.copy_(last + delta.float() if self.residual else delta.float())
        grid = eng.grid
        dist.broadcast(out, src=grid.stage_to_global(eng.num_stages - 1),
                       group=grid.get_pipe_parallel_group())  # fmt: skip
        return out
