"""Self-contained model packages: ``scigpt export`` writes one, ``load_pretrained`` reads one.

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
on load (``scigpt.export.schema``), so an edited package fails with a ``PackageError`` naming the
file and field; against tampering, sign packages and load them with ``trusted_keys``
(``scigpt.export.signing``).

Loading never unpickles anything (DESIGN.md §9): weights come through safetensors, everything
else is JSON. The load path imports nothing from ``scigpt.parallel``, DeepSpeed, Slurm or
Triton; only the export path (``export_run``) reads DeepSpeed's pickled checkpoints, and only
from a run directory, which is trusted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scigpt.atomic import sha256_file
from scigpt.export import signing
from scigpt.export.errors import PackageError
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
    check_provenance,
    read_json,
    read_package,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---- helpers --------------------------------------------------------------------------------
def _json_dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"


def _test_record(run_dir: Path) -> dict[str, Any] | None:
    """The last ``kind: test`` record of the run's metrics.jsonl (None when there is none)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    found = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
        if rec.get("kind") == "test":
            found = rec
    return found


def _per_variable_rmse(run_dir: Path) -> list[dict[str, str]]:
    import csv

    path = run_dir / "eval" / "test_rmse.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def resolve_checkpoint(run_dir: Path, *, step: int | None = None, best: bool = False) -> Path:
    """The ``checkpoints/step_N`` folder to export: ``step``, the ``best`` pointer or
    ``latest``."""
    from scigpt.train.checkpoint import tag_of

    ckpts = Path(run_dir) / "checkpoints"
    if not ckpts.is_dir():
        raise FileNotFoundError(f"{run_dir} has no checkpoints/ folder: not a SciGPT run directory")
    available = sorted(p.name for p in ckpts.iterdir() if p.is_dir() and p.name.startswith("step_"))
    if step is not None and best:
        raise ValueError("give --step or --best, not both")
    if step is not None:
        tag = tag_of(step)
        if tag not in available:
            raise FileNotFoundError(
                f"{ckpts} has no checkpoint for step {step}; available: {available or 'none'}"
            )
        return ckpts / tag
    name = "best" if best else "latest"
    pointer = ckpts / name
    tag = pointer.read_text().strip() if pointer.is_file() else None
    if tag is None or not (ckpts / tag).is_dir():
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
    """Fold LoRA adapters of a ``finetune.mode: lora`` checkpoint into their base weights
    (W + alpha/rank · B·A, computed in float64), so a package is always a plain model."""
    adapters = sorted(k for k in full if k.endswith(".lora_A"))
    if not adapters:
        return full
    scale = float(finetune.get("lora_alpha", 16.0)) / int(finetune.get("lora_rank", 8))
    out = dict(full)
    for a_key in adapters:
        prefix = a_key[: -len(".lora_A")]
        a, b = out.pop(a_key), out.pop(f"{prefix}.lora_B")
        w = out[f"{prefix}.weight"]
        out[f"{prefix}.weight"] = (w.double() + scale * (b.double() @ a.double())).to(w.dtype)
    return out


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
) -> Path:
    """Write the package of a run's checkpoint (``step``, ``best`` or the latest) to ``out``,
    atomically: built in ``OUT.tmp-XXXX`` beside it, then renamed. ``sign``: a private key
    file (``scigpt keygen``) to sign it with. Returns ``out``."""
    from safetensors.torch import save_file

    from scigpt.export.card import render_card
    from scigpt.parallel.reshard import consolidate
    from scigpt.train.checkpoint import CheckpointState

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
    run_prov = {}
    if (run_dir / "provenance.json").is_file():
        run_prov = json.loads((run_dir / "provenance.json").read_text())
    test = _test_record(run_dir)
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
        "scigpt_version": _version(),
    }
    card = render_card(
        config=config,
        variables=variables,
        provenance=provenance,
        test=final,
        per_variable=_per_variable_rmse(run_dir) if final else [],
    )
    from scigpt.eval.run import fill_card, run_evaluation_section

    section = run_evaluation_section(run_dir)  # the run's `scigpt evaluate` scores, if any
    if section:
        card = fill_card(card, section)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.tmp-"))
    try:
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
        os.chmod(tmp, 0o755)
        from scigpt.atomic import fsync_dir

        fsync_dir(tmp)
        if out.exists():  # --force: swap the old one out only once the new one is complete
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.old-"))
            os.rename(out, old / "pkg")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _version() -> str:
    from scigpt import __version__

    return __version__


# ---- load -----------------------------------------------------------------------------------
def _load_weights(pkg: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(pkg / WEIGHTS), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise PackageError(
            f"{pkg / WEIGHTS}: not a valid safetensors file ({e}); packages load weights through "
            "safetensors only and never unpickle a file (DESIGN.md §9)"
        ) from None


def _time_ns(times: Any, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(times, torch.Tensor):
        t = times.to(torch.int64)
    else:
        arr = np.asarray(times)
        if np.issubdtype(arr.dtype, np.datetime64):
            arr = arr.astype("datetime64[ns]").astype(np.int64)
        t = torch.as_tensor(arr.astype(np.int64))
    t = t.reshape(-1)
    if t.numel() == 1 and batch > 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"times: {t.numel()} values for a batch of {batch} samples")
    return t.to(device)


class PretrainedModel(nn.Module):
    """A packaged SciGPT forecaster: the raw model (``.model``) plus the variable registry and
    normalisation, so ``forecast`` maps physical fields to physical forecasts."""

    def __init__(
        self,
        model: nn.Module,
        *,
        config: dict[str, Any],
        variables: list[dict[str, Any]],
        provenance: dict[str, Any],
        path: Path | None = None,
    ):
        super().__init__()
        self.model = model
        self.config = config
        self.variables = variables
        self.provenance = provenance
        self.path = path
        self.var_names = [v["name"] for v in variables]
        # float32 like the training loader (ForecastDataset.mean32/std32), so normalising gives
        # bit-identical inputs to the training batches.
        self.register_buffer(
            "mean", torch.tensor([v["mean"] for v in variables], dtype=torch.float32),
            persistent=False,
        )  # fmt: skip
        self.register_buffer(
            "std", torch.tensor([v["std"] for v in variables], dtype=torch.float32),
            persistent=False,
        )  # fmt: skip

    @property
    def history(self) -> int:
        return int(self.config["spec"]["history"])

    def var_ids(self, var_names: Sequence[str]) -> torch.Tensor:
        unknown = [n for n in var_names if n not in self.var_names]
        if unknown:
            raise KeyError(
                f"variables {unknown} are not in the model's registry; known: {self.var_names}"
            )
        return torch.tensor([self.var_names.index(n) for n in var_names], dtype=torch.long)

    def _stats(self, x: torch.Tensor, var_names: Sequence[str], var_axis: int, what: str):
        """mean and std of ``var_names`` shaped to broadcast along ``var_axis`` of ``x``."""
        if x.shape[var_axis] != len(var_names):
            raise ValueError(
                f"{what}: axis {var_axis} of {tuple(x.shape)} has {x.shape[var_axis]} entries "
                f"but {len(var_names)} variable names were given"
            )
        ids = self.var_ids(var_names).to(self.mean.device)
        ndim, device = x.ndim, x.device
        shape = [1] * ndim
        shape[var_axis % ndim] = len(ids)
        return self.mean[ids].reshape(shape).to(device), self.std[ids].reshape(shape).to(device)

    def normalise(self, fields: Any, var_names: Sequence[str], var_axis: int = 1) -> torch.Tensor:
        """``((x − mean) / std)`` in float32 with NaN → 0 (the training loader's operation);
        variables along ``var_axis`` (default 1: (B, V, T, H, W) or (B, V, H, W))."""
        x = torch.as_tensor(fields)
        mean, std = self._stats(x, var_names, var_axis, "normalise")
        mask = ~torch.isnan(x)
        filled = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return (filled.to(torch.float32) - mean) / std * mask.to(torch.float32)

    def denormalise(self, x: Any, var_names: Sequence[str], var_axis: int = 1) -> torch.Tensor:
        """``x · std + mean`` (float32), variables along ``var_axis`` (default 1)."""
        x = torch.as_tensor(x)
        mean, std = self._stats(x, var_names, var_axis, "denormalise")
        return x.to(torch.float32) * std + mean

    def batch(
        self, fields_normalised: torch.Tensor, var_names: Sequence[str], lat, lon, times
    ) -> dict[str, Any]:
        """The grid batch (DESIGN.md §7) the model takes, from normalised (B, V, T, H, W)."""
        f = fields_normalised
        if f.ndim != 5:
            raise ValueError(f"fields must be (B, V, T, H, W); got shape {tuple(f.shape)}")
        if f.shape[2] != self.history:
            raise ValueError(
                f"fields have {f.shape[2]} input frames; the model takes history={self.history}"
            )
        dev = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        return {
            "fields": f.to(device=dev, dtype=dtype),
            "var_ids": self.var_ids(var_names).to(dev),
            "modality_id": 0,
            "lat": torch.as_tensor(np.asarray(lat, dtype=np.float32)).to(dev),
            "lon": torch.as_tensor(np.asarray(lon, dtype=np.float32)).to(dev),
            "times": _time_ns(times, f.shape[0], dev),
        }

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """A normalised grid batch → normalised forecast (B, V, H, W), as ``SciGPTModel``."""
        return self.model(batch)

    @torch.no_grad()
    def forecast(
        self, fields_physical: Any, var_names: Sequence[str], lat, lon, times
    ) -> torch.Tensor:
        """Physical-unit inputs (B, V, T, H, W) (or (V, T, H, W)) of the variables
        ``var_names``, latitudes (H,), longitudes (W,), the time of the last input frame per
        sample ((B,) datetime64 or int64 ns) → the forecast ``lead`` steps ahead, (B, V, H, W)
        (or (V, H, W)) in physical units, float32. NaN inputs count as missing (0 after
        normalising, as in training)."""
        x = torch.as_tensor(fields_physical)
        single = x.ndim == 4
        if single:
            x = x[None]
        norm = self.normalise(x, var_names)
        pred = self.model(self.batch(norm, var_names, lat, lon, times))
        out = self.denormalise(pred.float(), var_names)
        return out[0] if single else out


def build_from_config(
    config: dict[str, Any],
    device: str | torch.device = "meta",
    *,
    target: str | torch.device | None = None,
) -> nn.Module:
    """The SciGPTModel of a package's config.json (on ``meta`` by default, no allocation).
    Triton kernels are swapped for the PyTorch ones (same parameters) so a package loads where
    Triton is absent: they are kept only when the model will run (``target``, default
    ``device``) on CUDA with Triton installed."""
    from scigpt.config import ModelConfig
    from scigpt.models.build import build_model
    from scigpt.models.vit import ModelSpec

    mcfg = dict(config["model"])
    runs_on = torch.device(target if target is not None else device)
    wants_triton = "triton" in (mcfg.get("attention"), mcfg.get("patch_embed"))
    if wants_triton and not (runs_on.type == "cuda" and _has_triton()):
        if mcfg.get("attention") == "triton":
            mcfg["attention"] = "sdpa"
        mcfg["patch_embed"] = "reference"
    spec = config["spec"]
    model = build_model(
        ModelConfig.model_validate(mcfg),
        ModelSpec(int(spec["num_vars"]), int(spec["history"]), int(spec.get("num_targets", 0))),
        device=device,
    )
    extra = [k for k in spec.get("leads", {}) if k != "head"]
    if extra or spec.get("forecast_head"):
        from scigpt.finetune.adapt import add_lead_head, use_lead_head

        for key in extra:
            add_lead_head(model, key, activate=False)
        use_lead_head(model, spec.get("forecast_head"))
    if spec.get("pooled"):
        model.pooled_kind = spec["pooled"]["kind"]
    return model


def _has_triton() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def load_pretrained(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    verify: bool = True,
    trusted_keys: Sequence[Any] | None = None,
) -> PretrainedModel:
    """Load a model package: verify format and checksums (and with ``trusted_keys``, public
    Ed25519 keys, that one of them signed it), check config.json and variables.json field by
    field, build the model, load model.safetensors (strict). ``dtype``: cast the weights
    (default: as stored). Returns a ``PretrainedModel`` in eval mode; every problem with the
    package is a ``PackageError`` naming the file."""
    pkg = Path(path)
    config, variables = read_package(pkg, trusted_keys=trusted_keys, verify=verify)
    provenance = check_provenance(pkg / PROVENANCE, read_json(pkg, PROVENANCE))
    weights = _load_weights(pkg, device)
    try:
        model = build_from_config(config, "meta", target=device)
    except (ValueError, KeyError, TypeError) as e:
        raise PackageError(f"{pkg / CONFIG}: cannot build its model: {e}") from None
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as e:
        raise PackageError(f"{pkg / WEIGHTS} does not fit config.json's model: {e}") from None
    model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    out = PretrainedModel(
        model, config=config, variables=variables, provenance=provenance, path=pkg
    ).to(device)
    return out.eval()


def export_tensors_equal(
    pkg_a: str | Path, pkg_b: str | Path, rtol: float = 0.0, atol: float = 0.0
) -> None:
    """Assert two packages hold the same tensor names, shapes, dtypes and (within rtol/atol)
    values; raises AssertionError naming the first differing tensor. Reads safetensors only."""
    from safetensors.torch import load_file

    a = load_file(str(Path(pkg_a) / WEIGHTS))
    b = load_file(str(Path(pkg_b) / WEIGHTS))
    if set(a) != set(b):
        raise AssertionError(
            f"tensor names differ: only in {pkg_a}: {sorted(set(a) - set(b))[:5]}, "
            f"only in {pkg_b}: {sorted(set(b) - set(a))[:5]}"
        )
    for name in sorted(a):
        ta, tb = a[name], b[name]
        if ta.shape != tb.shape or ta.dtype != tb.dtype:
            raise AssertionError(
                f"{name}: {tuple(ta.shape)} {ta.dtype} vs {tuple(tb.shape)} {tb.dtype}"
            )
        torch.testing.assert_close(ta, tb, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
