"""One writer per run directory: a lock file that works on the filesystems HPC centres share.

``flock``/``fcntl`` locks are node-local on many Lustre mounts (``localflock``) and unreliable on
NFS, so two jobs on two nodes would both "hold" them. What every POSIX filesystem makes atomic,
Lustre and NFSv3+ included, is creating a file with ``O_CREAT | O_EXCL``: exactly one creator
succeeds. The lock is therefore a file, ``RUN/.lock``, created that way and holding (JSON) who
holds it: host, pid, the process's start time (a reused pid is not mistaken for the holder),
the Slurm job id and ``SLURM_RESTART_COUNT`` (a requeue keeps the job id, so the restart count
tells the incarnations apart), a random token and the command.

While it holds the lock, the holder's heartbeat thread touches the file every ``heartbeat_s``
seconds (30 s; ``SCIGPT_LOCK_HEARTBEAT_S``), after checking that the token in it is still its
own: a holder whose lock was taken over learns it at its next beat and stops writing.

A lock is **stale**, and is taken over, when

* its heartbeat is older than ``stale_s`` (300 s; ``SCIGPT_LOCK_STALE_S``): the holder, or its
  node, is gone or hung;
* it was taken on this host and its process is gone (no such pid, a zombie, or the pid now
  belongs to a process started at another time);
* it was taken by an earlier incarnation of this Slurm job (same job id, lower restart count:
  Slurm ends an incarnation before it starts the next);
* ``scontrol`` (where it exists) says the holder's job is no longer running, or is running a
  later incarnation.

``--break-lock`` takes the lock regardless. Otherwise a held lock is refused with a message that
names the holder. Taking over a stale lock renames it aside first and checks that it was the file
judged stale, so two processes breaking the same stale lock cannot both win.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scigpt.atomic import fsync_dir

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0
# Slurm job states in which the job's processes may still run (anything else: they are gone).
_ALIVE_STATES = {"RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "STOPPED", "SIGNALING"}


class RunLocked(RuntimeError):
    """Another live process holds the run directory."""


class RunLockLost(RuntimeError):
    """This process held the run directory, and another process has taken it over."""


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be positive")
    return value


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a local process, from /proc; None when
    there is no such process (or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": comm may hold spaces
    return fields[0], int(fields[19])


def _pid_alive(pid: int, start: int | None) -> bool:
    stat = _proc_stat(pid)
    if stat is not None:
        state, started = stat
        if state in ("Z", "X"):  # a zombie has exited; only its parent has not reaped it
            return False
        return start is None or started == start
    if Path("/proc/self/stat").exists():
        return False  # /proc works here and has no such pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock: written into the lock file."""

    host: str
    pid: int
    pid_start: int | None
    job_id: str | None
    restart_count: int
    token: str
    created_utc: str
    command: str

    @classmethod
    def current(cls) -> Holder:
        stat = _proc_stat(os.getpid())
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=stat[1] if stat else None,
            job_id=os.environ.get("SLURM_JOB_ID") or None,
            restart_count=int(restarts) if restarts.isdigit() else 0,
            token=uuid.uuid4().hex,
            created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            command=" ".join(sys.argv)[:500],
        )

    @classmethod
    def from_json(cls, data: Any) -> Holder | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                host=str(data["host"]),
                pid=int(data["pid"]),
                pid_start=None if data.get("pid_start") is None else int(data["pid_start"]),
                job_id=None if data.get("job_id") is None else str(data["job_id"]),
                restart_count=int(data.get("restart_count") or 0),
                token=str(data["token"]),
                created_utc=str(data.get("created_utc", "?")),
                command=str(data.get("command", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        job = f", Slurm job {self.job_id} restart {self.restart_count}" if self.job_id else ""
        return f"pid {self.pid} on {self.host}{job}, since {self.created_utc}"


def slurm_job_state(job_id: str, timeout_s: float = 10.0) -> tuple[str, int] | None:
    """(JobState, Restarts) of a Slurm job from ``scontrol``; ("GONE", 0) when Slurm no longer
    knows the job; None when that cannot be found out (no scontrol, or it failed)."""
    exe = shutil.which("scontrol")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "show", "job", "-o", str(job_id)], capture_output=True, text=True,
            timeout=timeout_s,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return ("GONE", 0) if "invalid job id" in out.stderr.lower() else None
    return parse_scontrol_job(out.stdout)


def parse_scontrol_job(text: str) -> tuple[str, int] | None:
    """JobState and Restarts from one ``scontrol show job -o`` line."""
    state = re.search(r"\bJobState=(\S+)", text)
    restarts = re.search(r"\bRestarts=(\d+)", text)
    if state is None:
        return None
    return state.group(1), int(restarts.group(1)) if restarts else 0


def stale_reason(
    holder: Holder | None,
    age_s: float,
    *,
    me: Holder,
    stale_s: float,
    job_state: Callable[[str], tuple[str, int] | None] = slurm_job_state,
) -> str | None:
    """Why the lock ``holder`` (last heartbeat ``age_s`` ago) may be taken over; None if it is
    alive as far as can be told."""
    if age_s > stale_s:
        return f"its heartbeat is {age_s:.0f} s old (stale after {stale_s:.0f} s)"
    if holder is None:
        return None  # being written right now (or a crash mid-write: stale once it ages)
    if holder.host == me.host and not _pid_alive(holder.pid, holder.pid_start):
        return f"its process {holder.pid} on {holder.host} has ended"
    if holder.job_id and holder.job_id == me.job_id and holder.restart_count < me.restart_count:
        return (
            f"Slurm job {holder.job_id} was requeued (restart {holder.restart_count} -> "
            f"{me.restart_count}): that incarnation has ended"
        )
    if holder.job_id:
        found = job_state(holder.job_id)
        if found is not None:
            state, restarts = found
            if state == "GONE":
                return f"Slurm no longer knows job {holder.job_id}"
            base = state.split("+")[0]
            if base not in _ALIVE_STATES:
                return f"Slurm job {holder.job_id} is {state}"
            if restarts > holder.restart_count:
                return (
                    f"Slurm job {holder.job_id} now runs restart {restarts}, the lock is from "
                    f"restart {holder.restart_count}"
                )
    return None


class RunLock:
    """The lock of one run directory (see the module docstring). Use ``acquire`` and
    ``release`` (or ``with``); ``lost`` turns true when another process took the lock over."""

    def __init__(
        self,
        run_dir: Path,
        *,
        heartbeat_s: float | None = None,
        stale_s: float | None = None,
        job_state: Callable[[str], tuple[str, int] | None] = slurm_job_state,
    ):
        self.path = Path(run_dir) / LOCK_NAME
        self.heartbeat_s = heartbeat_s or _env_seconds("SCIGPT_LOCK_HEARTBEAT_S", HEARTBEAT_S)
        self.stale_s = stale_s or _env_seconds("SCIGPT_LOCK_STALE_S", STALE_S)
        if self.stale_s <= 2 * self.heartbeat_s:
            raise ValueError(
                f"lock stale time {self.stale_s} s must exceed twice the heartbeat "
                f"{self.heartbeat_s} s (SCIGPT_LOCK_STALE_S, SCIGPT_LOCK_HEARTBEAT_S)"
            )
        self._job_state = job_state
        self.holder: Holder | None = None
        self.broke: str | None = None  # what was taken over, and why
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_beat: list[Callable[[], None]] = []

    # ---- reading -------------------------------------------------------------------------------
    def _read(self) -> tuple[Holder | None, os.stat_result] | None:
        """The lock file's holder and stat (from one open file), or None when there is none."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(1 << 16)
        finally:
            os.close(fd)
        try:
            data = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        return Holder.from_json(data), st

    def current_holder(self) -> Holder | None:
        seen = self._read()
        return seen[0] if seen else None

    # ---- acquire / release ---------------------------------------------------------------------
    def acquire(self, *, break_lock: bool = False) -> RunLock:
        """Take the lock, or raise ``RunLocked`` naming the live holder."""
        me = Holder.current()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(8):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                seen = self._read()
                if seen is None:
                    continue  # released in between
                holder, st = seen
                if holder is None:  # its creator may be writing it now: look again
                    time.sleep(0.5)
                    seen = self._read()
                    if seen is None:
                        continue
                    holder, st = seen
                age = max(0.0, time.time() - st.st_mtime)
                why = "--break-lock" if break_lock else stale_reason(
                    holder, age, me=me, stale_s=self.stale_s, job_state=self._job_state
                )  # fmt: skip
                if why is None:
                    who = holder.describe() if holder else "a process writing its lock file"
                    raise RunLocked(
                        f"run directory {self.path.parent} is in use by {who} "
                        f"(last heartbeat {age:.0f} s ago; command: "
                        f"{holder.command if holder else '?'}). Wait "
                        "for it to finish or stop it; if it is gone for sure, pass --break-lock "
                        f"(a lock is stale {self.stale_s:.0f} s after its last heartbeat, or once "
                        "its process or Slurm job incarnation has ended)"
                    ) from None
                if self._remove_if_unchanged(st, holder):
                    who = holder.describe() if holder else "an unreadable lock file"
                    self.broke = f"took over the lock of {who}: {why}"
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(me), f)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self.path.parent)
            self.holder = me
            self._start_heartbeat()
            return self
        raise RunLocked(
            f"could not take the lock {self.path}: other processes keep taking it; make sure "
            "only one job runs this run directory"
        )

    def _remove_if_unchanged(self, st: os.stat_result, holder: Holder | None) -> bool:
        """Remove the lock judged stale, unless someone replaced it since it was read."""
        grave = self.path.with_name(f"{LOCK_NAME}.stale-{uuid.uuid4().hex[:12]}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return False
        now = os.stat(grave)
        seen = Holder.from_json(_load_json(grave))
        same = (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev) and (
            (seen.token if seen else None) == (holder.token if holder else None)
        )
        if not same:  # a fresh lock was taken after we looked: give it back
            with contextlib.suppress(FileExistsError):
                os.link(grave, self.path)
        grave.unlink(missing_ok=True)
        return same

    def verify(self) -> bool:
        """Whether the lock file still holds this process's token (marks ``lost`` if not)."""
        if self.holder is None:
            return False
        try:
            seen = self._read()
        except OSError:
            return not self._lost.is_set()  # a transient read error: judge at the next beat
        if seen is None or seen[0] is None or seen[0].token != self.holder.token:
            self._lost.set()
            return False
        return True

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Raise ``RunLockLost`` if the lock was taken over (re-reads the lock file)."""
        if self.holder is not None and not self.verify():
            raise RunLockLost(
                f"the lock of {self.path.parent} was taken over by another process "
                f"({self.current_holder().describe() if self.current_holder() else 'gone'}): "
                "this process stops writing; only one job may run a run directory"
            )

    def on_beat(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` at every heartbeat (from the heartbeat thread)."""
        self._on_beat.append(fn)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="scigpt-run-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.verify():
                return
            try:
                os.utime(self.path, None)
            except OSError:
                continue
            for fn in self._on_beat:
                try:
                    fn()
                except Exception as e:  # a failed side task must not stop the heartbeat
                    print(f"scigpt: run lock heartbeat task failed: {e}", file=sys.stderr)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still this process's."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
        if self.holder is not None and self.verify():
            self.path.unlink(missing_ok=True)
        self.holder = None

    def __enter__(self) -> RunLock:
        return self if self.holder is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


__all__ = [
    "HEARTBEAT_S",
    "LOCK_NAME",
    "STALE_S",
    "Holder",
    "RunLock",
    "RunLockLost",
    "RunLocked",
    "parse_scontrol_job",
    "slurm_job_state",
    "stale_reason",
]
