"""Attention as an injected function (DESIGN.md §8).

Model code calls ``get_attention(name)`` and never imports a kernel library. Kernels are put into
this plain registry from the outside (``scigpt.parallel.parallelize.register_kernels`` registers
``scigpt.kernels``' ``"triton"``), so the model stays single-device, dependency-free code.

An attention function takes ``q, k, v`` shaped ``(B, heads, L, head_dim)`` and an optional
boolean key-padding mask ``(B, L)`` (True = keep) and returns ``(B, heads, L, head_dim)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor
]

_REGISTRY: dict[str, AttentionFn] = {}


def register_attention(name: str, fn: AttentionFn) -> None:
    """Make ``fn`` selectable as ``model.attention: name`` in a config."""
    _REGISTRY[name] = fn


def available_attention() -> list[str]:
    """The names registered so far (kernels add theirs when ``register_kernels`` runs)."""
    return sorted(_REGISTRY)


def get_attention(name: str) -> AttentionFn:
    if name not in _REGISTRY:
        raise ValueError(
            f"model.attention={name!r} is not registered: choose one of {sorted(_REGISTRY)} "
            "(kernels are registered by scigpt.parallel.parallelize.register_kernels(): call it "
            "before building a model that uses one)"
        )
    return _REGISTRY[name]


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """PyTorch scaled-dot-product attention (flash/cuDNN/math chosen by PyTorch)."""
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, L), broadcast over heads and queries
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain softmax(QK^T/sqrt(d))V in fp32: the reference every kernel is checked against."""
    scale = q.shape[-1] ** -0.5
    s = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale  # (B, h, L, L)
    if key_padding_mask is not None:
        s = s.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", p, v.float()).to(q.dtype)


register_attention("sdpa", sdpa_attention)
register_attention("math", math_attention)
