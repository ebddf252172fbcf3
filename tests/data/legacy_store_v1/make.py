"""Writes tests/data/legacy_store_v1 (run with the code of commit 683a249; see README.md)."""

import sys

import numpy as np

from scigpt.data_pipeline.ingest.base import GridArray
from scigpt.data_pipeline.shards import write_grid_store
from scigpt.data_pipeline.variables import VariableInfo


def legacy_grid():
    rng = np.random.default_rng(22)
    values = rng.standard_normal((6, 3, 21, 30)).astype(np.float32)
    values[2, 1, 5, 7] = np.nan
    vs = [
        VariableInfo(name=n, units=u, modality="grid")
        for n, u in (("t2m", "K"), ("u10", "m s-1"), ("sp", "Pa"))
    ]
    lat = np.linspace(60.0, 40.0, 21)
    lon = np.linspace(0.0, 29.0, 30)
    time = np.datetime64("2020-01-01T00", "ns") + np.arange(6) * np.timedelta64(1, "h")
    return GridArray(values, vs, lat, lon, time, "legacy-test")


if __name__ == "__main__":
    write_grid_store(
        legacy_grid(),
        sys.argv[1],
        steps_per_shard=3,
        producer={"command": "tests/data/legacy_store_v1/README.md"},
    )
