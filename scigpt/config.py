"""Typed run configuration.

Why pydantic v2 rather than dataclasses: we need strict validation with the exact location of
every error (``model.depth``), ``extra="forbid"`` for unknown keys at every depth, coercion-free
types (``steps: "many"`` must fail, not become NaN), and a JSON dump of the resolved config for
run directories and checkpoints. Dataclasses would need all of that hand-written.

Cross-field checks that name both keys and the fix live in ``model_validator`` methods; checks that
need the world size (``dp * tp * pp == world``) live in ``scigpt.parallel.topology``. The layout
rules are stated once, in ``scigpt.layout_rules``: this module asks them too.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scigpt.config_downscale import DownscaleConfig, check_downscale_task
from scigpt.config_series import BinsConfig, check_series_run, check_series_source
from scigpt.data_pipeline.ingest.base import READERS, format_kind
from scigpt.data_pipeline.units import known_units, parse_units
from scigpt.layout_rules import check_layout
from scigpt.rundir import MAX_RUN_NAME, STAMP_CHARS

PositiveInt = Annotated[int, Field(gt=0)]

# The names ``model.attention`` may take: scigpt.models.attention's own functions and the kernels
# scigpt.parallel.parallelize registers. Stated here so the config (the foundation every layer
# reads) imports no model or kernel code; tests/test_layout_rules.py checks it equals the
# registry once the kernels are registered.
ATTENTION_NAMES = ("math", "sdpa", "triton")
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
MAX_SEED = 2**63 - 2**20  # torch.manual_seed takes < 2**64; leave room for seed + rank


class _Strict(BaseModel):
    # strict=True: no silent "3" -> 3 coercion; YAML already gives real ints/floats/bools.
    # allow_inf_nan=False: YAML's .inf/.nan are never a valid learning rate, weight or ratio.
    model_config = ConfigDict(
        extra="forbid", strict=True, validate_default=True, allow_inf_nan=False
    )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class TimeRange(_Strict):
    """Inclusive range of timestamps (ISO 8601 strings in YAML)."""

    start: datetime
    end: datetime

    def bounds(self) -> tuple[Any, Any]:
        """``(start, end)`` as naive ``numpy.datetime64[ns]`` (what stores and datasets take)."""
        return (
            np.datetime64(self.start.replace(tzinfo=None), "ns"),
            np.datetime64(self.end.replace(tzinfo=None), "ns"),
        )

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if self.end < self.start:
            raise ValueError(
                f"end={self.end.isoformat()} is before start={self.start.isoformat()}: "
                "swap them or fix the dates"
            )
        return self


class SplitsConfig(_Strict):
    """Time-blocked splits: a sample belongs to a split when all its frames lie inside it."""

    train: TimeRange
    val: TimeRange | None = None
    test: TimeRange
    # Samples of a block after another start at least this long after the block's start, so
    # neighbouring samples of different splits are this far apart (ISO 8601 "PT6H" or seconds).
    gap: timedelta = timedelta(0)

    def gap_ns(self) -> Any:
        """``gap`` as a ``numpy.timedelta64[ns]`` (what the datasets take)."""
        return np.timedelta64(round(self.gap.total_seconds() * 1e9), "ns")

    @model_validator(mode="after")
    def _ordered_blocks(self) -> SplitsConfig:
        blocks = [("train", self.train), ("val", self.val), ("test", self.test)]
        blocks = [(n, b) for n, b in blocks if b is not None]
        for (na, a), (nb, b) in itertools.pairwise(blocks):
            if a.end > b.start:
                raise ValueError(
                    f"splits.{na}.end={a.end.isoformat()} is after splits.{nb}.start="
                    f"{b.start.isoformat()}: blocks must follow each other in time "
                    f"({na} before {nb}), or samples leak between them"
                )
        if self.gap < timedelta(0):
            raise ValueError(f"splits.gap={self.gap} is negative: use 0 or a positive duration")
        return self


class SourceConfig(_Strict):
    """One raw data source to ingest (``scigpt prepare``; also run by ``train`` if needed)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # A reader of scigpt.data_pipeline.ingest (netcdf, grib, zarr, geotiff, modis_hdf4,
    # hdf5_grid, mseed, sac, segy, seisbench, ghcn, camels, fluxnet, pde).
    format: str = "netcdf"
    # A file, a folder or a glob. Relative paths resolve against the config file's folder;
    # ``pkg:...`` resolves inside the installed scigpt package (the shipped sample data).
    # Generated sources (pde) have none.
    path: str | None = Field(default=None, min_length=1)
    variables: list[str] | None = None  # passed to the reader's `variables` option
    options: dict[str, Any] = {}  # the reader's keyword options (checked at ingest)
    # One work unit per file, all files in one, files grouped by time ("time": ERA5 one variable
    # per file over days/months/years), or one unit per day/month/year (netcdf, zarr).
    unit: Literal["file", "all", "time", "day", "month", "year"] = "file"
    # Grid tokens: [pt, ph, pw] tubelets (default [1, 4, 4]); series: [samples per token] (50).
    patch: list[PositiveInt] | None = None
    window: PositiveInt | None = None  # series: samples per window (default 1200)
    stride: PositiveInt | None = None  # series: window stride (default: window)
    partial: Literal["pad", "drop"] = "pad"  # series: trailing partial window
    require_coordinates: bool = True  # refuse series without lat/lon (the tokenizer needs them)
    # Series forecasting (scigpt.config_series): Chronos-style tokens or real-valued patches,
    # and the samples each window ends with that objectives.series_forecast predicts.
    tokenizer: Literal["patch", "bins"] = "patch"
    bins: BinsConfig | None = None
    horizon: PositiveInt | None = None
    samples_per_unit: PositiveInt = 64  # generated sources: samples per work unit
    # A unit (file) whose read gives no result within this many seconds is stopped and
    # rejected (a hung read); each unit is read in its own worker process (scigpt prepare).
    unit_timeout_s: PositiveFloat = 3600.0
    weight: Annotated[float, Field(ge=0)] = 1.0  # share of micro-batches drawn from this source
    # Shard filter: lzf reads back fastest; gzip is readable by any HDF5 tool; none is largest.
    compression: Literal["lzf", "gzip", "none"] = "lzf"
    # This source's own time blocks (e.g. a seismic catalogue from other years than the
    # reanalysis); default: data.splits. Its normalisation statistics come from its train block.
    splits: SplitsConfig | None = None
    # Per-variable units that replace (or supply) a file's units attribute: {emis_31: "1"}.
    # Readers with file units attributes only (modis_hdf4, hdf5_grid); names are checked at ingest.
    units: dict[str, str] | None = None
    # Values outside their variable's plausible physical range (> 0.1 %): reject the unit
    # (default), warn (keep it, record the finding in its record and the manifest), or off.
    plausibility: Literal["reject", "warn", "off"] = "reject"

    @field_validator("units")
    @classmethod
    def _known_units(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for name, spelling in (v or {}).items():
            if parse_units(spelling) is None:
                raise ValueError(
                    f"units.{name}={spelling!r} is not a known unit; known (aliases accepted): "
                    f"{known_units()}"
                )
        if v is not None and not v:
            raise ValueError("units is empty: map variable names to units or omit the key")
        return v

    @field_validator("variables")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            seen: set[str] = set()
            dup = sorted({x for x in v if x in seen or seen.add(x)})
            if dup:
                raise ValueError(f"variables listed twice: {dup}; list each variable once")
            if not v:
                raise ValueError("variables is empty: list at least one or omit the key for all")
        return v

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in READERS:
            raise ValueError(f"unknown format {v!r}: choose one of {sorted(READERS)}")
        return v

    @model_validator(mode="after")
    def _shape(self) -> SourceConfig:
        if self.path is None and self.format != "pde":
            raise ValueError(f"source {self.name!r} (format {self.format}) needs a path")
        if self.units is not None and self.format not in ("modis_hdf4", "hdf5_grid"):
            raise ValueError(
                f"source {self.name!r}: units applies to formats whose files carry units "
                f"attributes (modis_hdf4, hdf5_grid); {self.format} takes its units from its "
                "variable tables"
            )
        if format_kind(self.format) == "grid":
            if self.patch is not None and len(self.patch) != 3:
                raise ValueError(
                    f"source {self.name!r}: patch={self.patch} must be [pt, ph, pw] for a "
                    "gridded format"
                )
            if self.window is not None:
                raise ValueError(f"source {self.name!r}: window applies to series formats only")
        else:
            if self.patch is not None and len(self.patch) != 1:
                raise ValueError(
                    f"source {self.name!r}: patch={self.patch} must be [samples per token] "
                    "for a series format"
                )
            window, patch = self.window or 1200, (self.patch or [50])[0]
            if window % patch:
                raise ValueError(
                    f"source {self.name!r}: window={window} is not a multiple of "
                    f"patch={patch}: choose a window of whole tokens"
                )
        check_series_source(self, format_kind(self.format) != "grid")
        return self


class LoaderConfig(_Strict):
    backend: Literal["torch", "dali"] = "torch"
    num_workers: NonNegInt = 0
    pin_memory: bool = True  # used when CUDA is available
    prefetch_factor: PositiveInt = 4  # batches per worker in flight
    shuffle: bool = True
    # Samples that do not fill the last global batch of an epoch: "pad" with repeats from the
    # epoch's start (every sample seen each epoch) or "drop" the tail.
    policy: Literal["pad", "drop"] = "pad"
    on_corrupt: Literal["fail", "skip"] = "fail"  # a shard failing its sha256 check


class DataConfig(_Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    # Where the ingested store goes; default: <run dir>/store.
    store: str | None = None
    splits: SplitsConfig
    loader: LoaderConfig = LoaderConfig()
    history: PositiveInt = 2  # input frames per sample (current + previous)
    lead: PositiveInt = 1  # forecast lead in time steps
    # Fraction of the training samples the run may use (a fixed, seed-independent random
    # subset, nested: a smaller fraction's samples are inside every larger one's). Scaling
    # sweeps vary it as their data axis.
    train_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    # forecast: frames t-history+1..t → frame t+lead. operator: one frame's operator_outputs
    # (e.g. a PDE solution pde_u) from its other variables (source, coefficients): history 1.
    # downscale: a fine frame from its degraded coarse version (data.downscale): history 1.
    task: Literal["forecast", "operator", "downscale"] = "forecast"
    operator_outputs: list[str] = []
    downscale: DownscaleConfig | None = None

    @model_validator(mode="after")
    def _unique_sources(self) -> DataConfig:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"sources have duplicate names {names}: give each a unique name")
        if self.task == "operator" and (self.history != 1 or not self.operator_outputs):
            raise ValueError(
                "data.task=operator maps one frame to its outputs: set data.history: 1 and "
                "data.operator_outputs (e.g. [pde_u])"
            )
        if self.task in ("operator", "downscale") and self.loader.backend == "dali":
            raise ValueError(f"data.task={self.task} reads through data.loader.backend=torch")
        check_downscale_task(self.task, self.downscale, self.history)
        return self


class ModelConfig(_Strict):
    # Name of a preset in configs/models/ (merged under the keys given here by the loader).
    preset: str | None = None
    patch_size: PositiveInt = 4
    embed_dim: PositiveInt = 96
    depth: PositiveInt = 3
    heads: PositiveInt = 4
    mlp_ratio: PositiveFloat = 4.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    residual: bool = True  # predict the change from the last input frame
    attention: str = "sdpa"  # name in scigpt.models.attention's registry (sdpa, math, triton)
    # Grid patch embedding: the PyTorch module, or the fused Triton kernel (same parameters, so
    # checkpoints are interchangeable; scigpt.kernels.patch_embed).
    patch_embed: Literal["reference", "triton"] = "reference"
    series_patch: PositiveInt = 50  # samples per token of waveform/series windows

    @field_validator("attention")
    @classmethod
    def _known_attention(cls, v: str) -> str:
        known = list(ATTENTION_NAMES)
        if v not in known:
            raise ValueError(f"unknown attention {v!r}: choose one of {known}")
        return v

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.embed_dim % self.heads:
            raise ValueError(
                f"model.embed_dim={self.embed_dim} is not divisible by model.heads={self.heads}: "
                f"choose heads from {_divisors(self.embed_dim)}"
            )
        head_dim = self.embed_dim // self.heads
        if self.attention == "triton" and head_dim not in (32, 64, 128):
            raise ValueError(
                f"model.attention='triton' supports head dims 32, 64 and 128; "
                f"model.embed_dim={self.embed_dim} / model.heads={self.heads} = {head_dim}: "
                "change heads, or use attention: sdpa"
            )
        return self


class ObjectivesConfig(_Strict):
    """Weights of the training objectives (0 disables one); see scigpt.models.objectives."""

    forecast: Annotated[float, Field(ge=0)] = 1.0
    masked: Annotated[float, Field(ge=0)] = 0.0  # MAE-style masked-patch reconstruction
    mask_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.5
    pooled: Annotated[float, Field(ge=0)] = 0.0  # per-sample targets from pooled tokens
    pooled_kind: Literal["regression", "classification"] = "regression"
    pooled_targets: list[str] = []  # per-record attributes, e.g. [source_magnitude]
    pooled_classes: PositiveInt | None = None  # classification: number of classes
    variable_weights: dict[str, Annotated[float, Field(ge=0)]] = {}  # canonical name → weight
    # series sources with a horizon: forecast it (scigpt.models.objectives.series_forecast);
    # quantiles: the levels the patch tokenizer's head predicts (pinball loss)
    series_forecast: Annotated[float, Field(ge=0)] = 0.0
    # (tails included: the CRPS and the draws need more than the 0.1-0.9 of Chronos's WQL)
    quantiles: list[Annotated[float, Field(gt=0, lt=1)]] = [
        0.02,
        0.05,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        0.95,
        0.98,
    ]

    @model_validator(mode="after")
    def _something(self) -> ObjectivesConfig:
        if not (self.forecast or self.masked or self.pooled or self.series_forecast):
            raise ValueError(
                "objectives: every weight is 0: enable forecast, masked, pooled or series_forecast"
            )
        if sorted(set(self.quantiles)) != self.quantiles or 0.5 not in self.quantiles:
            raise ValueError(f"objectives.quantiles={self.quantiles}: list increasing levels in "
                             "(0, 1) without repeats, 0.5 (the median) among them")  # fmt: skip
        if self.pooled and not self.pooled_targets:
            raise ValueError("objectives.pooled > 0 needs objectives.pooled_targets")
        classes = self.pooled_classes or 0
        if (
            self.pooled
            and self.pooled_kind == "classification"
            and (len(self.pooled_targets) != 1 or classes < 2)
        ):
            raise ValueError(
                "objectives.pooled_kind=classification takes one pooled_targets attribute "
                "(integer class labels) and objectives.pooled_classes >= 2"
            )
        return self


class ParallelConfig(_Strict):
    # dp is derived: world_size / (tp * pp * sp). Checked against the world in parallel.topology.
    tp: PositiveInt = 1
    pp: PositiveInt = 1
    # Ulysses sequence parallelism (scigpt.parallel.sequence): each sample's tokens are cut by
    # patch rows over sp ranks; attention all-to-alls heads <-> tokens (heads % (sp*tp) == 0).
    sp: PositiveInt = 1
    zero_stage: Literal[0, 1, 2, 3] = 1
    # Recompute activations in backward: none, selective (attention core and MLP activation;
    # Korthikanti et al. 2022) or full (whole blocks).
    activation_checkpointing: Literal["none", "selective", "full"] = "none"
    # How pipeline stages are cut: balanced parameter counts (DeepSpeed's default; memory),
    # balanced block counts (compute, Megatron-style), or equal layer counts.
    pp_partition: Literal["parameters", "blocks", "uniform"] = "parameters"
    # ZeRO communication bucket in elements; None: min(5e8, parameter count).
    bucket_elements: PositiveInt | None = None


class OptimConfig(_Strict):
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.05
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.95,
    )
    eps: PositiveFloat = 1e-8
    grad_clip: Annotated[float, Field(ge=0)] = 1.0  # 0 disables clipping


class ScheduleConfig(_Strict):
    steps: PositiveInt = 300
    warmup_steps: NonNegInt = 20
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    micro_batch_size: PositiveInt = 8
    grad_accum: PositiveInt = 1

    @model_validator(mode="after")
    def _warmup_fits(self) -> ScheduleConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"schedule.warmup_steps={self.warmup_steps} must be smaller than "
                f"schedule.steps={self.steps}: lower the warm-up or train longer"
            )
        return self


class CheckpointConfig(_Strict):
    every: NonNegInt = 0  # steps between checkpoints; 0: only at the end
    keep_last: PositiveInt = 2  # retention: the newest N ...
    keep_every: NonNegInt = 0  # ... plus every K-th step (0: none), plus the best


class GuardsConfig(_Strict):
    """Numerical guards: a step whose loss or gradients are not finite is skipped (counted and
    logged); ``rollback_after`` such steps in a row reload the last checkpoint and carry on with
    the next data (0: never roll back; the run fails instead)."""

    skip_nonfinite: bool = True
    rollback_after: NonNegInt = 3


class LoggingConfig(_Strict):
    every: PositiveInt = 10
    tensorboard: bool = True
    # Experiment trackers (the `tracking` extra), both beside the run: MLflow in a SQLite store
    # per run (RUN_DIR/mlflow.db), Weights & Biases offline in RUN_DIR/wandb (`wandb sync` it).
    mlflow: bool = False
    wandb: bool = False
    progress: bool = True
    # Peak dense TFLOP/s of one device in the run's precision, for MFU. None: detect from the
    # device name; unknown devices (CPUs) report no MFU.
    peak_tflops: PositiveFloat | None = None


class ConstraintConfig(_Strict):
    """A linear conservation constraint ``G u = b`` applied by ProbConserve
    (``scigpt.eval.conserve``, through ``scigpt.eval.ensemble.apply_constraints``) when an
    ensemble is evaluated: the total (sum over the grid's cells) of the forecast ``variable``
    equals the total of ``initial`` in the input frame (the initial state: ``pde_u0`` for
    ``pde_u``; default the same variable, a conserved quantity carried forward) plus ``flux``
    (the net boundary inflow over the forecast; 0 for no-flux boundaries)."""

    type: Literal["mass"] = "mass"
    variable: str = Field(min_length=1)
    initial: str | None = None
    flux: float = 0.0


class EvalConfig(_Strict):
    plot_variable: str | None = None  # variable for the forecast-vs-truth map; default the first
    every: NonNegInt = 0  # validate on data.splits.val every N steps (0: never)
    # validation metric for the best checkpoint and early stopping (lower is better)
    metric: Literal["rmse_model", "model_mse"] = "rmse_model"
    early_stop_patience: NonNegInt = 0  # stop after N validations without improvement (0: off)
    # scigpt evaluate: the split scored, autoregressive model calls per forecast, and the
    # climatology for ACC (a netCDF/Zarr file with dims dayofyear, hour; default: computed
    # from the training split, refused when it does not cover the evaluated times)
    split: Literal["test", "val"] = "test"
    horizon: PositiveInt = 1
    climatology: str | None = None
    acc: bool = True  # false: no ACC (and no climatology needed)
    # ensembles: each score with and without ProbConserve under these constraints (ConstraintConfig)
    constraints: list[ConstraintConfig] = []


class SelectionConfig(_Strict):
    """Model selection on the validation block (``scigpt demo --select``): each candidate (a few
    config settings, written down before any result is seen) trains at each seed; the candidate
    with the lowest mean best-validation ``eval.metric`` wins. The test block plays no part in
    the choice: every run is scored on it once, at its best validation checkpoint."""

    candidates: list[dict[str, Any]] = []  # each: {config key: value} overrides
    seeds: list[NonNegInt] = [0, 1, 2]

    @field_validator("candidates")
    @classmethod
    def _settings_only(cls, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, cand in enumerate(candidates):
            if not cand:
                raise ValueError(f"selection.candidates.{i} is empty: give it a config setting")
            bad = [
                k
                for k in cand
                if k in ("seed", "name", "data", "eval") or k.startswith(("data.", "eval."))
            ]
            if bad:
                raise ValueError(
                    f"selection.candidates.{i} sets {bad}: candidates may not change the data, "
                    "its splits, the validation protocol or the seed (selection.seeds sets "
                    "those); choose settings such as optim.lr"
                )
        return candidates


class FinetuneConfig(_Strict):
    """Start from an exported model package (``scigpt finetune PACKAGE CONFIG`` sets
    ``package``). The model comes from the package; the data's variables absent from it are
    appended to its registry (zero gates: outputs unchanged at step 0)."""

    package: str | None = None
    # full: train everything; frozen: only the parts named in ``train`` (and new variables'
    # rows); lora: low-rank adapters on the blocks' linears plus the parts in ``train``.
    mode: Literal["full", "frozen", "lora"] = "full"
    train: list[str] = ["head"]  # model paths that stay trainable in frozen / lora mode
    lora_rank: PositiveInt = 8
    lora_alpha: PositiveFloat = 16.0
    # Forecast at a lead time the package has no head for (data.lead): add a zero-initialised
    # forecast head for it (starts at persistence), keep the package's heads; the exported
    # package forecasts with the new head. Off: the active head is trained for data.lead.
    lead_head: bool = False


class RuntimeConfig(_Strict):
    threads: PositiveInt | None = None  # torch intra-op threads; pinned for reproducibility
    deterministic: bool = True


class DiagnosticsConfig(_Strict):
    """HTSR weight diagnostics during training (``scigpt.diagnostics``; ``scigpt diagnose`` for
    checkpoints and packages): every ``every`` steps rank 0 logs the summary and each layer's α
    as a ``kind: diagnostics`` record, with its cost. 0: off."""

    every: NonNegInt = 0
    min_evals: PositiveInt = 50  # smaller matrices are reported as too small to fit
    workers: PositiveInt = 1  # layers analysed in parallel (threads)


class RunConfig(_Strict):
    """A whole run: everything needed to reproduce it lives in this one object."""

    # The default run name is <name>-<UTC time>: one directory name of at most MAX_RUN_NAME.
    name: str = Field(
        min_length=1, max_length=MAX_RUN_NAME - STAMP_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )
    # Seeds torch, NumPy and Python; torch takes 64 bits and each rank adds its rank.
    seed: Annotated[int, Field(ge=0, lt=MAX_SEED)] = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    data: DataConfig
    model: ModelConfig = ModelConfig()
    objectives: ObjectivesConfig = ObjectivesConfig()
    parallel: ParallelConfig = ParallelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    guards: GuardsConfig = GuardsConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    selection: SelectionConfig = SelectionConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        m, p = self.model, self.parallel
        # the layout rules (scigpt.layout_rules) that need no world size
        check_layout(
            tp=p.tp, pp=p.pp, sp=p.sp, zero_stage=p.zero_stage,
            activation_checkpointing=p.activation_checkpointing, heads=m.heads,
            embed_dim=m.embed_dim, mlp_ratio=m.mlp_ratio, depth=m.depth, precision=self.precision,
        )  # fmt: skip
        if self.eval.every and self.data.splits.val is None:
            raise ValueError(
                f"eval.every={self.eval.every} needs a validation block: add data.splits.val"
            )
        ft = self.finetune
        if self.diagnostics.every and (p.tp > 1 or p.pp > 1 or p.zero_stage == 3):
            raise ValueError(
                f"diagnostics.every={self.diagnostics.every} runs with parallel.tp=1, pp=1 and "
                "zero_stage <= 2 (rank 0 reads whole matrices): set diagnostics.every: 0 and "
                "run `scigpt diagnose RUN_DIR --step N` on the checkpoints"
            )
        if ft.package and ft.mode == "lora" and (p.tp > 1 or p.pp > 1 or p.zero_stage == 3):
            raise ValueError(
                "finetune.mode=lora runs with parallel.tp=1, pp=1 and zero_stage <= 2 (the "
                "adapters wrap whole linears): use data parallelism, or finetune.mode: frozen"
            )
        if ft.package and ft.mode == "frozen" and (p.pp > 1 or p.zero_stage == 3):
            raise ValueError(
                "finetune.mode=frozen needs parallel.pp=1 and zero_stage <= 2: use mode: full "
                "for pipeline or ZeRO-3 layouts"
            )
        if ft.lead_head and (p.pp > 1 or p.zero_stage == 3):
            raise ValueError(
                "finetune.lead_head needs parallel.pp=1 and zero_stage <= 2 (the new head is "
                "added to a whole model): use data or tensor parallelism"
            )
        if self.data.downscale is not None:
            self.data.downscale.check_crop(m.patch_size)
        check_series_run(self)
        if p.pp > 1 and (self.objectives.masked or self.objectives.pooled):
            raise ValueError(
                f"parallel.pp={p.pp} trains the forecast objective only; objectives.masked and "
                "objectives.pooled need the whole model on one rank: set them to 0 or use pp: 1 "
                "(tensor and data parallelism support every objective)"
            )
        return self
