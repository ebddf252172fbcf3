"""Triton kernels, each beside a pure-PyTorch reference (DESIGN.md §4).

Installed as ``scigpt.kernels``. Kernels import no model code; they are swapped in from outside,
by ``scigpt.parallel.parallelize`` (DESIGN.md §4, §8): the attention kernels of
``ATTENTION_KERNELS`` are put into the model's attention registry (``scigpt.models.attention``)
by ``register_attention_kernels``, which takes the registry's ``register`` function as an
argument, and the fused patch embedding is routed in by ``fuse_patch_embed`` (duck-typed: it
finds the modules by their parameters). Code that must not load ``scigpt.parallel`` (the
package loader) calls these two directly.

Importing this package does not import Triton: ``"triton"`` attention is a thin wrapper that
loads ``scigpt.kernels.flash_attention`` on first call (and says how to install Triton when it is
missing), so the kernels are decorated under the ``TRITON_INTERPRET`` setting in force when they
are first used.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

_INSTALL_HINT = "pip install 'scigpt[gpu]'"


def triton_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``model.attention: triton``: the Triton flash-attention kernel (non-causal)."""
    try:
        from scigpt.kernels.flash_attention import flash_attention
    except ModuleNotFoundError as exc:
        if exc.name != "triton" and not (exc.name or "").startswith("triton."):
            raise
        raise RuntimeError(
            f"model.attention='triton' needs Triton, which is not installed: {_INSTALL_HINT} "
            "(or choose model.attention: sdpa)"
        ) from exc
    return flash_attention(q, k, v, key_padding_mask)


def fuse_patch_embed(model: torch.nn.Module) -> list[str]:
    """``model.patch_embed: triton``: route every grid patch embedding of ``model`` through the
    fused kernel, in place, parameters unchanged (``scigpt.kernels.patch_embed``'s
    ``use_fused_patch_embed``, loaded here on first use because it imports Triton); returns the
    swapped modules' names."""
    from scigpt.kernels.patch_embed import use_fused_patch_embed

    return use_fused_patch_embed(model)


def interpreter_compat() -> None:
    """Make Triton 3.6's interpreter work with NumPy >= 2.4 (idempotent; no-op when fixed).

    The interpreter turns scalar tensors (1-element arrays) into Python ints with ``int(array)``,
    which NumPy 2.4 refuses for ``ndim > 0``, so any loop with a runtime bound
    (``for start in range(lo, hi, BLOCK)``) fails under ``TRITON_INTERPRET=1``
    (triton-lang/triton#9171, fixed upstream after 3.6). Only interpreter behaviour changes;
    compiled kernels are unaffected.
    """
    from triton.runtime import interpreter

    if getattr(interpreter, "_scigpt_index_compat", False):
        return
    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch_lang_tensor
    interpreter._scigpt_index_compat = True


CONFIG_SUBSETS = ("all", "first")


def config_subset() -> str:
    """Which shipped autotune configs the kernels try: ``SCIGPT_KERNEL_CONFIGS`` = ``all``
    (default: every shipped config, the fastest wins) or ``first`` (one config per kernel, dtype
    and head dim: one compilation per case, for the GPU suite's numerics stage, where the
    every-config sweep is a separate, optional run). Read at each launch's pruning."""
    value = os.environ.get("SCIGPT_KERNEL_CONFIGS", "all").strip().lower() or "all"
    if value not in CONFIG_SUBSETS:
        raise ValueError(
            f"SCIGPT_KERNEL_CONFIGS={value!r} is not one of {CONFIG_SUBSETS}: unset it to "
            "autotune over every shipped config, or set 'first' for one config per kernel"
        )
    return value


# model.attention names → kernel: what ``register_attention_kernels`` puts into the registry.
ATTENTION_KERNELS: dict[str, Callable[..., torch.Tensor]] = {"triton": triton_attention}


def register_attention_kernels(
    register: Callable[[str, Callable[..., torch.Tensor]], None],
) -> None:
    """Put every attention kernel into an attention registry: ``register(name, fn)`` is the
    registry's function (``scigpt.models.attention.register_attention``), passed in so that
    kernels import no model code. Idempotent."""
    for name, fn in ATTENTION_KERNELS.items():
        register(name, fn)
