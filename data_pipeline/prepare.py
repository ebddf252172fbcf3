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

import contextlib
import glob
import inspect
import logging
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
from pydantic import TypeAdapter, ValidationError
from tqdm import tqdm

from .ingest.base import (
    GridArray,
    ReaderError,
    SeriesArray,
    close_arrays,
    format_kind,
    get_reader,
)
from .isolate import UNIT_MARK, UnitWorker, log_path
from .plausibility import PlausibilityCheck
from .shards import MANIFEST, build_manifest, read_record, write_unit
from .work_units import SourceSpec, Unit, input_stamp, reject_unit, time_units, unit_meta

_log = logging.getLogger(__name__)


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
        elif (grouped := time_units(src)) is not None:  # files grouped by time
            for k, (paths, opts) in enumerate(grouped):
                units.append(Unit(src, f"{src.name}-{k:05d}", k, paths, opts))
        else:
            for k, p in enumerate(src.paths):
                units.append(Unit(src, f"{src.name}-{k:05d}", k, (p,), dict(src.options)))
    return units


class _ReaderChecks:
    """What a unit's arrays must pass before they are stored, checked block by block as the
    shard is written (``shards.UnitCheck``): every variable has a valid value, no valid value
    sits at a pixel without coordinates, the values are physically plausible."""

    def __init__(self, arrays: list, unit: Unit) -> None:
        self.where = unit.paths[0] if unit.paths else unit.name
        if not arrays:
            raise ReaderError(self.where, "the reader returned no data")
        for arr in arrays:
            if (
                isinstance(arr, SeriesArray)
                and unit.source.require_coordinates
                and not (arr.has_coordinates)
            ):
                raise ReaderError(
                    self.where,
                    "records without latitude/longitude, which the tokenizer needs: give the "
                    "station coordinates (reader option, e.g. stations/site) or set "
                    "require_coordinates: false for this source",
                )
        self.arrays = arrays
        self.valid = [np.zeros(len(a.variables), dtype=bool) for a in arrays]
        self.nocoord: dict[int, np.ndarray] = {}
        self.plausibility = PlausibilityCheck(
            unit.source.plausibility, unit.source.format, str(self.where)
        )

    def block(self, index: int, arr: GridArray | SeriesArray, values: np.ndarray) -> None:
        flat = values.reshape(values.shape[0], len(arr.variables), -1)
        self.valid[index] |= ~np.isnan(flat).all(axis=(0, 2))
        if isinstance(arr, GridArray) and arr.coords == "geographic":
            if index not in self.nocoord:
                # Off-map pixels (MODIS tiles at the dateline) may lack coordinates, but only
                # where they also lack values.
                lat, lon = np.broadcast_arrays(
                    *(np.meshgrid(arr.lat, arr.lon, indexing="ij") if arr.lat.ndim == 1
                      else (arr.lat, arr.lon))
                )  # fmt: skip
                self.nocoord[index] = ~(np.isfinite(lat) & np.isfinite(lon))  # (H, W)
            nocoord = self.nocoord[index]
            if nocoord.any() and not np.isnan(values[..., nocoord]).all():
                raise ReaderError(self.where, "valid values at pixels without coordinates")
        self.plausibility.add(arr, values)

    def verdict(self) -> dict[str, Any]:
        for arr, valid in zip(self.arrays, self.valid, strict=True):
            for v, ok in zip(arr.variables, valid, strict=True):
                if not ok:
                    raise ReaderError(
                        self.where, f"variable {v.name} has no valid value (all missing or "
                        "outside valid_range): drop it from variables or check the file"
                    )  # fmt: skip
        return {"plausibility": self.plausibility.result()}


def run_unit(store: Path, unit: Unit, stats_time_range) -> dict[str, Any]:
    """Read, check, patchify and write one unit; bad input becomes a reject record. Grids read
    lazily (``LazyGrid``) are decoded, checked and written a block of time steps at a time."""
    t0 = time.perf_counter()
    meta = unit_meta(unit)
    arrays: list = []
    try:
        reader = get_reader(unit.source.format)
        arrays = reader(list(unit.paths), **unit.options)
        checks = _ReaderChecks(arrays, unit)
        rec = write_unit(store, unit.source.name, unit.name, arrays, unit.source.patch,
                         stats_time_range=unit.source.stats_time_range or stats_time_range,
                         meta=meta, check=checks)  # fmt: skip
    except Exception as e:
        # Anything a bad file makes a library raise is a reject, recorded with the path and the
        # reason; the traceback goes to the worker's log (logs/prepare-rank<r>.log).
        if not isinstance(e, (ValueError, OSError)):  # not a reader's own verdict: keep where
            _log.info("unit %s: %s raised", unit.name, type(e).__name__, exc_info=True)
        rec = reject_unit(store, unit, f"{type(e).__name__}: {e}")
    finally:
        close_arrays(arrays)
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
            return rec["input_stamp"] == input_stamp(unit)
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


def serve(fd: int, preload: Sequence[str] = ()) -> None:
    """The worker's main loop (``isolate._BOOT`` runs it in the worker process): read units from
    the socket ``fd``, answer with their records. Its stdout and stderr are the rank's log (set
    up by the parent). The readers of the ``preload`` formats are imported first (while the
    parent resolves the config)."""
    conn = Connection(fd)
    sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
    sys.stderr.reconfigure(line_buffering=True, errors="backslashreplace")
    fmt = "%(asctime)s %(name)s %(levelname)s: %(message)s"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=fmt)
    for fmt_name in preload:
        with contextlib.suppress(Exception):  # a reader that cannot import says so per unit
            get_reader(fmt_name)
    conn.send("ready")  # imports done: unit timeouts count from here
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if task is None:
            return
        store, unit, stats_time_range = task
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        print(f"{UNIT_MARK}{unit.name} {stamp} {[str(p) for p in unit.paths]}", flush=True)
        rec = run_unit(store, unit, stats_time_range)
        sys.stdout.flush()
        sys.stderr.flush()
        conn.send(rec)
