"""The fine-tune recipe of ``scigpt train`` with ``finetune.package``: the package's model
replaces the run's model section; its variables come first in the registry, the data's new ones
after; its heads are fitted to the run's objectives and lead; its weights are loaded into the
run's layout; then the backbone is frozen or gets LoRA adapters as ``finetune.mode`` says.

Order inside the trainer: ``load_package`` (before the config is checked) → ``extend_registry``
(after the data's registry is built) → ``finetune_heads`` (before the model is built) →
``finetune_model`` (after the layout's model is built, before the engine).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from scigpt.config import ModelConfig, RunConfig
from scigpt.config_loader import LoadedConfig
from scigpt.data_pipeline.variables import MODALITIES
from scigpt.export.loader import PretrainedModel, load_pretrained
from scigpt.finetune.adapt import (
    add_lead_head,
    add_pooled_head,
    copy_lead_heads,
    extend_variables,
    freeze_backbone,
    modality_parameters,
    train_new_variable_rows,
    use_lead_head,
)
from scigpt.finetune.lora import apply_lora
from scigpt.parallel import reshard


def load_package(
    loaded: LoadedConfig, trusted_keys: Sequence[Any] | None
) -> tuple[LoadedConfig, PretrainedModel]:
    """The package of ``finetune.package`` (signed by one of ``trusted_keys`` when given) and
    the run's config with the package's model section."""
    cfg = loaded.config
    package = load_pretrained(loaded.resolve_path(cfg.finetune.package), trusted_keys=trusted_keys)
    model_cfg = ModelConfig.model_validate_json(json.dumps(package.config["model"]))
    cfg = cfg.model_copy(update={"model": model_cfg})
    loaded = dataclasses.replace(loaded, config=cfg)
    if package.config["spec"]["history"] != cfg.data.history:
        raise ValueError(
            f"finetune.package takes {package.config['spec']['history']} input frames; "
            f"data.history={cfg.data.history}: set data.history to match"
        )
    return loaded, package


def extend_registry(
    package: PretrainedModel, names: list[str], dicts: list[dict[str, Any]],
    stats: dict[str, list[float]], *, seed: int,
) -> tuple[list[str], list[dict[str, Any]], list[int]]:  # fmt: skip
    """The fine-tuning registry from the data's (``names``, entries ``dicts``): the package's
    variables in its order, then the data's new ones (added to ``package.model``, rows seeded
    by ``seed``). Returns (names, entries, ids of the new variables); package-only variables
    get the package's statistics in ``stats``."""
    data_dicts = dict(zip(names, dicts, strict=True))
    names, new_ids = extend_variables(package.model, package.var_names, names, seed=seed)
    pkg_vars = {v["name"]: v for v in package.variables}
    # the fields a registry entry has (a data variable's), for the package-only ones
    keep = set(next(iter(data_dicts.values()))) if data_dicts else set()
    dicts = [
        data_dicts.get(n) or {k: v for k, v in pkg_vars[n].items() if k in keep or not keep}
        for n in names
    ]
    for n in package.var_names:
        stats.setdefault(n, [pkg_vars[n]["mean"], pkg_vars[n]["std"]])
    return names, dicts, new_ids


def train_paths(model: nn.Module, train: list[str], cfg: RunConfig) -> list[str]:
    """``finetune.train`` expanded: ``modality:<grid|waveform|series>`` → that modality's own
    parameters; ``head`` → also the active lead-time head; a run's pooled objective trains the
    pooled head."""
    out: list[str] = []
    for path in train:
        if path.startswith("modality:"):
            name = path.split(":", 1)[1]
            if name not in MODALITIES:
                raise ValueError(
                    f"finetune.train entry {path!r}: modality {name!r} is not one of "
                    f"{sorted(MODALITIES)}"
                )
            out += modality_parameters(model, MODALITIES.index(name))
        else:
            out.append(path)
    active = getattr(model, "active_lead_head", None)
    if "head" in out and active:  # "head": the forecast head in use
        out[out.index("head")] = f"lead_heads.{active}"
    if cfg.objectives.pooled and "pooled" not in out:
        out.append("pooled")
    return out


def finetune_heads(base, cfg: RunConfig, num_targets: int, pkg_config: dict) -> dict[str, Any]:
    """Fit the package model's heads to the run: a fresh pooled head when the run trains one of
    another size, kind or targets (or the package has none); for ``data.lead`` the package's
    forecast head of that lead, or a new zero-initialised one (``finetune.lead_head``), or else
    the active head, trained for the new lead. Returns the run's heads record (exports carry
    it: ``leads`` {head key: lead steps}, ``forecast_head``, ``pooled``)."""
    spec = pkg_config["spec"]
    oc = cfg.objectives
    lead = 0 if cfg.data.task == "operator" else cfg.data.lead
    pooled = spec.get("pooled")
    if oc.pooled:
        want = {"kind": oc.pooled_kind, "targets": list(oc.pooled_targets)}
        if base.pooled is None or base.spec.num_targets != num_targets or pooled != want:
            add_pooled_head(base, num_targets, oc.pooled_kind, seed=cfg.seed)
        pooled = want
    leads = dict(spec.get("leads") or {"head": int(pkg_config["data"]["lead"])})
    active = spec.get("forecast_head")
    same = [k for k, v in leads.items() if v == lead]
    if same:
        active = None if same[0] == "head" else same[0]
    elif cfg.finetune.lead_head:
        active = f"lead{lead}"
        add_lead_head(base, active)
        leads[active] = lead
    else:
        leads[active or "head"] = lead
    use_lead_head(base, active)
    if len(leads) > 1 and (cfg.parallel.pp > 1 or cfg.parallel.zero_stage == 3):
        raise ValueError(
            f"the package has extra forecast heads {sorted(set(leads) - {'head'})}: fine-tune "
            "it with parallel.pp=1 and zero_stage <= 2"
        )
    return {"leads": leads, "forecast_head": active, "pooled": pooled}


def finetune_model(
    model: nn.Module, base: nn.Module, cfg: RunConfig, new_ids: list[int], *, tp: int,
    tp_rank: int, device: torch.device,
) -> nn.Module:  # fmt: skip
    """Start the run's model from the package model ``base`` (already extended with the data's
    new variables): load its weights into whatever layout ``model`` is, then freeze or add
    LoRA adapters as ``finetune.mode`` says. Returns the model to train."""
    ft = cfg.finetune
    if ft.mode == "lora":  # one whole model per rank (config checks tp = pp = 1, ZeRO <= 2)
        model = base.to(device)
        apply_lora(model, rank=ft.lora_rank, alpha=ft.lora_alpha, seed=cfg.seed)
    else:
        copy_lead_heads(base, model)  # the package's extra forecast heads, before the load
        reshard.load_full_state(
            model, base.state_dict(), heads=cfg.model.heads, tp=tp, tp_rank=tp_rank
        )
    if ft.mode in ("frozen", "lora"):
        freeze_backbone(model, train=tuple(train_paths(model, ft.train, cfg)))
        if new_ids:
            train_new_variable_rows(model, new_ids)
    return model
