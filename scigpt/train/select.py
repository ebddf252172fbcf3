"""Model selection on the validation block (``scigpt demo --select``).

A config's ``selection:`` names a few candidate settings and the seeds, written down before any
result is seen. Every candidate trains at every seed (each run its own process and run
directory, sharing one ingested store; a rerun skips finished runs and resumes interrupted
ones). A run's score is its best validation ``eval.metric`` (the checkpoint the trainer keeps
as ``best``); the candidate with the lowest mean score over the seeds is chosen, the first
listed on a tie. The test block takes no part in the choice: the trainer scores it once per
run, at that run's best validation checkpoint, and only the chosen candidate's test scores are
reported — per seed, their spread, and per variable against persistence.

Outputs in the selection directory: ``selection.json`` (every number), ``selection.md`` (the
tables), ``runs/<candidate>-seed<S>/`` and ``logs/``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from tqdm import tqdm

from scigpt.atomic import atomic_write_text
from scigpt.config_loader import LoadedConfig, load_config
from scigpt.prepare import prepare_from_config
from scigpt.rundir import RunDir


def run_name(index: int, seed: int) -> str:
    return f"candidate{index}-seed{seed}"


def _setting(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _finished(run: Path) -> bool:
    path = RunDir(run).metrics_path
    if not path.is_file():
        return False
    return any(json.loads(line)["kind"] == "test" for line in path.read_text().splitlines())


def _train(config: Path, sets: list[str], name: str, out: Path, env: dict | None) -> None:
    cmd = [sys.executable, "-m", "scigpt", "train", str(config)]
    for s in sets:
        cmd += ["--set", s]
    cmd += ["--run-name", name, "--runs-dir", str(out / "runs"), "--resume"]
    log = out / "logs" / f"{name}.log"
    with log.open("a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-15:])
        raise RuntimeError(f"selection run {name} failed (exit {proc.returncode}); {log}:\n{tail}")


def _scores(run: Path, metric: str) -> dict[str, Any]:
    """A finished run's best validation score and its test scores (at that checkpoint)."""
    recs = RunDir(run).metrics()
    vals = [r for r in recs if r["kind"] == "val"]
    test = [r for r in recs if r["kind"] == "test"][-1]
    if not vals:
        raise ValueError(f"{run}: no validation record (eval.every larger than the run?)")
    best = min(vals, key=lambda r: r[metric])  # the first of equal scores, as the trainer keeps
    if test.get("checkpoint_step") != best["step"]:
        raise RuntimeError(
            f"{run}: the test scored step {test.get('checkpoint_step')}, but the best "
            f"validation step is {best['step']}"
        )
    with RunDir(run).test_table.open() as f:
        rows = [r for r in csv.DictReader(f) if r["variable"] != "mean"]
    return {
        "run": str(run),
        "best_step": best["step"],
        "val_score": best[metric],
        "val_gain": best["improvement_vs_persistence"],
        "val_samples": best["n_forecasts"],
        "train_samples": test["train_samples"],
        "test_samples": test["n_forecasts"],
        "test_gain": test["improvement_vs_persistence"],
        "test_rmse_model": test["rmse_model"],
        "test_rmse_persistence": test["rmse_persistence"],
        "variables": {
            r["variable"]: {
                "model": float(r["rmse_model"]),
                "persistence": float(r["rmse_persistence"]),
            }
            for r in rows
        },
    }


def select(
    config: Path,
    overrides: list[str],
    out: Path,
    *,
    env: dict | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the selection of ``config`` (with ``overrides``) in ``out``; returns the result
    (also written to ``out/selection.json`` and ``out/selection.md``)."""
    loaded = load_config(config, overrides)
    cfg = loaded.config
    sel = cfg.selection
    if not sel.candidates:
        raise ValueError(f"{config}: no selection.candidates to choose from")
    if not cfg.eval.every or cfg.data.splits.val is None:
        raise ValueError(
            "selection chooses on the validation block: set data.splits.val and eval.every"
        )
    if not sel.seeds:
        raise ValueError("selection.seeds is empty: give at least one seed")
    for cand in sel.candidates:  # every setting must be a valid config key
        load_config(config, [*overrides, *(f"{k}={json.dumps(v)}" for k, v in cand.items())])
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    prepare_from_config(loaded, out / "store", progress=progress)
    shared = [*overrides, f"data.store={json.dumps(str(out / 'store'))}", "logging.progress=false"]
    jobs = [(i, s) for i in range(len(sel.candidates)) for s in sel.seeds]
    for i, seed in tqdm(jobs, desc="selection runs", unit="run", disable=not progress):
        name = run_name(i, seed)
        if _finished(out / "runs" / name):
            continue
        sets = [f"{k}={json.dumps(v)}" for k, v in sel.candidates[i].items()]
        _train(config, [*shared, *sets, f"seed={seed}"], name, out, env)

    return choose(loaded, out, overrides=overrides, config=config)


def choose(
    loaded: LoadedConfig,
    out: Path,
    *,
    overrides: Sequence[str] = (),
    config: Path | None = None,
) -> dict[str, Any]:
    """The choice from the finished runs in ``out/runs`` (validation scores only), the chosen
    candidate's test scores, ``selection.json`` and ``selection.md``."""
    cfg = loaded.config
    sel = cfg.selection
    metric = cfg.eval.metric
    candidates = []
    for i, cand in enumerate(sel.candidates):
        runs = {s: _scores(out / "runs" / run_name(i, s), metric) for s in sel.seeds}
        candidates.append(
            {
                "index": i,
                "settings": cand,
                "runs": runs,
                "mean_val_score": mean(r["val_score"] for r in runs.values()),
            }
        )
    chosen = min(candidates, key=lambda c: c["mean_val_score"])  # first on a tie
    shipped = loaded.resolved_dict()
    differs = {
        k: _lookup(shipped, k) for k, v in chosen["settings"].items() if _lookup(shipped, k) != v
    }
    runs = chosen["runs"]
    first = next(iter(runs.values()))
    gains = [r["test_gain"] for r in runs.values()]
    result = {
        "config": str(config or loaded.path),
        "overrides": list(overrides),
        "metric": metric,
        "seeds": list(sel.seeds),
        "samples": {
            "train": first["train_samples"],
            "val": first["val_samples"],
            "test": first["test_samples"],
        },
        "candidates": [
            {
                **{k: c[k] for k in ("index", "settings", "mean_val_score")},
                "val_scores": {s: r["val_score"] for s, r in c["runs"].items()},
                "best_steps": {s: r["best_step"] for s, r in c["runs"].items()},
            }
            for c in candidates
        ],
        "chosen": chosen["index"],
        "chosen_settings": chosen["settings"],
        "config_differs": differs,  # the config's own values where they are not the choice
        "runs": runs,
        "test_gain": {"mean": mean(gains), "min": min(gains), "max": max(gains)},
    }
    atomic_write_text(out / "selection.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "selection.md", markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    """The selection's tables: candidates on validation, the chosen one's test gain per seed,
    and its per-variable test RMSE against persistence."""
    seeds = result["seeds"]
    n = result["samples"]
    metric = result["metric"]
    lines = [
        f"Samples: {n['train']} train, {n['val']} validation, {n['test']} test. "
        f"Chosen on validation `{metric}` (mean of the best checkpoint over seeds "
        f"{', '.join(map(str, seeds))}).",
        "",
        "| candidate | " + " | ".join(f"seed {s}: best val (step)" for s in seeds) + " | mean | |",
        "| --- | " + " | ".join("---:" for _ in seeds) + " | ---: | --- |",
    ]
    for c in result["candidates"]:
        cells = [f"{c['val_scores'][s]:.4f} ({c['best_steps'][s]})" for s in seeds]
        mark = "**chosen**" if c["index"] == result["chosen"] else ""
        lines.append(
            f"| {_setting(c['settings'])} | "
            + " | ".join(cells)
            + f" | {c['mean_val_score']:.4f} | {mark} |"
        )
    runs = result["runs"]
    lines += [
        "",
        f"Chosen ({_setting(result['chosen_settings'])}), each seed at its best validation "
        "checkpoint; gain = 1 − RMSE(model) / RMSE(persistence), latitude-weighted over "
        "normalised channels:",
        "",
        "| seed | best step | validation gain | test gain | variables better on test |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in seeds:
        r = runs[s]
        wins = sum(v["model"] < v["persistence"] for v in r["variables"].values())
        lines.append(
            f"| {s} | {r['best_step']} | {100 * r['val_gain']:+.1f} % | "
            f"{100 * r['test_gain']:+.1f} % | {wins} of {len(r['variables'])} |"
        )
    g = result["test_gain"]
    lines += [
        "",
        f"Test gain over {len(seeds)} seeds: mean {100 * g['mean']:+.1f} %, "
        f"range {100 * g['min']:+.1f} … {100 * g['max']:+.1f} %.",
        "",
        "Per variable, test RMSE (normalised units) and the change against persistence:",
        "",
        "| variable | persistence | " + " | ".join(f"seed {s}" for s in seeds) + " | better in |",
        "| --- | ---: | " + " | ".join("---:" for _ in seeds) + " | ---: |",
    ]
    for var in runs[seeds[0]]["variables"]:
        per = [runs[s]["variables"][var] for s in seeds]
        cells = [f"{v['model']:.4f} ({100 * (1 - v['model'] / v['persistence']):+.0f} %)"
                 for v in per]  # fmt: skip
        wins = sum(v["model"] < v["persistence"] for v in per)
        lines.append(
            f"| {var} | {per[0]['persistence']:.4f} | "
            + " | ".join(cells)
            + f" | {wins} of {len(seeds)} |"
        )
    if result["config_differs"]:
        lines += [
            "",
            f"Note: the config sets {_setting(result['config_differs'])}, not the chosen "
            f"{_setting(result['chosen_settings'])}.",
        ]
    return "\n".join(lines) + "\n"
