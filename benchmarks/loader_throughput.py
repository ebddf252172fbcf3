"""Loader throughput: SciGPT's PyTorch loader vs a competent xarray baseline, same data, one run.

Both produce the same forecasting samples (2 input hours + the next hour of the ERA5 sample's 14
state variables, normalised) through a torch DataLoader with 0/1/2/4 workers:
  * scigpt   — ForecastDataset over the patch store (shards opened once per worker);
  * baseline — xarray with each netCDF file opened once per worker, samples taken by ``isel``.
The inputs are tiled ``--copies`` times along time so an epoch lasts long enough to time.

    python benchmarks/loader_throughput.py --copies 20 --workers 0 1 2 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import report

VARS = ["d2m", "sp", "tcw", "u10", "v10", "q850", "q700", "q500", "u850", "u700", "u500",
        "v850", "v700", "v500"]  # fmt: skip


class XarrayForecast(torch.utils.data.Dataset):
    """The baseline: netCDF files opened once per worker, samples by isel."""

    def __init__(self, files, copies: int, mean, std, history: int = 2):
        self.files, self.copies, self.history = files, copies, history
        self.mean = mean.astype(np.float32)[:, None, None]
        self.std = std.astype(np.float32)[:, None, None]
        self._ds = None
        self.n_time = 24 * copies

    def _open(self):
        import xarray as xr

        if self._ds is None:
            self._ds = [xr.open_dataset(f) for f in self.files]
        return self._ds

    def __len__(self) -> int:
        return self.n_time - self.history

    def _frame_fields(self, t: int) -> np.ndarray:
        out = []
        t = t % 24  # the tiled copies repeat the day
        for ds in self._open():
            for name, da in ds.data_vars.items():
                if "level" in da.dims:
                    for lev in (850, 700, 500):
                        out.append(da.isel(time=t).sel(level=lev).values)
                elif name in VARS:
                    out.append(da.isel(time=t).values)
        return np.stack(out).astype(np.float32)  # (V, H, W)

    def __getitem__(self, i: int):
        a = i + self.history - 1
        frames = np.stack([self._frame_fields(t) for t in range(a - 1, a + 2)])
        x = (np.nan_to_num(frames) - self.mean) / self.std
        return torch.from_numpy(x[:2].transpose(1, 0, 2, 3).copy()), torch.from_numpy(x[2])


def tiled_store(sample: Path, copies: int, out: Path):
    from scigpt.data_pipeline.ingest.base import GridArray
    from scigpt.data_pipeline.ingest.netcdf import read_netcdf
    from scigpt.data_pipeline.shards import write_grid_store

    g = read_netcdf(sorted(sample.glob("*.nc")), VARS)
    step = np.timedelta64(1, "h").astype("timedelta64[ns]")
    values = np.concatenate([g.values] * copies)
    times = g.time[0] + step * np.arange(len(values))
    tiled = GridArray(values, g.variables, g.lat, g.lon, times, g.source)
    write_grid_store(tiled, out, steps_per_shard=24)
    return g


def bench(loader, n_batches: int) -> tuple[float, int]:
    it = iter(loader)
    next(it)  # worker start-up and first open are not throughput
    t0, n = time.perf_counter(), 0
    for _ in range(n_batches):
        batch = next(it)
        n += len(batch[0]) if isinstance(batch, list) else batch["fields"].shape[0]
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2, 4])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/loader_throughput"))
    args = ap.parse_args()

    from scigpt.data_pipeline.loader import ForecastDataset, collate_forecast
    from scigpt.data_pipeline.store import GridStore

    sample = (
        Path(__file__).resolve().parents[1] / "scigpt" / "sample_data" / "era5_rhine_2020-01-01"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tiled_store(sample, args.copies, Path(tmp))
        store = GridStore(tmp)
        ours = ForecastDataset(store, time_range=(store.time[0], store.time[-1]))
        base = XarrayForecast(sorted(sample.glob("*.nc")), args.copies, store.mean, store.std)
        sample_mb = 3 * len(VARS) * 41 * 41 * 4 / 1e6  # float32 frames delivered per sample
        for workers in args.workers:
            result = {}
            for name, ds, collate in (
                ("scigpt", ours, collate_forecast),
                ("xarray", base, None),
            ):
                loader = torch.utils.data.DataLoader(
                    ds, batch_size=args.batch, shuffle=True, num_workers=workers,
                    collate_fn=collate, persistent_workers=False,
                    generator=torch.Generator().manual_seed(0),
                )  # fmt: skip
                dt, n = bench(loader, args.batches)
                result[name] = n / dt
            rows.append(
                {
                    "workers": workers,
                    "scigpt_samples_s": result["scigpt"],
                    "scigpt_mb_s": result["scigpt"] * sample_mb,
                    "xarray_samples_s": result["xarray"],
                    "xarray_mb_s": result["xarray"] * sample_mb,
                    "ratio": result["scigpt"] / result["xarray"],
                }
            )
        store.close()
    report(
        rows,
        [("workers", "workers", "d"), ("scigpt_samples_s", "scigpt samples/s", ".1f"),
         ("scigpt_mb_s", "scigpt MB/s", ".1f"), ("xarray_samples_s", "xarray samples/s", ".1f"),
         ("xarray_mb_s", "xarray MB/s", ".1f"), ("ratio", "ratio", ".1f")],
        args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
