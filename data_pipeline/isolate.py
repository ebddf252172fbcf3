"""Reader isolation: every unit is read in a worker process, so one bad file cannot take the
ingest down.

Format libraries are C code (HDF4, HDF5, eccodes, libmseed, GDAL). A corrupt length field can
abort the process inside them (HDF4: ``*** stack smashing detected ***``, SIGABRT), a stalled
file system can block a read forever, and their diagnostics go straight to file descriptor 2.
So ``prepare`` hands each unit to a worker process and waits for its record:

* the worker runs :func:`..prepare.serve`, which calls ``run_unit`` (read, check, patchify,
  write shard and record) per unit;
  any Python exception there is already that unit's reject;
* a worker that dies (a signal, an exit code) or gives no answer within the source's
  ``unit_timeout_s`` (then it is killed) becomes a reject whose reason says what happened and
  quotes the library's last message; the next unit gets a fresh worker;
* the worker's stdout and stderr — C libraries' messages (glibc's fatal ones included), Python
  warnings and tracebacks — go to ``logs/prepare-rank<r>.log`` in the store, not to the user's
  terminal. (No :mod:`faulthandler`: dumping the Python stack from a smashed C stack can fault
  again and turn an honest SIGABRT into a SIGBUS.)

Workers are fresh interpreters (``subprocess`` with ``sys.executable``; fork is followed at once
by exec), never ``fork``ed copies: the parent may hold an initialised MPI (``mpirun … scigpt
prepare`` discovers ranks through mpi4py), and OpenMPI does not support ``fork()`` after
``MPI_Init``; nor are library threads or locks copied. Unlike ``multiprocessing``'s ``spawn``
the worker never re-runs the caller's ``__main__`` (a user script without a main guard would
start workers recursively). It gets the parent's ``sys.path``, no MPI/PMIx variables (it is
not a rank), and talks over a socket pair with :class:`multiprocessing.connection.Connection`
(records are pickled between our own two processes; no user input is unpickled). One worker
serves many units, so its imports (xarray, obspy, …) are paid once per rank.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .work_units import reject_unit

LOG_DIR = "logs"
_STARTUP_TIMEOUT_S = 600.0  # a fresh interpreter importing numpy and h5py on a loaded machine
UNIT_MARK = "=== unit "  # the worker writes one such line before each unit it reads
# Environment a worker does not inherit: it is no MPI rank (a library calling MPI_Init there
# must not join the parent's job).
_NOT_INHERITED = ("OMPI_", "PMIX_", "PMI_")
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from scigpt.data_pipeline.prepare import serve; serve(int(sys.argv[2]), sys.argv[3:])"
)


def log_path(store: Path, rank: int) -> Path:
    """Where the worker of ``rank`` writes what the libraries print."""
    return store / LOG_DIR / f"prepare-rank{rank}.log"


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
    lines = [ln for ln in lines if ln and not ln.startswith(UNIT_MARK)]
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
        oom = " — out of memory? the kernel's OOM killer sends it" if name == "SIGKILL" else ""
        return f"killed by {name} (exit status {128 - code}){oom}"
    return f"exited with status {code} without a result"


class UnitWorker:
    """A worker process that reads units one after another; restarted after a crash or hang.

    ``run`` returns the unit's record: the worker's own (done or rejected), or a reject record
    written here when the worker died or timed out. Use as a context manager.
    """

    def __init__(self, log: Path, preload: Sequence[str] = ()) -> None:
        self.log = Path(log)
        self.preload = list(preload)  # reader formats the worker imports before it is ready
        self._proc: Any = None
        self._conn: Any = None
        self._ready = False

    def boot(self) -> UnitWorker:
        """Start the worker without waiting for it: it imports while the caller works on."""
        if self._proc is not None:
            return self
        self.log.parent.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
        # glibc writes fatal messages ("stack smashing detected") to /dev/tty unless told not to.
        env["LIBC_FATAL_STDERR_"] = "1"
        cmd = [sys.executable, "-c", _BOOT, json.dumps(sys.path), str(theirs.fileno()),
               *self.preload]  # fmt: skip
        with theirs, self.log.open("ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    pass_fds=(theirs.fileno(),), env=env)  # fmt: skip
        self._proc, self._conn, self._ready = proc, Connection(ours.detach()), False
        return self

    def _start(self) -> None:
        self.boot()
        if self._ready:
            return
        try:
            ready = self._conn.poll(_STARTUP_TIMEOUT_S) and self._conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self._stop(kill=True)
            raise RuntimeError(
                f"the ingest worker process did not start ({_describe_exit(code)}); its output "
                f"is in {self.log}. Fix: check that `{sys.executable} -c 'import "
                "scigpt.data_pipeline.prepare'` works"
            )
        self._ready = True

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _stop(self, kill: bool) -> int | None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self._ready = False
        if proc is None:
            return None
        if kill and proc.poll() is None:
            proc.kill()
        elif not kill:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)  # asks the worker to leave
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # did not leave when asked
            proc.kill()
            proc.wait()
        conn.close()
        return proc.returncode

    def run(self, store: Path, unit, stats_time_range, timeout_s: float) -> dict[str, Any]:
        """Run ``unit`` in the worker; a crash or a hang becomes its reject record."""
        if not self._alive():
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
        hung = self._alive() and time.perf_counter() - t0 >= timeout_s
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
            record = f"units/{unit.source.name}/{unit.name}.json"
            reason = (
                f"the reader crashed: its process was {_describe_exit(code)}{said}. The file is "
                f"most likely corrupt (e.g. a damaged length field): re-download or repair it; "
                f"details in {where}. A rerun reads it again only once it changed (or delete "
                f"{record})"
            )
            failure = {"kind": "crash", "exit_status": code}
        _remove_partial(store, unit)
        return reject_unit(store, unit, reason, failure=failure, log=str(rel),
                           seconds=time.perf_counter() - t0)  # fmt: skip

    def close(self) -> None:
        """Let the worker leave; one booted but never used is killed (still importing)."""
        self._stop(kill=not self._ready)

    def __enter__(self) -> UnitWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop(kill=exc[0] is not None)


def _remove_partial(store: Path, unit) -> None:
    """Temporary files a killed worker left for ``unit`` (its shard and record)."""
    for sub, suffix in (("shards", ".h5"), ("units", ".json")):
        for p in (store / sub / unit.source.name).glob(f".{unit.name}{suffix}.*.tmp"):
            p.unlink(missing_ok=True)
