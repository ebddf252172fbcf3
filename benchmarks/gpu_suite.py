"""The GPU suite: one offline, time-boxed run of every GPU check, most valuable figures first.

Made for a rare, short lease of one GPU with no network (15 minutes including start-up, room
for one rerun), so the whole run fits ``--budget-s`` (default 360 s) and each stage has its own
budget. Stages, in order:

  install         the wheelhouse (``make gpu-wheelhouse``, carried with the tree) into the
                  image's Python with ``pip --no-index``; then every import the suite needs.
                  A failure here stops the suite with a one-line reason.
  kernel_numerics compiled numerics of both Triton kernels against their references, bf16
                  included, one autotune config per kernel (``SCIGPT_KERNEL_CONFIGS=first``)
  kernel_bench    benchmarks/kernels.py: attention vs SDPA flash/cuDNN, patch embedding vs
                  torch.compile (CUDA-event timing, full autotuning)
  train_step      benchmarks/train_step.py: vit-300m plain PyTorch (same precision scheme) vs
                  SciGPT's ZeRO-1 with torch.compile first, then ZeRO-3, activation
                  checkpointing and vit-1b while the stage's budget lasts
  mfu             benchmarks/model_flops.py --gpu: MFU of the presets that fit one GPU with
                  AdamW, budget permitting

A failed or timed-out stage is recorded and the next one runs. Every stage writes its results
(JSON/CSV, JUnit XML for tests, logs) into ``--out`` as it finishes, and ``suite.json`` is
rewritten after each stage (status, exit code, seconds, budget, files); ``--pack FILE``
also keeps one tarball of ``--out`` current after each stage (for a machine that returns only a
few files). A stage is stopped with SIGINT at its budget (pytest then still writes its summary
and JUnit XML), and killed 15 s later.

``--rehearsal`` runs the same control flow on a CPU machine: a fresh venv holding only the
image's packages (``benchmarks/gpu_image.txt``, linked from this venv), the same install from
the wheelhouse with no index, the same imports, stage order and result files, on tiny shapes.

    bash benchmarks/gpu_suite.sh --out /tmp/gpu --pack "$OUT/gpu_suite.tar.gz"   # on the GPU
    bash benchmarks/gpu_suite.sh --rehearsal --out /tmp/rehearsal                 # CPU, CI

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_wheelhouse import canonical, image_packages, source_hash  # noqa: E402

# What must import after the install (the modules each stage uses).
IMPORTS = (
    "torch", "triton", "deepspeed", "pydantic", "hjson", "yaml", "pytest", "scigpt.config",
    "scigpt.kernels.flash_attention", "scigpt.kernels.patch_embed", "scigpt.launch.distributed",
    "scigpt.models.build", "scigpt.parallel.engine", "scigpt.parallel.checkpointing",
    "scigpt.train.metrics",
)  # fmt: skip
KERNEL_TESTS = ["tests/test_kernels_attention.py", "tests/test_kernels_patch_embed.py"]
TRAIN_CONFIGS = [
    "vit-300m:plain-bf16", "vit-300m:zero1", "vit-300m:plain", "vit-300m:zero3",
    "vit-300m:zero1-ac", "vit-1b:plain-bf16", "vit-1b:zero1",
]  # fmt: skip


@dataclass
class Stage:
    name: str
    budget_s: float  # GPU budget; the rehearsal uses its own
    rehearsal_budget_s: float
    commands: list[list[str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def _stages(py: str, out: Path, rehearsal: bool) -> list[Stage]:
    bench = str(ROOT / "benchmarks")
    junit = [f"--junitxml={out / 'kernel_tests.xml'}", "-o", "junit_family=xunit2"]
    if rehearsal:  # the interpreter: tiny cases, fp32/fp16 only (its bf16 dot is broken)
        select = ["-k", "(match_reference and float32 and 1x2x37x64 and full) or "
                  "(fused_matches_module and float32)", "-n", "2"]  # fmt: skip
    else:
        select = ["-k", "not every_config", "-n", "8"]
    tests = [str(ROOT / t) for t in KERNEL_TESTS]
    config = ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT)]
    numerics = [
        py,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *config,
        *tests,
        *select,
        *junit,
    ]
    kbench = [py, f"{bench}/kernels.py", "--out-dir", str(out)]
    train = [py, f"{bench}/train_step.py", "--out", str(out / "train_step"), "--configs",
             *TRAIN_CONFIGS]  # fmt: skip
    mfu = [py, f"{bench}/model_flops.py", "--no-check", "--presets", "vit-tiny",
           "--out", str(out / "model_flops")]  # fmt: skip
    if rehearsal:
        kbench.append("--cpu-smoke")
        # the comparison the bar needs (same precision scheme) and the precision scheme's cost
        train = [*train[: train.index("--configs") + 1], *TRAIN_CONFIGS[:3]]
        train += ["--cpu-smoke", "--budget-s", "60"]
        mfu += ["--cpu-step", "--no-compile", "--gpu-presets", "vit-tiny", "--gpu-vars", "4"]
        mfu += ["--gpu-grid", "16", "16", "--gpu-batch", "1", "--steps", "1", "--warmup", "0"]
    else:
        train += ["--budget-s", "60"]  # no configuration starts after 60 s of the stage
        mfu += ["--gpu", "--no-eager", "--gpu-presets", "vit-300m", "vit-1b", "vit-3b"]
    return [
        Stage("kernel_numerics", 95, 150, [numerics], {"SCIGPT_KERNEL_CONFIGS": "first"}),
        # Cold Triton/Inductor caches: attention autotuning plus four compiles of the
        # patch-embedding reference took ~150 s on an H200 (2026-12-04).
        Stage("kernel_bench", 150, 120, [kbench]),
        Stage("train_step", 120, 240, [train]),
        Stage("mfu", 120, 120, [mfu]),
    ]


class Suite:
    def __init__(self, out: Path, budget_s: float, pack: Path | None, rehearsal: bool):
        self.out, self.budget_s, self.pack, self.rehearsal = out, budget_s, pack, rehearsal
        self.t0 = time.monotonic()
        self.record: dict = {
            "mode": "rehearsal (CPU, tiny shapes)" if rehearsal else "gpu",
            "budget_s": budget_s,
            "stages": {},
        }
        out.mkdir(parents=True, exist_ok=True)
        # Commands run from a folder that holds only a link to tests/: `python -m pytest` puts
        # its working directory first on sys.path, and the repository root there would shadow
        # the installed package with the source folder scigpt/, which lacks scigpt.kernels and
        # scigpt.launch (they exist only through the package-dir mapping of the installed wheel).
        self.cwd = out.parent / f".{out.name}-cwd"
        self.cwd.mkdir(exist_ok=True)
        if not (self.cwd / "tests").exists():
            (self.cwd / "tests").symlink_to(ROOT / "tests")

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def save(self) -> None:
        self.record["wall_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out / "suite.json.tmp"
        tmp.write_text(json.dumps(self.record, indent=2) + "\n")
        tmp.replace(self.out / "suite.json")
        if self.pack is not None:
            self.pack.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.pack.with_name(self.pack.name + ".tmp")
            with tarfile.open(tmp, "w:gz") as tar:
                tar.add(self.out, arcname=self.out.name)
            tmp.replace(self.pack)

    def run(self, name: str, cmd: list[str], budget: float, env: dict) -> dict:
        """One command under ``budget`` seconds: SIGINT at the budget, SIGKILL 15 s later."""
        log = self.out / f"{name}.log"
        t = time.monotonic()
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
                start_new_session=True,
            )  # fmt: skip
            status = "ok"
            try:
                rc = proc.wait(timeout=max(budget, 1))
            except subprocess.TimeoutExpired:
                status = "timeout"
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    rc = proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait()
        if status == "ok" and rc != 0:
            status = "failed"
        return {"status": status, "rc": rc, "wall_s": round(time.monotonic() - t, 1)}

    def stage(self, st: Stage, py_env: dict) -> None:
        budget = st.rehearsal_budget_s if self.rehearsal else st.budget_s
        budget = min(budget, self.left())
        entry: dict = {"budget_s": round(budget, 1)}
        if budget < 20:
            entry.update(status="skipped", reason=f"{self.left():.0f} s of the suite's budget left")
        else:
            before = set(self.out.iterdir())
            env = {**py_env, **st.env}
            for cmd in st.commands:
                entry.update(self.run(st.name, cmd, budget, env))
                if entry["status"] != "ok":
                    break
            entry["files"] = sorted(p.name for p in set(self.out.iterdir()) - before)
        self.record["stages"][st.name] = entry
        print(f"[{time.monotonic() - self.t0:6.1f} s] {st.name}: {entry['status']}"
              + (f" ({entry.get('reason') or entry.get('rc')})" if entry["status"] != "ok" else "")
              + f" — {entry.get('wall_s', 0)} s of {entry['budget_s']} s", flush=True)  # fmt: skip
        self.save()


# ------------------------------------------------------------------------------------ install


def _rehearsal_venv(work: Path) -> str:
    """A fresh venv that holds exactly the image's packages (linked from this venv, so nothing
    is downloaded) and nothing else; returns its python."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    image_site = work / "image-site"
    image_site.mkdir()
    have = image_packages()
    linked = []
    for dist in md.distributions():
        name = canonical(dist.metadata["Name"])
        if name not in have:
            continue
        tops = {
            f.parts[0]
            for f in dist.files or []
            if f.parts and ".." not in f.parts and not f.parts[0].endswith(".pth")
        }
        base = Path(dist.locate_file(""))
        for top in tops:
            src, dst = base / top, image_site / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
        linked.append(name)
    # A path line in a .pth only extends sys.path: the image's own .pth hooks are not run.
    Path(site, "image.pth").write_text(f"{image_site}\n")
    (work / "image_linked.txt").write_text("\n".join(sorted(linked)) + "\n")
    return str(py)


def install(suite: Suite, wheelhouse: Path, py: str, env: dict) -> str | None:
    """Install from the wheelhouse with no index, then import everything; None or the reason."""
    info_path = wheelhouse / "BUILD_INFO.json"
    if not info_path.is_file():
        return f"no wheelhouse at {wheelhouse}: run `make gpu-wheelhouse` and carry {wheelhouse}"
    info = json.loads(info_path.read_text())
    stale = info["source_sha256"] != source_hash()
    suite.record["wheelhouse"] = {"path": str(wheelhouse), "pins": info["pins"], "stale": stale}
    if stale:
        return (
            f"{wheelhouse} was built from other sources than this tree: rerun "
            "`make gpu-wheelhouse` before carrying it"
        )
    reqs = [f"{n}=={v}" for n, v in info["pins"].items()]
    project = sorted(wheelhouse.glob("scigpt-*.whl"))
    pip = [py, "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse),
           "--disable-pip-version-check", "--no-input"]  # fmt: skip
    if suite.rehearsal:  # the venv has no pip of its own: drive it from this one
        pip = [sys.executable, "-m", "pip", "--python", py, *pip[3:]]
    steps = [
        ("install", [*pip, *reqs], 120),
        ("install", [*pip, "--no-deps", "--force-reinstall", str(project[-1])], 60),
        ("install", [py, "-c", "import importlib, sys\n"
                     "for m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('imports ok')",
                     *IMPORTS], 120),
    ]  # fmt: skip
    # Only the wheelhouse: no pip configuration (index URLs, find-links) of the machine counts.
    env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")
    for name, cmd, budget in steps:
        res = suite.run(name, cmd, min(budget, suite.left()), env)
        if res["status"] != "ok":
            tail = (suite.out / "install.log").read_text().strip().splitlines()[-1:]
            return f"{' '.join(cmd[:6])} … {res['status']} (rc {res['rc']}): {tail}"
    freeze = [*pip[: pip.index("install")], "freeze"]
    proc = subprocess.run(freeze, capture_output=True, text=True, env=env)
    (suite.out / "pip_freeze.txt").write_text(proc.stdout)  # the image's list, for gpu_image.txt
    return None


def environment(py: str, env: dict, cwd: Path) -> dict:
    code = (
        "import json, platform, torch, triton, deepspeed\n"
        "d = {'python': platform.python_version(), 'torch': torch.__version__,\n"
        "     'cuda': torch.version.cuda, 'triton': triton.__version__,\n"
        "     'deepspeed': deepspeed.__version__, 'gpu': None}\n"
        "if torch.cuda.is_available():\n"
        "    p = torch.cuda.get_device_properties(0)\n"
        "    d['gpu'] = {'name': p.name, 'memory_gb': round(p.total_memory / 1e9, 1),\n"
        "                'sms': p.multi_processor_count, 'capability': [p.major, p.minor]}\n"
        "print(json.dumps(d))\n"
    )
    proc = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_suite_out")))
    ap.add_argument("--pack", type=Path, help="also keep a tarball of --out current")
    ap.add_argument("--wheelhouse", type=Path, default=ROOT / ".whl" / "gpu")
    ap.add_argument("--budget-s", type=float, help="whole suite (default 360 GPU, 600 rehearsal)")
    ap.add_argument("--rehearsal", action="store_true", help="CPU run of the control flow")
    ap.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages")
    args = ap.parse_args(argv)
    budget = args.budget_s or (600.0 if args.rehearsal else 360.0)
    out = args.out.resolve()
    suite = Suite(out, budget, args.pack, args.rehearsal)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(out.parent / "torch_extensions"))
    env.setdefault("OMP_NUM_THREADS", "1" if args.rehearsal else "8")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if args.rehearsal:
        env["TRITON_INTERPRET"] = "1"  # tests/conftest.py does the same without CUDA
        env["DS_ACCELERATOR"] = "cpu"
        py = _rehearsal_venv(out)
    else:
        py = os.environ.get("SCIGPT_GPU_PYTHON", "python3")
    env.pop("PYTHONPATH", None)  # scigpt must come from the installed wheel
    suite.record["python"] = py
    print(f"GPU suite ({suite.record['mode']}): budget {budget:.0f} s, results in {out}",
          flush=True)  # fmt: skip
    t = time.monotonic()
    why = install(suite, args.wheelhouse.resolve(), py, env)
    suite.record["stages"]["install"] = {
        "status": "failed" if why else "ok",
        "wall_s": round(time.monotonic() - t, 1),
        **({"reason": why} if why else {}),
    }
    if why:
        suite.save()
        print(f"GPU suite stopped: install failed: {why}", flush=True)
        return 3
    suite.record["environment"] = environment(py, env, suite.cwd)
    print(f"[{time.monotonic() - suite.t0:6.1f} s] install: ok — {suite.record['environment']}",
          flush=True)  # fmt: skip
    suite.save()
    for st in _stages(py, out, args.rehearsal):
        if args.only and st.name not in args.only:
            continue
        suite.stage(st, env)
    failed = [n for n, s in suite.record["stages"].items() if s["status"] not in ("ok", "skipped")]
    verdict = f"not ok: {', '.join(failed)}" if failed else "every stage ok"
    print(f"GPU suite done in {time.monotonic() - suite.t0:.0f} s; {verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
