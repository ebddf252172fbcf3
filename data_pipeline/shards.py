"""A simple grid store: time-sharded HDF5 files plus a JSON manifest with checksums and stats.

Layout::

    out_dir/manifest.json          format, variables, lat/lon, times, stats, shards, producer
    out_dir/shards/grid-00000.h5   fields (t, V, H, W) float32, time int64 ns, lat, lon

The manifest is written last, so its presence means the store is complete. Every file is written
to a temporary file in the same folder, fsynced and renamed (``os.replace`` is atomic on POSIX),
so a crash never leaves a half-written shard or manifest under its final name. Identical input
gives identical bytes (no HDF5 timestamps, deterministic JSON), so manifest hashes identify data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from scigpt.atomic import atomic_write, fsync_dir

from .ingest.base import GridArray
from .stats import RunningStats
from .variables import VariableInfo

FORMAT = "scigpt-grid-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
_SHARD_PATTERN = "grid-*.h5"


def _shard_name(index: int) -> str:
    return f"grid-{index:05d}.h5"


def _write_shard(
    path: Path, fields: np.ndarray, time_ns: np.ndarray, lat: np.ndarray, lon: np.ndarray
) -> None:
    """Write one shard file at ``path`` (a temp path; the caller renames it)."""
    _, _, h, w = fields.shape
    # libver="earliest" + track_times=False: no timestamps or version-dependent layout, so
    # identical input gives identical bytes.
    with h5py.File(path, "w", libver="earliest") as f:
        f.create_dataset(
            "fields",
            data=fields,  # (t, V, H, W)
            dtype=np.float32,
            chunks=(1, 1, h, w),  # one 2-D field per chunk: reads of any (t, v) touch one chunk
            compression="gzip",
            compression_opts=4,
            shuffle=True,
            track_times=False,
        )
        f.create_dataset("time", data=time_ns, dtype=np.int64, track_times=False)
        f.create_dataset("lat", data=lat, dtype=np.float64, track_times=False)
        f.create_dataset("lon", data=lon, dtype=np.float64, track_times=False)
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION


def _iso(times: np.ndarray) -> list[str]:
    """ISO 8601 strings, in seconds when every time is whole seconds, else nanoseconds."""
    times = np.asarray(times, dtype="datetime64[ns]")
    unit = "s" if np.all(times.astype(np.int64) % 1_000_000_000 == 0) else "ns"
    return [str(s) for s in np.datetime_as_string(times, unit=unit)]


def _json_float(x: float) -> float | None:
    # JSON has no NaN; a variable without valid samples has mean/std null.
    return float(x) if np.isfinite(x) else None


def _time_indices(time: np.ndarray, time_range: tuple[Any, Any] | None) -> np.ndarray:
    if time_range is None:
        return np.arange(len(time))
    t0, t1 = (np.datetime64(t, "ns") for t in time_range)
    idx = np.flatnonzero((time >= t0) & (time <= t1))
    if idx.size == 0:
        raise ValueError(
            f"stats_time_range [{t0}, {t1}] contains none of the store's times "
            f"[{time[0]}, {time[-1]}]. Fix: pass a range that overlaps the data."
        )
    return idx


def write_grid_store(
    grid: GridArray,
    out_dir: str | Path,
    *,
    steps_per_shard: int = 24,
    stats_time_range: tuple[np.datetime64, np.datetime64] | None = None,
    producer: dict | None = None,
) -> dict:
    """Write ``grid`` as an HDF5-sharded store with a manifest; return the manifest dict.

    Stats are computed over ``stats_time_range`` (inclusive; default all times), typically the
    training period only, so validation data never leaks into the normalisation. Writing into an
    existing store replaces it: its manifest is removed first, so a crash midway leaves no
    manifest pointing at a mix of old and new shards.
    """
    if steps_per_shard < 1:
        raise ValueError(f"steps_per_shard must be >= 1, got {steps_per_shard}")
    time = np.asarray(grid.time, dtype="datetime64[ns]")
    time_ns = time.astype(np.int64)
    if np.any(np.diff(time_ns) <= 0):
        raise ValueError(
            f"{grid.source}: times must be strictly increasing. Fix: sort and de-duplicate "
            "the time axis before writing the store."
        )
    producer = dict(producer or {})
    try:
        json.dumps(producer)
    except TypeError as exc:
        raise ValueError(f"producer must be JSON-serialisable: {exc}") from exc
    stats_idx = _time_indices(time, stats_time_range)

    out = Path(out_dir)
    shard_dir = out / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        manifest_path.unlink()
        fsync_dir(out)

    lat = np.asarray(grid.lat, dtype=np.float64)
    lon = np.asarray(grid.lon, dtype=np.float64)
    stats = RunningStats(len(grid.variables))
    shards: list[dict[str, Any]] = []
    for index, start in enumerate(range(0, len(time), steps_per_shard)):
        stop = min(start + steps_per_shard, len(time))
        fields = np.ascontiguousarray(grid.values[start:stop], dtype=np.float32)  # (t, V, H, W)
        in_range = stats_idx[(stats_idx >= start) & (stats_idx < stop)] - start
        if in_range.size:
            stats.update(fields[in_range], axis=1)  # streaming: one shard in memory at a time
        name = _shard_name(index)
        sha = atomic_write(
            shard_dir / name,
            lambda p, f=fields, t=time_ns[start:stop]: _write_shard(p, f, t, lat, lon),
        )
        shards.append({"file": f"{SHARD_DIR}/{name}", "time_index": [start, stop], "sha256": sha})

    mean, std, count = stats.mean, stats.std, stats.count
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": grid.source,
        "variables": [v.to_dict() for v in grid.variables],
        "shape": {
            "time": len(time),
            "variables": len(grid.variables),
            "lat": len(lat),
            "lon": len(lon),
        },
        "lat": [float(x) for x in lat],
        "lon": [float(x) for x in lon],
        "times": _iso(time),
        "fields": {
            "dtype": "float32",
            "layout": "(time, variable, lat, lon)",
            "chunks": [1, 1, len(lat), len(lon)],
            "compression": "gzip-4+shuffle",
        },
        "stats": {
            "time_range": _iso(time[[stats_idx[0], stats_idx[-1]]]),
            "method": "exact streaming Welford/Chan merge in float64, NaN ignored, ddof=0",
            "per_variable": {
                v.name: {
                    "count": int(count[i]),
                    "mean": _json_float(mean[i]),
                    "std": _json_float(std[i]),
                }
                for i, v in enumerate(grid.variables)
            },
            # Full state, so a later ingest can merge more data into these stats exactly.
            "running": stats.to_dict(),
        },
        "shards": shards,
        "producer": producer,
    }
    data = (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode()
    atomic_write(manifest_path, lambda p: p.write_bytes(data))

    # Shards of an older, longer store in the same folder are no longer listed: remove them so
    # the folder holds exactly the store the manifest describes.
    listed = {Path(s["file"]).name for s in shards}
    for stale in shard_dir.glob(_SHARD_PATTERN):
        if stale.name not in listed:
            stale.unlink()
    return manifest


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class GridStore:
    """Read access to a store written by :func:`write_grid_store` (JSON manifest, no pickle)."""

    def __init__(self, out_dir: str | Path, verify: bool = True) -> None:
        self.root = Path(out_dir)
        manifest_path = self.root / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{manifest_path} not found: {self.root} is not a complete grid store (an "
                "interrupted ingest leaves no manifest). Fix: re-run the ingest "
                "(write_grid_store) into this folder."
            )
        raw = manifest_path.read_bytes()
        self.manifest_sha256: str = hashlib.sha256(raw).hexdigest()
        self.manifest: dict[str, Any] = json.loads(raw)
        m = self.manifest
        if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{manifest_path}: format {m.get('format')!r} version {m.get('format_version')!r} "
                f"is not {FORMAT!r} version {FORMAT_VERSION}. Fix: re-run the ingest with this "
                "version of scigpt."
            )
        try:
            self._load(m, manifest_path)
        except KeyError as exc:
            raise ValueError(
                f"{manifest_path} lacks the key {exc}. Fix: re-run the ingest (write_grid_store)."
            ) from exc
        self._handles: dict[Path, h5py.File] = {}
        if verify:
            self.verify()

    def _load(self, m: dict[str, Any], manifest_path: Path) -> None:
        self.variables: list[VariableInfo] = [VariableInfo.from_dict(v) for v in m["variables"]]
        self.lat = np.asarray(m["lat"], dtype=np.float64)  # (H,)
        self.lon = np.asarray(m["lon"], dtype=np.float64)  # (W,)
        self.time = np.array(m["times"], dtype="datetime64[ns]")  # (T,)
        per_var = m["stats"]["per_variable"]
        self.mean = np.array([_nan(per_var[v.name]["mean"]) for v in self.variables])  # (V,)
        self.std = np.array([_nan(per_var[v.name]["std"]) for v in self.variables])  # (V,)

        self._shards: list[tuple[Path, int, int, str]] = []
        expected_start = 0
        for shard in m["shards"]:
            path = (self.root / shard["file"]).resolve()
            # The manifest is data, not code: never let it point outside the store.
            if self.root.resolve() not in path.parents:
                raise ValueError(f"{manifest_path}: shard path {shard['file']!r} leaves the store")
            start, stop = (int(i) for i in shard["time_index"])
            if start != expected_start or stop <= start:
                raise ValueError(
                    f"{manifest_path}: shard {shard['file']} covers [{start}, {stop}), expected "
                    f"to start at {expected_start}. Fix: re-run the ingest."
                )
            expected_start = stop
            self._shards.append((path, start, stop, shard["sha256"]))
        if expected_start != len(self.time):
            raise ValueError(
                f"{manifest_path}: shards cover {expected_start} of {len(self.time)} times. "
                "Fix: re-run the ingest."
            )

    @property
    def names(self) -> list[str]:
        """Canonical variable names, in store order."""
        return [v.name for v in self.variables]

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest."""
        for path, _, _, expected in self._shards:
            if not path.is_file():
                raise RuntimeError(
                    f"shard {path} listed in {self.root / MANIFEST} is missing. "
                    "Fix: re-run the ingest (write_grid_store) to rebuild the store."
                )
            got = _sha256_file(path)
            if got != expected:
                raise RuntimeError(
                    f"shard {path} has sha256 {got[:16]}…, the manifest says {expected[:16]}…: "
                    "the file is corrupt or was modified. Fix: re-run the ingest "
                    "(write_grid_store) to rebuild the store."
                )

    def _handle(self, path: Path, start: int, stop: int) -> h5py.File:
        handle = self._handles.get(path)
        if handle is None:
            handle = h5py.File(path, "r")
            # Cheap consistency check for verify=False: the shard holds the times it claims.
            expected = self.time[start:stop].astype(np.int64)
            if not np.array_equal(handle["time"][...], expected):
                handle.close()
                raise RuntimeError(
                    f"shard {path} does not hold times [{start}, {stop}) of the manifest. "
                    "Fix: re-run the ingest (write_grid_store) to rebuild the store."
                )
            self._handles[path] = handle
        return handle

    def read(self, t0: int, t1: int) -> np.ndarray:
        """(t1 - t0, V, H, W) float32 for store time indices [t0, t1), spanning shards."""
        n = len(self.time)
        if not 0 <= t0 <= t1 <= n:
            raise IndexError(f"read({t0}, {t1}) is outside the store's time indices [0, {n}]")
        out = np.empty((t1 - t0, len(self.variables), len(self.lat), len(self.lon)), np.float32)
        for path, start, stop, _ in self._shards:
            a, b = max(t0, start), min(t1, stop)
            if a >= b:
                continue
            out[a - t0 : b - t0] = self._handle(path, start, stop)["fields"][a - start : b - start]
        return out

    def close(self) -> None:
        """Close all cached shard handles."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __getstate__(self) -> dict[str, Any]:
        # h5py handles cannot cross a process boundary (DataLoader workers); reopen lazily there.
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __enter__(self) -> GridStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.time)


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)
