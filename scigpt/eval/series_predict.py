"""``scigpt predict`` for a series forecaster: station files (CAMELS, GHCN, FLUXNET, … through
SciGPT's readers) → sample paths and quantiles of the next ``horizon`` samples of every station,
written as one CF-1.8 ``timeSeries`` netCDF (``scigpt.eval.realization``).

The package's ``series`` section says what the model reads: the source format, its channels,
the context and horizon (samples) and the tokenizer. Each station's context is the ``context``
samples ending at ``init`` (default: the last time all stations have); sample paths are drawn
token by token (``series_infer.sample_paths``), the quantiles are the forecast's exact ones
(``series_infer.forecast_quantiles``). Inputs lacking a channel the model reads are refused
(naming them) unless ``allow_missing``, as for grids; a station whose record does not cover the
context, or whose forecast channels are all missing there, is refused naming it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scigpt import __version__
from scigpt.atomic import sha256_file
from scigpt.data_pipeline.ingest.base import get_reader
from scigpt.data_pipeline.variables import modality_id
from scigpt.eval.realization import timeseries_forecast_dataset, write_realizations
from scigpt.eval.series_infer import forecast_quantiles, sample_paths
from scigpt.export.loader import load_pretrained
from scigpt.export.verify import CONFIG, WEIGHTS

DEFAULT_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


def is_series_package(path: str | Path) -> bool:
    """Whether a package's config.json has a ``series`` section (read as JSON; verified on
    load)."""
    cfg = Path(path) / CONFIG
    try:
        config = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False  # the grid path's loader names the problem
    return isinstance(config, dict) and bool(config.get("series"))


def series_facts(pm, source: str | None = None) -> tuple[str, dict[str, Any]]:
    """(source name, its ``series`` facts) of a package: the one it forecasts, or ``source``."""
    facts = pm.config.get("series") or {}
    if not facts:
        raise ValueError(f"{pm.path}: this package forecasts no series (no series section)")
    if source is None:
        if len(facts) > 1:
            raise ValueError(f"the package forecasts {sorted(facts)}: choose one with --source")
        source = next(iter(facts))
    if source not in facts:
        raise ValueError(f"the package forecasts {sorted(facts)}, not {source!r}")
    return source, facts[source]


def _stations(paths: list[Path], fmt: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every record of the inputs: station id, coordinates, times, values (C, L), channels."""
    out = []
    for arr in get_reader(fmt)(paths, **options):
        ids = arr.record_attrs.get("station_id")
        for r in range(arr.values.shape[0]):
            n = arr.values.shape[2]
            out.append({
                "station": str(ids[r]) if ids is not None else f"{arr.source}[{r}]",
                "lat": float(arr.lat[r]), "lon": float(arr.lon[r]),
                "elevation": float(arr.elevation[r]) if arr.elevation is not None else np.nan,
                "times": arr.start[r] + arr.step * np.arange(n), "step_ns": int(arr.step / 1),
                "values": arr.values[r].astype(np.float64),
                "channels": [v.name for v in arr.variables],
                "info": {v.name: v for v in arr.variables},
            })  # fmt: skip
    if not out:
        raise ValueError(f"the inputs {[str(p) for p in paths]} hold no station record")
    return out


def _last_observed(station: dict[str, Any], channels: list[str]) -> np.datetime64:
    rows = [station["channels"].index(c) for c in channels if c in station["channels"]]
    seen = np.flatnonzero(np.isfinite(station["values"][rows]).any(0)) if rows else []
    if not len(seen):
        raise ValueError(f"station {station['station']}: none of {channels} is ever observed")
    return station["times"][seen[-1]]


def predict_series(
    package: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    horizon: int | None = None,
    n_samples: int = 100,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    init: str | None = None,
    seed: int = 0,
    fmt: str | None = None,
    options: dict[str, Any] | None = None,
    source: str | None = None,
    allow_missing: bool = False,
    device: str = "cpu",
    command: str | None = None,
    trusted_keys: Sequence | None = None,
) -> Path:
    """Forecast every station of ``inputs`` with a series-forecasting package and write
    ``out`` (netCDF, atomically). ``horizon``: samples to forecast (at most the package's);
    ``n_samples`` sample paths and the forecast's ``quantiles``; ``seed``: the draws."""
    pkg = Path(package)
    pm = load_pretrained(pkg, device=device, trusted_keys=trusted_keys)
    _, facts = series_facts(pm, source)
    trained_h, context = int(facts["horizon"]), int(facts["context"])
    horizon = trained_h if horizon is None else int(horizon)
    if not 1 <= horizon <= trained_h:
        raise ValueError(f"--horizon {horizon}: this model forecasts 1..{trained_h} samples "
                         "(its training horizon)")  # fmt: skip
    if n_samples < 2:
        raise ValueError(f"--samples {n_samples}: draw at least 2 sample paths")
    taus = sorted({float(q) for q in quantiles})
    if not taus or taus[0] <= 0 or taus[-1] >= 1:
        raise ValueError(f"--quantiles {list(quantiles)}: levels in (0, 1)")
    paths = [Path(p) for p in ([inputs] if isinstance(inputs, str | Path) else inputs)]
    fmt = fmt or facts["format"]
    # the reader's options as trained (the model's channels are picked by name below)
    stations = _stations(paths, fmt, {**(facts.get("options") or {}), **(options or {})})
    channels = list(facts.get("channels") or [])
    given = stations[0]["channels"]
    absent = [c for c in channels if c not in given]
    if absent and not allow_missing:
        raise ValueError(
            f"the inputs lack channels {absent} that the model reads (it has {given}): pass "
            "files that hold them (e.g. the forcing files), or --allow-missing to forecast "
            "without them (recorded in the output's attributes)"
        )
    steps = {s["step_ns"] for s in stations}
    if steps != {int(pm.config["data"]["time_step_ns"] or next(iter(steps)))}:
        raise ValueError(
            f"the stations are sampled every {sorted(steps)} ns; the model every "
            f"{pm.config['data']['time_step_ns']} ns: resample the inputs"
        )
    step = next(iter(steps))
    window = context + trained_h
    weights = ((pm.config.get("run_config") or {}).get("objectives") or {}).get(
        "variable_weights") or {}  # fmt: skip
    forecast = [c for c in channels if weights.get(c, 1.0) > 0 and c not in absent]
    # default init: the latest time at which every station has a forecast channel observed
    # (a joined record may run on with forcing only, as CAMELS's Daymet files past the gauge's)
    t0 = (np.datetime64(init).astype("datetime64[ns]") if init is not None
          else min(_last_observed(s, forecast) for s in stations))  # fmt: skip
    fields = np.full((len(stations), len(channels), window), np.nan)
    for k, st in enumerate(stations):
        idx = np.flatnonzero(st["times"] == t0)
        if not idx.size or idx[0] + 1 < context:
            first, last = st["times"][0], st["times"][-1]
            raise ValueError(
                f"station {st['station']}: its record ({str(first)[:19]} .. {str(last)[:19]}) "
                f"does not hold the {context} samples ending at init {str(t0)[:19]}: choose "
                "--init inside it, or pass a longer record"
            )
        i = int(idx[0])
        for c, ch in enumerate(channels):
            if ch in st["channels"]:
                fields[k, c, :context] = st["values"][
                    st["channels"].index(ch), i - context + 1 : i + 1
                ]
        for ch in forecast:
            if not np.isfinite(fields[k, channels.index(ch), :context]).any():
                raise ValueError(
                    f"station {st['station']}: {ch} is missing throughout the context ending "
                    f"{str(t0)[:19]}: nothing to forecast from"
                )
    ids = pm.var_ids(channels)
    binned = facts["tokenizer"] == "bins"
    mean = pm.mean[ids].double().numpy()[None, :, None]
    std = pm.std[ids].double().numpy()[None, :, None]
    mask = np.isfinite(fields)
    x = np.where(mask, fields if binned else (fields - mean) / std, 0.0)
    dev = torch.device(device)
    dtype = next(pm.model.parameters()).dtype
    batch = {
        "fields": torch.as_tensor(x, dtype=dtype, device=dev),
        "mask": torch.as_tensor(mask, device=dev),
        "times": torch.as_tensor(
            np.array([(t0 - (context - 1) * step).astype(np.int64)] * len(stations)), device=dev),
        "lat": torch.tensor([s["lat"] for s in stations], dtype=torch.float32, device=dev),
        "lon": torch.tensor([s["lon"] for s in stations], dtype=torch.float32, device=dev),
        "depth": torch.zeros(len(stations), device=dev),
        "var_ids": ids.to(dev), "modality_id": modality_id("series"), "step_ns": step,
        "context": context, "tokenizer": facts["tokenizer"],
    }  # fmt: skip
    levels = tuple(facts.get("quantiles") or ())
    hidden = tuple(int(ids[channels.index(c)]) for c in channels if c not in forecast)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        draws = (
            sample_paths(
                pm.model, batch, n_samples, levels=levels, generator=gen, inputs_only=hidden
            )
            .double()
            .cpu()
            .numpy()
        )  # (P, C, H, S)
        qv = (
            forecast_quantiles(pm.model, batch, taus, levels=levels, inputs_only=hidden)
            .double()
            .cpu()
            .numpy()
        )  # (P, C, H, Q)
    if not binned:
        draws = draws * std[..., None] + mean[..., None]
        qv = qv * std[..., None] + mean[..., None]
    samples, qdict, attrs = {}, {}, {}
    for ch in forecast:
        c = channels.index(ch)
        samples[ch] = draws[:, c, :horizon].transpose(2, 0, 1)  # (S, P, H)
        qdict[ch] = qv[:, c, :horizon].transpose(2, 0, 1)  # (Q, P, H)
        info = stations[0]["info"].get(ch)
        attrs[ch] = {"units": info.units if info else "1",
                     "long_name": (info.long_name if info else ch) or ch}  # fmt: skip
    ds = timeseries_forecast_dataset(
        [s["station"] for s in stations], [s["lat"] for s in stations],
        [s["lon"] for s in stations], t0, step, samples, qdict, taus, attrs,
        elevation=[s["elevation"] for s in stations],
    )  # fmt: skip
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    prov = pm.provenance or {}
    ds.attrs.update({
        "title": f"SciGPT series forecast from {str(t0)[:19]} by model {pkg.name}",
        "institution": "SciGPT",
        "source": f"SciGPT model package {pkg.name} (scigpt {__version__})",
        "history": f"{now}: {command or f'predict_series({str(pkg)!r})'}",
        "scigpt_package_sha256": sha256_file(pkg / WEIGHTS),
        "scigpt_source_run": str(prov.get("source_run") or "unknown"),
        "scigpt_input_files": ", ".join(str(p.resolve()) for p in paths),
        "scigpt_input_format": fmt, "scigpt_tokenizer": facts["tokenizer"],
        "scigpt_context_samples": context, "scigpt_sample_seed": seed,
        "scigpt_missing_variables": ", ".join(absent),
        "scigpt_input_only_variables": ", ".join(c for c in channels if c not in forecast),
    })  # fmt: skip
    return write_realizations(ds, out)


__all__ = ["DEFAULT_QUANTILES", "is_series_package", "predict_series", "series_facts"]
