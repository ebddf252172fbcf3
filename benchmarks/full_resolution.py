"""Full resolution (0.25 deg, 721 x 1440) without a download: ingest and loader against what a
user would write instead.

Generates ERA5-layout CF netCDF4 files (consecutive files of ``--hours`` hourly steps, each
holding all variables as CDS delivers a multi-variable request; int16 packed with
scale_factor/add_offset, zlib level 1 + shuffle, chunks of one time step x full field) from
spectrally synthesised smooth fields (energy spectrum k^-3 in space, AR(1) in time: not white
noise), and a WeatherBench 2 / ARCO-ERA5-style Zarr store of the same (decoded float32) data,
one chunk per time step x full field per variable. Then measures, in one run:

* ingest MB/s (input bytes) of ``scigpt prepare`` (``prepare_store``) against the bare library
  read (xarray decoding every value);
* loader samples/s and MB/s per process (float32 bytes of the samples: 3 frames = history 2 +
  target, all variables) at full resolution and for 128 x 256 crops, for SciGPT's store and
  ``ForecastDataset``, xarray + dask (``open_mfdataset`` with dask chunks equal to the file
  chunks, synchronous scheduler: one process) and Zarr-ARCO, each through a PyTorch
  ``DataLoader`` with the same worker count (``--workers``, default 0: the calling process);
  codecs (``--codecs``, each a store and a Zarr copy): SciGPT LZF + shuffle (HDF5) against Zarr
  Blosc-LZ4 + shuffle (the fastest comparable numcodecs codec; no LZF there), shuffle + zlib-4
  in both, and uncompressed in both; the netCDF files stay zlib-1 + shuffle as delivered;
* the loader rate a vit-1b training step on one H200 needs at 721 x 1440 with the 69 channels
  of configs/runs/era5-0.25deg.yaml (the planner's step-time prediction), shown as met or not.

Defaults (4 variables t2m, u10, v10, msl x 2 files x 12 hourly steps: 0.4 GB float32, ~2 GB
of disk at the peak) run in ~4 minutes on 2 shared cores; needs dask (`pip install dask`):

    python benchmarks/full_resolution.py --out benchmarks/results/full_resolution
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import netCDF4
import numpy as np
import torch
from _report import report

H, W = 721, 1440
# (name, units, long name, mean, anomaly scale, equator-to-pole change)
VARIABLES = [
    ("t2m", "K", "2 metre temperature", 288.0, 6.0, -45.0),
    ("u10", "m s**-1", "10 metre U wind component", 0.0, 5.0, 0.0),
    ("v10", "m s**-1", "10 metre V wind component", 0.0, 4.0, 0.0),
    ("msl", "Pa", "Mean sea level pressure", 101325.0, 1200.0, -800.0),
    ("sp", "Pa", "Surface pressure", 98000.0, 1500.0, -2000.0),
    ("tcw", "kg m**-2", "Total column water", 25.0, 6.0, -20.0),
    ("d2m", "K", "2 metre dewpoint temperature", 282.0, 5.0, -40.0),
]
CROP = (128, 256)  # points: 32 x 64 tokens of patch 4


def smooth_fields(rng: np.random.Generator, n: int, rho: float = 0.95) -> np.ndarray:
    """``n`` frames (n, H, W) float32 of unit variance: random phases under a power law whose
    energy per wavenumber falls as k^-3 (|c_k|^2 ~ k^-4: the large-scale atmospheric spectrum,
    smooth fields), evolving as AR(1) in spectral space."""
    ky = np.fft.fftfreq(H)[:, None] * H
    kx = np.fft.rfftfreq(W)[None, :] * W
    amp = 1.0 / (1.0 + ky**2 + kx**2)  # |c|^2 ~ k^-4
    out = np.empty((n, H, W), np.float32)

    def noise() -> np.ndarray:
        return rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)

    c = noise()
    for t in range(n):
        if t:
            c = rho * c + math.sqrt(1 - rho**2) * noise()
        f = np.fft.irfft2(c * amp, s=(H, W))
        out[t] = (f / f.std()).astype(np.float32)
    return out


def generate(root: Path, n_vars: int, days: int, hours: int, seed: int = 0) -> dict:
    """The netCDF files (one per day); returns them, the values and sizes."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(90.0, -90.0, H)
    lon = np.arange(W) * 0.25
    profile = np.sin(np.deg2rad(lat))[:, None] ** 2  # (H, 1)
    n = days * hours
    nc_dir = root / "netcdf"
    nc_dir.mkdir(parents=True)
    data = {}
    for name, _, _, mean, scale, pole in VARIABLES[:n_vars]:
        data[name] = mean + pole * profile + scale * smooth_fields(rng, n)  # (n, H, W) f32
    t0 = np.datetime64("2020-01-01T00", "h")
    files = []
    for d in range(days):
        first = t0 + d * hours  # consecutive files: one time series
        path = nc_dir / f"ERA5_{str(first)[:13].replace('T', '_')}h.nc"
        with netCDF4.Dataset(path, "w", format="NETCDF4") as f:
            f.Conventions = "CF-1.6"
            f.createDimension("longitude", W)
            f.createDimension("latitude", H)
            f.createDimension("time", hours)
            v = f.createVariable("longitude", "f4", ("longitude",))
            v.units, v.long_name, v[:] = "degrees_east", "longitude", lon
            v = f.createVariable("latitude", "f4", ("latitude",))
            v.units, v.long_name, v[:] = "degrees_north", "latitude", lat
            v = f.createVariable("time", "i4", ("time",))
            v.units, v.long_name, v.calendar = "hours since 1900-01-01", "time", "gregorian"
            hrs = (first + np.arange(hours)) - np.datetime64("1900-01-01T00", "h")
            v[:] = hrs.astype(np.int64)
            for name, units, long_name, *_ in VARIABLES[:n_vars]:
                x = data[name][d * hours : (d + 1) * hours]
                lo, hi = float(x.min()), float(x.max())
                sf, off = (hi - lo) / 65532.0, (hi + lo) / 2.0  # ERA5's int16 packing
                v = f.createVariable(name, "i2", ("time", "latitude", "longitude"),
                                     zlib=True, complevel=1, shuffle=True,
                                     chunksizes=(1, H, W), fill_value=-32767)  # fmt: skip
                v.set_auto_maskandscale(False)
                v.scale_factor, v.add_offset = sf, off
                v.units, v.long_name, v.missing_value = units, long_name, np.int16(-32767)
                v[:] = np.round((x - off) / sf).astype(np.int16)
        files.append(path)
    raw = n_vars * n * H * W * 4
    nc_bytes = sum(p.stat().st_size for p in files)
    return {"files": files, "data": data, "float32_bytes": raw, "netcdf_bytes": nc_bytes,
            "names": [v[0] for v in VARIABLES[:n_vars]]}  # fmt: skip


def write_zarr(path: Path, data: dict[str, np.ndarray], codec: str) -> int:
    """Zarr as ARCO-ERA5 / WeatherBench 2: the decoded float32 values, one chunk per time step
    x full field per variable; ``codec`` "lzf" -> Blosc-LZ4 + shuffle (numcodecs has no LZF:
    the closest fast codec), "gzip" -> shuffle + zlib level 4 (exactly SciGPT's gzip), "none"
    -> uncompressed. Returns
    its size in bytes."""
    import numcodecs
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    for name, x in data.items():
        if codec == "gzip":
            kw = {"filters": [numcodecs.Shuffle(4)], "compressors": numcodecs.Zlib(4)}
        elif codec == "none":
            kw = {"compressors": None}
        else:
            kw = {"compressors": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE)}
        arr = g.create_array(name, shape=x.shape, chunks=(1, H, W), dtype="float32", **kw)
        arr[:] = x
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bare_read(files: list[Path]) -> None:
    import xarray as xr

    for p in files:
        with xr.open_dataset(p) as ds:
            for v in ds.data_vars:
                ds[v].values  # noqa: B018 - decode (mask + scale) into memory


class XarrayDask(torch.utils.data.Dataset):
    """What a user writes with xarray: open_mfdataset with dask chunks = the file chunks."""

    def __init__(self, files: list[Path], names: list[str], picks: list[tuple]):
        self.files, self.names, self.picks = files, names, picks
        self.ds = None

    def __len__(self) -> int:
        return len(self.picks)

    def __getitem__(self, i: int) -> torch.Tensor:
        import xarray as xr

        if self.ds is None:
            self.ds = xr.open_mfdataset(self.files, chunks={"time": 1, "latitude": H,
                                        "longitude": W}, combine="by_coords")  # fmt: skip
        a, rows, cols = self.picks[i]
        sel = self.ds[self.names].isel(time=slice(a - 1, a + 2), latitude=rows, longitude=cols)
        return torch.from_numpy(sel.to_array().values.astype(np.float32))  # (V, 3, h, w)


class ZarrArco(torch.utils.data.Dataset):
    """What a user writes on ARCO-ERA5: zarr arrays sliced per variable."""

    def __init__(self, path: Path, names: list[str], picks: list[tuple]):
        self.path, self.names, self.picks, self.arrays = path, names, picks, None

    def __len__(self) -> int:
        return len(self.picks)

    def __getitem__(self, i: int) -> torch.Tensor:
        import zarr

        if self.arrays is None:
            g = zarr.open_group(str(self.path), mode="r")
            self.arrays = [g[n] for n in self.names]
        a, rows, cols = self.picks[i]
        return torch.from_numpy(np.stack([z[a - 1 : a + 2, rows, cols] for z in self.arrays]))


class SciGPT(torch.utils.data.Dataset):
    """SciGPT's ForecastDataset items (normalised, with mask) for the same picks."""

    def __init__(self, datasets: dict, picks: list[tuple]):
        self.datasets, self.picks = datasets, picks

    def __len__(self) -> int:
        return len(self.picks)

    def __getitem__(self, i: int) -> dict:
        a, rows, cols = self.picks[i]
        ds = self.datasets[(rows.start, rows.stop, cols.start, cols.stop)]
        return ds[int(np.flatnonzero(ds._anchors == a)[0])]


def rate(dataset: torch.utils.data.Dataset, workers: int) -> float:
    """Seconds for all items of ``dataset`` through a DataLoader (first item: warm-up)."""
    dataset[0]  # imports, open files
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, collate_fn=lambda x: x
    )
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


def needed_rate(n_vars: int = 69) -> dict:
    """Samples/s one H200 trains vit-1b on at 721 x 1440 (planner step-time prediction)."""
    from scigpt.models.vit import ModelSpec
    from scigpt.parallel.planner import grid_tokens, load_model, plan

    model = load_model("vit-1b")
    rows = plan(model, ModelSpec(num_vars=n_vars, history=2), 1, gpus_per_node=1,
                gpu_mem_gib=141, tokens=grid_tokens(model, H, W), micro_batch=1,
                vars_per_sample=n_vars, precision="bf16")  # fmt: skip
    best = rows[0]
    sps = 1.0 / best.seconds_per_sample
    return {"samples_s": sps, "mb_s": sps * 3 * n_vars * H * W * 4 / 1e6,
            "layout": f"zero {best.layout.zero_stage}, "
            f"checkpointing {best.layout.activation_checkpointing}",
            "step_s": best.step.seconds}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vars", type=int, default=4, help=f"variables (1-{len(VARIABLES)})")
    ap.add_argument("--days", type=int, default=2, help="files (consecutive)")
    ap.add_argument("--hours", type=int, default=12, help="hourly steps per file")
    ap.add_argument("--full-samples", type=int, default=6)
    ap.add_argument("--crop-samples", type=int, default=24)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers, all contenders")
    ap.add_argument("--codecs", nargs="+", default=["lzf", "gzip", "none"],
                    choices=["lzf", "gzip", "none"],
                    help="store codecs to compare (Zarr gets the matching one)")  # fmt: skip
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/full_resolution"))
    args = ap.parse_args()
    import dask
    import numcodecs.blosc

    from scigpt.data_pipeline.loader import ForecastDataset
    from scigpt.data_pipeline.prepare import SourceSpec, prepare_store
    from scigpt.data_pipeline.shards import PatchSpec
    from scigpt.data_pipeline.store import GridStore

    # one thread per process for every contender: dask's scheduler, Blosc's, torch's
    dask.config.set(scheduler="synchronous")
    numcodecs.blosc.set_nthreads(1)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="fullres-"))
    try:
        t0 = time.perf_counter()
        gen = generate(root, args.vars, args.days, args.hours)
        t_gen = time.perf_counter() - t0
        names, files = gen["names"], gen["files"]
        print(f"# {args.vars} variables ({', '.join(names)}) x {args.days} files x "
              f"{args.hours} h at {H} x {W}: {gen['float32_bytes'] / 1e6:.0f} MB float32, "
              f"netCDF int16 {gen['netcdf_bytes'] / 1e6:.0f} MB (compression ratio "
              f"{gen['float32_bytes'] / gen['netcdf_bytes']:.2f} vs float32); generated in "
              f"{t_gen:.0f} s")  # fmt: skip

        # ingest vs the bare library read (files in the page cache for both)
        nc_bytes = gen["netcdf_bytes"]
        bare_read(files[:1])
        t0 = time.perf_counter()
        bare_read(files)
        t_bare = time.perf_counter() - t0
        rows = [
            {
                "what": "ingest",
                "contender": "xarray decode",
                "codec": "zlib-1 (nc)",
                "mb_s": nc_bytes / 1e6 / t_bare,
                "samples_s": float("nan"),
                "ratio": 1.0,
            }
        ]
        stores = {}
        for codec in args.codecs:
            spec = SourceSpec("era5", "netcdf", files, unit="file",
                              patch=PatchSpec(grid=(1, 4, 4), compression=codec))  # fmt: skip
            t0 = time.perf_counter()
            manifest = prepare_store([spec], root / f"store-{codec}", progress=False)
            t_ingest = time.perf_counter() - t0
            assert manifest is not None and not manifest["rejects"], manifest["rejects"]
            rows.append({"what": "ingest", "contender": "scigpt prepare", "codec": codec,
                         "mb_s": nc_bytes / 1e6 / t_ingest, "samples_s": float("nan"),
                         "ratio": t_bare / t_ingest})  # fmt: skip
            size = sum(p.stat().st_size for p in (root / f"store-{codec}").rglob("*.h5"))
            zsize = write_zarr(root / f"arco-{codec}.zarr", gen["data"], codec)
            tile = manifest["sources"]["era5"]["units"][0]["arrays"][0]["tile"]
            print(f"# {codec}: store {size / 1e6:.0f} MB (grid layout 2, tile {tile}: "
                  f"variables, token rows, token cols), Zarr {zsize / 1e6:.0f} MB")  # fmt: skip
            stores[codec] = root / f"store-{codec}"
        gen.pop("data")

        rng = np.random.default_rng(1)
        n_t = args.days * args.hours
        full = [(int(a), slice(0, H), slice(0, W))
                for a in rng.integers(1, n_t - 1, args.full_samples)]  # fmt: skip
        crops = []
        for a in rng.integers(1, n_t - 1, args.crop_samples):
            r0 = int(rng.integers(0, (H - CROP[0]) // 4)) * 4
            c0 = int(rng.integers(0, (W - CROP[1]) // 4)) * 4
            crops.append((int(a), slice(r0, r0 + CROP[0]), slice(c0, c0 + CROP[1])))
        for codec, path in stores.items():
            store = GridStore(path)
            span = (store.time[0], store.time[-1])
            ours = {(0, H, 0, W): ForecastDataset(store, time_range=span, history=2, lead=1)}
            for _, r, c in crops:
                ours[(r.start, r.stop, c.start, c.stop)] = ForecastDataset(
                    store, time_range=span, history=2, lead=1,
                    crop=(r.start // 4, c.start // 4, CROP[0] // 4, CROP[1] // 4),
                )  # fmt: skip
            zpath = root / f"arco-{codec}.zarr"
            for label, picks in (("full 721x1440", full), ("crop 128x256", crops)):
                h = picks[0][1].stop - picks[0][1].start
                w = picks[0][2].stop - picks[0][2].start
                mb = len(picks) * 3 * len(names) * h * w * 4 / 1e6
                times = {
                    "scigpt store": rate(SciGPT(ours, picks), args.workers),
                    "zarr-arco": rate(ZarrArco(zpath, names, picks), args.workers),
                }
                if codec == args.codecs[0]:  # the netCDF files do not change with the codec
                    times["xarray+dask"] = rate(XarrayDask(files, names, picks), args.workers)
                    xr_time = times["xarray+dask"]
                best_other = min(xr_time, times["zarr-arco"])
                for who, t in times.items():
                    rows.append({"what": label, "contender": who,
                                 "codec": "zlib-1 (nc)" if who == "xarray+dask" else codec,
                                 "mb_s": mb / t, "samples_s": len(picks) / t,
                                 "ratio": best_other / t})  # fmt: skip
            store.close()
        report(rows, [("what", "measure", "14s"), ("contender", "contender", "15s"),
                      ("codec", "codec", "12s"), ("samples_s", "samples/s", ".2f"),
                      ("mb_s", "MB/s", ".1f"), ("ratio", "ratio", ".2f")], args.out)  # fmt: skip
        print(
            "# ratio: ingest = scigpt / bare read (goal >= 0.5); loader = time of the better "
            "of xarray+dask and zarr-arco (same codec) / contender time (goal >= 3); codec "
            "lzf: SciGPT LZF+shuffle vs Zarr Blosc-LZ4+shuffle; gzip: shuffle+zlib-4 both; none: "
            "uncompressed both; "
            f"DataLoader workers {args.workers} (0: the calling process), one thread each"
        )

        need = needed_rate()
        for codec in stores:
            ours_full = next(
                r
                for r in rows
                if r["what"] == "full 721x1440"
                and r["contender"] == "scigpt store"
                and r["codec"] == codec
            )
            procs = math.ceil(need["mb_s"] / ours_full["mb_s"])
            verdict = "MET by one process" if procs <= 1 else f"needs {procs} loader processes"
            print(
                f"# vit-1b on one H200 (141 GiB, bf16, the 69 channels of era5-0.25deg.yaml, "
                f"{need['layout']}): predicted {need['step_s']:.2f} s per sample -> "
                f"{need['samples_s']:.3f} samples/s = {need['mb_s']:.0f} MB/s float32; the "
                f"{codec} store serves {ours_full['mb_s']:.0f} MB/s per process: {verdict}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
