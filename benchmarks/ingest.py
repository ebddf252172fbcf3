"""Ingest throughput per process: SciGPT's full ingest vs the bare library read, per format.

For each format the same input files are
  * read with the library alone (the competitor: xarray / cfgrib / pyhdf / obspy decoding every
    value into memory, nothing else), and
  * ingested by ``prepare_store`` (read + canonical units + checks + patchify + statistics +
    compressed, checksummed HDF5 shard + records + manifest), one process, each unit read in
    the isolated worker process (the default), and once more read in the calling process
    (``isolate=False``) to show what isolation costs.
All are reported as input MB/s; the ratio is SciGPT / bare read (1.0 = ingest costs nothing
beyond decoding). Inputs are repeated ``--repeat`` times (as separate units) for stable timings.

    python benchmarks/ingest.py --repeat 5 --out benchmarks/results/ingest
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _report import report

SHARED = Path(__file__).resolve().parents[1] / "tests" / "data"  # the real samples

CASES = {
    "netcdf": ("era5/rhine_2020-01-01_pl", "*.nc", "all"),
    "grib": ("era5/grib", "*.grib", "file"),
    "modis_hdf4": ("modis", "MOD09A1*.hdf", "file"),
    "mseed": ("seismic/mseed", "*.mseed", "file"),
}


def bare_read(fmt: str, files: list[Path]) -> None:
    """The competitor: decode every value with the format's own library, nothing more."""
    if fmt == "netcdf":
        import xarray as xr

        for f in files:
            with xr.open_dataset(f) as ds:
                for v in ds.data_vars:
                    ds[v].values  # noqa: B018 - decode (mask + scale) into memory
    elif fmt == "grib":
        import xarray as xr

        for f in files:
            with xr.open_dataset(f, engine="cfgrib", backend_kwargs={"indexpath": ""}) as ds:
                for v in ds.data_vars:
                    ds[v].values  # noqa: B018
    elif fmt == "modis_hdf4":
        from pyhdf.SD import SD, SDC

        for f in files:
            sd = SD(str(f), SDC.READ)
            for name in sd.datasets():
                sd.select(name).get()
            sd.end()
    elif fmt == "mseed":
        import obspy

        for f in files:
            obspy.read(str(f))
    else:
        raise ValueError(fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--formats", nargs="*", default=list(CASES))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest"))
    args = ap.parse_args()

    from scigpt.data_pipeline.prepare import SourceSpec, prepare_store
    from scigpt.data_pipeline.shards import PatchSpec

    rows = []
    for fmt in args.formats:
        sub, pattern, unit = CASES[fmt]
        originals = sorted((SHARED / sub).glob(pattern))
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            inputs = []
            for k in range(args.repeat):
                d = tmp / f"in{k}"
                d.mkdir()
                for f in originals:
                    shutil.copy(f, d / f.name)
                inputs.append(sorted(d.iterdir()))
            nbytes = sum(f.stat().st_size for group in inputs for f in group)
            bare_read(fmt, inputs[0])  # warm imports and the page cache for both contenders
            t0 = time.perf_counter()
            for group in inputs:
                bare_read(fmt, group)
            t_bare = time.perf_counter() - t0
            options = {"stations": None} if fmt == "mseed" else {}
            specs = [
                SourceSpec(
                    name=f"{fmt}{k}",
                    format=fmt,
                    paths=group,
                    options={k2: v for k2, v in options.items() if v is not None},
                    unit=unit,
                    patch=PatchSpec(window=1200, patch=50),
                    require_coordinates=False,
                )
                for k, group in enumerate(inputs)
            ]
            prepare_store(specs[:1], tmp / "warm", progress=False, isolate=False)  # imports
            t0 = time.perf_counter()
            manifest = prepare_store(specs, tmp / "store", progress=False)
            t_ingest = time.perf_counter() - t0
            t0 = time.perf_counter()
            prepare_store(specs, tmp / "inproc", progress=False, isolate=False)
            t_inproc = time.perf_counter() - t0
            assert manifest is not None and not manifest["rejects"], manifest["rejects"]
            samples = sum(s["n_samples"] for s in manifest["sources"].values())
        rows.append(
            {
                "format": fmt,
                "input_mb": nbytes / 1e6,
                "samples": samples,
                "bare_read_mb_s": nbytes / 1e6 / t_bare,
                "scigpt_ingest_mb_s": nbytes / 1e6 / t_ingest,
                "ratio": t_bare / t_ingest,
                "in_process_mb_s": nbytes / 1e6 / t_inproc,
                "isolation_cost": t_ingest / t_inproc,
            }
        )
    report(
        rows,
        [("format", "format", "12s"), ("input_mb", "MB", ".1f"),
         ("bare_read_mb_s", "bare MB/s", ".1f"), ("scigpt_ingest_mb_s", "ingest MB/s", ".1f"),
         ("ratio", "ratio", ".2f"), ("in_process_mb_s", "in-process MB/s", ".1f"),
         ("isolation_cost", "isolated/in-process time", ".2f")],
        args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
