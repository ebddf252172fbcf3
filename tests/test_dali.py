"""DALI forecast loader against the PyTorch path.

The reference is ``DataLoader(ds, batch_sampler=plan, collate_fn=collate_forecast)`` over the
same dataset and index lists; the DALI batches must equal it exactly (``torch.equal``), since the
DALI graph repeats loader.normalise's float32 op order. The store has a few NaNs, inside and
outside the crop, so the mask and the NaN → 0 fill are exercised.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from scigpt.data_pipeline.dali import DaliForecastLoader, dali_available
from scigpt.data_pipeline.ingest.base import GridArray
from scigpt.data_pipeline.ingest.netcdf import read_netcdf
from scigpt.data_pipeline.loader import ForecastDataset, collate_forecast
from scigpt.data_pipeline.shards import write_grid_store
from scigpt.data_pipeline.store import GridStore

# (time, store variable, y, x) of the missing values. Targets at times 5, 9 (inside the (29, 17)
# crop) and 12 (outside it) of variables the dataset reads; time 0 is only ever an input frame;
# variable 3 (q850) is not read.
HOLES = [(5, 10, 3, 4), (9, 0, 20, 16), (12, 6, 40, 40), (0, 10, 2, 2), (7, 3, 1, 1)]
CROP = (29, 17)


@pytest.fixture(scope="module")
def store(sample_era5_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GridStore]:
    grid = read_netcdf(sorted(sample_era5_dir.glob("*.nc")))
    values = grid.values.copy()  # (24, 14, 41, 41)
    for hole in HOLES:
        values[hole] = np.nan
    holey = GridArray(values, grid.variables, grid.lat, grid.lon, grid.time, grid.source)
    out = tmp_path_factory.mktemp("dali_store")
    write_grid_store(holey, out, steps_per_shard=8)
    with GridStore(out) as gs:
        yield gs


@pytest.fixture(scope="module")
def dataset(store: GridStore) -> ForecastDataset:
    # A variable subset out of store order, so var_ids and the (V, 1, 1) mean/std are not trivial.
    t = store.time
    return ForecastDataset(
        store, time_range=(t[0], t[23]), history=2, lead=1, variables=["sp", "u850", "q500", "d2m"]
    )


def _shuffled_plan(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """A permutation of range(n) cut into batches; the last one is short unless it divides."""
    perm = np.random.default_rng(seed).permutation(n)
    return [list(perm[i : i + batch_size]) for i in range(0, n, batch_size)]  # numpy ints


def _reference(
    ds: ForecastDataset, plan: list[list[int]], crop: tuple[int, int] | None
) -> list[dict[str, Any]]:
    """The PyTorch path, cropped after collation (top-left h × w, and lat/lon with it)."""
    loader = torch.utils.data.DataLoader(ds, batch_sampler=plan, collate_fn=collate_forecast)
    batches = list(loader)
    if crop is not None:
        h, w = crop
        for b in batches:
            b["fields"] = b["fields"][..., :h, :w]
            b["target"] = b["target"][..., :h, :w]
            b["mask"] = b["mask"][..., :h, :w]
            b["lat"], b["lon"] = b["lat"][:h], b["lon"][:w]
    return batches


def _assert_same_batches(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.keys() == w.keys(), k
        for key, wv in w.items():
            gv = g[key]
            if isinstance(wv, torch.Tensor):
                assert isinstance(gv, torch.Tensor), (k, key)
                assert gv.dtype == wv.dtype and gv.shape == wv.shape, (k, key, gv.shape, wv.shape)
                assert torch.equal(gv, wv), (k, key, (gv != wv).sum().item())
            else:
                assert type(gv) is type(wv) and gv == wv, (k, key, gv, wv)


def _holes_seen(batches: list[dict[str, Any]]) -> int:
    return sum(int((~b["mask"]).sum()) for b in batches)


def test_missing_dali_says_how_to_install(
    dataset: ForecastDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make test` installs the dali extra; the other tests need it.
    assert dali_available(), "nvidia-dali-cuda120 is not installed in this environment"
    # A None entry in sys.modules makes `import nvidia.dali` raise ImportError, as if absent.
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    assert not dali_available()
    with pytest.raises(ImportError, match=r"pip install nvidia-dali-cuda120.*AMD/ROCm"):
        DaliForecastLoader(dataset, [[0]])


@pytest.mark.parametrize("crop", [None, CROP], ids=["full", "crop"])
def test_cpu_batches_equal_pytorch(dataset: ForecastDataset, crop: tuple[int, int] | None) -> None:
    plan = _shuffled_plan(len(dataset), 5, seed=0)  # 22 samples: 5, 5, 5, 5, 2
    assert len(plan[-1]) < len(plan[0])
    want = _reference(dataset, plan, crop)
    # Each target hole (times 5, 9, 12 → anchors 3, 7, 10) is hit once; the crop keeps two.
    assert _holes_seen(want) == (2 if crop else 3)
    loader = DaliForecastLoader(dataset, plan, num_threads=2, crop=crop)
    assert len(loader) == len(plan)
    got = list(loader)
    _assert_same_batches(got, want)
    h, w = crop or (41, 41)
    assert got[0]["fields"].shape == (5, 4, 2, h, w)  # (B, V, T, H, W)
    assert got[-1]["target"].shape == (2, 4, h, w)


def test_cpu_passes_follow_the_batches_iterable(dataset: ForecastDataset) -> None:
    # A re-iterable batches object gives a new order per pass, as a batch sampler would.
    class Epochs:
        def __init__(self) -> None:
            self.epoch = 0

        def __iter__(self) -> Iterator[list[int]]:
            self.epoch += 1
            return iter(_shuffled_plan(len(dataset), 7, seed=self.epoch))

    loader = DaliForecastLoader(dataset, Epochs(), num_threads=1)
    for epoch in (1, 2):
        _assert_same_batches(
            list(loader), _reference(dataset, _shuffled_plan(len(dataset), 7, epoch), None)
        )


def test_parallel_fork_batches_equal_pytorch(dataset: ForecastDataset) -> None:
    # Batch sizes vary in the middle too, and one batch is a single sample.
    plan = _shuffled_plan(len(dataset), 6, seed=3)  # 6, 6, 6, 4
    plan = [plan[0], plan[1][:1], plan[1][1:], *plan[2:]]
    loader = DaliForecastLoader(
        dataset, plan, parallel=True, num_workers=2, start_method="fork", crop=CROP
    )
    _assert_same_batches(list(loader), _reference(dataset, plan, CROP))

    # Stopping early shuts the pipeline and its worker processes down.
    before = set(multiprocessing.active_children())
    it = iter(loader)
    next(it)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    it.close()
    deadline = time.monotonic() + 5
    while any(p.is_alive() for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.is_alive() for p in workers)


def test_parallel_spawn_batches_equal_pytorch(dataset: ForecastDataset) -> None:
    # spawn pickles the callback with the dataset (what device="gpu" uses); the store reopens
    # its shards in the worker. One worker keeps the start-up (~4 s) short.
    plan = _shuffled_plan(len(dataset), 8, seed=4)  # 8, 8, 6
    loader = DaliForecastLoader(dataset, plan, parallel=True, num_workers=1, start_method="spawn")
    _assert_same_batches(list(loader), _reference(dataset, plan, None))


def test_unnormalised_dataset(store: GridStore) -> None:
    # normalise=False: mean 0, std 1, so the graph reduces to NaN → 0.
    t = store.time
    ds = ForecastDataset(store, time_range=(t[2], t[15]), history=3, lead=2, normalise=False)
    for plan in ([[0, 3, 4], [7, 1]], [[5]]):  # [[5]]: DALI's read-ahead runs past the end
        _assert_same_batches(list(DaliForecastLoader(ds, plan)), _reference(ds, plan, None))


def test_bad_arguments_name_the_fix(dataset: ForecastDataset) -> None:
    with pytest.raises(ValueError, match=r"crop \(42, 3\) does not fit the grid \(41, 41\)"):
        DaliForecastLoader(dataset, [[0]], crop=(42, 3))
    with pytest.raises(ValueError, match=r"batch 1 holds indices \[22\] outside"):
        list(DaliForecastLoader(dataset, [[0], [1, 22]]))
    with pytest.raises(ValueError, match="batch 0 is empty"):
        list(DaliForecastLoader(dataset, [[]]))
    with pytest.raises(ValueError, match="device must be"):
        DaliForecastLoader(dataset, [[0]], device="tpu")  # type: ignore[arg-type]
    assert list(DaliForecastLoader(dataset, [])) == []
