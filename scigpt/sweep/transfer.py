"""``scigpt transfer TRANSFER.yaml``: does pretraining pay off downstream?

Pretrain once on a mixture, export the package, then train a held-out downstream task at
several data sizes (``data.train_fraction``) and seeds twice — fine-tuned from the package and
from scratch with the same model, steps, optimiser and data — and plot test error against
downstream training samples for both, with the seed spread (the shape of Subramanian et al.
2023, Fig. 1).

```yaml
name: tiny-pde
pretrain:
  config: runs/transfer-pretrain.yaml    # relative to this file, or a shipped config
  set: {schedule.steps: 300}             # overrides (optional)
downstream:
  config: runs/transfer-helmholtz.yaml
  set: {}
  fractions: [0.05, 0.25, 1.0]           # data.train_fraction per size
  seeds: [0, 1, 2]                       # >= 3: the spread is part of the answer
  finetune_mode: full                    # full | frozen | lora
metric: rmse_model                       # the test record's metric (lower is better)
```

Each run is a subprocess (a crash fails one point) with a status file, so a rerun continues;
the downstream store is ingested once and shared. Outputs in the experiment folder:
``points.csv``, ``summary.csv``, ``report.md`` (per size: means, spreads, and whether the
pretrained arm is better by more than the seed spread) and ``transfer.png``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from scigpt.atomic import atomic_write_text
from scigpt.rundir import RunDir
from scigpt.safe_yaml import load_yaml_file
from scigpt.sweep.runner import _tail, read_status, write_status
from scigpt.sweep.spec import config_beside, load_spec
from scigpt.tables import Table

ARMS = ("pretrained", "scratch")


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str
    set: dict[str, Any] = {}


class _Downstream(_Stage):
    fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=3)
    finetune_mode: Literal["full", "frozen", "lora"] = "full"


class TransferSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    pretrain: _Stage
    downstream: _Downstream
    metric: str = "rmse_model"


class Transfer:
    def __init__(self, spec: TransferSpec, path: Path) -> None:
        self.spec, self.path = spec, path

    @classmethod
    def load(cls, path: str | Path) -> Transfer:
        """A transfer file by path, or a shipped one (``transfers/tiny-pde.yaml``)."""
        return cls(*load_spec(path, TransferSpec, "transfer"))

    def config_path(self, rel: str) -> Path:
        return config_beside(self.path, rel)


def _sets(overrides: dict[str, Any]) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    return out


def point_name(arm: str, fraction: float, seed: int) -> str:
    return f"{arm}-f{fraction:g}-s{seed}"


def _run(out: Path, name: str, cmd: list[str], env: dict | None) -> bool:
    """One subprocess with its log and status file; skipped when already done."""
    if read_status(out, name)["state"] == "done":
        return True
    attempts = read_status(out, name)["attempts"] + 1
    write_status(out, name, state="running", attempts=attempts)
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode == 0:
        write_status(out, name, state="done", error=None)
        return True
    write_status(out, name, state="failed", exit_code=proc.returncode,
                 error=_tail(log.read_text()))  # fmt: skip
    return False


def run(transfer: Transfer, out: Path, *, env: dict | None = None) -> dict[str, Any]:
    """Run (or continue) the experiment in ``out``; returns the report's files and verdicts."""
    s = transfer.spec
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "transfer.yaml", transfer.path.read_text())
    runs = out / "runs"
    quiet = ["--set", "logging.progress=false"]
    py = [sys.executable, "-m", "scigpt"]
    pre_cfg = transfer.config_path(s.pretrain.config)
    down_cfg = transfer.config_path(s.downstream.config)
    pretrain = [*py, "train", str(pre_cfg), "--runs-dir", str(runs), "--run-name", "pretrain",
                "--resume", *quiet, *_sets(s.pretrain.set)]  # fmt: skip
    if not _run(out, "pretrain", pretrain, env):
        raise RuntimeError(f"pretraining failed: {read_status(out, 'pretrain')['error']}")
    pkg = out / "package"
    if not _run(out, "export",
                [*py, "export", str(runs / "pretrain"), str(pkg), "--force"], env):  # fmt: skip
        raise RuntimeError(f"export failed: {read_status(out, 'export')['error']}")
    model = json.loads((pkg / "config.json").read_text())["model"]
    common = [str(down_cfg), "--runs-dir", str(runs), *quiet, *_sets(s.downstream.set),
              "--set", f"data.store={json.dumps(str(out / 'store'))}"]  # fmt: skip
    points = [(arm, f, seed) for f in s.downstream.fractions for seed in s.downstream.seeds
              for arm in ARMS]  # fmt: skip
    for arm, f, seed in tqdm(points, desc=f"transfer {s.name}", unit="run"):
        name = point_name(arm, f, seed)
        per = [
            "--run-name",
            name,
            "--resume",
            "--set",
            f"seed={seed}",
            "--set",
            f"data.train_fraction={f}",
        ]
        if arm == "pretrained":
            cmd = [*py, "finetune", str(pkg), *common, *per,
                   "--set", f"finetune.mode={s.downstream.finetune_mode}"]  # fmt: skip
        else:  # the package's architecture, trained from its own initialisation
            cmd = [*py, "train", *common, *per, "--set", f"model={json.dumps(model)}"]
        _run(out, name, cmd, env)
    return report(out, s.metric)


# --- collecting and reporting -----------------------------------------------------------------


def collect(out: Path, metric: str) -> list[dict[str, Any]]:
    spec = TransferSpec.model_validate(load_yaml_file(out / "transfer.yaml", "transfer"))
    rows = []
    for f in spec.downstream.fractions:
        for seed in spec.downstream.seeds:
            for arm in ARMS:
                name = point_name(arm, f, seed)
                if read_status(out, name)["state"] != "done":
                    continue
                recs = RunDir(out / "runs" / name).metrics()
                test = [r for r in recs if r["kind"] == "test"][-1]
                if metric not in test:
                    raise ValueError(f"metric {metric!r} is not in {name}'s test record")
                rows.append({"arm": arm, "fraction": f, "seed": seed,
                             "train_samples": test["train_samples"],
                             metric: test[metric]})  # fmt: skip
    return rows


def summarise(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per (fraction, arm): mean, std (ddof 1), min, max over seeds."""
    out = []
    keys = sorted({(r["fraction"], r["arm"]) for r in rows})
    for f, arm in keys:
        vals = [r[metric] for r in rows if r["fraction"] == f and r["arm"] == arm]
        n = len(vals)
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
        samples = next(r["train_samples"] for r in rows if r["fraction"] == f)
        out.append({"fraction": f, "train_samples": samples, "arm": arm, "n_seeds": n,
                    "mean": mean, "std": std, "min": min(vals), "max": max(vals)})  # fmt: skip
    return out


def verdicts(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: margin = mean(scratch) − mean(pretrained); spread = the larger min–max range
    of the two arms over seeds; pretraining helps *beyond the seed spread* when margin > spread."""
    out = []
    for f in sorted({r["fraction"] for r in summary}):
        arms = {r["arm"]: r for r in summary if r["fraction"] == f}
        if set(arms) != set(ARMS):
            continue
        p, s = arms["pretrained"], arms["scratch"]
        margin = s["mean"] - p["mean"]
        spread = max(p["max"] - p["min"], s["max"] - s["min"])
        out.append({"fraction": f, "train_samples": p["train_samples"], "margin": margin,
                    "spread": spread, "beyond_spread": margin > spread,
                    "relative_gain": margin / s["mean"] if s["mean"] else math.nan})  # fmt: skip
    return out


def _csv(rows: list[dict[str, Any]]) -> str:
    return Table.of(rows).csv() if rows else ""


def report(out: Path, metric: str) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = (load_yaml_file(out / "transfer.yaml", "transfer") or {}).get("name", out.name)
    rows = collect(out, metric)
    if not rows:
        raise RuntimeError(f"{out}: no finished downstream runs to report")
    summary = summarise(rows, metric)
    verdict = verdicts(summary)
    files = {"points_csv": out / "points.csv", "summary_csv": out / "summary.csv",
             "report_md": out / "report.md", "plot": out / "transfer.png"}  # fmt: skip
    atomic_write_text(files["points_csv"], _csv(rows))
    atomic_write_text(files["summary_csv"], _csv(summary))
    md = [
        f"# Transfer experiment: {name}",
        "",
        f"Test {metric} (lower is better) of the downstream task, fine-tuned from the pretrained "
        "package vs trained from scratch with the same model, steps and optimiser; mean over "
        "seeds, spread = min–max.",
        "",
        "| fraction | train samples | pretrained mean | pretrained spread | scratch mean | "
        "scratch spread | margin | beyond seed spread |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in verdict:
        p = next(r for r in summary if r["fraction"] == v["fraction"] and r["arm"] == "pretrained")
        s = next(r for r in summary if r["fraction"] == v["fraction"] and r["arm"] == "scratch")
        md.append(
            f"| {v['fraction']:g} | {v['train_samples']} | {p['mean']:.4f} | "
            f"{p['max'] - p['min']:.4f} | {s['mean']:.4f} | {s['max'] - s['min']:.4f} | "
            f"{v['margin']:+.4f} ({100 * v['relative_gain']:+.1f}%) | "
            f"{'yes' if v['beyond_spread'] else 'no'} |"
        )
    atomic_write_text(files["report_md"], "\n".join(md) + "\n")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for arm, colour in zip(ARMS, ("tab:blue", "tab:orange"), strict=True):
        sub = [r for r in summary if r["arm"] == arm]
        x = [r["train_samples"] for r in sub]
        ax.plot(x, [r["mean"] for r in sub], "o-", color=colour, label=arm)
        ax.fill_between(x, [r["min"] for r in sub], [r["max"] for r in sub], color=colour,
                        alpha=0.25, linewidth=0)  # fmt: skip
        pts = [r for r in rows if r["arm"] == arm]
        ax.scatter([r["train_samples"] for r in pts], [r[metric] for r in pts], s=10,
                   color=colour, alpha=0.7)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("downstream training samples")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{name}: pretrained vs scratch (band: seed min–max)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(files["plot"], dpi=120)
    plt.close(fig)
    return {"files": files, "summary": summary, "verdicts": verdict}
