"""``scigpt prepare``: ingest many sources into one patch store, in parallel, restartably.

Work is split into units (a file, a group of files read together, or a range of simulated
samples) numbered in a fixed order; rank r of W takes units r, r+W, r+2W, ... Ranks coordinate
through the store's files alone — each writes its units' shards and records, and rank 0 waits for
every record, then merges them into the manifest — so the same code runs under mpirun, srun,
torchrun or as one process, with no communication library. Bad input becomes a reject record
(path and reason) and never stops the other units: each unit is read in a worker process
(``isolate.py``), so a native crash or a hang inside a format library is a reject too, and what
the libraries print goes to the store's log. Entries of a source folder that are not read
(subfolders, other suffixes, hidden files) are listed in the manifest with the reason.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np

from .ingest.base import GridArray, ReaderError, SeriesArray, format_kind, get_reader
from .isolate import UnitWorker, log_path
from .plausibility import check_arrays
from .shards import MANIFEST, PatchSpec, build_manifest, read_record, write_record, write_unit

_log = logging.getLogger(__name__)


@dataclass
class SourceSpec:
    """One source to ingest (resolved: absolute paths, options checked against the reader)."""

    name: str
    format: str
    paths: list[Path]
    options: dict[str, Any] = field(default_factory=dict)
    unit: str = "file"  # "file": one unit per path; "all": every path in one unit
    patch: PatchSpec = field(default_factory=PatchSpec)
    require_coordinates: bool = True
    samples_per_unit: int = 64  # generated sources (pde): samples per unit
    # this source's statistics block when it has its own splits (default: the store's)
    stats_time_range: tuple[Any, Any] | None = None
    plausibility: str = "reject"  # out-of-range values: "reject" the unit, "warn" or "off"
    # a unit whose read gives no result within this many seconds is stopped and rejected
    unit_timeout_s: float = 3600.0
    # entries of the source folder that are not read, with the reason ({"path", "reason"})
    skipped: list[dict[str, str]] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Hash of everything that shapes this source's output (a changed spec redoes units)."""
        d = {
            "format": self.format,
            "options": self.options,
            "unit": self.unit,
            "patch": self.patch.to_dict(),
            "require_coordinates": self.require_coordinates,
            "samples_per_unit": self.samples_per_unit,
        }
        if self.stats_time_range is not None:
            d["stats_time_range"] = [str(t) for t in self.stats_time_range]
        if self.plausibility != "reject":
            d["plausibility"] = self.plausibility
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Unit:
    source: SourceSpec
    name: str  # "<source>-<index>"
    index: int
    paths: tuple[Path, ...]
    options: dict[str, Any]  # reader options of this unit (ranges for generated sources)


def _skip_reason(f: Path, suffixes: Sequence[str]) -> str | None:
    """Why an entry of a source folder is not read (None: it is read)."""
    if f.name.startswith("."):
        return "hidden (the name starts with '.')"
    if f.is_dir():
        return (
            "a folder: a source reads the files directly inside its folder. Fix: give this "
            "folder (or a glob) as a source's path to ingest it"
        )
    if not f.is_file():
        return "not a regular file (a pipe, socket, device or broken link)"
    if suffixes and f.suffix.lower() not in suffixes:
        return (
            f"suffix {f.suffix or '(none)'!r} is not one of this format's {list(suffixes)}. "
            "Fix: rename the file, or give it as the source's path"
        )
    return None


def expand_paths(
    pattern: str | Path,
    suffixes: Sequence[str] = (),
    skipped: list[dict[str, str]] | None = None,
) -> list[Path]:
    """A file, a folder (its files, optionally filtered by suffix) or a glob; sorted. Entries of
    a folder that are not taken are appended to ``skipped`` as ``{"path", "reason"}``."""
    p = Path(pattern)
    if p.is_dir():
        files = []
        for f in sorted(p.iterdir()):
            why = _skip_reason(f, suffixes)
            if why is None:
                files.append(f)
            elif skipped is not None:
                skipped.append({"path": str(f), "reason": why})
        return files
    if p.is_file():
        return [p]
    return [Path(f) for f in sorted(glob.glob(str(p)))]


def check_options(fmt: str, options: dict[str, Any], where: str) -> None:
    """Options must be keyword parameters of the format's reader, of the annotated types."""
    import inspect

    from pydantic import TypeAdapter, ValidationError

    fn = get_reader(fmt)
    params = {
        n: p
        for n, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    hints = get_type_hints(fn)
    for key, value in options.items():
        if key not in params:
            raise ValueError(
                f"{where}.options.{key}: unknown option of format {fmt!r}; "
                f"its options are {sorted(params)}"
            )
        try:
            TypeAdapter(hints.get(key, Any)).validate_python(value)
        except ValidationError as e:
            msg = e.errors()[0]["msg"]
            raise ValueError(f"{where}.options.{key}={value!r}: {msg}") from None


def plan_units(sources: Sequence[SourceSpec]) -> list[Unit]:
    """Every unit of every source, in the fixed order that names shards and merges stats."""
    units: list[Unit] = []
    for src in sources:
        if src.format == "pde":
            total = int(src.options.get("n_samples", 0))
            start0 = int(src.options.get("start_index", 0))
            for k, s in enumerate(range(0, total, src.samples_per_unit)):
                n = min(src.samples_per_unit, total - s)
                opts = {**src.options, "start_index": start0 + s, "n_samples": n}
                units.append(Unit(src, f"{src.name}-{k:05d}", k, (), opts))
        elif src.unit == "all":
            units.append(Unit(src, f"{src.name}-00000", 0, tuple(src.paths), dict(src.options)))
        else:
            for k, p in enumerate(src.paths):
                units.append(Unit(src, f"{src.name}-{k:05d}", k, (p,), dict(src.options)))
    return units


def _check_arrays(arrays: list, unit: Unit) -> None:
    where = unit.paths[0] if unit.paths else unit.name
    if not arrays:
        raise ReaderError(where, "the reader returned no data")
    for arr in arrays:
        flat = arr.values.reshape(arr.values.shape[0], len(arr.variables), -1)
        for j, v in enumerate(arr.variables):
            if np.isnan(flat[:, j]).all():
                raise ReaderError(
                    where, f"variable {v.name} has no valid value (all missing or outside "
                    "valid_range): drop it from variables or check the file"
                )  # fmt: skip
        if (
            isinstance(arr, SeriesArray)
            and unit.source.require_coordinates
            and not (arr.has_coordinates)
        ):
            raise ReaderError(
                where,
                "records without latitude/longitude, which the tokenizer needs: give the "
                "station coordinates (reader option, e.g. stations/site) or set "
                "require_coordinates: false for this source",
            )
        if isinstance(arr, GridArray) and arr.coords == "geographic":
            # Off-map pixels (MODIS tiles at the dateline) may lack coordinates, but only where
            # they also lack values.
            lat, lon = np.broadcast_arrays(
                *(np.meshgrid(arr.lat, arr.lon, indexing="ij") if arr.lat.ndim == 1
                  else (arr.lat, arr.lon))
            )  # fmt: skip
            nocoord = ~(np.isfinite(lat) & np.isfinite(lon))  # (H, W)
            if nocoord.any() and not np.isnan(arr.values[..., nocoord]).all():
                raise ReaderError(where, "valid values at pixels without coordinates")


def _input_stamp(unit: Unit) -> list[list[int]]:
    """(size, mtime in ns) of each input: a reject is retried once its input changes."""
    out = []
    for p in unit.paths:
        try:
            st = p.stat()
            out.append([st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([-1, -1])
    return out


def unit_meta(unit: Unit) -> dict[str, Any]:
    """What every record of ``unit`` carries: its inputs and the spec it was made with."""
    stamp = _input_stamp(unit)
    return {
        "index": unit.index,
        "paths": [str(p) for p in unit.paths],
        "fingerprint": unit.source.fingerprint(),
        "input_bytes": sum(max(size, 0) for size, _ in stamp),
        "input_stamp": stamp,
    }


def reject_unit(store: Path, unit: Unit, reason: str, **extra: Any) -> dict[str, Any]:
    """Write ``unit``'s reject record (and drop a shard of an earlier ingest); returns it."""
    rec = {"unit": unit.name, "source": unit.source.name, "status": "rejected",
           "reason": reason, **unit_meta(unit), **extra}  # fmt: skip
    (store / "shards" / unit.source.name / f"{unit.name}.h5").unlink(missing_ok=True)
    write_record(store, unit.source.name, unit.name, rec)
    return rec


def run_unit(store: Path, unit: Unit, stats_time_range) -> dict[str, Any]:
    """Read, check, patchify and write one unit; bad input becomes a reject record."""
    t0 = time.perf_counter()
    meta = unit_meta(unit)
    try:
        reader = get_reader(unit.source.format)
        arrays = reader(list(unit.paths), **unit.options)
        _check_arrays(arrays, unit)
        where = unit.paths[0] if unit.paths else unit.name
        meta["plausibility"] = check_arrays(
            arrays, unit.source.plausibility, unit.source.format, str(where)
        )
        rec = write_unit(store, unit.source.name, unit.name, arrays, unit.source.patch,
                         stats_time_range=unit.source.stats_time_range or stats_time_range,
                         meta=meta)  # fmt: skip
    except Exception as e:
        # Anything a bad file makes a library raise is a reject, recorded with the path and the
        # reason; the traceback goes to the worker's log (logs/prepare-rank<r>.log).
        if not isinstance(e, (ValueError, OSError)):  # not a reader's own verdict: keep where
            _log.info("unit %s: %s raised", unit.name, type(e).__name__, exc_info=True)
        rec = reject_unit(store, unit, f"{type(e).__name__}: {e}")
    rec["seconds"] = time.perf_counter() - t0
    return rec


def _is_done(store: Path, unit: Unit) -> bool:
    rec = read_record(store, unit.source.name, unit.name)
    if rec is None or rec.get("fingerprint") != unit.source.fingerprint():
        return False
    if rec["status"] == "rejected":
        failure = rec.get("failure") or {}
        if failure.get("kind") == "timeout" and unit.source.unit_timeout_s > failure["timeout_s"]:
            return False  # a longer timeout gives a slow read another chance
        # Otherwise retried only if the input changed since (a fixed file gets another
        # chance); a file that crashed the reader is not read again as it is.
        if "input_stamp" in rec:
            return rec["input_stamp"] == _input_stamp(unit)
        return rec.get("input_bytes") == sum(p.stat().st_size for p in unit.paths if p.exists())
    shard = store / rec["shard"]
    return shard.is_file() and shard.stat().st_size == rec["bytes"]


def prepare_store(
    sources: Sequence[SourceSpec],
    out: str | Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    stats_time_range: tuple[Any, Any] | None = None,
    producer: dict[str, Any] | None = None,
    progress: bool = True,
    wait_timeout_s: float = 24 * 3600,
    isolate: bool = True,
    worker: UnitWorker | None = None,
) -> dict[str, Any] | None:
    """Ingest ``sources`` into the store at ``out``. Rank 0 returns the manifest, others None.

    ``isolate``: read each unit that reads files in a worker process (``isolate.py``; the
    default; generated sources read no file and run here). ``False`` reads in this process —
    for debugging a reader, or measuring what isolation costs; a native crash then takes the
    ingest down and library messages reach the terminal. ``worker``: one the caller booted
    early (``UnitWorker.boot``) and closes; default: one started here when needed.
    """
    from tqdm import tqdm

    store = Path(out)
    store.mkdir(parents=True, exist_ok=True)
    units = plan_units(sources)
    mine = [u for i, u in enumerate(units) if i % world_size == rank]
    todo = [u for u in mine if not _is_done(store, u)]
    if rank == 0:
        (store / MANIFEST).unlink(missing_ok=True)  # stale until this ingest completes
        for stale in store.rglob(".*.tmp"):
            stale.unlink(missing_ok=True)  # leftovers of a killed writer
    bar = tqdm(total=len(todo), desc=f"prepare[rank {rank}]", unit="unit",
               disable=not progress or not todo, dynamic_ncols=True)  # fmt: skip
    start, nbytes, nsamples, nrej, nfiles = time.perf_counter(), 0, 0, 0, 0
    own = worker is None
    if own and isolate:
        worker = UnitWorker(log_path(store, rank))
    try:
        for unit in todo:
            if isolate and unit.paths:
                rec = worker.run(store, unit, stats_time_range, unit.source.unit_timeout_s)
            else:  # a generated source (pde) reads no file: nothing to isolate
                rec = run_unit(store, unit, stats_time_range)
            nbytes += rec.get("input_bytes", 0)
            nfiles += len(unit.paths)
            if rec["status"] == "done":
                nsamples += sum(a["n"] for a in rec["arrays"])
            else:
                nrej += 1
                bar.write(f"rejected {unit.name}: {rec['reason']}")
            rate = nbytes / 1e6 / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(files=nfiles,
                            samples=nsamples, rejects=nrej, MBps=f"{rate:.1f}")  # fmt: skip
            bar.update(1)
    finally:
        if own and worker is not None:
            worker.close()
        bar.close()
    if rank != 0:
        return None
    # Rank 0 waits for the other ranks' records (files are the only channel between ranks).
    deadline = time.monotonic() + wait_timeout_s
    while True:
        missing = [u for u in units if read_record(store, u.source.name, u.name) is None]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(missing)} units never finished (first: {missing[0].name}); "
                "re-run `scigpt prepare` to resume"
            )
        time.sleep(0.2)
    meta = {
        s.name: {
            "format": s.format,
            "kind": format_kind(s.format),
            "patch": s.patch.to_dict(),
            "options": s.options,
            "fingerprint": s.fingerprint(),
            "plausibility": s.plausibility,
            **(
                {"stats_time_range": [str(np.datetime64(t, "s")) for t in s.stats_time_range]}
                if s.stats_time_range is not None
                else {}
            ),
        }
        for s in sources
    }
    skipped = [{"source": s.name, **entry} for s in sources for entry in s.skipped]
    return build_manifest(store, meta, [(u.source.name, u.name) for u in units],
                          producer=producer or {}, stats_time_range=stats_time_range,
                          skipped=skipped)  # fmt: skip
