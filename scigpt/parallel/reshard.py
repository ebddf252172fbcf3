"""Consolidate a checkpoint saved under tensor parallelism and/or ZeRO into one full state dict.

Tensor-parallel shards (``mp_rank_XX_model_states.pt``, one per TP rank) are merged the way
``tensor_parallel.py`` cut them: qkv rows by heads within each of q, k and v, fc1 rows in
contiguous chunks, proj and fc2 columns in contiguous chunks; everything else is replicated and
taken from TP rank 0. ZeRO-3 checkpoints (no full module weights in the model files) go through
DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint``.

Reads only a run directory's checkpoints, which are trusted (DESIGN.md §9).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from scigpt.parallel.tensor_parallel import qkv_shard_rows

_COL = re.compile(r"blocks\.\d+\.(attn\.qkv|mlp\.fc1)\.(weight|bias)$")  # split by output rows
_ROW = re.compile(r"blocks\.\d+\.(attn\.proj|mlp\.fc2)\.weight$")  # split by input columns


def _model_files(ckpt: Path) -> list[Path]:
    files = sorted(ckpt.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{ckpt} holds no mp_rank_*_model_states.pt: not a checkpoint")
    return files


def consolidate(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """Full single-device state dict (fp32) of the checkpoint folder ``ckpt`` (a ``step_N``)."""
    ckpt = Path(ckpt)
    files = _model_files(ckpt)
    # Trusted: the run directory's own DeepSpeed files (DESIGN.md §9).
    states = [torch.load(f, map_location="cpu", weights_only=False) for f in files]
    module = states[0].get("module")
    zero3 = module is None or any(v.numel() == 0 for v in module.values())
    if zero3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        if len(files) > 1:
            raise ValueError(f"{ckpt}: ZeRO-3 with tensor parallelism is not supported")
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), ckpt.name)
    tp = len(states)
    shards = [s["module"] for s in states]
    heads = states[0]["config"]["model"]["heads"] if "config" in states[0] else None
    out: dict[str, torch.Tensor] = {}
    for name, first in shards[0].items():
        parts = [sh[name].float() for sh in shards]
        if tp == 1 or not (_COL.search(name) or _ROW.search(name)):
            out[name] = first.float().clone()
        elif _ROW.search(name):
            out[name] = torch.cat(parts, dim=1)
        elif name.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            if heads is None:
                raise ValueError(f"{ckpt}: the checkpoint has no config to tell the head count")
            dim = parts[0].shape[0] * tp // 3
            full = torch.empty((3 * dim, *parts[0].shape[1:]), dtype=torch.float32)
            for r, p in enumerate(parts):
                full[qkv_shard_rows(dim, heads, tp, r)] = p
            out[name] = full
        else:
            out[name] = torch.cat(parts, dim=0)
    return out
