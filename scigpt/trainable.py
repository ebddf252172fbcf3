"""What training needs of a run's sources beyond a valid config (``scigpt prepare`` takes any
sources): ``check_trainable``, asked by the trainer and by ``scigpt preflight``."""

from __future__ import annotations

from scigpt.config import RunConfig
from scigpt.data_pipeline.ingest.base import format_kind


def check_trainable(cfg: RunConfig) -> None:
    """The first source gives the run's validation, test and exports: a grid (forecast, operator,
    downscale), or a series source with a ``horizon`` (a series-forecasting run, whose sources
    are then all series). Series sources train through the masked, pooled or series_forecast
    objective, with the torch loader."""
    srcs = cfg.data.sources
    kinds = [format_kind(src.format) for src in srcs]
    oc = cfg.objectives
    if kinds[0] != "grid":
        if not srcs[0].horizon:
            raise ValueError(
                f"data.sources.0 ({srcs[0].name}) is a series source without a horizon: the "
                "first source gives the run's validation and test, so it must be a grid, or a "
                "series source to forecast (set its horizon and objectives.series_forecast)"
            )
        grids = [s.name for s, k in zip(srcs, kinds, strict=True) if k == "grid"]
        if grids:
            raise ValueError(
                f"a series-forecasting run (data.sources.0 {srcs[0].name} is a series) takes "
                f"series sources only; {grids} are grids: list a grid source first instead"
            )
        if cfg.data.task != "forecast":
            raise ValueError(f"data.task={cfg.data.task} needs a grid source first")
    for src, kind in zip(srcs, kinds, strict=True):
        if kind == "series" and not (
            oc.masked or oc.pooled or (src.horizon and oc.series_forecast)
        ):
            raise ValueError(
                f"series source {src.name!r} trains through objectives.masked or "
                "objectives.pooled, or, with a horizon, objectives.series_forecast: set one > 0"
            )
    if "series" in kinds and cfg.data.loader.backend == "dali":
        raise ValueError("data.loader.backend=dali reads grids only: use torch")
    if len(srcs) > 1 and cfg.data.loader.backend == "dali":
        raise ValueError("data.loader.backend=dali reads one source: use torch to mix sources")
    if cfg.data.train_fraction < 1 and cfg.data.loader.backend == "dali":
        raise ValueError("data.train_fraction < 1 needs data.loader.backend=torch")
    first = srcs[0].splits or cfg.data.splits
    if cfg.eval.every and first.val is None:
        raise ValueError(
            f"eval.every={cfg.eval.every} validates on the first source, whose own splits "
            "have no val block: add data.sources.0.splits.val"
        )


__all__ = ["check_trainable"]
