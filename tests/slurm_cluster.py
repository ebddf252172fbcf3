"""A real single-node Slurm cluster for the test suite: the session fixture ``slurm``.

The fixture starts munged (or reuses a running one), then ``slurmctld -D`` and ``slurmd -D`` on
this machine from a slurm.conf generated in a fresh temporary directory (state, spool, logs and
PID files all live there, wiped on every start), waits until the node is idle (about 1 s) and
yields a :class:`SlurmCluster`. At the end of the session it cancels every job, runs ``scontrol
shutdown``, kills whatever daemon or job process is still alive and removes the directory;
munged is left running (a system daemon another session may share). It needs root and the
Debian packages ``slurmctld slurmd slurm-client munge``; without them it FAILS (never skips),
naming what is missing and the apt-get command.

The cluster: one node named after ``hostname -s`` (address 127.0.0.1) with 8 CPUs whatever the
hardware has (``SlurmdParameters=config_overrides``) and 4 fake GPUs (``Gres=gpu:4``, character
devices ``nvidia0..3`` in the temporary directory), so ``--gpus-per-task=1`` gives each task its
own ``CUDA_VISIBLE_DEVICES``; one partition ``debug`` (default, no time limit);
``EnforcePartLimits=ALL``, so an impossible request is refused by ``sbatch`` instead of pending
forever; ``JobRequeue=1``; finished jobs stay visible to ``scontrol show job`` for
``MinJobAge=600`` s; the controller and node ports are picked free at each start.

API of :class:`SlurmCluster` (the fixture's value)::

    env: dict[str, str]        # os.environ + SLURM_CONF: pass to every Slurm client you run
    conf_dir: Path             # slurm.conf, gres.conf, log/, state/, spool/, dev/nvidia0..3
    partition: str             # "debug"
    node: str                  # the node's name (hostname -s)
    startup_s: float           # seconds from the daemons' start to an idle node
    submit(script, *sbatch_args, cwd=None, env=None) -> int
        # sbatch --parsable; script is a Path, a path string, or the script text itself (a str
        # starting with "#!" goes to sbatch's stdin). cwd defaults to conf_dir / "work", so
        # slurm-<id>.out lands there unless --output says otherwise. env (default self.env;
        # SLURM_CONF is forced) is sbatch's environment, which the job inherits (--export=ALL).
        # A refused submission raises SlurmError carrying sbatch's stderr.
    job(job_id) -> dict[str, str]
        # `scontrol show job -o <id>` as a dict: JobState, Reason, Restarts, ExitCode,
        # StartTime, BatchHost, StdOut, ... A controller too busy to answer (socket timeout,
        # connection refused) is asked again for up to 60 s before SlurmError.
    wait(job_id, states={"COMPLETED"}, timeout=120, release_requeued=True) -> dict[str, str]
        # polls job() until JobState is in `states` and returns the info; raises SlurmError
        # (job info + daemon log tails) on timeout, on a terminal state not in `states`, or on a
        # held job (JobState REQUEUE_HOLD / SPECIAL_EXIT) unless that state is awaited. Every
        # other state (PENDING, CONFIGURING, RUNNING, COMPLETING, REQUEUED, SIGNALING, ...) is
        # waited through. A job requeued and pending on Reason=BeginTime is released once
        # (see release()).
    release(job_id) -> bool
        # `scontrol update JobId=<id> StartTime=...`: a requeued job otherwise waits ~2 minutes
        # (the job credential lifetime) before it may start again. The start is set to at least
        # 2 s after the requeue (SubmitTime): slurmd refuses to launch a job whose credential
        # is not newer (in whole seconds) than the kill of its previous run. Returns False, and
        # changes nothing, when the job is no longer pending (it started meanwhile: on a busy
        # machine the scheduler can beat the caller to it) or already starts early enough.
    signal_batch(job_id, sig="USR1")   # scancel --batch --signal=<sig>: the batch shell only
    signal_full(job_id, sig="USR1")    # scancel --full --signal=<sig>: batch shell and steps
    signal_steps(job_id, sig="USR1")   # scancel --signal=<sig>: the job's steps only
    cancel(job_id)                     # scancel <id>
    job_processes() -> list[int]       # PIDs still running from this cluster's jobs (see below)
    run(*args, check=True, cwd=None, input=None, env=None) -> CompletedProcess[str]
        # any Slurm client (squeue, sinfo, scontrol ...) with env; check raises SlurmError
    logs(lines=60) -> str              # tails of slurmctld.log and slurmd.log
    describe(info) -> str              # a job's key fields, its StdOut tail and logs()

Errors are ``SlurmError`` (a RuntimeError) from this module: import it as
``from tests.slurm_cluster import SlurmCluster, SlurmError``, the name the plugin is loaded
under (tests/conftest.py), or ``pytest.raises`` will not match the class the fixture raises.

Notes for batch scripts: bash runs a trap only between commands, so a script that must react
to a signal while it waits should run the long command in the background and ``wait`` for it.
The node tracks job processes with proctrack/linuxproc (parent links; proctrack/pgid costs ~3 s
per step): a process the batch shell leaves running in the background when it exits escapes
Slurm's cleanup, so a trap that exits should kill its children first. The fixture's teardown
kills any such leftover (found by SLURM_CONF + SLURM_JOB_ID in its environment).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

APT_PACKAGES = "slurmctld slurmd slurm-client munge"
APT_HINT = f"apt-get install -y --no-install-recommends {APT_PACKAGES}"

# Slurm job states after which nothing more happens to the job.
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
    }
)
# States in which a job waits for a person (scontrol release/requeue) and so never ends alone.
HELD_STATES = frozenset({"REQUEUE_HOLD", "SPECIAL_EXIT", "REQUEUE_FED"})

_DAEMONS = {
    "/usr/sbin/munged": "munge",
    "/usr/sbin/slurmctld": "slurmctld",
    "/usr/sbin/slurmd": "slurmd",
}
_CLIENTS = {
    **{c: "slurm-client" for c in ("sbatch", "srun", "scontrol", "scancel", "squeue", "sinfo")},
    "munge": "munge",
    "unmunge": "munge",
    "runuser": "util-linux",
}
_MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
_KEY_RE = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


class SlurmError(RuntimeError):
    """A Slurm command or job did not do what the test needed."""


# What a Slurm client prints when the controller is too busy (or restarting) to answer: worth
# asking again, not a failure of the job.
TRANSIENT_ERRORS = (
    "Socket timed out",
    "Unable to contact slurm controller",
    "Connection refused",
    "connect failure",
    "Communication connection failure",
    "Resource temporarily unavailable",
    "Zero Bytes were transmitted or received",
    "Transport endpoint is not connected",
)
# A node state sinfo prints once slurmd has registered and the node takes jobs (suffixes such
# as ~ # ! % $ @ ^ - + mark power or maintenance flags; * means "not responding": not ready).
_READY_NODE = re.compile(r"^(idle|mix|mixed|alloc|allocated|completing|comp)[~#!%$@^+-]*$")


def is_transient(output: str) -> bool:
    """Whether a failed client's output says the controller did not answer in time."""
    return any(m.lower() in output.lower() for m in TRANSIENT_ERRORS)


def node_ready(state: str) -> bool:
    """Whether an ``sinfo -h -N -o %t`` state means the node takes jobs."""
    return bool(_READY_NODE.match(state.strip()))


def parse_scontrol(line: str) -> dict[str, str]:
    """``Key=value Key2=value with spaces ...`` (one ``scontrol show -o`` line) as a dict.

    A value runs up to the next `` Key=``, so values holding spaces (Command, WorkDir) or ``=``
    (TRES=cpu=2,node=1) survive."""
    matches = list(_KEY_RE.finditer(line))
    out: dict[str, str] = {}
    for m, nxt in pairwise([*matches, None]):
        end = nxt.start() if nxt is not None else len(line)
        out.setdefault(m.group(1), line[m.end() : end].strip())
    return out


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Daemons get SIGTERM if pytest dies without its teardown (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"({path}: {exc})"
    return "\n".join(text[-lines:])


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run the cluster (empty when nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the daemons run as root: SlurmUser=root, munged via runuser)")
    missing += [
        f"{path} (package {pkg})" for path, pkg in _DAEMONS.items() if not os.access(path, os.X_OK)
    ]
    missing += [
        f"{c} on PATH (package {pkg})" for c, pkg in _CLIENTS.items() if not shutil.which(c)
    ]
    return missing


def ensure_munged() -> None:
    """Start munged as the munge user unless one already answers (e.g. from an earlier run);
    create the key if there is none. munged is left running at the end: it is a system daemon
    that another session may share."""
    if _munge_works():
        return
    import pwd

    try:
        pw = pwd.getpwnam("munge")
    except KeyError:
        pytest.fail(f"no 'munge' user: is munge installed? {APT_HINT}", pytrace=False)
    uid, gid = pw.pw_uid, pw.pw_gid
    for d, mode in (
        ("/run/munge", 0o755),
        ("/var/lib/munge", 0o711),
        ("/var/log/munge", 0o700),
        ("/etc/munge", 0o700),
    ):
        Path(d).mkdir(parents=True, exist_ok=True)
        os.chown(d, uid, gid)
        os.chmod(d, mode)
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        if shutil.which("mungekey"):
            cmd = ["mungekey", "--create", f"--keyfile={key}"]
        else:
            cmd = ["create-munge-key", "-f"]
        subprocess.run(cmd, check=True, capture_output=True)
    os.chown(key, uid, gid)
    os.chmod(key, 0o400)
    # A munged killed without cleanup leaves its socket and lock: it then refuses to start.
    # (Only remove them when no munged runs: a live one just answering slowly keeps them.)
    if not _munged_running():
        for stale in (_MUNGE_SOCKET, Path(f"{_MUNGE_SOCKET}.lock")):
            stale.unlink(missing_ok=True)
    proc = subprocess.run(
        ["runuser", "-u", "munge", "--", "/usr/sbin/munged"], capture_output=True, text=True
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _munge_works():
            return
        time.sleep(0.1)
    pytest.fail(
        f"munged did not start (exit {proc.returncode}): {proc.stdout}{proc.stderr}\n"
        + _tail(Path("/var/log/munge/munged.log"), 20),
        pytrace=False,
    )


def _munged_running() -> bool:
    try:
        pid = int(Path("/run/munge/munged.pid").read_text().strip())
        return Path(f"/proc/{pid}/comm").read_text().strip() == "munged"
    except (OSError, ValueError):
        return False


def _munge_works() -> bool:
    if not _MUNGE_SOCKET.exists():
        return False
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
        if cred.returncode != 0:
            return False
        check = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return check.returncode == 0


class SlurmCluster:
    """munged + slurmctld + slurmd on this machine; see the module docstring for the API."""

    partition = "debug"
    n_cpus = 8
    n_gpus = 4

    def __init__(self, conf_dir: Path) -> None:
        self.conf_dir = conf_dir
        self.node = socket.gethostname().split(".")[0]
        self.conf = conf_dir / "slurm.conf"
        self.workdir = conf_dir / "work"
        self.env: dict[str, str] = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.startup_s = float("nan")

    # ---- start / stop -------------------------------------------------------------------
    def write_config(self) -> None:
        d = self.conf_dir
        if d.exists():
            shutil.rmtree(d)
        for sub in ("state", "spool", "log", "run", "work", "dev"):
            (d / sub).mkdir(parents=True)
        devices = []
        for i in range(self.n_gpus):
            dev = d / "dev" / f"nvidia{i}"
            os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # S_IFCHR, same as /dev/null
            devices.append(dev)
        (d / "gres.conf").write_text(
            f"NodeName={self.node} Name=gpu File={d / 'dev'}/nvidia[0-{self.n_gpus - 1}]\n"
        )
        ctld_port, node_port = _free_ports(2)
        # ClusterName is fixed but the state is wiped at each start anyway: slurmctld exits
        # at startup when the state directory holds another cluster's name.
        conf = f"""\
ClusterName=scigpt-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}
SlurmctldPidFile={d / "run" / "slurmctld.pid"}
SlurmdPidFile={d / "run" / "slurmd.pid"}
SlurmctldLogFile={d / "log" / "slurmctld.log"}
SlurmdLogFile={d / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
EnforcePartLimits=ALL
JobRequeue=1
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
PrologFlags=NoHold
KillWait=5
UnkillableStepTimeout=60
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=600
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.n_cpus} Gres=gpu:{self.n_gpus} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)

    def start(self, timeout: float = 120) -> None:
        t0 = time.monotonic()
        self.write_config()
        log = self.conf_dir / "log"
        for name, cmd in (
            ("slurmctld", ["/usr/sbin/slurmctld", "-D", "-c", "-f", str(self.conf)]),
            ("slurmd", ["/usr/sbin/slurmd", "-D", "-f", str(self.conf)]),
        ):
            out = open(log / f"{name}.stdout", "wb")  # noqa: SIM115 - the daemon keeps it
            self._procs[name] = subprocess.Popen(
                cmd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches pytest, whose teardown stops them
                preexec_fn=_die_with_parent,
            )
            out.close()
        deadline = t0 + timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            r = self.run("sinfo", "-h", "-N", "-o", "%t", check=False)
            state = r.stdout.strip()
            if r.returncode == 0 and node_ready(state):
                self.startup_s = time.monotonic() - t0
                return
            time.sleep(0.1)
        raise SlurmError(f"node not idle after {timeout} s (sinfo: {state!r})\n{self.logs()}")

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise SlurmError(
                    f"{name} exited with code {proc.returncode} during startup\n"
                    f"--- {name} stdout/stderr ---\n"
                    f"{_tail(self.conf_dir / 'log' / f'{name}.stdout', 30)}\n{self.logs()}"
                )

    def stop(self) -> None:
        """Cancel every job, wait (30 s at most) until none is left running or completing,
        ``scontrol shutdown``, then SIGTERM / SIGKILL whichever daemon still runs, and kill
        what the jobs left behind (kill_leftovers)."""
        if not self._procs:
            return
        ctld_alive = self._procs["slurmctld"].poll() is None
        if ctld_alive and self._procs["slurmd"].poll() is None:
            self.run("scancel", f"--partition={self.partition}", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = self.run("squeue", "-h", "-o", "%i", check=False)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.2)
        if ctld_alive:
            self.run("scontrol", "shutdown", check=False)  # stops slurmctld and slurmd
        for name, proc in self._procs.items():
            for action, wait_s in ((None, 15 if ctld_alive else 0), (proc.terminate, 5)):
                if action is not None:
                    action()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait_s)
                    break
            else:
                proc.kill()
                proc.wait(timeout=10)
                print(f"slurm_cluster: had to SIGKILL {name}")
        self._procs.clear()
        self.kill_leftovers()

    def job_processes(self) -> list[int]:
        """PIDs of processes started by this cluster's jobs that still run: their environment
        holds this SLURM_CONF and a SLURM_JOB_ID. proctrack/linuxproc follows parent links, so
        a process a batch script left in the background when it exited (reparented to init)
        escapes Slurm's cleanup; proctrack/pgid would catch it but costs ~3 s per step."""
        return self._processes(jobs_only=True)

    def _processes(self, jobs_only: bool) -> list[int]:
        conf = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if conf in env and (not jobs_only or any(v.startswith(b"SLURM_JOB_ID=") for v in env)):
                pids.append(int(entry.name))
        return pids

    def kill_leftovers(self) -> list[int]:
        """After the daemons stopped: SIGKILL every process whose environment holds this
        SLURM_CONF (job processes, an orphaned slurmstepd); returns their PIDs."""
        pids = self._processes(jobs_only=False)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if pids:
            print(f"slurm_cluster: killed processes left behind: {pids}")
        return pids

    # ---- clients --------------------------------------------------------------------------
    def run(
        self,
        *args: str,
        check: bool = True,
        cwd: Path | str | None = None,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client (sbatch, scontrol, ...) against this cluster, in ``env`` (default
        ``self.env``; SLURM_CONF is always set to this cluster's)."""
        try:
            r = subprocess.run(
                list(args),
                env={**(self.env if env is None else env), "SLURM_CONF": str(self.conf)},
                cwd=cwd,
                input=input,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:  # a client stuck on a busy controller
            r = subprocess.CompletedProcess(
                list(args), 124, "", f"Socket timed out: {args[0]} did not return in 60 s"
            )
        if check and r.returncode != 0:
            raise SlurmError(
                f"{' '.join(args)} failed with exit code {r.returncode}:\n{r.stdout}{r.stderr}"
            )
        return r

    def submit(
        self,
        script: Path | str,
        *sbatch_args: str,
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """``sbatch --parsable``; returns the job id (see the module docstring)."""
        text = None
        if isinstance(script, str) and script.startswith("#!"):
            text, args = script, ["sbatch", "--parsable", *sbatch_args]
        else:
            args = ["sbatch", "--parsable", *sbatch_args, str(script)]
        r = self.run(*args, check=False, cwd=cwd or self.workdir, input=text, env=env)
        if r.returncode != 0:
            raise SlurmError(f"sbatch refused the job (exit {r.returncode}): {r.stderr.strip()}")
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int | str, *, patience: float = 60) -> dict[str, str]:
        """``scontrol show job -o <id>`` parsed (the first line for an array or het job). A
        controller too busy to answer is asked again for ``patience`` seconds."""
        deadline = time.monotonic() + patience
        delay = 0.2
        while True:
            r = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
            if r.returncode == 0 and r.stdout.strip():
                return parse_scontrol(r.stdout.strip().splitlines()[0])
            if not is_transient(r.stdout + r.stderr) or time.monotonic() > deadline:
                raise SlurmError(
                    f"scontrol show job {job_id} failed with exit code {r.returncode}:\n"
                    f"{r.stdout}{r.stderr}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def release(self, job_id: int | str) -> bool:
        """Let a requeued job start now instead of after its ~2 minute BeginTime delay;
        returns whether the start time was changed.

        Not quite now: slurmd refuses ("Job <id> already killed, do not launch batch job") a
        launch whose credential is not newer, in whole seconds, than the kill of the previous
        run, which happens when the job is requeued (its new SubmitTime). So the start is set
        to at least SubmitTime + 2 s. A job that is no longer pending (it started, or ended,
        between the caller's look and this one: a busy machine does that) or that already
        starts by then is left alone."""
        info = self.job(job_id)
        if info.get("JobState") != "PENDING":
            return False
        now = datetime.now()
        earliest = now
        with contextlib.suppress(KeyError, ValueError):
            earliest = max(now, datetime.fromisoformat(info["SubmitTime"]) + timedelta(seconds=2))
        with contextlib.suppress(KeyError, ValueError):  # StartTime=Unknown: not set yet
            if datetime.fromisoformat(info["StartTime"]) <= earliest + timedelta(seconds=1):
                return False  # released already (by an earlier call)
        start = "now" if earliest <= now else earliest.isoformat(timespec="seconds")
        r = self.run("scontrol", "update", f"JobId={job_id}", f"StartTime={start}", check=False)
        if r.returncode == 0:
            return True
        out = r.stdout + r.stderr
        if "no longer pending" in out.lower() or self.job(job_id).get("JobState") != "PENDING":
            return False  # it started (or ended) meanwhile: nothing to release
        raise SlurmError(f"scontrol update JobId={job_id} StartTime={start} failed:\n{out}")

    def wait(
        self,
        job_id: int | str,
        states: Iterable[str] = frozenset({"COMPLETED"}),
        timeout: float = 120,
        release_requeued: bool = True,
    ) -> dict[str, str]:
        """Poll the job until its JobState is in ``states``; see the module docstring."""
        want = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            info = self.job(job_id)
            state = info.get("JobState", "")
            if state in want:
                return info
            if state in TERMINAL_STATES or state in HELD_STATES:
                raise SlurmError(
                    f"job {job_id} ended {state}, waited for {sorted(want)}\n{self.describe(info)}"
                )
            if (
                release_requeued
                and state == "PENDING"
                and info.get("Reason") == "BeginTime"
                and int(info.get("Restarts", "0")) > 0
            ):
                self.release(job_id)
            if time.monotonic() > deadline:
                raise SlurmError(
                    f"job {job_id} still {state} after {timeout} s, waited for "
                    f"{sorted(want)}\n{self.describe(info)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def describe(self, info: dict[str, str]) -> str:
        """A job's key facts, its output file's tail and the daemons' logs, for a failure."""
        keys = ("JobState", "Reason", "ExitCode", "Restarts", "StartTime", "EndTime", "StdOut")
        head = " ".join(f"{k}={info.get(k, '?')}" for k in keys)
        out = info.get("StdOut")
        tail = f"\n--- {out} ---\n{_tail(Path(out), 30)}" if out else ""
        return f"{head}{tail}\n{self.logs()}"

    def signal_batch(self, job_id: int | str, sig: str = "USR1") -> None:
        """Signal the batch shell only (``scancel --batch --signal=<sig>``)."""
        self.run("scancel", "--batch", f"--signal={sig}", str(job_id))

    def signal_full(self, job_id: int | str, sig: str = "USR1") -> None:
        """Signal the batch shell and every step (``scancel --full --signal=<sig>``)."""
        self.run("scancel", "--full", f"--signal={sig}", str(job_id))

    def signal_steps(self, job_id: int | str, sig: str = "USR1") -> None:
        """Signal the job's steps (srun tasks), not the batch shell (``scancel --signal``)."""
        self.run("scancel", f"--signal={sig}", str(job_id))

    def cancel(self, job_id: int | str) -> None:
        self.run("scancel", str(job_id))

    def logs(self, lines: int = 60) -> str:
        """Tails of the slurmctld and slurmd logs (for assertion messages)."""
        return "\n".join(
            f"--- {name}.log (last {lines} lines) ---\n"
            f"{_tail(self.conf_dir / 'log' / f'{name}.log', lines)}"
            for name in ("slurmctld", "slurmd")
        )


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A running single-node Slurm cluster for the whole session (module docstring)."""
    missing = missing_prerequisites()
    if missing:
        pytest.fail(
            "a real Slurm cluster is needed but this machine lacks: "
            + "; ".join(missing)
            + f"\nas root: {APT_HINT}  (or: make system-deps)",
            pytrace=False,
        )
    ensure_munged()
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="scigpt-slurm-")))
    try:
        cluster.start()
    except SlurmError as exc:
        cluster.stop()
        pytest.fail(f"Slurm did not start: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.conf_dir, ignore_errors=True)
