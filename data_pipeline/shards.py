"""The patch store, write side: one HDF5 shard and one JSON record per work unit, one manifest.

Layout::

    store/manifest.json                     written last: its presence means the store is whole
    store/units/<source>/<unit>.json        per unit: status, shard sha256, sample times, stats
    store/shards/<source>/<unit>.h5         per unit: one group per array (a0, a1, ...)

A work unit is one input file (or one group of files read together, or one range of simulated
samples). Units are numbered in a fixed order, so the same inputs give the same shard names and
bytes whatever the number of processes; statistics are merged unit by unit in that order, so a
parallel ingest gives bit-identical statistics to a serial one. A unit counts as done once its
record exists (record written after the shard, both atomically): a killed ingest resumes where it
stopped, redoing at most the units that were in flight.

Shard groups hold ``patches``, ``time`` (N,) int64 ns (sample start), coordinates, and
per-record attributes for series. Series ``patches`` are (N, C, P, K), one chunk per window.
Grid arrays (layout 2, :data:`LAYOUT_VERSION`) hold ``fields``, the frames (N·pt, V, H, W),
chunked by sample (pt frames), variable and spatial tile of whole patches (:func:`grid_tile`,
~1 MiB uncompressed a chunk), so a sample, a crop or a variable subset decompresses only the
chunks it touches and needs no token transpose; the tile (variables, patch rows, patch cols) is
recorded in the unit's array info (``layout``, ``tile``). Stores of format 1 hold grid
``patches`` (N, V, G, K), one chunk per sample (layout 1); they are still read. Every dataset
is written with ``track_times=False`` and ``libver="earliest"``: identical input → identical
bytes.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from scigpt.atomic import atomic_write, atomic_write_text, sha256_file

from .consistency import source_flags
from .ingest.base import GridArray, SeriesArray, time_blocks
from .lzf import write_lzf_chunks
from .patches import grid_token_coords, grid_tokens, patchify_grid, patchify_series
from .plausibility import merge_checks
from .splits import inside_block, window_last_ns
from .stats import RunningStats

FORMAT = "scigpt-patch-store"
FORMAT_VERSION = 2  # 2: grid layout 2 (tiles); format 1 stores are still read
READABLE_VERSIONS = (1, 2)
LAYOUT_VERSION = 2
TILE_BYTES = 1 << 20  # uncompressed bytes a grid chunk aims at (1-4 MB: one decompression each)
MANIFEST = "manifest.json"
# A grid unit is decoded, checked, patchified and written this many bytes of frames at a time
# (whole tubelets; at least one): memory does not grow with the unit's length.
BLOCK_BYTES = 16 << 20


class UnitCheck(Protocol):
    """Checks run on a unit's values as they are written (prepare.py's reader checks)."""

    def block(self, index: int, arr: GridArray | SeriesArray, values: np.ndarray) -> None:
        """Values of array ``index``: a block of time steps of a grid, a whole series array."""

    def verdict(self) -> dict[str, Any]:
        """After the last block: entries for the record; raise to reject the unit (no shard)."""


@dataclass(frozen=True)
class PatchSpec:
    """How a source is cut into tokens."""

    grid: tuple[int, int, int] = (1, 4, 4)  # (pt, ph, pw) tubelet for gridded sources
    window: int = 1200  # samples per series window
    patch: int = 50  # samples per series token
    stride: int | None = None  # window stride; None = window (no overlap)
    partial: str = "pad"  # trailing partial window: "pad" with NaN or "drop"
    # HDF5 filter of the patches: "lzf" (fast to read back, h5py's built-in filter), "gzip"
    # (level 4; portable to any HDF5 tool, ~4x slower to decompress) or "none".
    compression: str = "lzf"

    def h5_filters(self) -> dict[str, Any]:
        if self.compression == "none":
            return {}
        if self.compression == "gzip":
            return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        if self.compression == "lzf":
            return {"compression": "lzf", "shuffle": True}
        raise ValueError(f"compression={self.compression!r}: choose lzf, gzip or none")

    def to_dict(self) -> dict[str, Any]:
        return {
            "compression": self.compression,
            "grid": list(self.grid),
            "window": self.window,
            "patch": self.patch,
            "stride": self.stride,
            "partial": self.partial,
        }


@dataclass
class NamedStats:
    """Running statistics keyed by canonical variable name (sources may add variables)."""

    stats: dict[str, RunningStats] = field(default_factory=dict)

    def update(self, name: str, values: np.ndarray) -> None:
        self.stats.setdefault(name, RunningStats(1)).update(values.reshape(1, -1), axis=0)

    def merge(self, other: NamedStats) -> None:
        for name, st in other.stats.items():
            self.stats.setdefault(name, RunningStats(1)).merge(st)

    def to_dict(self) -> dict[str, Any]:
        return {name: st.to_dict() for name, st in self.stats.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NamedStats:
        return cls({name: RunningStats.from_dict(v) for name, v in d.items()})


def _iso(times_ns: np.ndarray) -> list[str]:
    times = np.asarray(times_ns).astype("datetime64[ns]")
    unit = "s" if np.all(times.astype(np.int64) % 1_000_000_000 == 0) else "ns"
    return [str(s) for s in np.datetime_as_string(times, unit=unit)]


def _dataset(g: h5py.Group, name: str, data: np.ndarray, **kw: Any) -> None:
    g.create_dataset(name, data=data, track_times=False, **kw)


def grid_tile(
    v: int, gh: int, gw: int, k: int, itemsize: int, target: int = TILE_BYTES
) -> tuple[int, int, int]:
    """Chunk shape (variables, token rows, token cols) of grid layout 2, ~``target`` bytes.

    A field smaller than ``target`` is kept whole and several variables share a chunk (a 41 x 41
    sample stays one chunk); a larger one is cut into near-equal tiles of about ``target`` bytes
    (0.25 deg, patch 4: 181 x 360 tokens of 64 B -> 2 x 2 tiles of 91 x 180 tokens, 1.0 MB)."""
    token = k * itemsize
    field = gh * gw * token
    if field <= target:
        return max(1, min(v, target // max(field, 1))), gh, gw
    side = max(1, math.isqrt(target // token))
    th = -(-gh // -(-gh // min(gh, side)))  # rows split into equal parts of <= side rows
    tw_max = max(1, target // (token * th))
    tw = -(-gw // -(-gw // min(gw, tw_max)))
    return 1, th, tw


def _chunked_dataset(
    g: h5py.Group, name: str, shape: tuple[int, ...], dtype, spec: PatchSpec, chunks: tuple
) -> h5py.Dataset:
    """An empty dataset to be filled by ``_write_rows`` (chunked and filtered as ``spec``)."""
    if not shape[0]:
        return g.create_dataset(name, shape=shape, dtype=dtype, track_times=False)
    return g.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, track_times=False,
                            **spec.h5_filters())  # fmt: skip


def _write_rows(ds: h5py.Dataset, start: int, data: np.ndarray, spec: PatchSpec) -> None:
    """Rows ``start`` ... of ``ds``. LZF chunks are coded here, not by h5py's filter, whose
    output depends on uninitialised memory (see lzf.py): identical input → identical bytes."""
    if not len(data):
        return
    if spec.compression == "lzf":
        write_lzf_chunks(ds, data, start=start)
    else:
        ds[start : start + len(data)] = data


def _patches(
    g: h5py.Group,
    patches: np.ndarray,
    spec: PatchSpec,
    chunks: tuple[int, ...] | None = None,
    name: str = "patches",
) -> None:
    """The ``name`` dataset holding ``patches``, chunked as ``chunks`` (default: one chunk per
    row)."""
    chunks = chunks or (1, *patches.shape[1:])
    ds = _chunked_dataset(g, name, patches.shape, patches.dtype, spec, chunks)
    _write_rows(ds, 0, patches, spec)


def _write_grid(
    g: h5py.Group,
    arr: GridArray,
    spec: PatchSpec,
    stats: NamedStats,
    rng,
    inspect: Callable[[np.ndarray], None] | None = None,
) -> dict:
    """Write ``arr``'s frames (layout 2) into ``g`` a block of whole samples at a time
    (``BLOCK_BYTES``): only one block is decoded (a ``LazyGrid`` reads it from the files) at once.
    ``inspect`` sees every block of frames (the trailing ones too) before it is written."""
    pt, ph, pw = spec.grid
    t_all, v, h, w = arr.values.shape
    n = t_all // pt
    if n == 0:
        if inspect is not None:
            inspect(arr.values[0:t_all])
        raise ValueError(f"{arr.source}: {t_all} frames do not fill one {pt}-frame tubelet")
    gh, gw = grid_tokens(h, w, ph, pw)
    times = arr.time[: n * pt : pt].astype("datetime64[ns]").astype(np.int64)  # (N,)
    k = pt * ph * pw
    tile = grid_tile(v, gh, gw, k, 4, target=TILE_BYTES)
    # layout 2: the frames themselves (N·pt, V, H, W), a chunk per sample (pt frames), cv
    # variables and a tile of th x tw patches: a read needs no token transpose, a crop or a
    # variable subset decompresses only its chunks
    chunks = (pt, tile[0], min(h, tile[1] * ph), min(w, tile[2] * pw))
    ds = _chunked_dataset(g, "fields", (n * pt, v, h, w), np.float32, spec, chunks)
    _dataset(g, "time", times)
    _dataset(g, "lat", np.asarray(arr.lat, dtype=np.float64))
    _dataset(g, "lon", np.asarray(arr.lon, dtype=np.float64))
    if arr.coords == "geographic":
        tlat, tlon = grid_token_coords(arr.lat, arr.lon, ph, pw)
        _dataset(g, "token_lat", tlat)
        _dataset(g, "token_lon", tlon)
    all_t = arr.time.astype("datetime64[ns]").astype(np.int64)
    frame_step = int(all_t[1] - all_t[0]) if len(all_t) > 1 else 0
    # Statistics over the frames inside the block only: a tubelet of pt frames that straddles
    # its end contributes its inside frames (token values are time-major, ph·pw per frame).
    frame_t = all_t[: n * pt].reshape(n, pt)  # (N, pt)
    inside = inside_block(frame_t, frame_t, rng)  # (N, pt)
    keep = np.repeat(inside, ph * pw, axis=1)  # (N, K)
    steps = pt * max(1, BLOCK_BYTES // (pt * v * h * w * 4))
    for t0, frames in time_blocks(arr.values, steps):
        if inspect is not None:
            inspect(frames)
        n0, n1 = t0 // pt, min(n, (t0 + len(frames)) // pt)
        if n1 <= n0:
            continue  # trailing frames that do not fill a tubelet
        block = np.ascontiguousarray(frames[: (n1 - n0) * pt], dtype=np.float32)
        del frames
        _write_rows(ds, n0 * pt, block, spec)
        patches = patchify_grid(block, spec.grid)  # (n1 - n0, V, G, K): for the statistics
        for j, var in enumerate(arr.variables):
            stats.update(var.name, np.where(keep[n0:n1, None, :], patches[:, j], np.nan))
    return {"kind": "grid", "n": int(n), "height": int(h), "width": int(w), "coords": arr.coords,
            "frame_step_ns": frame_step, "layout": LAYOUT_VERSION, "tile": list(tile),
            "times": _iso(times)}  # fmt: skip


def _write_series(g: h5py.Group, arr: SeriesArray, spec: PatchSpec, stats: NamedStats, rng):
    patches, origin = patchify_series(
        arr.values, window=spec.window, patch=spec.patch, stride=spec.stride,
        partial=spec.partial,  # type: ignore[arg-type]
    )  # fmt: skip
    # Windows with no valid value at all carry nothing: drop them (counted in the record).
    valid = ~np.all(np.isnan(patches), axis=(1, 2, 3))
    patches, origin = patches[valid], origin[valid]
    rec, off = origin[:, 0], origin[:, 1]
    step = arr.step.astype("timedelta64[ns]").astype(np.int64)
    times = arr.start.astype("datetime64[ns]").astype(np.int64)[rec] + off * step  # (M,)
    m, _, p, k = patches.shape
    _patches(g, patches, spec)
    _dataset(g, "time", times)
    _dataset(g, "record", rec)
    for name in ("lat", "lon", "elevation", "depth"):
        col = getattr(arr, name)
        if col is not None:
            _dataset(g, name, np.asarray(col, dtype=np.float64)[rec])
    attrs = g.create_group("attrs", track_order=True)
    for key in sorted(arr.record_attrs):
        col = np.asarray(arr.record_attrs[key])[rec]
        if col.dtype.kind in "iufb":
            _dataset(attrs, key, col)
        else:
            _dataset(attrs, key, col.astype(str).astype(object), dtype=h5py.string_dtype())
    # A window counts for the statistics only if all of it lies in the block (data_pipeline.splits).
    keep = inside_block(times, window_last_ns(times, p * k, step), rng)
    for j, var in enumerate(arr.variables):
        stats.update(var.name, patches[keep, j])
    return {"kind": "series", "n": int(m), "dropped_empty_windows": int((~valid).sum()),
            "step_ns": int(step), "times": _iso(times)}  # fmt: skip


def write_unit(
    store: Path,
    source: str,
    unit: str,
    arrays: Sequence[GridArray | SeriesArray],
    spec: PatchSpec,
    *,
    stats_time_range: tuple[Any, Any] | None,
    meta: dict[str, Any],
    check: UnitCheck | None = None,
) -> dict[str, Any]:
    """Patchify ``arrays`` into the unit's shard (atomically), then write its record.

    ``check`` sees the values as they are written (grids block by block) and gives its verdict
    before the shard is renamed into place: its entries go into the record; if it raises, no
    shard is left."""
    rel = Path("shards") / source / f"{unit}.h5"
    stats = NamedStats()
    infos: list[dict[str, Any]] = []
    verdict: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        infos.clear()
        stats.stats.clear()
        verdict.clear()
        with h5py.File(tmp, "w", libver="earliest") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["source"] = source
            f.attrs["unit"] = unit
            for i, arr in enumerate(arrays):
                g = f.create_group(f"a{i}")
                g.attrs["variables"] = json.dumps([v.to_dict() for v in arr.variables])
                g.attrs["array_source"] = arr.source
                if isinstance(arr, GridArray):
                    inspect = None if check is None else functools.partial(check.block, i, arr)
                    info = _write_grid(g, arr, spec, stats, stats_time_range, inspect)
                else:
                    if check is not None:
                        check.block(i, arr, arr.values)
                    info = _write_series(g, arr, spec, stats, stats_time_range)
                if arr.attrs.get("reader_warnings"):  # harmless ones; the rest are rejects
                    info["reader_warnings"] = list(arr.attrs["reader_warnings"])
                infos.append({"group": f"a{i}", "variables": [v.name for v in arr.variables],
                              **info})  # fmt: skip
        if check is not None:
            verdict.update(check.verdict())

    sha = atomic_write(store / rel, write)
    variables: dict[str, dict] = {}
    for arr in arrays:
        for v in arr.variables:
            variables.setdefault(v.name, v.to_dict())
    record = {
        "unit": unit,
        "source": source,
        "status": "done",
        "shard": str(rel),
        "sha256": sha,
        "bytes": (store / rel).stat().st_size,
        "arrays": infos,
        "variables": list(variables.values()),
        "stats": stats.to_dict(),
        **meta,
        **verdict,
    }
    write_record(store, source, unit, record)
    return record


def write_record(store: Path, source: str, unit: str, record: dict[str, Any]) -> None:
    atomic_write_text(
        store / "units" / source / f"{unit}.json", json.dumps(record, indent=1) + "\n"
    )


def read_record(store: Path, source: str, unit: str) -> dict[str, Any] | None:
    path = store / "units" / source / f"{unit}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a torn record (cannot happen with atomic writes) is redone, not trusted


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None  # JSON has no NaN


def build_manifest(
    store: Path,
    sources: dict[str, dict[str, Any]],
    units: Sequence[tuple[str, str]],
    *,
    producer: dict[str, Any],
    stats_time_range: tuple[Any, Any] | None,
    skipped: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """Merge the unit records (in unit order) into ``manifest.json``; returns the manifest.

    ``skipped``: entries of source folders that were not read (``{"source", "path",
    "reason"}``), listed as they are."""
    out_sources: dict[str, dict[str, Any]] = {
        name: {**meta, "variables": [], "units": [], "n_samples": 0, "stats": {}}
        for name, meta in sources.items()
    }
    merged = {name: NamedStats() for name in sources}
    seen_vars: dict[str, set[str]] = {name: set() for name in sources}
    rejects = []
    done: dict[str, list[dict[str, Any]]] = {name: [] for name in sources}
    for source, unit in units:
        rec = read_record(store, source, unit)
        if rec is None:
            raise RuntimeError(f"unit {unit} of source {source} has no record: ingest incomplete")
        if rec["status"] != "done":
            rej = {k: rec.get(k) for k in ("source", "unit", "paths", "reason")}
            if rec.get("failure"):  # the reader crashed or hung (isolate.py)
                rej["failure"] = rec["failure"]
            rejects.append(rej)
            continue
        src = out_sources[source]
        for v in rec["variables"]:
            if v["name"] not in seen_vars[source]:
                seen_vars[source].add(v["name"])
                src["variables"].append(v)
        merged[source].merge(NamedStats.from_dict(rec["stats"]))
        done[source].append(rec)
        n = sum(a["n"] for a in rec["arrays"])
        src["n_samples"] += n
        src["units"].append({k: rec[k] for k in ("unit", "shard", "sha256", "bytes", "arrays")})
        rejects.extend(rec.get("rejects", []))
    flagged = []
    for name, recs in done.items():
        # Per variable: min/max, the plausible range checked and the decoding rules applied.
        out_sources[name]["checks"] = merge_checks(recs)
        # Units whose structure departs from their siblings' (a file cut at a time step).
        flags = source_flags(recs, sources[name].get("patch"))
        for rec, entry in zip(recs, out_sources[name]["units"], strict=True):
            if rec["unit"] in flags:
                entry["flags"] = flags[rec["unit"]]
                flagged.append({"source": name, "unit": rec["unit"], "paths": rec.get("paths"),
                                "reasons": flags[rec["unit"]]})  # fmt: skip
    for name, st in merged.items():
        out_sources[name]["stats"] = {
            v: {
                "count": int(s.count[0]),
                "mean": _json_float(s.mean[0]),
                "std": _json_float(s.std[0]),
            }
            for v, s in st.stats.items()
        }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stats_time_range": None
        if stats_time_range is None
        else [str(np.datetime64(t, "s")) for t in stats_time_range],
        "sources": out_sources,
        "rejects": rejects,
        "flagged": flagged,
        "skipped": list(skipped),
        "producer": producer,
    }
    atomic_write_text(store / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def write_grid_store(
    grid: GridArray,
    out_dir: str | Path,
    *,
    steps_per_shard: int = 24,
    stats_time_range: tuple[Any, Any] | None = None,
    producer: dict[str, Any] | None = None,
    source: str = "grid",
    patch: tuple[int, int, int] = (1, 4, 4),
) -> dict[str, Any]:
    """Write an in-memory grid as a one-source store, one unit per ``steps_per_shard`` frames."""
    out = Path(out_dir)
    (out / MANIFEST).unlink(missing_ok=True)  # the old manifest must not describe new shards
    spec = PatchSpec(grid=patch)
    units = []
    for k, t0 in enumerate(range(0, len(grid.time), steps_per_shard)):
        sl = slice(t0, t0 + steps_per_shard)
        part = GridArray(grid.values[sl], grid.variables, grid.lat, grid.lon, grid.time[sl],
                         grid.source, grid.coords, grid.attrs)  # fmt: skip
        unit = f"{source}-{k:05d}"
        write_unit(out, source, unit, [part], spec, stats_time_range=stats_time_range,
                   meta={"paths": [], "index": k})  # fmt: skip
        units.append((source, unit))
    _remove_stale(out, {source: {u for _, u in units}})
    return build_manifest(
        out,
        {source: {"format": "memory", "kind": "grid", "patch": spec.to_dict()}},
        units,
        producer=producer or {},
        stats_time_range=stats_time_range,
    )


def _remove_stale(out: Path, keep: dict[str, set[str]]) -> None:
    """Drop shards/records of units no longer planned (a rewrite with fewer units)."""
    for source, units in keep.items():
        for sub, suffix in (("shards", ".h5"), ("units", ".json")):
            for p in (out / sub / source).glob(f"*{suffix}"):
                if p.stem not in units:
                    p.unlink()


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LAYOUT_VERSION",
    "MANIFEST",
    "READABLE_VERSIONS",
    "NamedStats",
    "PatchSpec",
    "build_manifest",
    "grid_tile",
    "read_record",
    "sha256_file",
    "write_grid_store",
    "write_record",
    "write_unit",
]
