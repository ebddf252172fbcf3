"""Writing model packages: ``scigpt export`` turns a run's DeepSpeed checkpoint into a
self-contained package (``scigpt.export.loader`` reads it).

A package is a directory::

    model.safetensors   consolidated weights (fp32 or bf16), from any training layout
    config.json         model config + ModelSpec + the data settings needed to run + run config
    variables.json      the variable registry with units and normalisation mean/std
    provenance.json     git SHA, data manifest hash, step, samples, FLOPs, device-hours, layout
    MODEL_CARD.md       data sources and licences, training summary, evaluation, intended use
    format.json         {"format": "scigpt-model", "version": 1}
    checksums.sha256    sha256 of every other file (written last)
    signature.json      optional: an Ed25519 signature of checksums.sha256 (``export --sign``)

Checksums detect accidents (a truncated copy, a flipped bit), not tampering: whoever edits a
file can rewrite its checksum. ``config.json`` and ``variables.json`` are checked field by field
on load (``scigpt.export.verify``), so an edited package fails with a ``PackageError`` naming the
file and field; against tampering, sign packages and load them with ``trusted_keys``
(``scigpt.export.signing``).

Only this module reads DeepSpeed's pickled checkpoints (through ``scigpt.parallel.reshard``),
and only from a run directory, which is trusted (DESIGN.md §9). The checkpoint folder is found
through the trainer's own ``CheckpointManager`` pointers, LoRA adapters are folded in with
``scigpt.finetune.lora``'s merge, and the run's files are found through ``RunDir``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from scigpt import __version__
from scigpt.atomic import atomic_dir, sha256_file
from scigpt.config_series import BinsConfig, series_spec_fields
from scigpt.diagnostics.htsr import analyze_state, summarize
from scigpt.export import signing
from scigpt.export.card import evaluation_markdown, fill_card, render_card
from scigpt.export.verify import (
    CARD,
    CHECKSUMS,
    CONFIG,
    FORMAT,
    FORMAT_NAME,
    FORMAT_VERSION,
    PROVENANCE,
    REQUIRED,
    VARIABLES,
    WEIGHTS,
)
from scigpt.finetune.lora import LoRALinear
from scigpt.parallel.reshard import consolidate, iter_consolidated
from scigpt.rundir import RunDir
from scigpt.train.checkpoint import CheckpointManager, CheckpointState, tag_of

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---- helpers --------------------------------------------------------------------------------
def _json_dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"


def _per_variable_rmse(run: RunDir) -> list[dict[str, str]]:
    path = run.test_table
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def resolve_checkpoint(run_dir: Path, *, step: int | None = None, best: bool = False) -> Path:
    """The ``checkpoints/step_N`` folder to export: ``step``, the ``best`` pointer or
    ``latest`` (read by the trainer's ``CheckpointManager``)."""
    ckpts = RunDir(run_dir).checkpoints
    if not ckpts.is_dir():
        raise FileNotFoundError(f"{run_dir} has no checkpoints/ folder: not a SciGPT run directory")
    if step is not None and best:
        raise ValueError("give --step or --best, not both")
    manager = CheckpointManager(ckpts, rank=0, world_size=1, keep_last=0)
    available = manager.tags()
    if step is not None:
        tag = tag_of(step)
        if tag not in available:
            raise FileNotFoundError(
                f"{ckpts} has no checkpoint for step {step}; available: {available or 'none'}"
            )
        return ckpts / tag
    tag = manager.best() if best else manager.latest()
    if tag is None:
        if best:
            raise FileNotFoundError(
                f"{run_dir} has no best checkpoint (no checkpoints/best pointer: the run had no "
                f"validation split or eval.every=0); export --step N (available: "
                f"{available or 'none'}) or the latest (no flag)"
            )
        raise FileNotFoundError(f"{ckpts} has no latest checkpoint to export")
    return ckpts / tag


def merge_lora_state(
    full: dict[str, torch.Tensor], finetune: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Fold the LoRA adapters of a ``finetune.mode: lora`` checkpoint into their base weights
    with ``LoRALinear.merged`` (W + alpha/rank · B·A, the product in float64), so a package is
    always a plain model."""
    adapters = sorted(k for k in full if k.endswith(".lora_A"))
    if not adapters:
        return full
    rank = int(finetune.get("lora_rank", 8))
    alpha = float(finetune.get("lora_alpha", 16.0))
    out = dict(full)
    for a_key in adapters:
        prefix = a_key[: -len(".lora_A")]
        a, b, w = out.pop(a_key), out.pop(f"{prefix}.lora_B"), out[f"{prefix}.weight"]
        if a.shape[0] != rank:
            raise ValueError(
                f"{a_key}: the adapter has rank {a.shape[0]} but the run config says "
                f"finetune.lora_rank={rank}"
            )
        with torch.no_grad():
            linear = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
            linear.weight.copy_(w)
            lora = LoRALinear(linear, rank=rank, alpha=alpha)
            lora.lora_A.copy_(a)
            lora.lora_B.copy_(b)
            out[f"{prefix}.weight"] = lora.merged().weight.detach()
    return out


def merge_lora_stream(
    items: Iterable[tuple[str, torch.Tensor]], finetune: dict[str, Any]
) -> Iterator[tuple[str, torch.Tensor]]:
    """``merge_lora_state`` on a stream of ``(name, tensor)`` pairs, one module at a time: a
    module's tensors (``weight``, ``bias``, ``lora_A``, ``lora_B``, adjacent in a state dict)
    are held until the stream moves to the next module, then folded and passed on."""
    group: dict[str, torch.Tensor] = {}
    prefix = None
    for name, t in items:
        p = name.rpartition(".")[0]
        if group and p != prefix:
            yield from merge_lora_state(group, finetune).items()
            group = {}
        prefix, group[name] = p, t
    if group:
        yield from merge_lora_state(group, finetune).items()


def checkpoint_weights(ckpt: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The full fp32 tensors of a run's checkpoint folder (any layout), one at a time
    (``reshard.iter_consolidated``), LoRA adapters folded in per module."""
    cfg = CheckpointState.read(ckpt).to_dict()["config"]
    return merge_lora_stream(iter_consolidated(ckpt), cfg.get("finetune") or {})


def _variables_with_stats(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The registry in id order, each with its normalisation mean/std (the first source's
    statistics are the store's, ``stats``; variables of later sources take theirs; runs that
    record ``variable_stats`` — fine-tuned ones include the package's variables — use it)."""
    registry = state.get("variables") or []
    if state.get("variable_stats"):
        vs = state["variable_stats"]
        missing = [v["name"] for v in registry if v["name"] not in vs]
        if missing:
            raise ValueError(f"checkpoint: no normalisation statistics for variables {missing}")
        return [
            {"id": i, **{k: x for k, x in v.items() if k not in ("id", "mean", "std", "source")},
             "mean": float(vs[v["name"]][0]), "std": float(vs[v["name"]][1]), "source": None}
            for i, v in enumerate(registry)
        ]  # fmt: skip
    stats = state.get("stats") or {}
    source_stats = state.get("source_stats") or {}
    out = []
    first = next(iter(source_stats.values())) if source_stats else None
    first_names = first["variables"] if first else [v["name"] for v in registry]
    for i, var in enumerate(registry):
        name = var["name"]
        mean = std = None
        source = None
        if name in first_names and stats.get("mean") is not None:
            j = first_names.index(name)
            mean, std = stats["mean"][j], stats["std"][j]
            source = next(iter(source_stats), None)
        else:
            for src, st in source_stats.items():
                if name in st["variables"]:
                    j = st["variables"].index(name)
                    mean, std, source = st["mean"][j], st["std"][j], src
                    break
        if mean is None:
            raise ValueError(f"checkpoint: no normalisation statistics for variable {name!r}")
        out.append({"id": i, **var, "mean": float(mean), "std": float(std), "source": source})
    return out


def series_facts(cfg: dict[str, Any], source_stats: dict[str, Any]) -> dict[str, Any]:
    """What a package's user needs to forecast its series sources: per source with a horizon,
    its tokenizer and bins, window, context and horizon (samples), and channels."""
    out = {}
    for src in cfg["data"]["sources"]:
        if not src.get("horizon"):
            continue
        window = int(src.get("window") or 1200)
        out[src["name"]] = {
            "format": src["format"], "tokenizer": src.get("tokenizer", "patch"),
            "bins": (BinsConfig.model_validate(src.get("bins") or {}).settings().to_dict()
                     if src.get("tokenizer") == "bins" else None),
            "window": window, "horizon": int(src["horizon"]),
            "context": window - int(src["horizon"]),
            "channels": (source_stats.get(src["name"]) or {}).get("variables"),
            "options": src.get("options") or {},  # the reader's, as trained
            "quantiles": list(cfg["objectives"].get("quantiles") or []),
        }  # fmt: skip
    return out


def _num_targets(state_dict: dict[str, torch.Tensor]) -> int:
    w = state_dict.get("pooled.proj.weight")
    return int(w.shape[0]) if w is not None else 0


# ---- export ---------------------------------------------------------------------------------
def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    step: int | None = None,
    best: bool = False,
    dtype: str = "fp32",
    force: bool = False,
    sign: str | Path | None = None,
    diagnostics: bool = True,
) -> Path:
    """Write the package of a run's checkpoint (``step``, ``best`` or the latest) to ``out``,
    atomically: built in ``OUT.tmp-XXXX`` beside it, then renamed. ``sign``: a private key
    file (``scigpt keygen``) to sign it with. ``diagnostics``: put the HTSR weight diagnostics'
    summary (``scigpt.diagnostics``) in the model card. Returns ``out``."""
    run_dir, out = Path(run_dir).resolve(), Path(out).resolve()
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists: choose another OUT or pass --force")
    key = signing.load_private_key(sign) if sign is not None else None  # before the work
    ckpt = resolve_checkpoint(run_dir, step=step, best=best)
    typed = CheckpointState.read(ckpt)  # legacy checkpoints too; no run config: ValueError
    state = typed.to_dict()
    cfg = state["config"]
    layout = typed.layout
    full = merge_lora_state(consolidate(ckpt), cfg.get("finetune") or {})
    tensors = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in sorted(full.items())}
    variables = _variables_with_stats(state)
    spec = {
        "num_vars": len(variables),
        "history": int(cfg["data"]["history"]),
        "num_targets": _num_targets(full),
    }
    # forecast heads by lead (steps; "head" is the pretrained one), the active head, and what
    # the pooled head predicts (runs before heads were recorded have one head at data.lead)
    heads = state.get("heads") or {"leads": {"head": int(cfg["data"]["lead"])}}
    spec["leads"] = {k: int(v) for k, v in heads["leads"].items()}
    spec["forecast_head"] = heads.get("forecast_head")
    if spec["num_targets"]:
        spec["pooled"] = heads.get("pooled")
    fields = series_spec_fields(cfg["data"]["sources"], cfg.get("objectives") or {})
    if fields["bins"] is not None:
        spec["bins"] = fields["bins"].to_dict()
    if fields["quantiles"]:
        spec["quantiles"] = list(fields["quantiles"])
    config = {
        "model": cfg["model"],
        "spec": spec,
        "data": {
            "history": cfg["data"]["history"],
            "lead": cfg["data"]["lead"],
            "patch_size": cfg["model"]["patch_size"],
            # one time step of the training grid, ns (lead and history count these)
            "time_step_ns": state.get("time_step_ns"),
        },
        "run_config": cfg,
    }
    series = series_facts(cfg, state.get("source_stats") or {})
    if series:
        config["series"] = series
    run = RunDir(run_dir)
    run_prov = {}
    if run.provenance_path.is_file():
        run_prov = json.loads(run.provenance_path.read_text())
    test = run.test_record()
    ckpt_step = int(state.get("step", -1))
    # The test record describes the run's final step; quote its counts only for that checkpoint.
    final = test if test is not None and int(test.get("step", -2)) == ckpt_step else None
    micro = cfg.get("schedule", {}).get("micro_batch_size")
    git = run_prov.get("git") or {}
    provenance = {
        "git_sha": git.get("sha"),
        "git_dirty": git.get("dirty"),
        "data_manifest_sha256": state.get("data_manifest_sha256")
        or run_prov.get("data_manifest_sha256"),
        "step": ckpt_step,
        "checkpoint": ckpt.name,
        "samples_seen": final.get("samples_seen") if final else None,
        "tokens_per_sample": final.get("tokens_per_sample") if final else None,
        "tokens_seen": (
            final["samples_seen"] * final["tokens_per_sample"]
            if final and final.get("samples_seen") is not None and final.get("tokens_per_sample")
            else None
        ),
        "train_flops": final.get("train_flops") if final else None,
        "device_hours": final.get("device_hours") if final else None,
        "n_params": sum(t.numel() for t in tensors.values()),
        "micro_batch_size": micro,
        "precision": cfg.get("precision"),
        "source_run": run_dir.name,
        "layout": layout,
        "export_dtype": dtype,
        "exported_utc": dt.datetime.now(dt.timezone.utc).isoformat(),
        "scigpt_version": __version__,
    }
    card = render_card(
        config=config,
        variables=variables,
        provenance=provenance,
        test=final,
        per_variable=_per_variable_rmse(run) if final else [],
        diagnostics=summarize(analyze_state(full)) if diagnostics else None,
    )
    scores = run.evaluate_dir / "eval.json"  # the run's `scigpt evaluate` scores, if any
    if scores.is_file():
        data = json.loads(scores.read_text())
        card = fill_card(card, evaluation_markdown(data.get("gridded", []), data.get("series", [])))

    def fill(tmp: Path) -> None:
        save_file(
            tensors,
            str(tmp / WEIGHTS),
            metadata={"format": "pt", "scigpt_format": FORMAT_NAME, "dtype": dtype},
        )
        (tmp / CONFIG).write_text(_json_dump(config))
        (tmp / VARIABLES).write_text(_json_dump({"variables": variables}))
        (tmp / PROVENANCE).write_text(_json_dump(provenance))
        (tmp / CARD).write_text(card)
        (tmp / FORMAT).write_text(_json_dump({"format": FORMAT_NAME, "version": FORMAT_VERSION}))
        lines = [f"{sha256_file(tmp / name)}  {name}\n" for name in sorted(REQUIRED)]
        (tmp / CHECKSUMS).write_text("".join(lines))
        written = [*REQUIRED, CHECKSUMS]
        if key is not None:
            written.append(signing.sign_package(tmp, key).name)
        for name in written:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())

    return atomic_dir(out, fill)
