"""Issue 22, store side: grid layout 2 (chunks by variable and spatial tile), crops and
variable subsets that read only their chunks, format-1 stores still read, lazy checksums and
`scigpt verify`. All on small real HDF5 stores; about 3 s."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from scigpt.cli import main
from scigpt.data_pipeline import shards
from scigpt.data_pipeline.ingest.base import GridArray
from scigpt.data_pipeline.loader import ForecastDataset
from scigpt.data_pipeline.shards import grid_tile, write_grid_store
from scigpt.data_pipeline.store import GridStore
from scigpt.data_pipeline.variables import VariableInfo
from tests.conftest import corrupt_copy

LEGACY = Path(__file__).parent / "data" / "legacy_store_v1"


def legacy_grid() -> GridArray:
    """The values of tests/data/legacy_store_v1 (its make.py, repeated: seeded, exact)."""
    rng = np.random.default_rng(22)
    values = rng.standard_normal((6, 3, 21, 30)).astype(np.float32)
    values[2, 1, 5, 7] = np.nan
    vs = [VariableInfo(name=n, units=u, modality="grid")
          for n, u in (("t2m", "K"), ("u10", "m s-1"), ("sp", "Pa"))]  # fmt: skip
    lat = np.linspace(60.0, 40.0, 21)
    lon = np.linspace(0.0, 29.0, 30)
    time = np.datetime64("2020-01-01T00", "ns") + np.arange(6) * np.timedelta64(1, "h")
    return GridArray(values, vs, lat, lon, time, "legacy-test")


def _grid(t: int = 4, h: int = 45, w: int = 70) -> GridArray:
    rng = np.random.default_rng(5)
    values = rng.standard_normal((t, 3, h, w)).astype(np.float32)
    vs = [VariableInfo(name=n, units="1", modality="grid") for n in ("a", "b", "c")]
    time = np.datetime64("2021-06-01T00", "ns") + np.arange(t) * np.timedelta64(6, "h")
    return GridArray(values, vs, np.linspace(80, -80, h), np.linspace(0, 355, w), time, "t")


def test_grid_tile_sizes() -> None:
    # a small field stays whole and variables share the chunk (one decompression a sample)
    assert grid_tile(14, 11, 11, 16, 4) == (14, 11, 11)
    # 0.25 deg, patch 4 (181 x 360 tokens of 16 float32): 2 x 2 tiles of ~1.0 MB per variable
    assert grid_tile(100, 181, 360, 16, 4) == (1, 91, 180)
    for v, gh, gw, k in [(7, 181, 360, 16), (1, 721, 1440, 1), (69, 32, 64, 16), (3, 91, 180, 64)]:
        cv, th, tw = grid_tile(v, gh, gw, k, 4)
        nbytes = cv * th * tw * k * 4
        assert nbytes <= 4 << 20 and (nbytes >= 1 << 19 or (th, tw) == (gh, gw)), (v, gh, gw)


def _tiled_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "s") -> Path:
    # 4 KiB tiles: 12 x 18 tokens of 64 B -> 2 x 2 tiles of 6 x 9 tokens per variable
    monkeypatch.setattr(shards, "TILE_BYTES", 4096)
    write_grid_store(_grid(), tmp_path / name, steps_per_shard=4)
    return tmp_path / name


def test_crop_and_variables_read_only_their_chunks(tmp_path, monkeypatch) -> None:
    grid = _grid()
    out = _tiled_store(tmp_path, monkeypatch)
    again = _tiled_store(tmp_path, monkeypatch, "again")  # deterministic bytes, tiles and all
    for p in sorted(out.rglob("*.*")):
        assert p.read_bytes() == (again / p.relative_to(out)).read_bytes(), p
    shard = out / "shards/grid/grid-00000.h5"
    with h5py.File(shard) as f:
        ds = f["a0/fields"]  # the frames, chunked by sample, variable and 6 x 9 patches
        assert ds.shape == (4, 3, 45, 70) and ds.chunks == (1, 1, 24, 36)
        assert [a["tile"] for a in json.loads((out / "manifest.json").read_text())["sources"]
                ["grid"]["units"][0]["arrays"]] == [[1, 6, 9]]  # fmt: skip
        # byte ranges of every chunk except those of tile (1, 1) of variables c and a
        keep = {(t, v, 24, 36) for t in range(4) for v in (0, 2)}
        others = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
        wreck = [(c.byte_offset, c.size) for c in others if c.chunk_offset not in keep]
    crop = (6, 9, 6, 9)  # token rows 6..11, cols 9..17 -> points 24..44, 36..69 (clipped)
    ref = grid.values[1:3][:, [2, 0], 24:45, 36:70]
    with GridStore(out) as store:
        assert np.array_equal(store.read(0, 4), grid.values)
        assert np.array_equal(store.read(1, 3, variables=[2, 0], crop=crop), ref)
    raw = bytearray(shard.read_bytes())
    for off, size in wreck:  # the other chunks are garbage now: a full read must fail
        raw[off : off + size] = b"\xff" * size
    shard.write_bytes(bytes(raw))
    with GridStore(out, verify=False) as store:
        assert np.array_equal(store.read(1, 3, variables=[2, 0], crop=crop), ref)
        with pytest.raises(OSError):
            store.read(1, 3)
        ds = ForecastDataset(store, time_range=(store.time[0], store.time[-1]), history=1,
                             lead=1, variables=["c", "a"], crop=crop, normalise=False)  # fmt: skip
        fields, target, _ = ds.raw_item(0)
        assert np.array_equal(fields, grid.values[[0], :][:, [2, 0], 24:45, 36:70])
        assert np.array_equal(target, grid.values[1][[2, 0], 24:45, 36:70])
        item = ds[0]
        assert item["fields"].shape == (2, 1, 21, 34)
        assert np.array_equal(item["lat"].numpy(), grid.lat[24:45].astype(np.float32))
        assert np.array_equal(item["lon"].numpy(), grid.lon[36:70].astype(np.float32))
        with pytest.raises(ValueError, match=r"crop=\[0, 0, 13, 1\].*12 x 18 token grid"):
            ForecastDataset(store, time_range=(store.time[0], store.time[-1]), crop=(0, 0, 13, 1))


def test_format_1_store_still_reads() -> None:
    """tests/data/legacy_store_v1, written by the one-chunk-per-sample code, read today."""
    grid = legacy_grid()
    with GridStore(LEGACY) as store:
        assert store.manifest["format_version"] == 1
        assert np.array_equal(store.read(0, 6), grid.values, equal_nan=True)
        part = store.read(2, 5, variables=[1], crop=(1, 1, 5, 5))  # rows 4..20, cols 4..23
        assert np.array_equal(part, grid.values[2:5, [1], 4:21, 4:24], equal_nan=True)
        assert part.shape == (3, 1, 17, 20) and np.isnan(part[0, 0, 1, 3])  # the NaN at (5, 7)
        assert store._store._verified == set(store._store._units)  # lazily hashed on read


def test_scigpt_verify_names_the_bad_shard(tmp_path, capsys) -> None:
    small = legacy_grid()
    write_grid_store(small, tmp_path / "s", steps_per_shard=2)
    assert main(["verify", str(tmp_path / "s"), "--quiet"]) == 0
    assert "3 shards verified" in capsys.readouterr().out
    bad = corrupt_copy(tmp_path / "s", tmp_path / "bad", "shards/grid/grid-00001.h5")
    assert main(["verify", str(bad), "--jobs", "2", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "shards/grid/grid-00001.h5 (source grid, unit grid-00001) fails its sha256" in err
    assert "grid-00000" not in err and "grid-00002" not in err and "1 of 3 shards" in err
