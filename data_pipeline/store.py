"""The patch store, read side: manifest, checksum verification, and a grid view for forecasting.

Only JSON and HDF5 are read (no pickle): a store may come from elsewhere (DESIGN.md §9).

Checksums: a shard's sha256 is computed when it is written (shards.py), checked lazily the first
time this process opens the shard (``verify="lazy"``, the default: opening a store costs a stat
per shard, not a read of every byte), for all shards at open (``verify=True``; needed by
``on_corrupt="skip"``, which must know the bad shards before indexing samples), or on demand
with ``scigpt verify STORE`` (:func:`verify_shards`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from .patches import grid_tokens, unpatchify_grid
from .shards import FORMAT, FORMAT_VERSION, MANIFEST, READABLE_VERSIONS, sha256_file
from .variables import VariableInfo

_log = logging.getLogger(__name__)


def _fix(source: str, unit: str) -> str:
    return (
        f"delete it and its record units/{source}/{unit}.json, then re-run `scigpt prepare` "
        "(`scigpt verify STORE` checks every shard)"
    )


def shard_problem(path: Path, unit: dict[str, Any], *, checksum: bool = True) -> str | None:
    """Why a shard cannot be trusted (missing, wrong size, wrong sha256), or None."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if unit.get("bytes") is not None and size != unit["bytes"]:
        return f"has {size} bytes, the manifest says {unit['bytes']} (truncated or changed)"
    if checksum and sha256_file(path) != unit["sha256"]:
        return "fails its sha256 check (corrupted or changed after ingest)"
    return None


class PatchStore:
    """A finished store: its manifest, verified shards, and array access.

    ``verify``: ``"lazy"`` (default) checks that every shard exists with its recorded size at
    open and its sha256 the first time this process opens it; ``True`` hashes every shard at
    open; ``False`` trusts the files. ``on_corrupt="skip"`` drops bad shards at open (so it
    hashes them all there, whatever ``verify`` says unless it is False)."""

    def __init__(self, path: str | Path, *, verify: bool | str = "lazy", on_corrupt: str = "fail"):
        if on_corrupt not in ("fail", "skip"):
            raise ValueError(f"on_corrupt={on_corrupt!r}: choose 'fail' or 'skip'")
        if verify not in (True, False, "lazy"):
            raise ValueError(f"verify={verify!r}: choose 'lazy', True or False")
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
        if self.manifest.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(
                f"{mpath} has format_version {self.manifest.get('format_version')}, this scigpt "
                f"reads {list(READABLE_VERSIONS)} (writes {FORMAT_VERSION}): re-ingest with "
                "`scigpt prepare` or upgrade scigpt"
            )
        self._files: dict[str, h5py.File] = {}
        self._units = {u["shard"]: (name, u) for name, src in self.sources.items()
                       for u in src["units"]}  # fmt: skip
        # shards whose sha256 this process has checked (or need none: verify False / at open)
        self._lazy = verify == "lazy"
        self._verified: set[str] = set()
        if verify is True or (verify and on_corrupt == "skip"):
            self.verify()
        elif verify == "lazy":
            self._check(checksum=False)  # a stat per shard: missing or resized shards fail now

    @property
    def sources(self) -> dict[str, dict[str, Any]]:
        return self.manifest["sources"]

    @property
    def rejects(self) -> list[dict[str, Any]]:
        return self.manifest["rejects"]

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest. A missing or changed shard fails
        (naming it and the fix), or with ``on_corrupt="skip"`` is dropped and logged."""
        self._check(checksum=True)
        self._verified.update(u["shard"] for src in self.sources.values() for u in src["units"])

    def _check(self, *, checksum: bool) -> None:
        for name, src in self.sources.items():
            kept = []
            for unit in src["units"]:
                path = self.path / unit["shard"]
                problem = shard_problem(path, unit, checksum=checksum)
                if problem is None:
                    kept.append(unit)
                    continue
                fix = _fix(name, unit["unit"])
                if self.on_corrupt == "fail":
                    raise RuntimeError(f"shard {path} of source {name} {problem}: {fix}")
                _log.warning("skipping shard %s of source %s: it %s; %s", path, name, problem, fix)
                self.skipped.append({"source": name, "unit": unit["unit"], "problem": problem})
            src["units"] = kept

    def file(self, rel: str) -> h5py.File:
        """Open a shard once and keep the handle (loaders read many rows from each). With
        lazy verification its sha256 is checked here first, once per process."""
        if rel not in self._files:
            if self._lazy and rel not in self._verified and rel in self._units:
                name, unit = self._units[rel]
                problem = shard_problem(self.path / rel, unit)
                if problem is not None:
                    raise RuntimeError(
                        f"shard {self.path / rel} of source {name} {problem}: "
                        f"{_fix(name, unit['unit'])}"
                    )
                self._verified.add(rel)
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
        state["_verified"] = set()  # each process checks the shards it opens (once)
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
        verify: bool | str = "lazy",
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
        # (first frame, shard, group, n, layout): layout 1 = (N, V, G, K), 2 = (N, V, gh, gw, K)
        self._segments: list[tuple[int, str, str, int, int]] = []
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
                self._segments.append((0, unit["shard"], a["group"], a["n"], a.get("layout", 1)))
        if shape is None:
            raise ValueError(f"grid source {source} in {path} has no samples")
        order = np.argsort(np.array(times, dtype="datetime64[ns]"), kind="stable")
        if not np.all(order == np.arange(len(order))):
            raise ValueError(
                f"units of {source} are not in time order: re-ingest with sorted files"
            )
        self.time = np.array(times, dtype="datetime64[ns]")
        first = 0
        for i, (_, shard, group, n, layout) in enumerate(self._segments):
            self._segments[i] = (first, shard, group, n, layout)
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

    @property
    def tokens(self) -> tuple[int, int]:
        """Token rows and columns of a frame (the grid padded to whole patches)."""
        return grid_tokens(self.height, self.width, self.patch[1], self.patch[2])

    def check_crop(self, crop: Sequence[int] | None) -> tuple[int, int, int, int] | None:
        """``crop`` = (first token row, first token col, rows, cols), validated."""
        if crop is None:
            return None
        gh, gw = self.tokens
        c = tuple(int(x) for x in crop)
        if len(c) != 4 or c[0] < 0 or c[1] < 0 or c[2] < 1 or c[3] < 1 or c[0] + c[2] > gh \
                or c[1] + c[3] > gw:  # fmt: skip
            raise ValueError(
                f"crop={list(crop)}: give [row0, col0, rows, cols] in patch units inside the "
                f"{gh} x {gw} token grid of {self.source} ({self.height} x {self.width} points, "
                f"patch {self.patch[1]} x {self.patch[2]})"
            )
        return c  # type: ignore[return-value]

    def crop_slices(self, crop: Sequence[int] | None) -> tuple[slice, slice]:
        """Grid-point slices (rows, cols) of a crop in patch units (clipped to the grid)."""
        c = self.check_crop(crop)
        if c is None:
            return slice(0, self.height), slice(0, self.width)
        ph, pw = self.patch[1], self.patch[2]
        return (slice(c[0] * ph, min((c[0] + c[2]) * ph, self.height)),
                slice(c[1] * pw, min((c[1] + c[3]) * pw, self.width)))  # fmt: skip

    def read(
        self,
        t0: int,
        t1: int,
        *,
        variables: Sequence[int] | None = None,
        crop: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Frames ``[t0, t1)`` as (t, V, H, W) float32.

        ``variables``: store indices of the variables to return (in that order; default all);
        ``crop``: (row0, col0, rows, cols) in patch units, returning only those grid points.
        On a layout-2 store both read only the chunks they touch (format-1 stores: whole
        samples, then cut)."""
        if not 0 <= t0 <= t1 <= len(self.time):
            raise IndexError(f"frames [{t0}, {t1}) outside [0, {len(self.time)})")
        nv = len(self.variables)
        vsel = np.arange(nv) if variables is None else np.asarray(variables, dtype=np.int64)
        if vsel.size and (vsel.min() < 0 or vsel.max() >= nv):
            raise IndexError(f"variables {vsel.tolist()} outside the store's {nv}")
        rows, cols = self.crop_slices(crop)  # grid points (validates the crop)
        h, w = rows.stop - rows.start, cols.stop - cols.start
        # h5py reads a list of indices only increasing and unique: read those, then reorder
        uniq, inv = np.unique(vsel, return_inverse=True)
        vkey: slice | list[int] = (
            slice(0, nv) if uniq.size == nv else slice(int(uniq[0]), int(uniq[0]) + 1)
            if uniq.size == 1 else uniq.tolist()
        )  # fmt: skip
        reordered = None if np.array_equal(inv, np.arange(len(inv))) else inv
        pt = self.patch[0]
        out = []
        for first, shard, group, n, layout in self._segments:
            lo, hi = max(t0, first), min(t1, first + n * pt)
            if lo >= hi:
                continue
            g = self._store.file(shard)[group]
            if layout >= 2:  # the frames, chunked by tile: only the crop's chunks are read
                frames = g["fields"][lo - first : hi - first, vkey, rows, cols]
            else:  # layout 1: one chunk per sample, (r, V, G, K)
                s0, s1 = (lo - first) // pt, -(-(hi - first) // pt)
                part = g["patches"][s0:s1][:, uniq]
                frames = unpatchify_grid(part, self.patch, self.height, self.width)
                frames = frames[lo - first - s0 * pt : hi - first - s0 * pt, :, rows, cols]
            out.append(frames if reordered is None else frames[:, reordered])
        if not out:
            return np.zeros((0, len(vsel), h, w), np.float32)
        whole = out[0] if len(out) == 1 else np.concatenate(out)  # no copy for one shard
        return whole.astype(np.float32, copy=False)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> GridStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_shards(
    path: str | Path, *, jobs: int = 1, progress: bool = True
) -> tuple[int, list[dict[str, str]]]:
    """Hash every shard of a store against its manifest, ``jobs`` at a time (threads: hashlib
    releases the GIL). Returns (shards checked, problems as ``{"source", "unit", "shard",
    "problem"}``); a progress bar counts bytes."""
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: give 1 or more")
    store = PatchStore(path, verify=False)
    units = [(name, u) for name, src in store.sources.items() for u in src["units"]]
    total = sum(int(u.get("bytes") or 0) for _, u in units)
    root = store.path

    def check(item: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any], str | None]:
        name, unit = item
        return name, unit, shard_problem(root / unit["shard"], unit)

    problems: list[dict[str, str]] = []
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="verify", disable=not progress)
    with bar, ThreadPoolExecutor(max_workers=jobs) as pool:
        for name, unit, problem in pool.map(check, units):
            bar.update(int(unit.get("bytes") or 0))
            if problem is not None:
                problems.append(
                    {"source": name, "unit": unit["unit"], "shard": unit["shard"],
                     "problem": problem}
                )  # fmt: skip
    return len(units), problems
