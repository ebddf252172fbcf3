"""A run's data: the store it ingests, the variable registry across sources, and the training,
validation and test datasets and the training stream.

Grid sources train the forecast (and masked/pooled) objectives; series sources (waveforms,
station series) the masked and pooled ones, and with a ``horizon`` the series forecast. The first
source gives validation, test and exports (``scigpt.trainable``): a grid, its store; or, in a
series-forecasting run, a series source, its forecast windows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from scigpt.config import RunConfig
from scigpt.config_loader import LoadedConfig
from scigpt.data_pipeline.downscale import DownscaleDataset, block_dataset
from scigpt.data_pipeline.ingest.base import format_kind
from scigpt.data_pipeline.loader import (
    ForecastDataset,
    SeriesWindowDataset,
    build_loader,
    collate_forecast,
    collate_series,
)
from scigpt.data_pipeline.mixing import MixedDataset, MixingBatchSampler
from scigpt.data_pipeline.store import GridStore, PatchStore
from scigpt.prepare import IngestRejected, prepare_from_config


def ingest(loaded: LoadedConfig, store_dir, *, progress: bool) -> None:
    """Prepare the run's store (rank 0; a no-op when its manifest is current)."""
    manifest = prepare_from_config(loaded, store_dir, progress=progress)
    if manifest and manifest["rejects"]:
        raise IngestRejected.of(manifest["rejects"])


@dataclass
class Registry:
    """Every source's variables in one registry, in config order (the first source's ids are
    its store indices); each source's batches carry their variables' registry ids."""

    names: list[str]
    dicts: list[dict[str, Any]]  # registry entries (a checkpoint's ``variables``)
    stats: dict[str, list[float]]  # name -> [mean, std] of every registry variable
    # source -> (its variables, mean, std), config order
    sources: dict[str, tuple[list, np.ndarray, np.ndarray]]
    new_ids: list[int] = field(default_factory=list)  # a fine-tune's variables new to the package


@dataclass
class RunData:
    """The opened stores, the registry and the datasets of a run."""

    cfg: RunConfig
    stores: dict[str, GridStore]
    patch_store: PatchStore | None
    is_series: dict[str, bool]
    registry: Registry
    train_dss: list = field(default_factory=list)
    collates: list = field(default_factory=list)
    test_ds: ForecastDataset | None = None
    val_ds: ForecastDataset | None = None
    series_test: dict[str, SeriesWindowDataset] = field(default_factory=dict)

    @property
    def series_first(self) -> bool:
        """A series-forecasting run: the first source is a series (``scigpt.trainable``)."""
        return self.is_series[self.cfg.data.sources[0].name]

    @property
    def store(self) -> GridStore:
        """The first source's store: evaluation, plots and exports use it."""
        if self.series_first:
            raise ValueError("a series-forecasting run has no grid store")
        return self.stores[self.cfg.data.sources[0].name]

    @property
    def lead(self) -> int:
        task = self.cfg.data.task
        return 0 if task == "operator" else 1 if task == "downscale" else self.cfg.data.lead

    @property
    def grid_lat(self) -> Any:
        """Latitudes of the scored grid's rows (a downscale crop's rows; else the store's)."""
        return self.test_ds.lat if self.cfg.data.task == "downscale" else self.store.lat

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the model's input grid."""
        if self.cfg.data.task == "downscale":
            return self.test_ds.shape
        return len(self.store.lat), len(self.store.lon)

    def source_stats(self) -> dict[str, dict[str, Any]]:
        return {
            n: {"variables": [v.name for v in vs], "mean": m.tolist(), "std": sd.tolist()}
            for n, (vs, m, sd) in self.registry.sources.items()
        }


def open_data(cfg: RunConfig, store_dir) -> RunData:
    """Open the stores and build the registry across sources. Shards are verified lazily (each
    one's sha256 the first time a process reads it); ``on_corrupt: skip`` hashes all at open."""
    lc = cfg.data.loader
    is_series = {src.name: format_kind(src.format) != "grid" for src in cfg.data.sources}
    stores = {
        src.name: GridStore(store_dir, source=src.name, on_corrupt=lc.on_corrupt)
        for src in cfg.data.sources
        if not is_series[src.name]
    }
    patch_store = None
    if any(is_series.values()):
        patch_store = PatchStore(store_dir, on_corrupt=lc.on_corrupt)
    src_vars: dict[str, tuple[list, np.ndarray, np.ndarray]] = {}
    for src in cfg.data.sources:
        if is_series[src.name]:
            mean, std = patch_store.stats(src.name)
            src_vars[src.name] = (patch_store.variables(src.name), mean, std)
        else:
            st = stores[src.name]
            src_vars[src.name] = (st.variables, st.mean, st.std)
    registry: list = []
    for variables, _, _ in src_vars.values():
        registry += [v for v in variables if v.name not in {r.name for r in registry}]
    var_stats = {
        v.name: [float(mean[i]), float(std[i])]
        for variables, mean, std in reversed(list(src_vars.values()))
        for i, v in enumerate(variables)
    }
    reg = Registry(
        names=[v.name for v in registry], dicts=[v.to_dict() for v in registry], stats=var_stats,
        sources=src_vars,
    )  # fmt: skip
    return RunData(cfg=cfg, stores=stores, patch_store=patch_store, is_series=is_series,
                   registry=reg)  # fmt: skip


def _subset(ds, fraction: float):
    """The first ceil(fraction · n) samples of one fixed permutation (seed 0, independent of the
    run's seed): nested across fractions, so a data axis adds samples and never swaps them."""
    n = len(ds)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    keep = sorted(order[: max(1, math.ceil(fraction * n))].tolist())
    return torch.utils.data.Subset(ds, keep)


def build_datasets(data: RunData) -> None:
    """The training datasets of every source, and the first source's validation and test
    datasets (plus each series source's test windows), at the registry's ids."""
    cfg = data.cfg
    reg_names = data.registry.names
    history, lead = cfg.data.history, data.lead
    operator = cfg.data.task == "operator"

    def outputs_of(st) -> list[str] | None:
        if not operator:
            return None
        outs = [n for n in cfg.data.operator_outputs if n in st.names]
        if not outs:
            raise ValueError(
                f"source {st.source!r} has none of data.operator_outputs "
                f"{cfg.data.operator_outputs} (it has {st.names})"
            )
        return outs

    oc = cfg.objectives
    pooled_targets = oc.pooled_targets if oc.pooled else []
    if cfg.data.task == "downscale":
        _build_downscale(data)
        return

    def series_dataset(src, block: str):
        splits = src.splits or cfg.data.splits
        return SeriesWindowDataset(
            data.patch_store, src.name, time_range=getattr(splits, block).bounds(),
            targets=pooled_targets,
            var_ids=[reg_names.index(v.name) for v in data.registry.sources[src.name][0]],
            gap=None if block == "train" else splits.gap_ns(), horizon=src.horizon,
            tokenizer=src.tokenizer,
        )  # fmt: skip

    for src in cfg.data.sources:
        if data.is_series[src.name]:
            data.train_dss.append(series_dataset(src, "train"))
            data.collates.append(collate_series)
            continue
        splits = src.splits or cfg.data.splits
        st = data.stores[src.name]
        data.train_dss.append(
            ForecastDataset(
                st,
                time_range=splits.train.bounds(),
                history=history,
                lead=lead,
                var_ids=[reg_names.index(n) for n in st.names],
                outputs=outputs_of(st),
            )
        )
        data.collates.append(collate_forecast)
    empty = [
        src.name for src, d in zip(cfg.data.sources, data.train_dss, strict=True) if not len(d)
    ]
    if empty:
        raise ValueError(
            f"sources {empty} have no training samples in their train block: widen "
            "data.splits.train (or the source's own splits), or shorten history/lead"
        )
    if cfg.data.train_fraction < 1:
        data.train_dss = [_subset(d, cfg.data.train_fraction) for d in data.train_dss]
    if data.series_first:
        _series_blocks(data, series_dataset)
        return
    store = data.store
    first_splits = cfg.data.sources[0].splits or cfg.data.splits
    gap = first_splits.gap_ns()  # val/test samples start this long after their block's start
    store_ids = [reg_names.index(n) for n in store.names]  # registry ids (fine-tunes reorder)
    data.test_ds = ForecastDataset(
        store, time_range=first_splits.test.bounds(), history=history, lead=lead, gap=gap,
        outputs=outputs_of(store), var_ids=store_ids,
    )  # fmt: skip
    data.series_test = {
        src.name: series_dataset(src, "test")
        for src in cfg.data.sources
        if data.is_series[src.name]
    }
    if len(data.train_dss[0]) == 0 or len(data.test_ds) == 0:
        raise ValueError(
            f"splits leave {len(data.train_dss[0])} training and {len(data.test_ds)} test "
            f"samples with history={history}, lead={lead}: widen data.splits or shorten "
            "history/lead"
        )
    if cfg.eval.every:  # check_trainable: the first source has a val block
        data.val_ds = ForecastDataset(
            store, time_range=first_splits.val.bounds(), history=history, lead=lead,
            gap=gap, outputs=outputs_of(store), var_ids=store_ids,
        )  # fmt: skip


def _series_blocks(data: RunData, series_dataset) -> None:
    """A series-forecasting run: the first source's test (and validation) forecast windows;
    every series source's test windows for their own scores."""
    cfg = data.cfg
    first = cfg.data.sources[0]
    data.test_ds = series_dataset(first, "test")
    data.series_test = {src.name: series_dataset(src, "test") for src in cfg.data.sources[1:]}
    if len(data.test_ds) == 0:
        raise ValueError(
            f"source {first.name!r} has no forecast window (window={first.window or 1200} "
            "samples) inside its test block: widen the test block or shorten the window"
        )
    if cfg.eval.every:
        data.val_ds = series_dataset(first, "val")
        if len(data.val_ds) == 0:
            raise ValueError(
                f"source {first.name!r} has no forecast window inside its val block: widen it "
                "or shorten the window"
            )


def _build_downscale(data: RunData) -> None:
    """A downscale run: the first (grid) source's blocks as downscaling samples."""
    cfg = data.cfg
    if len(cfg.data.sources) > 1:
        raise ValueError(
            "data.task=downscale trains on one grid source: list one source in data.sources"
        )
    store = data.store
    splits = cfg.data.sources[0].splits or cfg.data.splits

    def block(name: str) -> DownscaleDataset:
        return block_dataset(
            store, cfg.data.downscale, splits, name, seed=cfg.seed,
            patch_size=cfg.model.patch_size,
            var_ids=[data.registry.names.index(n) for n in store.names],
        )  # fmt: skip

    data.train_dss.append(block("train"))
    data.collates.append(collate_forecast)
    if cfg.data.train_fraction < 1:
        data.train_dss = [_subset(d, cfg.data.train_fraction) for d in data.train_dss]
    data.test_ds = block("test")
    if cfg.eval.every:
        data.val_ds = block("val")


def training_stream(
    data: RunData, sampler: MixingBatchSampler, *, device: torch.device
) -> Iterator[dict[str, Any]]:
    """The training micro-batches in the sampler's order: DALI (a finite plan of the run's
    micro-batches, drawn from the same sampler) or the PyTorch loader over the mixed sources."""
    cfg, lc = data.cfg, data.cfg.data.loader
    if lc.backend == "dali":
        from scigpt.data_pipeline.dali import DaliForecastLoader  # optional: NVIDIA DALI

        plan = list(itertools.islice(iter(sampler), cfg.schedule.steps * cfg.schedule.grad_accum))
        return iter(
            DaliForecastLoader(
                data.train_dss[0],
                plan,
                num_threads=max(1, lc.num_workers),
                device="gpu" if device.type == "cuda" else "cpu",
                parallel=lc.num_workers > 0,
                num_workers=max(1, lc.num_workers),
                prefetch_queue_depth=lc.prefetch_factor,
            )
        )
    mixed = MixedDataset(data.train_dss, data.collates)
    pin = lc.pin_memory and device.type == "cuda"
    return iter(build_loader(mixed, sampler, lc, pin_memory=pin))


def batch_sampler(
    data: RunData, *, dp_rank: int, dp: int, state: dict | None
) -> MixingBatchSampler:
    """The resumable, rank-elastic mixing sampler (one source per micro-batch): data-parallel
    ranks draw disjoint samples, tensor/pipeline peers the same ones."""
    cfg, lc = data.cfg, data.cfg.data.loader
    return MixingBatchSampler(
        [len(d) for d in data.train_dss],
        [src.weight for src in cfg.data.sources],
        batch_size=cfg.schedule.micro_batch_size,
        rank=dp_rank,
        world_size=dp,
        seed=cfg.seed,
        shuffle=lc.shuffle,
        policy=lc.policy,
        state=state,
    )


__all__ = [
    "Registry",
    "RunData",
    "batch_sampler",
    "build_datasets",
    "ingest",
    "open_data",
    "training_stream",
]
