"""Peak memory of an ingest: 1 vs N daily ERA5 downloads in one unit, against xarray's decode.

Generates ERA5-layout CF netCDF4 files (int16-packed, one variable per file per day, hourly,
``--vars`` variables on a ``--lat`` × ``--lon`` grid; smooth random fields), then measures in a
fresh subprocess each (peak RSS = ``ru_maxrss``):

* ``baseline``: the interpreter with the ingest's imports, nothing read;
* ``ingest 1``/``ingest N``: ``prepare_store`` of 1 day / N days as ONE unit (``unit: all``, read
  in-process): bounded memory means the two peaks are close (goal: N/1 within 1.2×);
* ``xarray 1``/``xarray N``: what a user would run instead — every file decoded by xarray
  (``mask_and_scale``) and concatenated along time in memory.

    python benchmarks/ingest_memory.py --days 24
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NAMES = ("t2m", "sp", "u10", "v10", "msl", "tcwv", "d2m", "skt")
UNITS = {"t2m": "K", "sp": "Pa", "u10": "m s**-1", "v10": "m s**-1", "msl": "Pa",
         "tcwv": "kg m**-2", "d2m": "K", "skt": "K"}  # fmt: skip
MEANS = {"t2m": 280.0, "sp": 98000.0, "u10": 0.0, "v10": 0.0, "msl": 101000.0, "tcwv": 20.0,
         "d2m": 275.0, "skt": 281.0}  # fmt: skip
SPREAD = {"t2m": 10.0, "sp": 2000.0, "u10": 5.0, "v10": 5.0, "msl": 1500.0, "tcwv": 8.0,
          "d2m": 9.0, "skt": 11.0}  # fmt: skip


def _smooth(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Fields with a red spectrum (low wavenumbers dominate), not white noise."""
    t, h, w = shape
    spec = rng.standard_normal((t, h, w // 2 + 1)) + 1j * rng.standard_normal((t, h, w // 2 + 1))
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    spec /= (1.0 + 400.0 * (kx**2 + ky**2)) ** 1.5
    field = np.fft.irfft2(spec, s=(h, w))
    return field / field.std()


def generate(out: Path, days: int, n_vars: int, lat: int, lon: int) -> list[Path]:
    import xarray as xr

    rng = np.random.default_rng(0)
    lats = np.linspace(90.0, -90.0, lat)
    lons = np.linspace(0.0, 360.0, lon, endpoint=False)
    files = []
    for d in range(days):
        times = np.datetime64("2020-01-01T00", "h") + np.timedelta64(24 * d, "h") + np.arange(24)
        for name in NAMES[:n_vars]:
            data = MEANS[name] + SPREAD[name] * _smooth(rng, (24, lat, lon))
            lo, hi = float(data.min()), float(data.max())
            ds = xr.Dataset(
                {name: (("time", "latitude", "longitude"), data, {"units": UNITS[name]})},
                coords={"time": times.astype("datetime64[ns]"), "latitude": lats,
                        "longitude": lons},
            )  # fmt: skip
            path = out / f"era5_{name}_{str(times[0])[:10]}.nc"
            enc = {name: {"dtype": "int16", "scale_factor": (hi - lo) / 65000.0,
                          "add_offset": (hi + lo) / 2, "_FillValue": np.int16(-32767),
                          "zlib": True, "complevel": 1},
                   "time": {"units": "hours since 1900-01-01"}}  # fmt: skip
            ds.to_netcdf(path, format="NETCDF4", encoding=enc)
            files.append(path)
    return files


_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
import xarray as xr
from scigpt.data_pipeline.prepare import SourceSpec, prepare_store
mode, files, out = sys.argv[1], [Path(p) for p in json.loads(sys.argv[2])], Path(sys.argv[3])
t0 = time.perf_counter()
if mode == "ingest":
    spec = SourceSpec("era5", "netcdf", files, unit="all")
    m = prepare_store([spec], out, progress=False, isolate=False)
    assert m is not None and not m["rejects"], m["rejects"]
elif mode == "xarray":
    by_var = {}
    for f in files:
        with xr.open_dataset(f, mask_and_scale=True) as ds:
            for v in ds.data_vars:
                by_var.setdefault(v, []).append(ds[v].values)
    arrays = {v: np.concatenate(parts) for v, parts in by_var.items()}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB -> MB
print(json.dumps({"peak_mb": peak, "seconds": time.perf_counter() - t0}))
"""


def measure(mode: str, files: list[Path], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, json.dumps([str(f) for f in files]), str(out)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if run.returncode:
        raise RuntimeError(f"{mode} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=24)
    ap.add_argument("--vars", type=int, default=3)
    ap.add_argument("--lat", type=int, default=181)
    ap.add_argument("--lon", type=int, default=360)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        t0 = time.perf_counter()
        files = generate(tmp / "in", args.days, args.vars, args.lat, args.lon)
        gen_s = time.perf_counter() - t0
        one = files[: args.vars]
        day_mb = 24 * args.vars * args.lat * args.lon * 4 / 1e6
        print(f"{args.days} days x {args.vars} variables (one file each per day), "
              f"{args.lat}x{args.lon}, hourly: {len(files)} files, "
              f"{sum(f.stat().st_size for f in files) / 1e6:.0f} MB on disk, "
              f"{day_mb:.1f} MB float32 per day; generated in {gen_s:.0f} s")  # fmt: skip
        rows = {
            "baseline": measure("none", [], tmp / "s0"),
            "ingest 1": measure("ingest", one, tmp / "s1"),
            f"ingest {args.days}": measure("ingest", files, tmp / "sN"),
            "xarray 1": measure("xarray", one, tmp / "x1"),
            f"xarray {args.days}": measure("xarray", files, tmp / "xN"),
        }
    for name, r in rows.items():
        print(f"  {name:12s} peak RSS {r['peak_mb']:8.0f} MB  {r['seconds']:6.1f} s")
    ratio = rows[f"ingest {args.days}"]["peak_mb"] / rows["ingest 1"]["peak_mb"]
    xr_ratio = rows[f"xarray {args.days}"]["peak_mb"] / rows["xarray 1"]["peak_mb"]
    print(
        f"peak RSS ingest {args.days} days / 1 day: {ratio:.2f} (goal <= 1.2); "
        f"xarray decode: {xr_ratio:.2f}"
    )
    over = rows["ingest 1"]["peak_mb"] - rows["baseline"]["peak_mb"]
    print(
        f"1 day: ingest adds {over:.0f} MB over the baseline "
        f"({over / day_mb:.2f}x the day's float32 size)"
    )


if __name__ == "__main__":
    main()
