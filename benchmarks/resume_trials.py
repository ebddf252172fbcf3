"""Kill, resume and race trials: what README's "Resume and preemption" promises, repeated.

Every trial trains the demo (40 steps, a checkpoint every 10, one record per step) as an operator
on a busy cluster would see it, and compares the result with an uninterrupted reference trained
in the same invocation:

* ``random``: the run is SIGKILLed 1-3 times, each at a uniformly random moment of the
  reference's wall time (start-up, ingest, training, a save or the final evaluation), and
  resumed with ``--resume`` until it finishes;
* ``save``: SIGKILL as soon as a checkpoint save's temporary folder appears, then resume;
* ``race``: two ``--resume`` of one run started 0-3 s apart (a requeue racing the job it
  replaces, a double submission).

A trial passes when the final run exits 0 and its ``metrics.jsonl`` holds one train record per
step whose step, loss, gradient norm and learning rate are bitwise the reference's, exactly one
test record, device-hours equal to the sum over ``segments.json`` (one segment per process that
trained, killed ones included), no leftover lock or temporary checkpoint; in a race exactly one
process trains and the other is refused naming it (or finds the run finished); and resuming the
finished run exits 0 and changes no byte and no timestamp.

    OMP_NUM_THREADS=1 python benchmarks/resume_trials.py --random 20 --save 10 --race 10

Writes ``benchmarks/results/resume_trials.{csv,json}``; exit code 1 if any trial failed (its
run directory is kept under ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import report

STEPS = 40
COMMON = [
    "--steps", str(STEPS), "--set", "logging.progress=false", "--set", "logging.every=1",
    "--set", "checkpoint.every=10", "--set", "checkpoint.keep_last=1",
    "--set", "schedule.warmup_steps=5",
]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    # A heartbeat every 0.5 s: a killed segment's seconds are recorded that finely.
    env.update(OMP_NUM_THREADS="1", SCIGPT_LOCK_HEARTBEAT_S="0.5", SCIGPT_LOCK_STALE_S="60")
    return env


def _cmd(root: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "scigpt", "demo", "--runs-dir", str(root), "--run-name", name,
            *COMMON, *extra]  # fmt: skip


def _start(root: Path, name: str, *extra: str) -> subprocess.Popen:
    # Output to files, not pipes: a process waited on (or killed) never blocks on a full pipe.
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    n = len(list(logs.glob(f"{name}.*.out")))
    paths = (logs / f"{name}.{n}.out", logs / f"{name}.{n}.err")
    with paths[0].open("w") as out, paths[1].open("w") as err:
        proc = subprocess.Popen(_cmd(root, name, *extra), env=_env(), stdout=out, stderr=err)
    proc.logs = paths  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str, str]:
    proc.wait(timeout=timeout)
    out, err = (p.read_text() for p in proc.logs)  # type: ignore[attr-defined]
    return proc.returncode, out, err


def _train_records(run: Path) -> list[tuple]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in recs if r["kind"] == "train"]


def _snapshot(run: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(run.rglob("*")) if p.is_file()}  # fmt: skip


def _check(run: Path, reference: list[tuple], max_segments: int, root: Path) -> list[str]:
    """What must hold of a finished trial run (module docstring); returns the failures."""
    bad = []
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if _train_records(run) != reference:
        bad.append("train records differ from the reference (or repeat a step)")
    tests = [r for r in recs if r["kind"] == "test"]
    if len(tests) != 1:
        bad.append(f"{len(tests)} test records")
    segs = json.loads((run / "segments.json").read_text())["segments"]
    states = [s["state"] for s in segs]
    # every process that began training is a segment: the killed ones, then the one that ended
    if states[-1:] != ["completed"] or set(states[:-1]) - {"killed"} or len(segs) > max_segments:
        bad.append(f"segments {states} (at most {max_segments})")
    total = sum(s["train_s"] * s["world_size"] for s in segs) / 3600
    if tests and abs(tests[-1]["device_hours"] - total) > 1e-12 * max(total, 1e-9):
        bad.append(f"device_hours {tests[-1]['device_hours']} != segments' {total}")
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    if leftovers or (run / ".lock").exists():
        bad.append(f"leftovers: {leftovers} lock={((run / '.lock').exists())}")
    before = _snapshot(run)
    code, out, _ = _finish(_start(root, run.name, "--resume"))
    if code != 0 or "has finished" not in out or _snapshot(run) != before:
        bad.append(f"resuming the finished run: exit {code}, changed={_snapshot(run) != before}")
    return bad


def _kill_at(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL ``proc`` after ``seconds`` unless it ended first; whether it was killed."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        _finish(proc)
        return True


def _progress(run: Path) -> int:
    """The last step the run logged (0 before its first record)."""
    done = _train_records(run) if (run / "metrics.jsonl").is_file() else []
    return done[-1][0] if done else 0


def trial_random(root: Path, name: str, rng: random.Random, span: list[float], reference) -> dict:
    """``span[0]``: the shortest wall time a whole run has taken so far (kills are drawn
    uniformly within it, so most land; it shrinks when a run finishes sooner)."""
    run, killed = root / name, []
    for i in range(rng.randint(1, 3)):
        t0 = time.perf_counter()
        proc = _start(root, name, *(["--resume"] if i else []))
        if not _kill_at(proc, rng.uniform(0.2, span[0])):
            if i == 0:
                span[0] = min(span[0], time.perf_counter() - t0)
            break  # it finished first: the run is complete
        first_ckpt = not (run / "checkpoints" / "latest").exists()
        killed.append((_progress(run), first_ckpt))
    code, _, err = _finish(_start(root, name, "--resume"))
    return _result("random", run, code, err, reference, len(killed) + 1, killed, root)


def trial_save(root: Path, name: str, rng: random.Random, reference) -> dict:
    proc = _start(root, name)
    ckpts = root / name / "checkpoints"
    hit, deadline = None, time.monotonic() + 600
    target = rng.choice([10, 20, 30])  # which save to interrupt
    while proc.poll() is None and time.monotonic() < deadline:
        if ckpts.is_dir() and (ckpts / f".tmp-step_{target:08d}").exists():
            time.sleep(rng.uniform(0, 0.05))  # somewhere inside the save
            proc.send_signal(signal.SIGKILL)
            _finish(proc)
            hit = target
            break
        time.sleep(0.002)
    code, _, err = _finish(_start(root, name, "--resume"))
    killed = [(hit, False)] if hit else []
    return _result("save", root / name, code, err, reference, len(killed) + 1, killed, root)


def trial_race(root: Path, name: str, rng: random.Random, reference) -> dict:
    first = _start(root, name, "--resume")
    time.sleep(rng.uniform(0, 3))
    second = _start(root, name, "--resume")
    (c1, o1, e1), (c2, o2, e2) = _finish(first), _finish(second)
    trained = [p for p, c, o in ((first, c1, o1), (second, c2, o2))
               if c == 0 and "has finished" not in o]  # fmt: skip
    refused = [e for c, e in ((c1, e1), (c2, e2)) if c == 1 and "is in use by pid" in e]
    finished = [o for o in (o1, o2) if "has finished" in o]
    problems = []
    if len(trained) != 1 or len(refused) + len(finished) != 1:
        problems.append(f"exits {c1}, {c2}: {e1[-300:]} | {e2[-300:]}")
    elif refused and f"pid {trained[0].pid}" not in refused[0]:
        problems.append("the refusal does not name the process that trains")
    res = _result("race", root / name, 0 if trained else 1, "", reference, 1, [], root)
    res["failures"] = problems + res["failures"]
    res["refused"] = len(refused)
    return res


def _result(kind, run, code, err, reference, max_segments, killed, root) -> dict:
    """``killed``: (last logged step, before the first checkpoint) of each kill."""
    failures = [f"final run exited {code}: {err[-500:]}"] if code else []
    if not failures:
        failures = _check(run, reference, max_segments, root)
    return {"kind": kind, "run": run.name, "killed_at": killed, "failures": failures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--random", type=int, default=6, help="random-kill trials")
    ap.add_argument("--save", type=int, default=4, help="kill-during-save trials")
    ap.add_argument("--race", type=int, default=4, help="concurrent --resume trials")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = args.out or Path(tempfile.mkdtemp(prefix="scigpt-trials-"))
    t0 = time.perf_counter()
    start = time.perf_counter()
    code, _, err = _finish(_start(root, "reference"))
    ref_s = time.perf_counter() - start
    if code:
        print(err[-3000:], file=sys.stderr)
        return 1
    reference = _train_records(root / "reference")
    assert [r[0] for r in reference] == list(range(1, STEPS + 1))
    print(f"reference: {ref_s:.1f} s for {STEPS} steps, in {root}", flush=True)
    span = [ref_s]
    results = []
    plan = ([("random", i) for i in range(args.random)] + [("save", i) for i in range(args.save)]
            + [("race", i) for i in range(args.race)])  # fmt: skip
    for kind, i in plan:
        name = f"{kind}-{i:03d}"
        t = time.perf_counter()
        if kind == "random":
            res = trial_random(root, name, rng, span, reference)
        elif kind == "save":
            res = trial_save(root, name, rng, reference)
        else:
            res = trial_race(root, name, rng, reference)
        res["seconds"] = time.perf_counter() - t
        results.append(res)
        status = "ok" if not res["failures"] else f"FAILED {res['failures']}"
        print(f"{name}: killed at {res['killed_at']} {status} ({res['seconds']:.0f} s)", flush=True)
        if not res["failures"]:
            shutil.rmtree(root / name, ignore_errors=True)
            for log in (root / "logs").glob(f"{name}.*"):
                log.unlink()
    rows = []
    for kind in ("random", "save", "race"):
        mine = [r for r in results if r["kind"] == kind]
        if not mine:
            continue
        kills = [k for r in mine for k in r["killed_at"]]
        rows.append({
            "trial": kind,
            "trials": len(mine),
            "passed": sum(not r["failures"] for r in mine),
            "interrupted": sum(bool(r["killed_at"]) for r in mine) if kind != "race" else 0,
            "kills": len(kills),
            "kills_before_first_checkpoint": sum(first for _, first in kills),
            "refused": sum(r.get("refused", 0) for r in mine),
            "seconds": sum(r["seconds"] for r in mine),
        })  # fmt: skip
    report(rows, [("trial", "trial", ""), ("trials", "trials", "d"), ("passed", "passed", "d"),
                  ("interrupted", "interrupted", "d"), ("kills", "kills", "d"),
                  ("kills_before_first_checkpoint", "before ckpt", "d"),
                  ("refused", "refused", "d"), ("seconds", "seconds", ".0f")],
           Path(__file__).parent / "results" / "resume_trials")  # fmt: skip
    failed = [r for r in results if r["failures"]]
    print(f"{len(results) - len(failed)}/{len(results)} trials passed in "
          f"{time.perf_counter() - t0:.0f} s (reference run {ref_s:.1f} s)")  # fmt: skip
    if not failed:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
