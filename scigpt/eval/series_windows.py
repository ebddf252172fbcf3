"""A series forecaster on a dataset's forecast windows: sample paths of every window's horizon
in physical units, with the observations and contexts to score them against
(``scigpt.eval.series_forecast``), for the trainer's test and ``scigpt evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from scigpt.data_pipeline.loader import collate_series
from scigpt.eval.series_forecast import LEVELS
from scigpt.eval.series_infer import forecast_quantiles, sample_paths
from scigpt.models.objectives import Objectives, series_forecast_loss


@dataclass
class WindowForecasts:
    """Per channel c: ``obs[c]`` (N, H), ``context[c]`` (N, Lc), ``samples[c]`` (N, H, S), in
    physical units (NaN missing); ``issue_ns`` (N,) the last context sample's time, ``lat``/
    ``lon`` (N,) the windows' stations, ``step_ns`` the sampling interval; ``quantiles[c]``
    (N, H, Q) the forecast's exact quantiles at ``levels`` (the median and WQL use them, the
    CRPS the samples)."""

    channels: list[str]
    units: list[str]
    obs: np.ndarray  # (C, N, H)
    context: np.ndarray  # (C, N, Lc)
    samples: np.ndarray  # (C, N, H, S)
    quantiles: np.ndarray  # (C, N, H, Q) exact forecast quantiles at ``levels``
    levels: tuple[float, ...]
    issue_ns: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    step_ns: int


def _physical(x: torch.Tensor, mask: torch.Tensor, ds, binned: bool) -> np.ndarray:
    """(B, C, L) batch values → float64 physical units, NaN where not observed."""
    v = x.double().cpu().numpy()
    if not binned:  # patch sources are normalised with the dataset's statistics
        v = v * ds.std32.astype(np.float64)[None] + ds.mean32.astype(np.float64)[None]
    return np.where(mask.cpu().numpy(), v, np.nan)


@torch.no_grad()
def forecast_windows(
    model,
    dataset,
    device: torch.device,
    *,
    n_samples: int,
    levels: tuple[float, ...] = (),
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
    paths: bool = False,
    inputs_only: tuple[int, ...] = (),
    taus: tuple[float, ...] = LEVELS,
) -> WindowForecasts:
    """Sample ``n_samples`` forecasts of every window of ``dataset`` (a ``SeriesWindowDataset``
    with a horizon): a fixed ``seed``, the same draws on every call and device. ``paths``:
    coherent sample paths (one pass per horizon token) rather than per-lead marginal draws (one
    pass; what per-lead scores need: ``series_infer.sample_paths``)."""
    if not dataset.horizon:
        raise ValueError(f"source {dataset.source!r} has no horizon: nothing to forecast")
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_series
    )
    dtype = next(model.parameters()).dtype
    binned = dataset.tokenizer == "bins"
    obs, ctx, smp, qnt, issue, lat, lon = [], [], [], [], [], [], []
    for batch in tqdm(loader, desc="forecast windows", disable=not progress, leave=False):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        batch["fields"] = batch["fields"].to(dtype)
        c0 = int(batch["context"])
        draws = sample_paths(model, batch, n_samples, levels=levels, generator=gen, paths=paths,
                             inputs_only=inputs_only)  # fmt: skip
        qs = forecast_quantiles(model, batch, taus, levels=levels, inputs_only=inputs_only)
        full = _physical(batch["fields"], batch["mask"], dataset, binned)
        p = draws.double().cpu().numpy()  # (B, C, H, S)
        qv = qs.double().cpu().numpy()  # (B, C, H, Q)
        if not binned:
            sd = dataset.std32.astype(np.float64)[None, :, :, None]
            mu = dataset.mean32.astype(np.float64)[None, :, :, None]
            p, qv = p * sd + mu, qv * sd + mu
        qnt.append(qv)
        obs.append(full[..., c0:])
        ctx.append(full[..., :c0])
        smp.append(p)
        issue.append(batch["times"].cpu().numpy() + (c0 - 1) * int(batch["step_ns"]))
        lat.append(batch["lat"].cpu().numpy())
        lon.append(batch["lon"].cpu().numpy())
    model.train(was_training)
    return WindowForecasts(
        channels=[v.name for v in dataset.variables], units=[v.units for v in dataset.variables],
        obs=np.concatenate(obs).transpose(1, 0, 2), context=np.concatenate(ctx).transpose(1, 0, 2),
        samples=np.concatenate(smp).transpose(1, 0, 2, 3),
        quantiles=np.concatenate(qnt).transpose(1, 0, 2, 3), levels=tuple(taus),
        issue_ns=np.concatenate(issue),
        lat=np.concatenate(lat), lon=np.concatenate(lon), step_ns=int(dataset.step_ns),
    )  # fmt: skip


@torch.no_grad()
def forecast_loss(
    model, dataset, objectives: Objectives, device: torch.device, batch_size: int = 16
) -> float:
    """The series-forecast objective over a dataset's windows, nothing revealed (validation:
    deterministic, no sampling): mean of the batches' losses weighted by their windows."""
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_series
    )
    dtype = next(model.parameters()).dtype
    total, n = 0.0, 0
    for batch in loader:
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        batch["fields"] = batch["fields"].to(dtype)
        b = batch["fields"].shape[0]
        total += float(series_forecast_loss(model, batch, objectives, reveal=0)) * b
        n += b
    model.train(was_training)
    return total / max(n, 1)


__all__ = ["WindowForecasts", "forecast_loss", "forecast_windows"]
