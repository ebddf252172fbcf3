"""Reader isolation: every unit is read in a worker process, so one bad file cannot take the
ingest down.

Format libraries are C code (HDF4, HDF5, eccodes, libmseed, GDAL). A corrupt length field can
abort the process inside them (HDF4: ``*** stack smashing detected ***``, SIGABRT), a stalled
file system can block a read forever, and their diagnostics go straight to file descriptor 2.
So ``prepare`` hands each unit to a worker process and waits for its record:

* the worker runs :func:`..prepare.run_unit` (read, check, patchify, write shard and record);
  any Python exception there is already that unit's reject;
* a worker that dies (a signal, an exit code) or gives no answer within the source's
  ``unit_timeout_s`` (then it is killed) becomes a reject whose reason says what happened and
  quotes the library's last message; the next unit gets a fresh worker;
* the worker's stdout and stderr — C libraries' messages (glibc's fatal ones included), Python
  warnings and tracebacks — go to ``logs/prepare-rank<r>.log`` in the store, not to the user's
  terminal. (No :mod:`faulthandler`: dumping the Python stack from a smashed C stack can fault
  again and turn an honest SIGABRT into a SIGBUS.)

Workers are started with the ``spawn`` method (a fresh interpreter, never ``fork``): the parent
may hold an initialised MPI (``mpirun … scigpt prepare`` discovers ranks through mpi4py), and
OpenMPI does not support ``fork()`` after ``MPI_Init``; nor are library threads or locks copied.
One worker serves many units, so its imports (xarray, obspy, …) are paid once per rank.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

_CTX = multiprocessing.get_context("spawn")
LOG_DIR = "logs"
_STARTUP_TIMEOUT_S = 600.0  # a fresh interpreter importing numpy and h5py on a loaded machine
_UNIT_MARK = "=== unit "  # the worker writes one such line before each unit it reads


def log_path(store: Path, rank: int) -> Path:
    """Where the worker of ``rank`` writes what the libraries print."""
    return store / LOG_DIR / f"prepare-rank{rank}.log"


def _serve(conn, log: str) -> None:
    """Worker main loop: read units from ``conn``, answer with their records."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    # glibc writes fatal messages ("stack smashing detected") to /dev/tty unless told otherwise.
    os.environ["LIBC_FATAL_STDERR_"] = "1"
    fmt = "%(asctime)s %(name)s %(levelname)s: %(message)s"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=fmt)
    from .prepare import run_unit

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
        print(f"{_UNIT_MARK}{unit.name} {stamp} {[str(p) for p in unit.paths]}", flush=True)
        rec = run_unit(store, unit, stats_time_range)
        sys.stdout.flush()
        sys.stderr.flush()
        conn.send(rec)


def _last_message(log: Path, offset: int) -> str:
    """The library's last words in ``log`` after ``offset``: its last non-empty line (before a
    "Fatal Python error" block, should one be there)."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(_UNIT_MARK)]
    for i, ln in enumerate(lines):
        if ln.startswith("Fatal Python error"):
            before = lines[:i]
            return (before[-1] if before else ln)[:300]
    return lines[-1][:300] if lines else ""


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (exit status {128 - code})"
    return f"exited with status {code} without a result"


class UnitWorker:
    """A worker process that reads units one after another; restarted after a crash or hang.

    ``run`` returns the unit's record: the worker's own (done or rejected), or a reject record
    written here when the worker died or timed out. Use as a context manager.
    """

    def __init__(self, log: Path) -> None:
        self.log = Path(log)
        self._proc: Any = None
        self._conn: Any = None

    def _start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        parent, child = _CTX.Pipe()
        proc = _CTX.Process(
            target=_serve, args=(child, str(self.log)), daemon=True, name="scigpt-ingest"
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        try:
            ready = parent.poll(_STARTUP_TIMEOUT_S) and parent.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self._stop(kill=True)
            raise RuntimeError(
                f"the ingest worker process did not start ({_describe_exit(code)}): see "
                f"{self.log}. Fix: check that scigpt imports in a fresh `python -c 'import "
                "scigpt.data_pipeline.prepare'`"
            )

    def _stop(self, kill: bool) -> int | None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return None
        if kill and proc.is_alive():
            proc.kill()
        elif not kill:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)  # asks the worker to leave
        proc.join(timeout=30)
        if proc.is_alive():  # did not leave when asked
            proc.kill()
            proc.join()
        conn.close()
        return proc.exitcode

    def run(self, store: Path, unit, stats_time_range, timeout_s: float) -> dict[str, Any]:
        """Run ``unit`` in the worker; a crash or a hang becomes its reject record."""
        from .prepare import reject_unit

        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                self._stop(kill=True)
            self._start()
        offset = self.log.stat().st_size if self.log.exists() else 0
        t0 = time.perf_counter()
        try:
            self._conn.send((store, unit, stats_time_range))
            if self._conn.poll(timeout_s):  # True on a result and on the worker's death (EOF)
                return self._conn.recv()
        except (EOFError, OSError):
            pass  # the worker died mid-unit
        hung = self._proc.is_alive() and time.perf_counter() - t0 >= timeout_s
        code = self._stop(kill=True)
        rel = self.log.relative_to(store) if self.log.is_relative_to(store) else self.log
        # The reason names no rank's log, so the manifest is the same whatever the rank count.
        where = f"the store's {rel.parent}/ folder"
        said = _last_message(self.log, offset)
        said = f"; its last message: {said!r}" if said else ""
        if hung:
            reason = (
                f"the read gave no result within unit_timeout_s={timeout_s:g} s and was stopped "
                f"(a hung read: a stalled network file system, a pipe or device instead of a "
                f"file){said}. Fix: check the file, or raise the source's unit_timeout_s if it "
                f"is just large; details in {where}"
            )
            failure: dict[str, Any] = {"kind": "timeout", "timeout_s": timeout_s}
        else:
            reason = (
                f"the reader crashed: its process was {_describe_exit(code)}{said}. The file is "
                f"most likely corrupt (e.g. a damaged length field): re-download or repair it; "
                f"details in {where}"
            )
            failure = {"kind": "crash", "exit_status": code}
        _remove_partial(store, unit)
        return reject_unit(store, unit, reason, failure=failure, log=str(rel),
                           seconds=time.perf_counter() - t0)  # fmt: skip

    def close(self) -> None:
        self._stop(kill=False)

    def __enter__(self) -> UnitWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop(kill=exc[0] is not None)


def _remove_partial(store: Path, unit) -> None:
    """Temporary files a killed worker left for ``unit`` (its shard and record)."""
    for sub, suffix in (("shards", ".h5"), ("units", ".json")):
        for p in (store / sub / unit.source.name).glob(f".{unit.name}{suffix}.*.tmp"):
            p.unlink(missing_ok=True)
