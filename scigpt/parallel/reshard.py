"""Consolidate a checkpoint of any layout into one full state dict, and load a full state dict
into any layout — together, resharding (a checkpoint saved at one layout resumes at another).

Layouts a checkpoint can have (all DeepSpeed's own formats):

* data parallel, ZeRO 0/1/2: full module weights in ``mp_rank_00_model_states.pt``;
* ZeRO-3: no module weights there; DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint``
  merges the fp32 partitions;
* tensor parallel: one ``mp_rank_XX_model_states.pt`` per TP rank, each with its slices;
* pipeline parallel: one ``layer_XX-model_YY-model_states.pt`` per pipeline layer and TP rank
  (keys renamed back to the model's by ``pipeline.layer_to_model_key``).

Tensor-parallel slices are merged the way ``tensor_parallel.py`` cut them: qkv rows by heads
within each of q, k and v, fc1 rows in contiguous chunks, proj and fc2 columns in contiguous
chunks; everything else is replicated and taken from TP rank 0. ``shard_tensor`` is the exact
inverse, so ``consolidate`` then ``load_full_state`` moves weights between layouts bit for bit.

Optimizer state moves only with an identical layout (DeepSpeed's own load). Across layouts the
trainer loads weights exactly, continues the step count, learning-rate schedule and data stream,
and restarts AdamW's moments with a warning.

Reads only a run directory's checkpoints, which are trusted (DESIGN.md §9).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from scigpt.parallel.pipeline import layer_to_model_key
from scigpt.parallel.tensor_parallel import qkv_shard_rows
from scigpt.parallel.topology import Topology

_COL = re.compile(r"blocks\.\d+\.(attn\.qkv|mlp\.fc1)\.(weight|bias)$")  # split by output rows
_ROW = re.compile(r"blocks\.\d+\.(attn\.proj|mlp\.fc2)\.weight$")  # split by input columns
_LAYER = re.compile(r"layer_(\d+)(?:-model_(\d+))?-model_states\.pt$")


def _load(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """``mmap``: the tensors stay on disk, mapped, until read (``iter_consolidated``)."""
    # Trusted: the run directory's own DeepSpeed files (DESIGN.md §9).
    return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)


def _model_files(ckpt: Path) -> list[Path]:
    """Model-state files, one per model-parallel rank (ZeRO-3 names them per data rank too:
    its data rank 0 files carry the client state)."""
    files = sorted(ckpt.glob("mp_rank_*_model_states.pt")) or sorted(
        ckpt.glob("zero_pp_rank_0_mp_rank_*_model_states.pt")
    )
    if not files:
        raise FileNotFoundError(
            f"{ckpt} holds no mp_rank_*_model_states.pt: not a SciGPT/DeepSpeed checkpoint"
        )
    return files


def client_state(ckpt: str | Path) -> dict[str, Any]:
    """The training state saved with the checkpoint (step, data stream, scheduler, config…)."""
    return _load(_model_files(Path(ckpt))[0])


def checkpoint_layout(ckpt: str | Path, state: dict[str, Any] | None = None) -> Topology:
    """The layout ``ckpt`` was saved at (recorded by the trainer; inferred from the files for
    checkpoints that predate the record)."""
    state = state if state is not None else client_state(ckpt)
    if "layout" in state:
        return Topology.of(**state["layout"])
    ckpt = Path(ckpt)
    layer_files = [m for f in ckpt.glob("layer_*-model_states.pt") if (m := _LAYER.search(f.name))]
    pp = 1
    tp = len(_model_files(ckpt))
    if layer_files:
        tp = len({m.group(2) for m in layer_files})
        pp = max(1, state.get("mp_world_size", tp) // tp)
    world = state.get("world_size", tp * pp)
    zero = state.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0)
    return Topology.of(dp=world // (tp * pp), tp=tp, pp=pp, zero_stage=zero)


def _tp_shards(
    ckpt: Path, *, mmap: bool = False
) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """Per tensor-parallel rank, the state dict under the one-process model's names."""
    files = _model_files(ckpt)
    load = lambda f: _load(f, mmap=mmap)  # noqa: E731
    first = load(files[0])
    layer_files = sorted(
        (int(m.group(1)), int(m.group(2) or 0), f)
        for f in ckpt.glob("layer_*-model_states.pt")
        if (m := _LAYER.search(f.name))
    )
    if not layer_files:
        return [first["module"]] + [load(f)["module"] for f in files[1:]], first

    depth = max(i for i, _, _ in layer_files) - 1
    shards: dict[int, dict[str, torch.Tensor]] = {}
    for index, tp_rank, f in layer_files:
        for key, value in load(f).items():
            shards.setdefault(tp_rank, {})[layer_to_model_key(index, key, depth)] = value
    return [shards[r] for r in sorted(shards)], first


def consolidate(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """Full single-device state dict (fp32) of the checkpoint folder ``ckpt`` (a ``step_N``),
    whatever its layout."""
    return dict(iter_consolidated(ckpt))


def iter_consolidated(ckpt: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The full fp32 tensors of the checkpoint folder ``ckpt``, one at a time, in the state
    dict's order, whatever its layout. The shard files are memory-mapped (``torch.load(mmap=
    True)``) and ZeRO-3 partitions read through DeepSpeed's lazy mode (``GatheredTensor``), so
    only the tensor being merged is held in memory, never the whole model."""
    ckpt = Path(ckpt)
    layered = any(ckpt.glob("layer_*-model_states.pt"))
    zero3 = not any(ckpt.glob("mp_rank_*_model_states.pt"))
    module = None if zero3 else _load(_model_files(ckpt)[0], mmap=True).get("module")
    if zero3 or (not layered and (module is None or any(v.numel() == 0 for v in module.values()))):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        if len(_model_files(ckpt)) > 1:
            raise ValueError(f"{ckpt}: ZeRO-3 with tensor parallelism is not supported")
        lazy = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), ckpt.name, lazy_mode=True)
        for name, t in lazy.items():
            yield name, t.contiguous().float()
        return
    shards, state = _tp_shards(ckpt, mmap=True)
    tp = len(shards)
    heads = state["config"]["model"]["heads"] if "config" in state else None
    for name, first_t in shards[0].items():
        if tp == 1 or not (_COL.search(name) or _ROW.search(name)):
            yield name, first_t.float().clone()
            continue
        parts = [sh[name].float() for sh in shards]
        if _ROW.search(name):
            yield name, torch.cat(parts, dim=1)
        elif name.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            if heads is None:
                raise ValueError(f"{ckpt}: the checkpoint has no config to tell the head count")
            dim = parts[0].shape[0] * tp // 3
            full = torch.empty((3 * dim, *parts[0].shape[1:]), dtype=torch.float32)
            for r, p in enumerate(parts):
                full[qkv_shard_rows(dim, heads, tp, r)] = p
            yield name, full
        else:
            yield name, torch.cat(parts, dim=0)


def shard_tensor(name: str, full: torch.Tensor, *, heads: int, tp: int, rank: int) -> torch.Tensor:
    """Tensor-parallel rank ``rank``'s slice of the full tensor ``name`` (the inverse of the
    merge in ``consolidate``); replicated tensors come back whole."""
    if tp == 1 or not (_COL.search(name) or _ROW.search(name)):
        return full
    if _ROW.search(name):
        return full.chunk(tp, dim=1)[rank]
    if name.endswith(("attn.qkv.weight", "attn.qkv.bias")):
        return full[qkv_shard_rows(full.shape[0] // 3, heads, tp, rank)]
    return full.chunk(tp, dim=0)[rank]


def _copy_into(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], what: str):
    missing = sorted(set(target) - set(source))
    if missing:
        raise KeyError(f"{what}: the checkpoint lacks {missing[:5]}: it is another model")
    with torch.no_grad():
        for key, dst in target.items():
            src = source[key]
            if src.shape != dst.shape:
                raise ValueError(
                    f"{what}: {key} is {tuple(src.shape)} in the checkpoint but "
                    f"{tuple(dst.shape)} in the model: the model config differs"
                )
            dst.copy_(src.to(dst.dtype))


def load_full_state(
    module: torch.nn.Module,
    full: dict[str, torch.Tensor],
    *,
    heads: int,
    tp: int = 1,
    tp_rank: int = 0,
) -> None:
    """Copy the full state dict ``full`` into this rank's part of the model, in place: a plain
    or tensor-parallel ``SciGPTModel``, a ZeRO-3-partitioned one, or a pipeline stage
    (``pipeline.build_pipeline``). Call it before the DeepSpeed engine is built, so the
    optimizer's master weights start from the loaded values."""
    local = lambda name: shard_tensor(name, full[name], heads=heads, tp=tp, rank=tp_rank)  # noqa: E731
    if hasattr(module, "forward_funcs"):  # a PipelineModule stage
        depth = len(module._layer_specs) - 2
        for i, layer in enumerate(module.forward_funcs):
            index = module._local_start + i
            sd = layer.state_dict(keep_vars=True)
            names = {k: layer_to_model_key(index, k, depth) for k in sd}
            missing = sorted(n for n in names.values() if n not in full)
            if missing:
                raise KeyError(f"pipeline layer {index}: the checkpoint lacks {missing[:5]}")
            _copy_into(sd, {k: local(n) for k, n in names.items()}, f"pipeline layer {index}")
        return
    params = dict(module.named_parameters())
    if any(hasattr(p, "ds_id") for p in params.values()):  # ZeRO-3 partitioned
        import deepspeed

        for name, p in params.items():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                _copy_into({name: p}, {name: local(name)}, "model")
        return
    sd = module.state_dict(keep_vars=True)
    missing = sorted(set(sd) - set(full))
    if missing:
        raise KeyError(f"model: the checkpoint lacks {missing[:5]}: it is another model")
    _copy_into(sd, {k: local(k) for k in sd}, "model")
