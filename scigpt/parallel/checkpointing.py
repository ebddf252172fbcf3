"""Activation checkpointing applied to a built model from outside (DESIGN.md §1).

Like torchtitan's ``apply_ac``, the model file knows nothing about recomputation: this module
patches forwards of a built ``SciGPTModel`` (before or after it is materialised, after tensor
parallelism). It patches the *instances*' forward attributes instead of wrapping blocks in new
modules, so parameter and state-dict names stay ``blocks.{i}.attn.qkv.weight``: checkpoints,
optimiser parameter groups and tensor-parallel plans are the same with and without it.

Modes:

* ``"full"`` — every ``every``-th block keeps only its input; its whole forward runs again in
  backward. Saves the most memory; costs one extra forward of the block (about a third more
  compute per step for those blocks).
* ``"selective"`` — recompute only what is cheap to recompute and expensive to store, in the
  spirit of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models" (arXiv:2205.05198, §4.2 selective activation recomputation):

  - the attention core (the injected ``attn_fn``: QK^T, softmax, dropout, ×V). Where the
    attention function stores its probabilities (``heads × N²`` per sample: the "math" reference,
    and what the paper eliminates), that is most of a block's activations, and recomputing them
    costs ``4·N²·D`` FLOPs, small beside the block's ``24·N·D²`` linear FLOPs while N < 6·D.
    A flash/efficient SDPA kernel stores only its output (which ``proj`` keeps anyway) and the
    log-sum-exp, so there this part saves almost nothing and costs an attention forward.
  - the MLP activation (GELU, and dropout): its output is ``4·D`` wide per token and is kept only
    because ``fc2`` needs it for its weight gradient. The MLP runs under a torch selective
    checkpoint policy that *saves* the outputs of matmuls (``fc1``, ``fc2``) and recomputes the
    rest, so backward reruns GELU and dropout on the stored ``fc1`` output and no matmul runs
    twice. Per token and block this stores ``fc1``'s output (4·D) plus ``fc2``'s (D) instead of
    ``fc1``'s and GELU's (8·D): 3·D less, for an elementwise pass. (Checkpointing fc1 → GELU as
    one plain region would free 4·D but rerun ``fc1``, a third of the block's linear FLOPs.)

  ``qkv``, ``proj``, ``fc1`` and ``fc2`` matmuls are never recomputed. When tensor parallelism
  puts collectives inside the MLP, they must join ``_MLP_SAVE_OPS`` so backward does not
  communicate again.

  Measured (fp32, CPU, D=256, 4 heads, N=1024 tokens), activations held for backward per token
  and block, in units of D floats: sdpa 15.8 (none) → 12.8 (selective) → 0.8 (full);
  math attention 31.8 → 12.8 → 0.8.
* ``"none"`` — the model is returned unchanged.

Recomputation is exact: non-reentrant ``torch.utils.checkpoint`` restores the RNG state (dropout,
masks) and autocast state, so losses and gradients are bitwise those without checkpointing
(tests/test_activation_checkpointing.py).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from scigpt.models.vit import SciGPTModel

Mode = Literal["none", "selective", "full"]
MODES: tuple[str, ...] = ("none", "selective", "full")

# Ops whose outputs the selective MLP region keeps rather than recomputes (ops as seen below
# autograd: nn.Linear on a contiguous 3-D input is ``addmm`` on a 2-D view, otherwise ``mm``).
_MLP_SAVE_OPS = frozenset({torch.ops.aten.mm.default, torch.ops.aten.addmm.default})


def _recompute(fn, *args, context_fn=None):
    """Run ``fn(*args)``, storing only its inputs for backward; backward reruns it.

    Under ``no_grad``/``inference_mode`` (evaluation) nothing is saved anyway, so call ``fn``
    directly and skip checkpoint's RNG-state bookkeeping.
    """
    if not torch.is_grad_enabled():
        return fn(*args)
    if context_fn is None:
        return checkpoint(fn, *args, use_reentrant=False)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=context_fn)


def _save_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _MLP_SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_MLP_CONTEXT = functools.partial(create_selective_checkpoint_contexts, _save_matmuls)


def _without_autocast_cache(fn, *args):
    """Run ``fn`` with autocast's weight-cast cache off. Selective checkpointing replays ops by
    invocation order; with the cache, a forward that reuses cast weights (the model run twice in
    one autocast region: forecast and masked objectives) skips casts that the recomputation, run
    after the region has exited, performs — and torch refuses the mismatch."""
    before = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        return fn(*args)
    finally:
        torch.set_autocast_cache_enabled(before)


def _patched(fn) -> bool:
    """Whether ``fn`` is a forward or attention function this module installed."""
    return isinstance(fn, functools.partial) and fn.func is _recompute


def _block_indices(model: SciGPTModel, every: int) -> list[int]:
    return [i for i in range(len(model.blocks)) if i % every == 0]


def checkpointed_blocks(model: SciGPTModel) -> dict[int, str]:
    """Block index → mode ("full" or "selective") for every block this module has patched."""
    found = {}
    for i, blk in enumerate(model.blocks):
        if _patched(blk.__dict__.get("forward")):
            found[i] = "full"
        elif _patched(blk.attn.__dict__.get("attn_fn")) or _patched(
            blk.mlp.__dict__.get("forward")
        ):
            found[i] = "selective"
    return found


def apply_activation_checkpointing(
    model: SciGPTModel, mode: Mode, *, every: int = 1
) -> SciGPTModel:
    """Make backward recompute activations of blocks 0, ``every``, 2·``every``, … (in place).

    ``mode`` is ``"none"`` (no change), ``"full"`` (whole blocks) or ``"selective"`` (attention
    core and MLP activation; see the module docstring). Parameter and state-dict names do not
    change. Applying it to a model that is already checkpointed raises ``RuntimeError``.
    """
    if mode not in MODES:
        raise ValueError(f"activation checkpointing mode={mode!r} is not one of {list(MODES)}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(
            f"activation checkpointing every={every!r} must be an integer >= 1 "
            "(1: every block, 2: every other block, ...)"
        )
    if mode == "none":
        return model
    already = checkpointed_blocks(model)
    if already:
        raise RuntimeError(
            f"activation checkpointing is already applied to blocks {sorted(already)} "
            f"({sorted(set(already.values()))}): apply it once, to a freshly built model"
        )
    for i in _block_indices(model, every):
        blk = model.blocks[i]
        if mode == "full":
            # Instance attribute: nn.Module.__call__ (and its hooks) stays outside the
            # checkpoint; the submodules' hooks run again during recomputation.
            blk.forward = functools.partial(_recompute, blk.forward)
        else:
            blk.attn.attn_fn = functools.partial(_recompute, blk.attn.attn_fn)
            mlp = functools.partial(_without_autocast_cache, blk.mlp.forward)
            blk.mlp.forward = functools.partial(_recompute, mlp, context_fn=_MLP_CONTEXT)
    return model


__all__ = ["MODES", "Mode", "apply_activation_checkpointing", "checkpointed_blocks"]
