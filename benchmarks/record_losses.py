"""Record per-step training curves of a few real runs, for a bitwise before/after comparison.

Not a speed benchmark: the check that a refactor keeps every number. Record on the old commit's
checkout and on the new one, then compare (issue 21: 7c1cec6 vs the redesigned upper half, all
IDENTICAL, docs/DESIGN_NOTES.md):

Usage: record_losses.py WORKTREE OUT_DIR [--only NAME ...]
       record_losses.py --compare BASE_DIR AFTER_DIR

Runs (each `python -m scigpt demo` from WORKTREE's .venv, CPU, gloo):
  demo      the demo config, one process, 12 steps (eval.every 10 → one validation, best ckpt)
  one       one process, micro-batch 18, 10 steps, grad_clip 0.02 (the layout tests' reference)
  z1        dp2 ZeRO-1, micro-batch 9
  tp2       tensor parallel 2, micro-batch 18
  pp2       pipeline 2, micro-batch 9 x accumulation 2
Writes OUT_DIR/NAME.json: every metrics.jsonl record minus wall-clock fields (per-step loss,
grad_norm, lr, validation and test summaries).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

TIMING = {
    "samples_per_s",
    "tokens_per_s",
    "tflops_per_device",
    "mfu",
    "mem_gb",
    "time",
    "device_hours",
    "wall_s",
    "t",
}
DP = [
    "--set",
    "logging.progress=false",
    "--set",
    "logging.every=1",
    "--set",
    "schedule.warmup_steps=5",
    "--set",
    "optim.grad_clip=0.02",
]
MB18 = ["--set", "schedule.micro_batch_size=18"]
MB9 = ["--set", "schedule.micro_batch_size=9"]
RUNS = {
    "demo": (
        1,
        12,
        [
            "--set",
            "logging.progress=false",
            "--set",
            "logging.every=1",
            "--set",
            "schedule.warmup_steps=4",
            "--set",
            "eval.every=5",
        ],
    ),
    "one": (1, 10, [*DP, *MB18]),
    "z1": (2, 10, [*DP, "--set", "parallel.zero_stage=1", *MB9]),
    "tp2": (2, 10, [*DP, "--set", "parallel.tp=2", *MB18]),
    "pp2": (2, 10, [*DP, "--set", "parallel.pp=2", *MB9, "--set", "schedule.grad_accum=2"]),
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record(wt: Path, out: Path, only: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    py = str(wt / ".venv" / "bin" / "python")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    }
    env.update(
        OMP_NUM_THREADS="1",
        TORCH_EXTENSIONS_DIR=env.get("TORCH_EXTENSIONS_DIR", "/tmp/h21a_torch_ext"),
    )
    for name, (nproc, steps, extra) in RUNS.items():
        if only and name not in only:
            continue
        root = Path(tempfile.mkdtemp(prefix=f"rec_{name}_"))
        cmd = [
            py,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(_port()),
            "-m",
            "scigpt",
            "demo",
            "--steps",
            str(steps),
            "--runs-dir",
            str(root),
            "--run-name",
            name,
            *extra,
        ]
        p = subprocess.run(cmd, cwd=wt, env=env, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            sys.exit(f"{name} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
        recs = []
        for line in (root / name / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            recs.append({k: v for k, v in r.items() if k not in TIMING})
        (out / f"{name}.json").write_text(json.dumps(recs, indent=1) + "\n")
        print(name, "ok", len(recs), "records", root, flush=True)


def compare(a: Path, b: Path) -> int:
    bad = 0
    for fa in sorted(a.glob("*.json")):
        fb = b / fa.name
        if not fb.is_file():
            print(f"{fa.stem}: missing in {b}")
            bad += 1
            continue
        ra, rb = json.loads(fa.read_text()), json.loads(fb.read_text())
        same = ra == rb  # floats parsed from repr: equal iff bitwise equal
        n = sum(r.get("kind") == "train" for r in ra)
        print(f"{fa.stem}: {'IDENTICAL' if same else 'DIFFERENT'} ({len(ra)} records, {n} steps)")
        if not same:
            bad += 1
            for x, y in zip(ra, rb, strict=False):
                if x != y:
                    print("  first difference:", x, "\n                   ", y)
                    break
    return bad


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    only = sys.argv[4:] if len(sys.argv) > 3 and sys.argv[3] == "--only" else []
    record(Path(sys.argv[1]), Path(sys.argv[2]), only)
