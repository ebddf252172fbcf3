"""What a series-forecasting run (the first source a series with a ``horizon``,
``scigpt.trainable``) does where a grid run scores forecast maps: its model's series heads, its
size, its checkpoint's statistics, validation (the forecast objective on the validation windows,
lower is better) and the test (draws of every test window's forecast, scored against the
observations and persistence, ``scigpt.eval.series_forecast``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from scigpt.config import RunConfig
from scigpt.config_series import series_spec_fields
from scigpt.eval.forecast import evaluate_forecast
from scigpt.eval.metrics import lat_weights
from scigpt.eval.series_eval import fan_chart
from scigpt.eval.series_forecast import compare_table, plot_scores_by_lead, score, write_tables
from scigpt.eval.series_windows import WindowForecasts, forecast_loss, forecast_windows
from scigpt.rundir import RunDir
from scigpt.train.data import RunData
from scigpt.train.plots import plot_loss

if TYPE_CHECKING:
    from scigpt.train.trainer import Trainer

TEST_SAMPLES = 64  # draws per test window (the CRPS; the median and WQL: exact quantiles)


def series_spec(cfg: RunConfig) -> dict[str, Any]:
    """``ModelSpec``'s series fields (``config_series.series_spec_fields``)."""
    js = cfg.model_dump(mode="json")
    return series_spec_fields(js["data"]["sources"], js["objectives"])


def primary_size(data: RunData, meta) -> tuple[int, int]:
    """(tokens per sample, variables per sample) of the first source's samples."""
    if not data.series_first:
        return meta.num_tokens(*data.grid_shape), len(data.store.names)
    return data.test_ds.window // meta.tokenizer.series_patch, len(data.test_ds.variables)


def primary_stats(data: RunData) -> dict[str, Any]:
    """The checkpoint's ``stats``, ``time_step_ns`` and data manifest hash."""
    if data.series_first:
        _, mean, std = data.registry.sources[data.cfg.data.sources[0].name]
        return {"stats": {"mean": mean.tolist(), "std": std.tolist()},
                "time_step_ns": int(data.test_ds.step_ns),
                "data_manifest_sha256": data.patch_store.manifest_sha256}  # fmt: skip
    store = data.store
    return {"stats": {"mean": store.mean.tolist(), "std": store.std.tolist()},
            "time_step_ns": int(data.test_ds.time_step_ns),
            "data_manifest_sha256": store.manifest_sha256}  # fmt: skip


def validation(t: Trainer) -> tuple[dict[str, Any], float]:
    """The validation block's scores and the one that picks the best checkpoint (lower is
    better): grids ``eval.metric``; series forecasts the objective on the validation windows
    (``series_loss``, nothing revealed)."""
    if t.data.series_first:
        loss = forecast_loss(t.forecaster, t.data.val_ds, t.objectives, t.device)
        return {"series_loss": loss}, loss
    val = evaluate_forecast(t.forecaster, t.data.val_ds, t.weights, t.device, batch_size=8)
    return val["summary"], val["summary"][t.cfg.eval.metric]


def area_weights(data: RunData, device: torch.device) -> torch.Tensor | None:
    """The scored grid's latitude weights (None for a series-forecasting run)."""
    if data.series_first:
        return None
    return lat_weights(torch.as_tensor(data.grid_lat)).to(device)


def scores_of(wf: WindowForecasts, *, season: int = 1, skip=()) -> dict[str, Any]:
    """Per channel: the model's and persistence's scores by lead (``series_forecast.score``);
    ``skip``: channels not forecast (weight 0 in ``objectives.variable_weights``)."""
    out: dict[str, Any] = {"summary": {"n_windows": int(wf.obs.shape[1])}, "per_channel": []}
    for c, name in enumerate(wf.channels):
        if name in skip:
            continue
        ctx = wf.context[c]
        last = ctx[:, -1:]
        model = score(
            wf.obs[c],
            context=ctx,
            samples=wf.samples[c],
            season=season,
            quantiles=wf.quantiles[c],
            levels=wf.levels,
        )
        pers = score(wf.obs[c], context=ctx, point=np.repeat(last, wf.obs.shape[2], 1),
                     season=season)  # fmt: skip
        out["per_channel"].append({"channel": name, "units": wf.units[c], "model": model,
                                   "persistence": pers})  # fmt: skip
        for who, sc in (("model", model), ("persistence", pers)):
            for k, v in sc.items():
                if isinstance(v, float | int):
                    out["summary"][f"{name}/{who}_{k}"] = float(v)
    return out


def test_series(t: Trainer) -> dict[str, Any]:
    """The test: ``TEST_SAMPLES`` draws of every test window's forecast, scored by lead (seeded
    by the run's seed; per-lead marginal draws, ``forecast_windows``)."""
    weights = t.objectives.variable_weights
    wf = forecast_windows(
        t.forecaster, t.data.test_ds, t.device, n_samples=TEST_SAMPLES,
        levels=tuple(t.objectives.quantiles), seed=t.cfg.seed,
        inputs_only=tuple(i for i, w in weights.items() if w == 0),
    )  # fmt: skip
    zero = t.cfg.objectives.variable_weights
    test = scores_of(wf, skip={n for n, w in zero.items() if w == 0})
    test["windows"] = wf
    return test


def write_series_outputs(run: RunDir, test: dict[str, Any], cfg: RunConfig) -> dict[str, Path]:
    """Rank 0, after the test: the score table by channel, forecaster and lead, the loss curve,
    scores by lead, and the fan chart of the last test window of each channel."""
    wf: WindowForecasts = test["windows"]
    station = cfg.data.sources[0].name
    rows, files = [], {}
    for c, res in enumerate(test["per_channel"]):
        name = res["channel"]
        scores = {"model": res["model"], "persistence": res["persistence"]}
        rows += compare_table(station, name, scores)
        files[f"scores_{name}"] = plot_scores_by_lead(
            scores, "crps", run.plots / f"crps_by_lead_{name}.png",
            title=f"{cfg.name}: {name} CRPS ({res['units']}) by lead",
        )  # fmt: skip
        files[f"fan_{name}"] = fan_chart(
            wf, c, -1, run.plots / f"forecast_{name}.png", f"{cfg.name}: {name} ({res['units']})"
        )  # the last test window
    files.update(write_tables(rows, run.eval_dir))
    files["loss_plot"] = plot_loss(
        run.metrics(), run.plots / "loss.png", title=f"{cfg.name}: training loss"
    )
    return files


__all__ = [
    "area_weights",
    "primary_size",
    "primary_stats",
    "series_spec",
    "test_series",
    "validation",
    "write_series_outputs",
]  # fmt: skip
