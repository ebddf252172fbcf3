"""Score a loaded model on a config's data: the body of ``scigpt evaluate`` once the model is
loaded (``scigpt.commands.evaluate`` finds the package or run, loads it, writes ``eval.json``
and hands the rows to the model card).

* Gridded sources (the first one): autoregressive rollouts to ``eval.horizon`` model calls,
  WeatherBench-2 RMSE / bias / ACC per variable and lead (``scigpt.eval.gridded``), persistence
  and climatology baselines, skill-vs-lead and error-map plots.
* Series sources: the pooled head's per-target scores (e.g. magnitude MAE) and the masked
  reconstruction's per-channel RMSE / MAE / NSE / KGE (``scigpt.eval.series``).

Nothing here imports ``scigpt.export``: the model comes in loaded (a ``PretrainedModel``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scigpt.atomic import atomic_write_text
from scigpt.config_loader import LoadedConfig
from scigpt.data_pipeline.ingest.base import format_kind
from scigpt.data_pipeline.loader import SeriesWindowDataset
from scigpt.data_pipeline.store import GridStore, PatchStore
from scigpt.eval.gridded import Climatology, evaluate_rollouts, write_gridded_report
from scigpt.eval.series import evaluate_series
from scigpt.tables import Table


def check_forecaster(pm, loaded: LoadedConfig) -> None:
    """Refuse an operator-task model or config: it has no lead time to roll out."""
    task = (pm.config.get("run_config") or {}).get("data", {}).get("task", "forecast")
    if "operator" in (task, loaded.config.data.task):
        raise ValueError(
            "an operator-task model (data.task: operator) has no lead time to roll out: its "
            "score is the run's test record (eval/test_rmse.csv); evaluate scores forecasters"
        )


def score_model(
    pm, loaded: LoadedConfig, store_dir: Path, out: Path, *, progress: bool = True
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Score the loaded package model ``pm`` on the data of ``loaded`` (ingested in
    ``store_dir``); write the tables and plots to ``out``. Returns (written files, summary:
    split, time range, horizon, forecasts, climatology, gridded and series rows)."""
    cfg = loaded.config
    check_forecaster(pm, loaded)
    ev = cfg.eval
    first = cfg.data.sources[0]
    splits = first.splits or cfg.data.splits
    block = getattr(splits, ev.split)
    if block is None:
        raise ValueError(f"eval.split={ev.split}: the config has no data.splits.{ev.split}")
    store = GridStore(store_dir, source=first.name)
    names = [n for n in store.names if n in pm.var_names]
    clim = None
    if ev.acc:
        if ev.climatology:
            clim = Climatology.open(loaded.resolve_path(ev.climatology))
        else:
            clim = Climatology.from_store(store, splits.train.bounds(), names)
            clim.save(out / "climatology.nc")
    result = evaluate_rollouts(
        pm, store, block.bounds(), horizon=ev.horizon, climatology=clim, variables=names,
        geographic=first.format != "pde", progress=progress,
        gap=None if ev.split == "train" else splits.gap_ns(),
    )  # fmt: skip
    files = write_gridded_report(result, out)
    if clim is not None and not ev.climatology:
        files["climatology"] = out / "climatology.nc"

    series_rows: list[dict[str, Any]] = []
    for src in cfg.data.sources:
        if format_kind(src.format) == "grid":
            continue
        series_rows += _series_rows(pm, loaded, store_dir, src, ev.split)
    if series_rows:
        files.update(_write_series(series_rows, out))
    summary = {
        "split": ev.split,
        "time_range": [str(t) for t in block.bounds()],
        "horizon": ev.horizon,
        "n_forecasts": result["n_forecasts"],
        "climatology": result["climatology"],
        "gridded": result["rows"],
        "series": series_rows,
    }
    return files, summary


def _series_rows(pm, loaded, store_dir: Path, src, split: str) -> list[dict[str, Any]]:
    cfg = loaded.config
    splits = src.splits or cfg.data.splits
    block = getattr(splits, split)
    store = PatchStore(store_dir)
    channels = [v.name for v in store.variables(src.name)]
    unknown = [c for c in channels if c not in pm.var_names]
    if unknown:
        raise ValueError(
            f"source {src.name!r} has channels {unknown} the model was not trained on: "
            "fine-tune it on them first (scigpt finetune)"
        )
    pooled = pm.config["spec"].get("pooled") if pm.model.pooled is not None else None
    ds = SeriesWindowDataset(
        store, src.name, time_range=block.bounds(),
        targets=pooled["targets"] if pooled else (), var_ids=pm.var_ids(channels).tolist(),
        gap=None if split == "train" else splits.gap_ns(),
    )  # fmt: skip
    if not len(ds):
        return []
    res = evaluate_series(
        pm.model, ds, next(pm.model.parameters()).device,
        pooled_kind=pooled["kind"] if pooled else None,
        mask_ratio=cfg.objectives.mask_ratio,
    )  # fmt: skip
    rows = [{"source": src.name, "kind": "pooled", **r} for r in res["per_target"]]
    rows += [{"source": src.name, "kind": "masked", **r} for r in res["per_channel"]]
    return rows


def _write_series(rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    table = Table.of(rows)
    files = {"series_csv": out / "series_metrics.csv", "series_md": out / "series_metrics.md"}
    atomic_write_text(files["series_csv"], table.csv())
    atomic_write_text(files["series_md"], "# Series scores\n\n" + table.markdown() + "\n")
    return files
