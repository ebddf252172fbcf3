"""Leak-free splits (issue 17, defect 6): a sample belongs to a split only if all of it lies inside
the split, and the normalisation statistics cover exactly the training samples — checked against
numpy statistics over the training samples picked here, independently of the store's code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from scigpt.config_loader import load_config
from scigpt.data_pipeline.ingest.camels import read_camels
from scigpt.data_pipeline.loader import ForecastDataset, SeriesWindowDataset
from scigpt.data_pipeline.store import GridStore, PatchStore
from scigpt.prepare import prepare_from_config

DAY = np.timedelta64(1, "D").astype("timedelta64[ns]")
HOUR = np.timedelta64(1, "h").astype("timedelta64[ns]")


def _prepare(tmp: Path, source: dict, splits: dict) -> tuple[dict, Path, object]:
    path = tmp / "cfg.yaml"
    cfg = {"name": "splits", "data": {"sources": [source], "splits": splits}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    loaded = load_config(path)
    manifest = prepare_from_config(loaded, tmp / "store", progress=False)
    return manifest, tmp / "store", loaded.config.data.splits


def test_series_windows_and_statistics_cover_training_samples_only(tmp_path, shared_data):
    """CAMELS daily streamflow, 4 years in 365-day windows; the train block ends mid-window.

    The straddling window (2000-12-31 .. 2001-12-30) holds test-period flows: it must be in no
    split and not in the statistics (before the fix it counted as training by its start)."""
    path = shared_data / "station/camels_us/usgs_streamflow/01022500_streamflow_qc.txt"
    source = {"name": "flow", "format": "camels", "path": str(path), "window": 365,
              "patch": [73]}  # fmt: skip
    splits = {
        "train": {"start": "2000-01-01T00:00", "end": "2001-06-30T00:00"},
        "test": {"start": "2001-07-01T00:00", "end": "2003-12-31T00:00"},
        "gap": "P30D",
    }
    manifest, store_dir, sp = _prepare(tmp_path, source, splits)
    assert manifest["rejects"] == []

    # Reference, computed here: the reader's array (checked against pandas in
    # test_ingest_stations) cut into 365-sample windows from each record's start.
    [arr] = read_camels([path])
    n_rec, _, length = arr.values.shape
    starts = np.arange(0, length, 365)
    (t0, t1), (s0, s1) = sp.train.bounds(), sp.test.bounds()

    def span(r: int, s: int) -> tuple[np.datetime64, np.datetime64]:
        first = arr.start[r] + s * arr.step
        return first, first + 364 * arr.step  # padding included: a window is 365 samples

    train_w = [(r, s) for r in range(n_rec) for s in starts if t0 <= span(r, s)[0]
               and span(r, s)[1] <= t1]  # fmt: skip
    test_w = [(r, s) for r in range(n_rec) for s in starts if s0 + 30 * DAY <= span(r, s)[0]
              and span(r, s)[1] <= s1]  # fmt: skip
    assert len(train_w) == 1 and len(test_w) == 2  # 2000-01-01; 2001-12-31 and 2002-12-31
    by_start = [(r, s) for r in range(n_rec) for s in starts if t0 <= span(r, s)[0] <= t1]
    assert len(by_start) == 2, "the split must cut a window for this test to mean anything"

    def values(windows):  # (C, samples) float64 of the windows' real samples
        return np.concatenate([arr.values[r, :, s : s + 365] for r, s in windows], axis=1).astype(
            np.float64
        )

    ref = values(train_w)
    leaky = values(by_start)
    names = arr.names
    stats = manifest["sources"]["flow"]["stats"]
    for c, name in enumerate(names):
        col = ref[c][~np.isnan(ref[c])]
        assert stats[name]["count"] == col.size, name
        assert stats[name]["mean"] == pytest.approx(col.mean(), rel=1e-12, abs=1e-12), name
        assert stats[name]["std"] == pytest.approx(col.std(), rel=1e-12, abs=1e-12), name
    flow = leaky[0][~np.isnan(leaky[0])]
    # the straddling window matters: start-time assignment moves the streamflow std by > 10 %
    assert abs(flow.std() / stats["streamflow"]["std"] - 1) > 0.10

    with PatchStore(store_dir) as store:
        for block, windows, gap in (("train", train_w, None), ("test", test_w, sp.gap_ns())):
            ds = SeriesWindowDataset(store, "flow", time_range=getattr(sp, block).bounds(),
                                     gap=gap)  # fmt: skip
            got = sorted(int(ds[i]["time"]) for i in range(len(ds)))
            want = sorted(int(span(r, s)[0].astype(np.int64)) for r, s in windows)
            assert got == want, block
            for i in range(len(ds)):  # every sample of every window inside the block
                item = ds[i]
                times = int(item["time"]) + np.arange(item["fields"].shape[-1]) * int(DAY)
                lo, hi = (int(np.datetime64(t, "ns").astype(np.int64))
                          for t in getattr(sp, block).bounds())  # fmt: skip
                assert lo <= times.min() and times.max() <= hi, block


def test_grid_statistics_cover_the_training_block_only(tmp_path, sample_era5_dir):
    """ERA5 hourly fields in 2-frame tubelets; the train block ends at 14:00, inside the tubelet
    14:00–15:00. Statistics must hold the frames 00:00–14:00 exactly (before the fix the whole
    tubelet counted, 15:00 included), and every training sample's anchor and target lie in the
    block while its frames inside the block are exactly the statistics' frames."""
    files = [sample_era5_dir / "ERA5_2020-01-01_u10.nc", sample_era5_dir / "ERA5_2020-01-01_sp.nc"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in files:
        (inputs / f.name).symlink_to(f)
    source = {"name": "era5", "format": "netcdf", "path": str(inputs), "unit": "all",
              "patch": [2, 4, 4]}  # fmt: skip
    splits = {
        "train": {"start": "2020-01-01T00:00", "end": "2020-01-01T14:00"},
        "test": {"start": "2020-01-01T15:00", "end": "2020-01-01T23:00"},
    }
    manifest, store_dir, sp = _prepare(tmp_path, source, splits)
    assert manifest["rejects"] == []
    t0, t1 = sp.train.bounds()
    stats = manifest["sources"]["era5"]["stats"]
    for f, name in zip(files, ("u10", "sp"), strict=True):
        with xr.open_dataset(f) as ds:  # independent read: xarray decodes the packed int16
            ref = ds[name].sel(time=slice(t0, t1)).values.astype(np.float32).astype(np.float64)
        assert ref.shape[0] == 15  # 00:00 .. 14:00
        assert stats[name]["count"] == ref.size
        assert stats[name]["mean"] == pytest.approx(ref.mean(), rel=1e-12)
        assert stats[name]["std"] == pytest.approx(ref.std(), rel=1e-12)

    with GridStore(store_dir) as store:
        train = ForecastDataset(store, time_range=(t0, t1), history=2, lead=1)
        used = set()
        for i in range(len(train)):
            a = train.anchor_index(i)
            assert t0 <= store.time[a] and store.time[a + 1] <= t1  # anchor and target inside
            used.update(range(a - 1, a + 2))
        in_block = {i for i, t in enumerate(store.time) if t0 <= t <= t1}
        assert used & in_block == in_block == set(range(15))
        test = ForecastDataset(store, time_range=sp.test.bounds(), history=2, lead=1,
                               gap=2 * HOUR)  # fmt: skip
        first_target = min(store.time[test.anchor_index(i) + 1] for i in range(len(test)))
        assert first_target > t1 + 2 * HOUR
