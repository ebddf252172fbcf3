"""``scigpt evaluate`` for a series forecaster: every window of the config's forecast source in
the ``eval.split`` block, sampled, scored per station and lead against the baselines a
hydrologist or meteorologist would use (``scigpt.eval.series_forecast``): persistence,
seasonal naive and day-of-year climatology of the *training* block, with the verdict (does the
model beat persistence at lead 1 and climatology over leads ≥ 7, in MASE and CRPS), tables and
plots.

The baselines need each station's whole series, which the store holds as overlapping windows:
``station_series`` lays the windows of every split back onto one time axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from scigpt.config_loader import LoadedConfig
from scigpt.data_pipeline.loader import SeriesWindowDataset
from scigpt.data_pipeline.store import PatchStore
from scigpt.eval.series_forecast import (
    LEVELS,
    baselines,
    compare_table,
    plot_fan,
    plot_scores_by_lead,
    score,
    verdict,
    write_tables,
)
from scigpt.eval.series_windows import WindowForecasts, forecast_windows

EVAL_SAMPLES = 100  # draws per window: the median, quantiles and CRPS come from them


def station_series(store: PatchStore, source: str) -> list[dict[str, Any]]:
    """Every record (station) of a series source as one series: ``times`` (T,) regular at
    ``step_ns``, ``values`` (C, T) physical (NaN where no window covers a sample or the value is
    missing), ``lat``, ``lon``, ``station`` (its station id, or its record group)."""
    names = [v.name for v in store.variables(source)]
    window = int(store.sources[source]["patch"]["window"])
    out = []
    for unit in store.sources[source]["units"]:
        for a in unit["arrays"]:
            g = store.file(unit["shard"])[a["group"]]
            start = np.asarray(g["time"][:], dtype=np.int64)
            if not start.size:
                continue
            step = int(a["step_ns"])
            t0 = int(start.min())
            n = int((start.max() - t0) // step) + window
            values = np.full((len(names), n), np.nan)
            chans = [names.index(v) for v in a["variables"]]
            patches = g["patches"][:]  # (rows, c, P, K)
            for r, s0 in enumerate(start):
                i = int((s0 - t0) // step)
                row = patches[r].reshape(len(chans), -1)[:, :window].astype(np.float64)
                cur = values[chans, i : i + window]
                values[chans, i : i + window] = np.where(np.isnan(cur), row, cur)
            attrs = g.get("attrs", {})
            sid = attrs["station_id"][0] if "station_id" in attrs else a["group"]
            out.append({
                "station": sid.decode() if isinstance(sid, bytes) else str(sid),
                "lat": float(g["lat"][0]), "lon": float(g["lon"][0]), "step_ns": step,
                "times": (t0 + step * np.arange(n)).astype("datetime64[ns]"), "values": values,
            })  # fmt: skip
    return out


def _station_of(series: list[dict[str, Any]], lat: float, lon: float) -> int:
    for k, s in enumerate(series):
        if s["lat"] == lat and s["lon"] == lon:
            return k
    raise ValueError(f"no station of the store at lat {lat}, lon {lon}")


def score_series(
    pm, loaded: LoadedConfig, store_dir: Path, out: Path, *, progress: bool = True,
    n_samples: int = EVAL_SAMPLES, seed: int = 0,
) -> tuple[dict[str, Path], dict[str, Any]]:  # fmt: skip
    """Score the package model ``pm`` on the config's first (forecast) source; write
    ``series_forecast_scores.csv/.md``, fan charts and scores-by-lead plots to ``out``."""
    cfg = loaded.config
    src = cfg.data.sources[0]
    if not src.horizon:
        raise ValueError(f"data.sources.0 ({src.name}) has no horizon: nothing to forecast")
    splits = src.splits or cfg.data.splits
    block = getattr(splits, cfg.eval.split)
    if block is None:
        raise ValueError(f"eval.split={cfg.eval.split}: the config has no splits block of it")
    store = PatchStore(store_dir)
    names = [v.name for v in store.variables(src.name)]
    missing = [n for n in names if n not in pm.var_names]
    if missing:
        raise ValueError(f"the model does not know channels {missing} of source {src.name!r}")
    ids = pm.var_ids(names)
    ds = SeriesWindowDataset(
        store, src.name, time_range=block.bounds(), var_ids=ids.tolist(), horizon=src.horizon,
        tokenizer=src.tokenizer, gap=None if cfg.eval.split == "train" else splits.gap_ns(),
        stats=(pm.mean[ids].numpy(), pm.std[ids].numpy()),
    )  # fmt: skip
    if not len(ds):
        raise ValueError(f"no forecast window of {src.name!r} inside the {cfg.eval.split} block")
    levels = tuple((pm.config.get("spec") or {}).get("quantiles") or ())
    # the model's input-only channels (weight 0 in its training objectives) are not forecast
    weights = ((pm.config.get("run_config") or {}).get("objectives") or {}).get(
        "variable_weights") or {}  # fmt: skip
    skip = {n for n, w in weights.items() if w == 0}
    wf = forecast_windows(
        pm.model, ds, torch.device("cpu"), n_samples=n_samples, levels=levels, seed=seed,
        progress=progress, inputs_only=tuple(pm.var_ids([n for n in names if n in skip]).tolist()),
    )  # fmt: skip
    series = station_series(store, src.name)
    rows, verdicts, files = [], {}, {}
    train_end = np.datetime64(splits.train.end.replace(tzinfo=None), "ns")
    station_idx = np.array(
        [_station_of(series, la, lo) for la, lo in zip(wf.lat, wf.lon, strict=True)]
    )
    for c, name in enumerate(wf.channels):
        if name in skip:
            continue
        for k in np.unique(station_idx):
            st = series[k]
            sel = station_idx == k
            issue = (wf.issue_ns[sel] - st["times"][0].astype(np.int64)) // st["step_ns"]
            base = baselines(st["values"][c], st["times"], issue, wf.obs.shape[2],
                             train_end=train_end)  # fmt: skip
            obs, ctx = wf.obs[c, sel], wf.context[c, sel]
            scores = {
                "model": score(
                    obs,
                    context=ctx,
                    samples=wf.samples[c, sel],
                    quantiles=wf.quantiles[c, sel],
                    levels=wf.levels,
                ),
                "persistence": score(obs, context=ctx, point=base["persistence"]),
                "seasonal_naive": score(obs, context=ctx, point=base["seasonal_naive"]),
                "climatology": score(obs, context=ctx, samples=base["climatology"]),
            }
            rows += compare_table(st["station"], name, scores)
            verdicts[f"{st['station']}/{name}"] = verdict(scores, "model")
            tag = f"{st['station']}_{name}"
            files[f"crps_{tag}"] = plot_scores_by_lead(
                scores, "crps", out / f"crps_by_lead_{tag}.png",
                title=f"{st['station']} {name}: CRPS ({wf.units[c]}) by lead",
            )  # fmt: skip
            files[f"mase_{tag}"] = plot_scores_by_lead(
                scores, "mase", out / f"mase_by_lead_{tag}.png",
                title=f"{st['station']} {name}: MASE by lead",
            )  # fmt: skip
            files[f"fan_{tag}"] = fan_chart(wf, c, np.flatnonzero(sel)[-1], out / f"fan_{tag}.png",
                                       f"{st['station']} {name} ({wf.units[c]})")  # fmt: skip
    files.update(write_tables(rows, out))
    summary = {
        "task": "series_forecast", "source": src.name, "split": cfg.eval.split,
        "n_windows": len(ds), "n_samples": n_samples, "horizon": src.horizon,
        "tokenizer": src.tokenizer, "rows": rows, "verdict": verdicts,
        "beats_baselines": all(v["all"] for v in verdicts.values()),
    }  # fmt: skip
    return files, summary


def print_series_scores(summary: dict[str, Any], files: dict[str, Path]) -> None:
    """Lead 1 and leads >= 7 per station and channel, the verdict, then the files."""
    print(f"{summary['n_windows']} forecast windows ({summary['split']}), {summary['n_samples']} "
          f"draws each, horizon {summary['horizon']}; MASE / CRPS:")  # fmt: skip
    for key, v in summary["verdict"].items():
        parts = [
            f"{name} {d['model']:.4g} vs {d['baseline']:.4g} "
            f"({'beats' if d['beats'] else 'LOSES'})"
            for name, d in v.items() if isinstance(d, dict)
        ]  # fmt: skip
        print(f"  {key}: " + "; ".join(parts))
    print(f"  beats the baselines: {summary['beats_baselines']}")
    for key, path in files.items():
        print(f"  {key:24s} {path}")


def fan_chart(wf: WindowForecasts, c: int, k: int, path: Path, what: str) -> Path:
    """The fan chart of window ``k``'s forecast of channel ``c`` (``plot_fan``)."""
    step = np.timedelta64(wf.step_ns, "ns")
    issue = np.datetime64(int(wf.issue_ns[k]), "ns")
    n_ctx, n_h = wf.context.shape[2], wf.obs.shape[2]
    q = np.nanquantile(wf.samples[c, k], LEVELS, axis=-1)  # (Q, H)
    return plot_fan(issue + step * np.arange(1, n_h + 1), wf.obs[c, k],
                    issue + step * np.arange(-n_ctx + 1, 1), wf.context[c, k], q, LEVELS, path,
                    title=f"{what}: forecast issued {str(issue)[:10]}")  # fmt: skip


__all__ = ["EVAL_SAMPLES", "fan_chart", "print_series_scores", "score_series", "station_series"]
