"""Fine-tuning building blocks applied to a built (and loaded) ``SciGPTModel`` from outside.

* ``extend_variables`` — grow the variable registry by the fine-tuning data's new variables.
  Their aggregation gates start at 0 (scigpt.models.aggregation), so the model's outputs are
  exactly the pretrained ones until training opens them.
* ``freeze_backbone`` / ``unfreeze`` — choose what trains (``requires_grad``); LoRA adapters
  (scigpt.finetune.lora) stay trainable. ``scigpt.parallel.engine.build_optimizer`` skips
  frozen parameters, so build the optimizer *after* these calls.
* ``train_new_variable_rows`` — train only the new variables' rows of the per-variable tensors.
* ``add_pooled_head`` — a fresh per-sample regression/classification head (``model.pooled``).
* ``add_lead_head`` / ``use_lead_head`` / ``forecast_with`` — a second zero-initialised
  forecast head for a new lead time, so the residual forecast starts at persistence.
* ``modality_parameters`` — the parameters specific to one modality (a "new modality"
  fine-tune trains the series embedding and the series/pooled heads on series batches).

Parameter names of the model never change (heads are added under new names: ``pooled``,
``lead_heads.<key>``), so the package weights load before any of these calls.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from dataclasses import replace

import torch
from torch import nn

from scigpt.models.heads import ForecastHead, PooledHead
from scigpt.models.tokenizer import GRID, SERIES, WAVEFORM
from scigpt.models.vit import _PER_VARIABLE

__all__ = [
    "POOLED_KINDS",
    "add_lead_head",
    "add_pooled_head",
    "copy_lead_heads",
    "extend_variables",
    "forecast_with",
    "freeze_backbone",
    "modality_parameters",
    "train_new_variable_rows",
    "trainable_names",
    "unfreeze",
    "use_lead_head",
]

POOLED_KINDS = ("regression", "classification")


def _matches(name: str, prefixes: Iterable[str]) -> bool:
    """``name`` is one of ``prefixes`` or lies under one (``"head"`` matches ``head.weight``,
    not ``heads_x.weight``)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_adapter(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def freeze_backbone(
    model: nn.Module, *, train: Sequence[str] = ("head",), keep_adapters: bool = True
) -> list[str]:
    """Freeze every parameter except those named by (or under) the paths in ``train`` —
    e.g. ``("head",)``, ``("pooled",)``, ``("head", "lead_heads", "blocks.1")`` or full
    parameter names (``modality_parameters``). LoRA adapters stay trainable unless
    ``keep_adapters=False``. ``train=()`` freezes everything but the adapters.

    Returns the trainable parameter names (raises if there are none, or a path names nothing).
    """
    names = [n for n, _ in model.named_parameters()]
    for p in train:
        if not any(_matches(n, [p]) for n in names):
            raise ValueError(f"freeze_backbone: {p!r} names no parameter of the model")
    for n, p in model.named_parameters():
        p.requires_grad_(_matches(n, train) or (keep_adapters and _is_adapter(n)))
    out = trainable_names(model)
    if not out:
        raise ValueError("freeze_backbone left nothing trainable")
    return out


def unfreeze(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Make the parameters named by (or under) ``names`` trainable; returns all trainable."""
    names = list(names)
    for n, p in model.named_parameters():
        if _matches(n, names):
            p.requires_grad_(True)
    return trainable_names(model)


# --- variables ------------------------------------------------------------------------------


def extend_variables(
    model: nn.Module,
    package_vars: Sequence[str],
    data_vars: Sequence[str],
    *,
    seed: int | None = None,
) -> tuple[list[str], list[int]]:
    """The fine-tuning registry: the package's variables (ids unchanged) followed by the data's
    variables the package lacks, in data order, appended with ``model.add_variables``.

    Returns (registry names, ids of the new variables). A new variable absent from a batch is
    not in its ``var_ids`` and changes nothing; a present one starts with gate 0 and changes
    nothing either until training opens its gate. Lead heads (``add_lead_head``) grow too, with
    zero rows. Call it before ``freeze_backbone``/optimizer construction: ``add_variables``
    replaces the per-variable Parameters (new objects, ``requires_grad=True``). The new rows
    are drawn from the global RNG, or from ``seed`` (a forked RNG) when given — pass the run's
    seed so every data-parallel rank draws the same rows.
    """
    package_vars = list(package_vars)
    if len(set(package_vars)) != len(package_vars):
        raise ValueError("the package's variable registry has duplicate names")
    if len(package_vars) != model.spec.num_vars:
        raise ValueError(
            f"the package registry has {len(package_vars)} variables but the model has "
            f"{model.spec.num_vars} per-variable rows"
        )
    known = set(package_vars)
    new: list[str] = []
    for v in data_vars:
        if v not in known:
            known.add(v)
            new.append(v)
    if not new:
        return package_vars, []
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        ids = model.add_variables(len(new))
    for head in getattr(model, "lead_heads", {}).values():
        _grow_forecast_head(head, len(new))
    return package_vars + new, ids


@torch.no_grad()
def _grow_forecast_head(head: ForecastHead, n: int) -> None:
    for name in ("weight", "bias"):
        p = getattr(head, name)
        extra = torch.zeros((n, *p.shape[1:]), dtype=p.dtype, device=p.device)
        setattr(head, name, nn.Parameter(torch.cat([p, extra]), requires_grad=p.requires_grad))


def train_new_variable_rows(model: nn.Module, new_ids: Sequence[int]) -> list[str]:
    """Make the per-variable tensors trainable but only in the rows of ``new_ids``: a gradient
    hook zeroes the old rows' gradients, so with plain SGD/Adam (m = v = 0 ⇒ zero update) the
    pretrained variables' rows stay bitwise unchanged. Weight decay would still shrink them
    (``build_optimizer`` decays every matrix): each parameter is marked ``p.no_weight_decay =
    True`` for the optimizer builder to honour (or run with weight_decay 0).
    Tensors that are already trainable (kept whole by ``freeze_backbone``) are left alone.
    Returns the names of the parameters made trainable. Call after ``freeze_backbone``.
    """
    if not new_ids:
        return []
    names = [f"{mod}.{attr}" for mod, attr in _PER_VARIABLE]
    names += [
        f"lead_heads.{k}.{a}" for k in getattr(model, "lead_heads", {}) for a in ("weight", "bias")
    ]
    params = dict(model.named_parameters())
    keep = torch.zeros(model.spec.num_vars, dtype=torch.bool)
    keep[list(new_ids)] = True
    names = [n for n in names if n in params]  # heads the model has (series heads are optional)
    for n in names:
        p = params[n]
        if p.requires_grad:  # already trained whole (e.g. the head in finetune.train)
            continue
        p.requires_grad_(True)
        p.no_weight_decay = True
        mask = keep.to(p.device).reshape(-1, *([1] * (p.dim() - 1)))
        p.register_hook(lambda g, m=mask: g * m.to(g.dtype))
    return [n for n in names if getattr(params[n], "no_weight_decay", False)]


# --- heads ------------------------------------------------------------------------------------


def _like(model: nn.Module) -> dict:
    ref = model.norm.weight
    return {"device": ref.device, "dtype": ref.dtype}


def _init_seeded(module: nn.Module, seed: int | None) -> None:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        module.init_weights()


def add_pooled_head(
    model: nn.Module, outputs: int, kind: str = "regression", *, seed: int | None = 0
) -> PooledHead:
    """Replace ``model.pooled`` by a fresh ``PooledHead(embed_dim, outputs)`` (``outputs`` =
    regression targets, or classes for ``kind="classification"``), initialised from ``seed``.
    Train it with ``Objectives(pooled=w, pooled_kind=kind)``; its parameters are ``pooled.*``.
    ``model.spec.num_targets`` becomes ``outputs`` (exports record the new head size)."""
    if kind not in POOLED_KINDS:
        raise ValueError(f"pooled head kind {kind!r}: expected one of {POOLED_KINDS}")
    if outputs < 1 or (kind == "classification" and outputs < 2):
        raise ValueError(f"a {kind} head needs outputs >= {2 if kind == 'classification' else 1}")
    head = PooledHead(model.norm.normalized_shape[0], outputs).to(**_like(model))
    _init_seeded(head, seed)
    model.pooled = head
    model.spec = replace(model.spec, num_targets=outputs)  # series fields kept
    model.pooled_kind = kind
    return head


def add_lead_head(model: nn.Module, key: str, *, activate: bool = True) -> ForecastHead:
    """Register a zero-initialised ``ForecastHead`` as ``model.lead_heads[key]`` (e.g. key
    ``"6h"`` for a 6-hour forecast; feed batches whose ``lead_ns`` is that lead so the time
    embedding sees it). Zero init: with the residual connection its forecast starts exactly
    at persistence. ``activate`` routes ``model.forecast`` (hence ``forward`` and the forecast
    objective, also under DeepSpeed) through it (``use_lead_head``)."""
    if not key.isidentifier():
        raise ValueError(f"lead head key {key!r} must be a Python identifier (e.g. 'h6')")
    if not hasattr(model, "lead_heads"):
        model.lead_heads = nn.ModuleDict()
    if key in model.lead_heads:
        raise ValueError(f"lead head {key!r} exists already")
    head = ForecastHead(model.spec.num_vars, model.norm.normalized_shape[0], model.head.patch)
    head = head.to(**_like(model))
    _init_seeded(head, None)  # all zeros/ones: no randomness
    model.lead_heads[key] = head
    if activate:
        use_lead_head(model, key)
    return head


def copy_lead_heads(src: nn.Module, dst: nn.Module) -> None:
    """Give ``dst`` (the same architecture) ``src``'s lead heads, zero-initialised, and route
    its forecast through the same head — so ``src.state_dict()`` loads into ``dst``."""
    for key in getattr(src, "lead_heads", {}):
        if key not in getattr(dst, "lead_heads", {}):
            add_lead_head(dst, key, activate=False)
    use_lead_head(dst, getattr(src, "active_lead_head", None))


def forecast_with(
    model: nn.Module, head: ForecastHead, batch: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """``SciGPTModel.forecast`` with another forecast head."""
    fields = batch["fields"]
    h, w = fields.shape[-2:]
    delta = head(x, batch["var_ids"], h, w)
    return fields[:, :, -1] + delta if model.residual else delta


def use_lead_head(model: nn.Module, key: str | None) -> None:
    """Route ``model.forecast`` through ``model.lead_heads[key]`` (``None``: the pretrained
    ``model.head`` again). Patches the instance attribute only, no parameter renamed."""
    model.active_lead_head = key
    if key is None:
        model.__dict__.pop("forecast", None)
        return
    head = model.lead_heads[key]

    def forecast(self, batch, x):
        return forecast_with(self, head, batch, x)

    model.forecast = types.MethodType(forecast, model)


# --- modalities -------------------------------------------------------------------------------


def modality_parameters(model: nn.Module, modality: int) -> list[str]:
    """Names of the parameters that only (or mainly) ``modality`` uses — what to unfreeze to
    adapt the model to a modality it was not pretrained on. GRID: the tubelet embedding, the
    forecast head (and lead heads), the grid reconstruction decoder. WAVEFORM/SERIES: the 1-D
    patch embedding and the series reconstruction decoder. Both include the shared
    reconstruction norm, the modality embedding table and the pooled head (if any)."""
    if modality == GRID:
        own = ["tokenizer.embed", "head", "lead_heads", "reconstruct.grid", "reconstruct.grid_bias"]
    elif modality in (WAVEFORM, SERIES):
        own = ["tokenizer.series_embed", "reconstruct.series", "reconstruct.series_bias"]
    else:
        raise ValueError(f"unknown modality id {modality} (GRID={GRID}, WAVEFORM, SERIES)")
    own += ["reconstruct.norm", "tokenizer.modality", "pooled"]
    return [n for n, _ in model.named_parameters() if _matches(n, own)]
