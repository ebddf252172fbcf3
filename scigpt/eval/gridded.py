"""WeatherBench-2 scores of gridded forecasts, climatologies, and autoregressive rollouts.

Conventions (Rasp et al. 2024, WeatherBench 2; the point of ClimaX#59/#37):

* **RMSE** — the area-weighted squared error is averaged over space *and* time (all forecasts of
  one lead) first, the square root is taken last: ``sqrt(mean_t mean_xy w·(f − o)²)``.
  ``rmse_sqrt_then_mean`` (root per forecast, then averaged) is the other convention, kept only
  so the difference can be shown; it is never reported.
* **Bias** — area-weighted mean of ``f − o`` over space and time.
* **ACC** — anomalies against a climatology ``c``: ``f' = f − c``, ``o' = o − c``; per forecast
  ``Σw f'o' / sqrt(Σw f'² · Σw o'²)`` (uncentred, area-weighted), then averaged over forecasts.

Latitude weights are cos(lat) normalised to mean 1 (``scigpt.eval.metrics.lat_weights``);
Cartesian (PDE) grids use uniform weights. Missing truth (NaN) is left out of every sum.

A climatology is the mean of the training split by (day of year, hour of day) in physical units,
stored as netCDF with dims ``(dayofyear, hour, latitude, longitude)`` like WeatherBench 2's.
Looking up times it does not cover is refused (``ClimatologyError``): an ACC against a made-up
climatology would be a wrong number.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from matplotlib.figure import Figure
from tqdm import tqdm

from scigpt.atomic import atomic_write_text
from scigpt.data_pipeline.loader import ForecastDataset
from scigpt.eval.metrics import lat_weights
from scigpt.tables import Table

__all__ = [
    "Climatology",
    "ClimatologyError",
    "acc",
    "bias",
    "evaluate_rollouts",
    "rmse",
    "rmse_sqrt_then_mean",
    "write_gridded_report",
]


# --- scores ----------------------------------------------------------------------------------


def _prep(pred, truth, weights, mask=None):
    """float64 (N, V, H, W) arrays and the full weight array (0 where truth or pred is missing)."""
    f = np.asarray(pred, dtype=np.float64)
    o = np.asarray(truth, dtype=np.float64)
    if f.shape != o.shape or f.ndim != 4:
        raise ValueError(f"pred {f.shape} and truth {o.shape} must both be (N, V, H, W)")
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64)[None, None, :, None], f.shape)
    ok = np.isfinite(f) & np.isfinite(o)
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool)
    w = np.where(ok, w, 0.0)
    return np.where(ok, f, 0.0), np.where(ok, o, 0.0), w


def rmse(pred, truth, weights, mask=None) -> np.ndarray:
    """WB2 RMSE per variable: ``sqrt(Σ_t,x w·(f−o)² / Σ_t,x w)``. (N, V, H, W) → (V,)."""
    f, o, w = _prep(pred, truth, weights, mask)
    num, den = (w * (f - o) ** 2).sum(axis=(0, 2, 3)), w.sum(axis=(0, 2, 3))
    return np.sqrt(np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0))


def rmse_sqrt_then_mean(pred, truth, weights, mask=None) -> np.ndarray:
    """The *other* convention: RMSE per forecast, then averaged over forecasts. (V,). It is
    smaller than ``rmse`` whenever errors vary between forecasts (Jensen); not reported."""
    f, o, w = _prep(pred, truth, weights, mask)
    num, den = (w * (f - o) ** 2).sum(axis=(2, 3)), w.sum(axis=(2, 3))  # (N, V)
    per = np.sqrt(np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0))
    return np.nanmean(per, axis=0)


def bias(pred, truth, weights, mask=None) -> np.ndarray:
    """Area-weighted mean of ``f − o`` over space and time, per variable. (V,)."""
    f, o, w = _prep(pred, truth, weights, mask)
    num, den = (w * (f - o)).sum(axis=(0, 2, 3)), w.sum(axis=(0, 2, 3))
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def acc(pred, truth, clim, weights, mask=None) -> np.ndarray:
    """WB2 anomaly correlation per variable: per forecast ``Σw f'o' / sqrt(Σw f'² Σw o'²)``
    with ``f' = f − c``, ``o' = o − c``, averaged over forecasts. (V,). A forecast whose
    anomalies are all zero has no defined ACC and is left out."""
    c = np.asarray(clim, dtype=np.float64)
    f, o, w = _prep(pred, truth, weights, mask)
    c = np.where(w > 0, np.broadcast_to(c, f.shape), 0.0)
    fa, oa = f - c, o - c
    num = (w * fa * oa).sum(axis=(2, 3))
    den = np.sqrt((w * fa**2).sum(axis=(2, 3)) * (w * oa**2).sum(axis=(2, 3)))
    per = np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)  # (N, V)
    with np.errstate(all="ignore"):
        return np.nanmean(per, axis=0) if per.size else np.full(f.shape[1], np.nan)


# --- climatology -----------------------------------------------------------------------------


class ClimatologyError(ValueError):
    """The climatology does not cover what is asked of it."""


def _doy_hour(times) -> tuple[np.ndarray, np.ndarray]:
    t = pd.DatetimeIndex(np.asarray(times, dtype="datetime64[ns]"))
    return t.day_of_year.to_numpy(), t.hour.to_numpy()


class Climatology:
    """Mean fields by (day of year, hour) in physical units: an ``xarray.Dataset`` with one data
    variable per registry name, dims ``(dayofyear, hour, latitude, longitude)``."""

    def __init__(self, ds, source: str = "") -> None:
        self.ds = ds
        self.source = source or ds.attrs.get("source", "")

    @classmethod
    def from_store(cls, store, time_range, variables: Sequence[str] | None = None) -> Climatology:
        """The mean of every (day of year, hour) present in ``store`` within ``time_range``
        (inclusive), read from the store's raw (physical) fields; NaNs are left out."""
        names = list(store.names) if variables is None else list(variables)
        idx = [store.names.index(n) for n in names]
        t0, t1 = (np.datetime64(t, "ns") for t in time_range)
        times = store.time.astype("datetime64[ns]")
        sel = np.flatnonzero((times >= t0) & (times <= t1))
        if sel.size == 0:
            raise ClimatologyError(
                f"no store times in [{t0}, {t1}] to compute a climatology from: widen the "
                "training split or supply eval.climatology"
            )
        doy, hour = _doy_hour(times[sel])
        keys = sorted(set(zip(doy.tolist(), hour.tolist(), strict=True)))
        doys, hours = sorted({k[0] for k in keys}), sorted({k[1] for k in keys})
        h, w = len(store.lat), len(store.lon)
        total = np.zeros((len(doys), len(hours), len(names), h, w))
        count = np.zeros_like(total)
        for j, i in enumerate(sel):
            frame = store.read(int(i), int(i) + 1)[0][idx].astype(np.float64)  # (V, H, W)
            a, b = doys.index(int(doy[j])), hours.index(int(hour[j]))
            ok = np.isfinite(frame)
            total[a, b] += np.where(ok, frame, 0.0)
            count[a, b] += ok
        with np.errstate(invalid="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        ds = xr.Dataset(
            {
                n: (
                    ("dayofyear", "hour", "latitude", "longitude"),
                    mean[:, :, k].astype(np.float32),
                )
                for k, n in enumerate(names)
            },
            coords={
                "dayofyear": np.array(doys, dtype=np.int64),
                "hour": np.array(hours, dtype=np.int64),
                "latitude": np.asarray(store.lat, dtype=np.float64),
                "longitude": np.asarray(store.lon, dtype=np.float64),
            },
            attrs={
                "title": "SciGPT climatology: mean by day of year and hour",
                "source": f"store {store.source!r}, {t0} .. {t1}",
                "n_times": int(sel.size),
            },
        )
        for n, v in zip(names, (store.variables[i] for i in idx), strict=True):
            ds[n].attrs.update(units=v.units, long_name=v.long_name or n)
        return cls(ds, source=ds.attrs["source"])

    @classmethod
    def open(cls, path: str | Path) -> Climatology:
        """A climatology file: netCDF (or Zarr) with dims dayofyear (1..366) and hour (0..23)
        (WeatherBench-2 layout); ``latitude``/``longitude`` must match the evaluated grid."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"climatology file {path} does not exist")
        ds = xr.open_zarr(path) if path.suffix == ".zarr" else xr.open_dataset(path)
        for dim in ("dayofyear", "hour"):
            if dim not in ds.dims:
                raise ClimatologyError(
                    f"{path}: a climatology needs dims dayofyear and hour (WeatherBench-2 "
                    f"layout); it has {sorted(ds.dims)}"
                )
        return cls(ds.load(), source=str(path))

    def save(self, path: str | Path) -> Path:
        """Write netCDF atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            self.ds.to_netcdf(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def lookup(self, times, names: Sequence[str], lat=None, lon=None) -> np.ndarray:
        """Climatology at each of ``times`` for ``names``: (N, V, H, W) float64. Refused when a
        variable is missing, the grid differs, or a (day of year, hour) is not covered."""
        missing = [n for n in names if n not in self.ds]
        if missing:
            raise ClimatologyError(
                f"the climatology ({self.source}) has no {missing}: supply one with them"
            )
        if lat is not None and lon is not None:
            clat = self.ds["latitude"].values
            clon = self.ds["longitude"].values
            if (
                clat.shape != np.shape(lat)
                or not np.allclose(clat, lat)
                or not np.allclose(clon, lon)
            ):
                raise ClimatologyError(
                    f"the climatology ({self.source}) is on another grid than the evaluated "
                    "fields: regrid it to their latitude/longitude"
                )
        doy, hour = _doy_hour(times)
        have_d = {int(d): i for i, d in enumerate(self.ds["dayofyear"].values)}
        have_h = {int(h): i for i, h in enumerate(self.ds["hour"].values)}
        arrays = [self.ds[n].values for n in names]  # (D, Hr, H, W) each
        out, uncovered = [], []
        for d, h in zip(doy.tolist(), hour.tolist(), strict=True):
            if d not in have_d or h not in have_h:
                uncovered.append((d, h))
                continue
            frame = np.stack([a[have_d[d], have_h[h]] for a in arrays]).astype(np.float64)
            if not np.isfinite(frame).any(axis=(1, 2)).all():
                uncovered.append((d, h))
                continue
            out.append(frame)
        if uncovered:
            shown = ", ".join(f"day {d} hour {h:02d}" for d, h in sorted(set(uncovered))[:6])
            raise ClimatologyError(
                f"the climatology ({self.source}) does not cover {len(set(uncovered))} "
                f"(day-of-year, hour) pairs of the evaluation times ({shown}{' …' if len(set(uncovered)) > 6 else ''}): "  # noqa: E501
                "supply eval.climatology with a file that covers them, or compute it from a "
                "training split that contains those days and hours (or set eval.acc: false)"
            )
        return np.stack(out)


# --- rollouts --------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_rollouts(
    pm,
    store,
    time_range,
    *,
    horizon: int = 1,
    climatology: Climatology | None = None,
    variables: Sequence[str] | None = None,
    geographic: bool = True,
    batch_size: int = 8,
    progress: bool = False,
    gap=None,
) -> dict[str, Any]:
    """Forecast autoregressively ``horizon`` model calls from every anchor in ``time_range``
    (at least ``gap`` after its start, as the trainer's test samples)
    whose inputs and all ``horizon`` targets are consecutive store frames inside it, and score
    each lead against the truth: RMSE, bias, ACC (with ``climatology``), persistence (and
    climatology) RMSE as baselines, and per-grid-point RMSE maps.

    ``pm``: a ``PretrainedModel`` (``scigpt.load_pretrained``). Inputs are normalised with its
    statistics exactly as in training; outputs are scored in physical units.
    """
    names = [n for n in store.names if n in pm.var_names]
    if variables is not None:
        names = [n for n in variables if n in names]
    if not names:
        raise ValueError(
            f"none of the store's variables {store.names} is in the model's registry "
            f"{pm.var_names}: evaluate on data with the model's variables"
        )
    hist, step = pm.history, int(pm.config["data"]["lead"])
    if horizon > 1 and hist > 1 and step > 1:
        raise ValueError(
            f"a rollout needs consecutive input frames: this model takes {hist} frames and "
            f"forecasts {step} steps ahead, so its forecasts cannot be fed back; use horizon 1"
        )
    ds = ForecastDataset(store, time_range=time_range, history=hist, lead=horizon * step,
                         normalise=False, variables=names, gap=gap)  # fmt: skip
    vidx = np.array([store.names.index(n) for n in names])
    lat, lon = np.asarray(store.lat), np.asarray(store.lon)
    w = (lat_weights(torch.as_tensor(lat)).double().numpy() if geographic
         else np.ones(len(lat)))  # fmt: skip
    step_ns = int(ds.time_step_ns)
    leads = [(k + 1) * step for k in range(horizon)]
    preds = [[] for _ in leads]
    truths = [[] for _ in leads]
    pers: list[np.ndarray] = []
    valid_times = [[] for _ in leads]
    order = range(0, len(ds), batch_size)
    for s in tqdm(order, desc="evaluate", unit="batch", disable=not progress):
        idx = range(s, min(s + batch_size, len(ds)))
        frames = np.stack(
            [
                store.read(ds.anchor_index(i) - hist + 1, ds.anchor_index(i) + horizon * step + 1)[
                    :, vidx
                ]
                for i in idx
            ]
        )  # (B, hist + horizon*step, V, H, W) fmt: skip
        anchors = store.time[[ds.anchor_index(i) for i in idx]].astype("datetime64[ns]")
        x = pm.normalise(torch.from_numpy(frames[:, :hist].transpose(0, 2, 1, 3, 4)), names)
        pers.append(frames[:, hist - 1])
        for k, lead in enumerate(leads):
            t_in = anchors + np.timedelta64((lead - step) * step_ns, "ns")
            y = pm.model(pm.batch(x, names, lat, lon, t_in)).float()  # (B, V, H, W) normalised
            preds[k].append(pm.denormalise(y, names).double().cpu().numpy())
            truths[k].append(frames[:, hist - 1 + lead])
            valid_times[k].append(anchors + np.timedelta64(lead * step_ns, "ns"))
            x = y[:, :, None] if hist == 1 else torch.cat([x[:, :, 1:], y[:, :, None]], dim=2)
    persistence = np.concatenate(pers)
    rows: list[dict[str, Any]] = []
    maps: dict[int, np.ndarray] = {}
    variables_info = {v["name"]: v for v in pm.variables}
    for k, lead in enumerate(leads):
        f, o = np.concatenate(preds[k]), np.concatenate(truths[k])
        vt = np.concatenate(valid_times[k])
        r, b = rmse(f, o, w), bias(f, o, w)
        rp = rmse(persistence, o, w)
        a = rc = np.full(len(names), np.nan)
        if climatology is not None:
            c = climatology.lookup(vt, names, lat, lon)
            a, rc = acc(f, o, c, w), rmse(c, o, w)
        se = np.where(np.isfinite(o), (f - o) ** 2, np.nan)
        with np.errstate(invalid="ignore"):
            maps[lead] = np.sqrt(np.nanmean(se, axis=0))  # (V, H, W)
        for j, n in enumerate(names):
            rows.append({
                "variable": n,
                "units": variables_info.get(n, {}).get("units", ""),
                "lead_steps": lead,
                "lead_hours": lead * step_ns / 3.6e12,
                "n_forecasts": int(f.shape[0]),
                "rmse": float(r[j]),
                "bias": float(b[j]),
                "acc": float(a[j]),
                "rmse_persistence": float(rp[j]),
                "rmse_climatology": float(rc[j]),
            })  # fmt: skip
    return {
        "rows": rows,
        "variables": names,
        "leads": leads,
        "maps": maps,
        "lat": lat,
        "lon": lon,
        "n_forecasts": len(ds),
        "climatology": climatology.source if climatology is not None else None,
    }


# --- report ----------------------------------------------------------------------------------


def write_gridded_report(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """metrics.csv, metrics.md, skill_vs_lead.png and error_map_<variable>.png in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    cols = ["variable", "units", "lead_steps", "lead_hours", "n_forecasts", "rmse", "bias",
            "acc", "rmse_persistence", "rmse_climatology"]  # fmt: skip
    table = Table(cols, rows)
    files = {"metrics_csv": out / "metrics.csv", "metrics_md": out / "metrics.md"}
    atomic_write_text(files["metrics_csv"], table.csv())
    md = [
        f"# Gridded evaluation ({result['n_forecasts']} forecasts per lead)",
        "",
        "RMSE: area-weighted mean squared error over space and time, square root last "
        "(WeatherBench 2). ACC: per forecast against the climatology "
        f"({result['climatology'] or 'none supplied: not computed'}), averaged. Physical units.",
        "",
        table.markdown(),
    ]
    atomic_write_text(files["metrics_md"], "\n".join(md) + "\n")

    names, leads = result["variables"], result["leads"]
    hours = [r["lead_hours"] for r in rows if r["variable"] == names[0]]
    has_acc = any(np.isfinite(r["acc"]) for r in rows)
    ncol = min(4, len(names))
    nrow = -(-len(names) // ncol) * (2 if has_acc else 1)
    fig = Figure(figsize=(3.2 * ncol, 2.6 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for j, n in enumerate(names):
        sub = [r for r in rows if r["variable"] == n]
        ax = axes[(j // ncol) * (2 if has_acc else 1), j % ncol]
        ax.plot(hours, [r["rmse"] for r in sub], "o-", label="model")
        ax.plot(hours, [r["rmse_persistence"] for r in sub], "s--", label="persistence")
        if any(np.isfinite(r["rmse_climatology"]) for r in sub):
            ax.plot(hours, [r["rmse_climatology"] for r in sub], ":", label="climatology")
        ax.set_title(f"{n} RMSE [{sub[0]['units']}]", fontsize=9)
        ax.set_xlabel("lead (h)", fontsize=8)
        if j == 0:
            ax.legend(fontsize=7)
        if has_acc:
            ax2 = axes[(j // ncol) * 2 + 1, j % ncol]
            ax2.plot(hours, [r["acc"] for r in sub], "o-")
            ax2.set_title(f"{n} ACC", fontsize=9)
            ax2.set_xlabel("lead (h)", fontsize=8)
    for ax in axes.flat[len(names) * (2 if has_acc else 1) :]:
        ax.set_visible(False)
    fig.tight_layout()
    files["skill_vs_lead"] = out / "skill_vs_lead.png"
    fig.savefig(files["skill_vs_lead"], dpi=110)

    lat, lon = result["lat"], result["lon"]
    for j, n in enumerate(names):
        shown = [leads[0]] if len(leads) == 1 else [leads[0], leads[-1]]
        fig = Figure(figsize=(4.2 * len(shown), 3.4))
        axes = fig.subplots(1, len(shown), squeeze=False)
        vmax = max(float(np.nanmax(result["maps"][ld][j])) for ld in shown)
        for ax, ld in zip(axes[0], shown, strict=True):
            im = ax.pcolormesh(lon, lat, result["maps"][ld][j], vmin=0, vmax=vmax, cmap="magma")
            hours = next(r["lead_hours"] for r in rows if r["lead_steps"] == ld)
            units = next(r["units"] for r in rows if r["variable"] == n)
            ax.set_title(f"{n} RMSE [{units}], lead {hours:g} h", fontsize=9)
            ax.set_xlabel("longitude", fontsize=8)
            ax.set_ylabel("latitude", fontsize=8)
            fig.colorbar(im, ax=ax)
        fig.tight_layout()
        files[f"error_map_{n}"] = out / f"error_map_{n}.png"
        fig.savefig(files[f"error_map_{n}"], dpi=100)
        return files
