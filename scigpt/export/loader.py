"""Reading model packages: ``load_pretrained`` and ``PretrainedModel`` (the package format is
described in ``scigpt.export.writer``; its files and field checks in ``scigpt.export.verify``).

Loading never unpickles anything (DESIGN.md §9): weights come through safetensors, everything
else is JSON. This module imports no DeepSpeed, Slurm or Triton, and neither the checkpoint
reader (``scigpt.parallel.reshard``) nor the trainer (``tests/test_export.py`` checks it in a
fresh interpreter): a package loads where only PyTorch is installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from scigpt.config import ModelConfig
from scigpt.export.errors import PackageError
from scigpt.export.verify import (
    CONFIG,
    PROVENANCE,
    WEIGHTS,
    check_provenance,
    read_json,
    read_package,
)
from scigpt.finetune.adapt import add_lead_head, use_lead_head
from scigpt.kernels import fuse_patch_embed, register_attention_kernels
from scigpt.models.attention import register_attention
from scigpt.models.build import build_model
from scigpt.models.series_tokens import BinSettings
from scigpt.models.vit import ModelSpec

__all__ = [
    "PackageError",
    "PretrainedModel",
    "build_from_config",
    "export_tensors_equal",
    "load_pretrained",
]


def _load_weights(pkg: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
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
    mcfg = dict(config["model"])
    runs_on = torch.device(target if target is not None else device)
    wants_triton = "triton" in (mcfg.get("attention"), mcfg.get("patch_embed"))
    if wants_triton and not (runs_on.type == "cuda" and _has_triton()):
        if mcfg.get("attention") == "triton":
            mcfg["attention"] = "sdpa"
        mcfg["patch_embed"] = "reference"
    if mcfg.get("attention") == "triton":
        register_attention_kernels(register_attention)  # kernels import no model code
    spec = config["spec"]
    model = build_model(
        ModelConfig.model_validate(mcfg),
        ModelSpec(
            int(spec["num_vars"]),
            int(spec["history"]),
            int(spec.get("num_targets", 0)),
            bins=BinSettings(**{k: spec["bins"][k] for k in ("n_tokens", "low", "high")})
            if spec.get("bins")
            else None,
            quantiles=tuple(spec.get("quantiles") or ()),
        ),
        device=device,
    )
    extra = [k for k in spec.get("leads", {}) if k != "head"]
    if extra or spec.get("forecast_head"):
        for key in extra:
            add_lead_head(model, key, activate=False)
        use_lead_head(model, spec.get("forecast_head"))
    if spec.get("pooled"):
        model.pooled_kind = spec["pooled"]["kind"]
    if mcfg.get("patch_embed") == "triton":
        fuse_patch_embed(model)  # in place, parameters unchanged (the run's parallelize step 6)
    return model


def _has_triton() -> bool:
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
