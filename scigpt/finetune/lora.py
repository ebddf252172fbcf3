"""LoRA adapters for the ViT blocks, applied to a built model from outside.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv:2106.09685): a
frozen linear ``y = W x + b`` gets a trainable low-rank update::

    y = W x + b + (alpha / rank) · B (A · drop(x)),   A: (rank, in), B: (out, rank)

A starts Kaiming-uniform (as in the reference implementation, ``loralib``) and B at zero, so at
step 0 the adapter adds an exact zero and the model computes bitwise what the base model does.

Like ``scigpt.parallel.checkpointing`` the model file knows nothing about this: ``apply_lora``
swaps the targeted ``nn.Linear`` of every block for a ``LoRALinear`` that *re-registers the same
weight and bias Parameters* under the same attribute names, so the base keys
(``blocks.0.attn.qkv.weight``, ``.bias``) are unchanged and a pretrained state dict loads into
the adapted model as it is (``load_state_dict(sd, strict=False)`` — the only missing keys are
the adapters', ``…lora_A`` / ``…lora_B``; see ``load_base_state_dict``). ``merge_lora`` folds
``scale · B A`` into the weights and restores plain ``nn.Linear`` modules, so a fine-tuned model
exports with exactly the original keys and can be adapted again.

Tensor parallelism: **not supported** — ``apply_lora`` refuses blocks whose linears are already
``ColumnParallelLinear``/``RowParallelLinear`` with a ``ValueError``. Note the converse order is
*also* unsafe: ``apply_tensor_parallel`` on a LoRA model would slice ``weight``/``bias`` and
silently drop the adapters, so a run with ``parallel.tp > 1`` must not use LoRA (merge first).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scigpt.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear

__all__ = [
    "DEFAULT_TARGETS",
    "LoRALinear",
    "apply_lora",
    "base_state_dict",
    "load_base_state_dict",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
]

DEFAULT_TARGETS: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_ADAPTER_NAMES = ("lora_A", "lora_B")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update (module docstring).

    ``weight`` and ``bias`` are the wrapped linear's own Parameter objects (frozen here), so
    state-dict keys and any references to them held elsewhere stay valid. ``in_features`` and
    ``out_features`` mirror ``nn.Linear`` (the attention reads ``proj.in_features``).
    """

    def __init__(self, linear: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if type(linear) is not nn.Linear:
            raise TypeError(f"LoRALinear wraps a plain nn.Linear, got {type(linear).__name__}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if linear.weight.device.type == "meta":
            raise ValueError(
                "apply LoRA to a materialised model (after loading its weights), not on 'meta'"
            )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        self.weight = linear.weight
        self.weight.requires_grad_(False)
        self.bias = linear.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)
        w = linear.weight
        self.lora_A = nn.Parameter(
            torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # loralib's init of A
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return base + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``scale · B A`` (out, in), computed in float64 and cast to the weight's dtype."""
        d = (self.lora_B.detach().double() @ self.lora_A.detach().double()) * self.scaling
        return d.to(self.weight.dtype)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing ``(W + scale · B A) x + b``; requires_grad restored."""
        lin = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None,
            device=self.weight.device, dtype=self.weight.dtype,
        )  # fmt: skip
        lin.weight = nn.Parameter(self.weight.detach() + self.delta_weight())
        if self.bias is not None:
            lin.bias = nn.Parameter(self.bias.detach().clone())
        return lin

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, rank={self.rank}, alpha={self.alpha:g}"
        )


def _check_not_tensor_parallel(module: nn.Module, where: str) -> None:
    if isinstance(module, ColumnParallelLinear | RowParallelLinear):
        raise ValueError(
            f"{where} is a {type(module).__name__}: LoRA does not support tensor-parallel "
            "linears in this release. Fine-tune with LoRA at parallel.tp=1 (ZeRO/data "
            "parallelism are fine), or freeze the backbone instead of using LoRA."
        )


def apply_lora(
    model: nn.Module,
    *,
    rank: int = 8,
    alpha: float = 16,
    targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
    seed: int | None = None,
) -> list[str]:
    """Swap ``targets`` (paths inside a block) of every ``model.blocks[i]`` for ``LoRALinear``,
    in place. Freezes the wrapped weights and biases only (freeze the rest with
    ``scigpt.finetune.adapt.freeze_backbone``, which leaves adapters trainable).

    Returns the names of the new trainable adapter parameters (``blocks.0.attn.qkv.lora_A``…).
    Call it on a materialised model, after loading weights, before building the optimizer.
    ``seed``: draw the A matrices from this seed (a forked RNG) instead of the global RNG —
    every rank must draw the same adapters, so pass the run's seed under data parallelism.
    """
    if seed is None:
        return _apply_lora(model, rank, alpha, targets, dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _apply_lora(model, rank, alpha, targets, dropout)


def _apply_lora(model, rank, alpha, targets, dropout) -> list[str]:
    if not targets:
        raise ValueError("apply_lora needs at least one target linear")
    names: list[str] = []
    for i, blk in enumerate(model.blocks):
        for path in targets:
            owner_path, _, attr = path.rpartition(".")
            owner = blk.get_submodule(owner_path) if owner_path else blk
            lin = getattr(owner, attr, None)
            where = f"blocks.{i}.{path}"
            if lin is None:
                raise ValueError(f"{where}: no such module (LoRA targets: {DEFAULT_TARGETS})")
            _check_not_tensor_parallel(lin, where)
            if isinstance(lin, LoRALinear):
                raise ValueError(f"{where} already has a LoRA adapter: merge_lora first")
            if type(lin) is not nn.Linear:
                raise TypeError(f"{where} is a {type(lin).__name__}, not an nn.Linear")
            setattr(owner, attr, LoRALinear(lin, rank=rank, alpha=alpha, dropout=dropout))
            names += [f"{where}.{n}" for n in _ADAPTER_NAMES]
    return names


def _lora_modules(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every adapter parameter (A and B of every ``LoRALinear``)."""
    return [getattr(m, a) for _, m in _lora_modules(model) for a in _ADAPTER_NAMES]


def _is_adapter_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _ADAPTER_NAMES


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters: ``{'blocks.0.attn.qkv.lora_A': …}`` (small; for adapter-only saves)."""
    return {k: v for k, v in model.state_dict().items() if _is_adapter_key(k)}


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the adapters: exactly the keys of the un-adapted model (the base
    weights, *not* merged — use ``merge_lora`` for a fine-tuned export)."""
    return {k: v for k, v in model.state_dict().items() if not _is_adapter_key(k)}


def load_base_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a plain (pretrained) state dict into a LoRA model: every non-adapter key must be
    present and nothing unexpected; the adapters are left as they are."""
    res = model.load_state_dict(state, strict=False)
    missing = [k for k in res.missing_keys if not _is_adapter_key(k)]
    if missing or res.unexpected_keys:
        raise KeyError(f"state dict mismatch: missing {missing}, unexpected {res.unexpected_keys}")


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (``W += scale · B A``) and put back a plain
    ``nn.Linear``, in place; returns ``model``. The merged model's state dict has exactly the
    base keys, and its outputs equal the adapted model's up to fp32 rounding. The merged
    weights are trainable again (``requires_grad=True``)."""
    for name, mod in _lora_modules(model):
        owner_path, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        setattr(owner, attr, mod.merged())
    return model
