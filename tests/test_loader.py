"""Loaders: splits without leakage, weighted mixing, exact resume, workers, corrupted shards."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from scigpt.data_pipeline.ingest.netcdf import read_netcdf
from scigpt.data_pipeline.loader import ForecastDataset, build_loader, collate_forecast
from scigpt.data_pipeline.mixing import MixedDataset, MixingBatchSampler
from scigpt.data_pipeline.shards import write_grid_store
from scigpt.data_pipeline.store import GridStore
from tests.conftest import corrupt_copy

H = np.timedelta64(1, "h").astype("timedelta64[ns]")


@pytest.fixture(scope="module")
def store_dir(sample_era5_dir, tmp_path_factory) -> Path:
    grid = read_netcdf(sorted(sample_era5_dir.glob("*.nc")), ["u10", "v10", "sp", "q850"])
    out = tmp_path_factory.mktemp("store")
    write_grid_store(grid, out, steps_per_shard=6)
    return out


def _ranges(store: GridStore):
    t = store.time
    return {"train": (t[0], t[11]), "val": (t[12], t[16]), "test": (t[17], t[23])}


@pytest.mark.parametrize("gap_h", [0, 2])
def test_time_blocked_splits_do_not_leak(store_dir, gap_h):
    """Every val/test target is later than every training frame by more than the gap, and no
    target of one split is a target of another."""
    with GridStore(store_dir) as store:
        gap = np.timedelta64(gap_h, "h").astype("timedelta64[ns]")
        ds = {
            name: ForecastDataset(store, time_range=r, gap=None if name == "train" else gap)
            for name, r in _ranges(store).items()
        }

        def frames(d: ForecastDataset) -> tuple[np.ndarray, np.ndarray]:
            a = np.array([d.anchor_index(i) for i in range(len(d))])
            return store.time[a - 1], store.time[a + 1]  # first history frame, target

        _, train_target = frames(ds["train"])
        for name in ("val", "test"):
            first, target = frames(ds[name])
            assert target.min() > train_target.max()
            # anchors start `gap` into the block: neighbouring blocks' samples are `gap` apart
            assert (first.min() + H) >= _ranges(store)[name][0] + gap
        assert not set(frames(ds["val"])[1]) & set(frames(ds["test"])[1])
        assert len(ds["val"]) == 5 - 1 - gap_h and len(ds["test"]) == 7 - 1 - gap_h


def test_split_config_checks_block_order():
    from scigpt.config_loader import ConfigError, load_config, shipped_config

    with pytest.raises(ConfigError, match=r"splits\.train\.end=.* is after splits\.val\.start"):
        load_config(
            shipped_config("runs/demo.yaml"),
            ["data.splits.val={start: '2020-01-01T10:00', end: '2020-01-01T18:00'}"],
        )
    c = load_config(shipped_config("runs/demo.yaml"), ["data.splits.gap=PT2H"]).config
    assert c.data.splits.gap.total_seconds() == 7200


def test_mixing_weights_and_one_source_per_batch():
    sizes, weights = [50, 30, 20], [0.6, 0.3, 0.1]
    bs = MixingBatchSampler(sizes, weights, batch_size=4, rank=0, world_size=1, seed=3)
    offsets = np.cumsum([0, *sizes])
    it = iter(bs)
    n = 3000
    counts = np.zeros(3)
    for _ in range(n):
        batch = next(it)
        src = np.searchsorted(offsets, batch[0], side="right") - 1
        assert all(offsets[src] <= i < offsets[src + 1] for i in batch)  # one source per batch
        counts[src] += 1
    # multinomial: each share within 4 standard deviations of its weight
    sd = np.sqrt(np.array(weights) * (1 - np.array(weights)) / n)
    assert np.all(np.abs(counts / n - weights) < 4 * sd), counts / n


def test_mixing_same_sources_on_every_rank_and_disjoint_samples():
    kw = {"batch_size": 3, "world_size": 3, "seed": 11}
    streams = [
        iter(MixingBatchSampler([17, 10], [1, 1], rank=r, **kw)) for r in range(3)
    ]  # fmt: skip
    for _ in range(40):
        batches = [next(s) for s in streams]
        srcs = {int(b[0] >= 17) for b in batches}
        assert len(srcs) == 1  # every rank drew the same source for this step
        flat = [i for b in batches for i in b]
        assert len(flat) == 9


def test_mixing_exact_resume_and_world_size_change():
    sizes, w = [23, 11], [2, 1]
    ref = MixingBatchSampler(sizes, w, batch_size=2, rank=1, world_size=2, seed=5)
    it = iter(ref)
    first = [next(it) for _ in range(7)]
    state = json.loads(json.dumps(ref.state_dict(5)))  # after 5 consumed; 2 were prefetched
    rest = [next(it) for _ in range(10)]
    resumed = iter(MixingBatchSampler(sizes, w, batch_size=2, rank=1, world_size=2, seed=5,
                                      state=state))  # fmt: skip
    assert [next(resumed) for _ in range(12)] == first[5:] + rest
    # another world size: deterministic, and the source sequence is unchanged
    a = MixingBatchSampler(sizes, w, batch_size=2, rank=0, world_size=3, seed=5, state=state)
    b = MixingBatchSampler(sizes, w, batch_size=2, rank=0, world_size=3, seed=5, state=state)
    ia, ib = iter(a), iter(b)
    assert [next(ia) for _ in range(8)] == [next(ib) for _ in range(8)]
    assert [a.source_at(s) for s in range(5, 20)] == [ref.source_at(s) for s in range(5, 20)]


def _loader_cfg(workers: int):
    return SimpleNamespace(num_workers=workers, prefetch_factor=2)


@pytest.mark.slow
def test_workers_give_the_same_batches(store_dir):
    with GridStore(store_dir) as store:
        ds = ForecastDataset(store, time_range=(store.time[0], store.time[23]))
        mixed = MixedDataset([ds], [collate_forecast])

        def take(workers: int, n: int = 6):
            bs = MixingBatchSampler([len(ds)], [1.0], batch_size=4, rank=0, world_size=1, seed=1)
            it = iter(build_loader(mixed, bs, _loader_cfg(workers)))
            return [next(it) for _ in range(n)]

        for b0, b2 in zip(take(0), take(2), strict=True):
            assert b0.keys() == b2.keys() and b0["source"] == b2["source"] == 0
            for k in ("fields", "target", "mask", "times"):
                assert torch.equal(b0[k], b2[k]), k


def test_corrupted_shard_policy(store_dir, tmp_path, caplog):
    copy = corrupt_copy(store_dir, tmp_path / "store", "shards/grid/grid-00001.h5")
    with pytest.raises(RuntimeError, match=r"grid-00001\.h5 of source grid fails its sha256"):
        GridStore(copy, verify=True)
    with caplog.at_level("WARNING"), GridStore(copy, on_corrupt="skip") as store:
        assert "skipping shard" in caplog.text and "grid-00001.h5" in caplog.text
        assert len(store.time) == 18  # hours 6-11 dropped
        ds = ForecastDataset(store, time_range=(store.time[0], store.time[-1]))
        hours = [int(store.time[ds.anchor_index(i)].astype("datetime64[h]").astype(int) % 24)
                 for i in range(len(ds))]  # fmt: skip
        # no sample spans the hole: anchors 1..4 and 13..22
        assert hours == [1, 2, 3, 4, *range(13, 23)]


def test_series_windows_from_the_store(tmp_path, shared_data):
    """SeisBench events through prepare → SeriesWindowDataset, against h5py-read values."""
    import h5py

    from scigpt.data_pipeline.loader import SeriesWindowDataset, collate_series
    from scigpt.data_pipeline.prepare import SourceSpec, prepare_store
    from scigpt.data_pipeline.shards import PatchSpec
    from scigpt.data_pipeline.store import PatchStore

    path = shared_data / "seismic/seisbench_ipoc_pb01/waveforms.hdf5"
    spec = SourceSpec("sb", "seisbench", [path], patch=PatchSpec(window=1200, patch=50))
    prepare_store([spec], tmp_path, progress=False)
    with PatchStore(tmp_path) as store:
        ds = SeriesWindowDataset(store, "sb", targets=["source_magnitude"])
        assert len(ds) == 100
        batch = collate_series([ds[i] for i in range(4)])
        assert batch["fields"].shape == (4, 3, 1200) and batch["targets"].shape == (4, 1)
        mean, std = store.stats("sb")
        with h5py.File(path) as f:
            raw = f["data/bucket0"][0].astype(np.float32)  # row 0 of the csv is bucket0$0
        want = (raw - mean.astype(np.float32)[:, None]) / std.astype(np.float32)[:, None]
        np.testing.assert_allclose(batch["fields"][0].numpy(), want, rtol=1e-6, atol=1e-6)
        assert batch["modality_id"] == 1 and batch["step_ns"] == 50_000_000
        assert torch.isfinite(batch["targets"]).all() and torch.isfinite(batch["lat"]).all()
