"""The patch store, read side: manifest, checksum verification, and a grid view for forecasting.

Only JSON and HDF5 are read (no pickle): a store may come from elsewhere (DESIGN.md §9).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .patches import unpatchify_grid
from .shards import FORMAT, FORMAT_VERSION, MANIFEST, sha256_file
from .variables import VariableInfo

_log = logging.getLogger(__name__)


class PatchStore:
    """A finished store: its manifest, verified shards, and array access."""

    def __init__(self, path: str | Path, *, verify: bool = True, on_corrupt: str = "fail"):
        if on_corrupt not in ("fail", "skip"):
            raise ValueError(f"on_corrupt={on_corrupt!r}: choose 'fail' or 'skip'")
        self.on_corrupt = on_corrupt
        self.skipped: list[dict[str, Any]] = []  # units dropped by on_corrupt="skip"
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(
                f"{self.path} has no {MANIFEST}: the ingest did not finish (or this is not a "
                "store). Fix: run `scigpt prepare` again; it resumes where it stopped."
            )
        raw = mpath.read_bytes()
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        self.manifest: dict[str, Any] = json.loads(raw)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{mpath} is not a {FORMAT} manifest")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{mpath} has format_version {self.manifest.get('format_version')}, this scigpt "
                f"reads {FORMAT_VERSION}: re-ingest with `scigpt prepare` or upgrade scigpt"
            )
        self._files: dict[str, h5py.File] = {}
        if verify:
            self.verify()

    @property
    def sources(self) -> dict[str, dict[str, Any]]:
        return self.manifest["sources"]

    @property
    def rejects(self) -> list[dict[str, Any]]:
        return self.manifest["rejects"]

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest. A missing or changed shard fails
        (naming it and the fix), or with ``on_corrupt="skip"`` is dropped and logged."""
        for name, src in self.sources.items():
            kept = []
            for unit in src["units"]:
                path = self.path / unit["shard"]
                problem = None
                if not path.is_file():
                    problem = "is missing"
                elif sha256_file(path) != unit["sha256"]:
                    problem = "fails its sha256 check (corrupted or changed after ingest)"
                if problem is None:
                    kept.append(unit)
                    continue
                fix = (
                    f"delete it and its record units/{name}/{unit['unit']}.json, then re-run "
                    "`scigpt prepare`"
                )
                if self.on_corrupt == "fail":
                    raise RuntimeError(f"shard {path} of source {name} {problem}: {fix}")
                _log.warning("skipping shard %s of source %s: it %s; %s", path, name, problem, fix)
                self.skipped.append({"source": name, "unit": unit["unit"], "problem": problem})
            src["units"] = kept

    def file(self, rel: str) -> h5py.File:
        """Open a shard once and keep the handle (loaders read many rows from each)."""
        if rel not in self._files:
            self._files[rel] = h5py.File(self.path / rel, "r")
        return self._files[rel]

    def variables(self, source: str) -> list[VariableInfo]:
        return [VariableInfo.from_dict(v) for v in self.sources[source]["variables"]]

    def stats(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) float64 in the source's variable order; NaN where a variable had none."""
        st = self.sources[source]["stats"]
        names = [v.name for v in self.variables(source)]

        def col(key: str) -> np.ndarray:
            vals = [st.get(n, {}).get(key) for n in names]
            return np.array([np.nan if x is None else x for x in vals], dtype=np.float64)

        return col("mean"), col("std")

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> PatchStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get a copy without open handles and reopen lazily.
        state = self.__dict__.copy()
        state["_files"] = {}
        return state


class GridStore:
    """One gridded source of a store seen as a single time series of full fields.

    Units are ordered by time; all must share the variables and the grid. ``read(t0, t1)``
    returns frames ``[t0, t1)`` as ``(t, V, H, W)`` float32, NaN where missing.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        source: str | None = None,
        verify: bool = True,
        on_corrupt: str = "fail",
    ):
        self._store = PatchStore(path, verify=verify, on_corrupt=on_corrupt)
        grids = [n for n, s in self._store.sources.items() if s.get("kind") == "grid"]
        if source is None:
            if len(grids) != 1:
                raise ValueError(
                    f"{path} holds grid sources {grids}: name the one to read (source=...)"
                )
            source = grids[0]
        if source not in grids:
            raise ValueError(f"{path} has no grid source {source!r}; grid sources: {grids}")
        self.source = source
        src = self._store.sources[source]
        self.patch = tuple(src["patch"]["grid"])
        self.variables = self._store.variables(source)
        self.mean, self.std = self._store.stats(source)
        self._segments: list[tuple[int, str, str, int]] = []  # (first frame, shard, group, n)
        times, shape, coords = [], None, None
        for unit in src["units"]:
            for a in unit["arrays"]:
                if a["variables"] != self.names:
                    raise ValueError(
                        f"unit {unit['unit']} of {source} has variables {a['variables']}, others "
                        f"{self.names}: a grid source must hold the same variables throughout"
                    )
                if shape is None:
                    shape = (a["height"], a["width"])
                    coords = (unit["shard"], a["group"])
                elif (a["height"], a["width"]) != shape:
                    raise ValueError(f"unit {unit['unit']} of {source} is on another grid")
                frames = np.array(a["times"], dtype="datetime64[ns]")
                pt = self.patch[0]
                step = np.timedelta64(a["frame_step_ns"], "ns")
                for t in frames:
                    times.extend(t + step * i for i in range(pt))
                self._segments.append((0, unit["shard"], a["group"], a["n"]))
        if shape is None:
            raise ValueError(f"grid source {source} in {path} has no samples")
        order = np.argsort(np.array(times, dtype="datetime64[ns]"), kind="stable")
        if not np.all(order == np.arange(len(order))):
            raise ValueError(
                f"units of {source} are not in time order: re-ingest with sorted files"
            )
        self.time = np.array(times, dtype="datetime64[ns]")
        first = 0
        for i, (_, shard, group, n) in enumerate(self._segments):
            self._segments[i] = (first, shard, group, n)
            first += n * self.patch[0]
        self.height, self.width = shape
        g = self._store.file(coords[0])[coords[1]]
        self.lat, self.lon = g["lat"][...], g["lon"][...]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variables]

    @property
    def manifest(self) -> dict[str, Any]:
        return self._store.manifest

    @property
    def manifest_sha256(self) -> str:
        return self._store.manifest_sha256

    def __len__(self) -> int:
        return len(self.time)

    def read(self, t0: int, t1: int) -> np.ndarray:
        """Frames ``[t0, t1)`` as (t, V, H, W) float32."""
        if not 0 <= t0 <= t1 <= len(self.time):
            raise IndexError(f"frames [{t0}, {t1}) outside [0, {len(self.time)})")
        pt = self.patch[0]
        out = []
        for first, shard, group, n in self._segments:
            lo, hi = max(t0, first), min(t1, first + n * pt)
            if lo >= hi:
                continue
            r0, r1 = (lo - first) // pt, -(-(hi - first) // pt)
            rows = self._store.file(shard)[group]["patches"][r0:r1]  # (r, V, G, K)
            frames = unpatchify_grid(rows, self.patch, self.height, self.width)
            out.append(frames[lo - first - r0 * pt : hi - first - r0 * pt])
        if not out:
            return np.zeros((0, len(self.variables), self.height, self.width), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> GridStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
