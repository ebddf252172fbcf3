"""Series forecasting settings: a series source's ``tokenizer``, ``bins`` and ``horizon``, and the
checks that tie them to the model and the objectives (``scigpt.models.series_tokens``,
``objectives.series_forecast``).

Its own module so that ``scigpt.config`` stays one screenful of concepts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

PAD_ID, EOS_ID, N_SPECIAL = 0, 1, 2


@dataclass(frozen=True)
class BinSettings:
    """The tokenizer's settings (exported with a model package)."""

    n_tokens: int = 4096  # the vocabulary: N_SPECIAL special tokens + bins
    low: float = -15.0  # centre of the lowest bin, in units of the context's mean |x|
    high: float = 15.0  # centre of the highest bin

    def __post_init__(self) -> None:
        if self.n_tokens < N_SPECIAL + 3:
            raise ValueError(
                f"bins.n_tokens={self.n_tokens} leaves fewer than 2 bins after the "
                f"{N_SPECIAL} special tokens: use at least {N_SPECIAL + 3} (Chronos: 4096)"
            )
        if not self.low < self.high:
            raise ValueError(f"bins.low={self.low} must be below bins.high={self.high}")

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "pad_id": PAD_ID, "eos_id": EOS_ID, "n_special": N_SPECIAL}


# ``scigpt.config`` imports this module, so its RunConfig and SourceConfig are typed Any here.
RunConfig = SourceConfig = Any


class BinsConfig(BaseModel):
    """``tokenizer: bins``: Chronos's mean-scale uniform bins (defaults: Chronos's 4096 tokens
    over ±15 mean absolute values)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, validate_default=True, allow_inf_nan=False
    )

    n_tokens: Annotated[int, Field(ge=N_SPECIAL + 3)] = 4096
    low: float = -15.0
    high: float = 15.0

    @model_validator(mode="after")
    def _ordered(self) -> BinsConfig:
        if not self.low < self.high:
            raise ValueError(f"bins.low={self.low} must be below bins.high={self.high}")
        return self

    def settings(self) -> BinSettings:
        return BinSettings(n_tokens=self.n_tokens, low=self.low, high=self.high)


def check_series_source(src: SourceConfig, series_format: bool) -> None:
    """A source's own series-forecasting keys (``SourceConfig``'s validator)."""
    name = src.name
    if not series_format and (src.tokenizer != "patch" or src.bins or src.horizon):
        raise ValueError(
            f"source {name!r}: tokenizer, bins and horizon apply to series formats only"
        )
    if src.bins is not None and src.tokenizer != "bins":
        raise ValueError(f"source {name!r}: bins is set but tokenizer is {src.tokenizer!r}: "
                         "set tokenizer: bins or remove bins")  # fmt: skip
    if src.tokenizer == "bins" and not src.horizon:
        raise ValueError(
            f"source {name!r}: tokenizer: bins trains through the series forecast (cross-entropy "
            "over the horizon's tokens): set horizon (samples to forecast)"
        )
    window = src.window or 1200
    if src.horizon and src.horizon >= window:
        raise ValueError(
            f"source {name!r}: horizon={src.horizon} leaves no context in window={window}: "
            "the window is context + horizon; lengthen the window"
        )


def forecast_sources(cfg: RunConfig) -> list[SourceConfig]:
    return [s for s in cfg.data.sources if s.horizon]


def model_bins(cfg: RunConfig) -> BinSettings | None:
    """The one bin vocabulary of the run's binned sources (they must agree), or None."""
    found = {(s.bins or BinsConfig()).settings() for s in cfg.data.sources if s.tokenizer == "bins"}
    if len(found) > 1:
        raise ValueError(
            f"sources with tokenizer: bins use different bins {sorted(map(str, found))}: one "
            "model has one vocabulary; give them the same bins"
        )
    return next(iter(found), None)


def series_spec_fields(sources: list[dict[str, Any]], objectives: dict[str, Any]) -> dict[str, Any]:
    """``ModelSpec``'s series fields from a run config's sources and objectives (as JSON, so an
    exported run config gives the same): the bin vocabulary of binned sources, and quantile
    levels when a patch source forecasts."""
    forecasting = [s for s in sources if s.get("horizon")]
    binned = [s for s in forecasting if s.get("tokenizer") == "bins"]
    bins = BinsConfig.model_validate(binned[0].get("bins") or {}).settings() if binned else None
    patch = any(s.get("tokenizer", "patch") == "patch" for s in forecasting)
    levels = tuple(objectives.get("quantiles") or ()) if patch else ()
    return {"bins": bins, "quantiles": levels}


def check_series_run(cfg: RunConfig) -> None:
    """``RunConfig``'s checks across sources, model and objectives."""
    p = cfg.model.series_patch
    oc = cfg.objectives
    forecasting = forecast_sources(cfg)
    for s in forecasting:
        window = s.window or 1200
        if s.horizon % p or window % p:
            raise ValueError(
                f"source {s.name!r}: window={window} and horizon={s.horizon} must be multiples "
                f"of model.series_patch={p} (whole tokens of context and horizon)"
            )
    if forecasting and not oc.series_forecast:
        raise ValueError(
            f"sources {[s.name for s in forecasting]} set a horizon but "
            "objectives.series_forecast is 0: give it a weight (e.g. 1.0) or remove horizon"
        )
    if oc.series_forecast and not forecasting:
        raise ValueError(
            "objectives.series_forecast > 0 needs a series source with a horizon (samples to "
            "forecast): set data.sources.N.horizon"
        )
    model_bins(cfg)
    if oc.series_forecast and (cfg.parallel.pp > 1 or cfg.parallel.sp > 1 or cfg.parallel.tp > 1):
        raise ValueError(
            "objectives.series_forecast trains with parallel.tp=pp=sp=1 (series windows are "
            "short sequences of a small model): use data parallelism and ZeRO"
        )


__all__ = ["BinsConfig", "check_series_run", "check_series_source", "forecast_sources",
           "model_bins", "series_spec_fields"]  # fmt: skip
