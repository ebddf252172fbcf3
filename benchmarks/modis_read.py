"""MODIS HDF4-EOS read speed: SciGPT's reader vs the bare pyhdf read of the same SDS.

The bare read decodes every SDS of the file with pyhdf (no metadata, no geolocation, no
packing); the reader also parses the HDF-EOS metadata, geolocates the tile and unpacks. Best
of ``--repeat`` timings of each, input MB/s (file size) and the ratio reader / bare.

    python benchmarks/modis_read.py --repeat 30
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "modis"


def bare_read(files: list[Path]) -> None:
    from pyhdf.SD import SD, SDC

    for f in files:
        sd = SD(str(f), SDC.READ)
        for name in sd.datasets():
            sd.select(name).get()
        sd.end()


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--pattern", default="MOD09A1*.hdf")
    args = ap.parse_args()
    from scigpt.data_pipeline.ingest.modis import read_modis_hdf4

    files = sorted(DATA.glob(args.pattern))
    mb = sum(f.stat().st_size for f in files) / 1e6
    bare_read(files)
    read_modis_hdf4(files)  # imports, page cache
    t_bare = best(lambda: bare_read(files), args.repeat)
    t_read = best(lambda: read_modis_hdf4(files), args.repeat)
    print(f"{len(files)} file(s), {mb:.1f} MB: bare pyhdf {mb / t_bare:.0f} MB/s, "
          f"read_modis_hdf4 {mb / t_read:.0f} MB/s, ratio {t_bare / t_read:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
