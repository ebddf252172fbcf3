"""``scigpt ensemble CONFIG --members N``: train N members that differ in seed (initialisation
and data order: ``seed`` drives both), or fine-tune N members from one package (``--from``),
then package them as one ensemble package (``scigpt.export.ensemble``).

An ensemble is a sweep with one axis, ``seed`` (``scigpt.sweep.spec``): the members run through
``scigpt.sweep.runner`` — locally one after another, or as a Slurm job array — with its status
files, so a rerun trains only what did not finish, continues a member stopped mid-run from its
last checkpoint and retries failed ones; the data store is ingested once and shared. The folder
(default ``$SCIGPT_RUNS/ensembles/<name>``)::

    sweep.yaml, points.json, status/, runs/<member>/, logs/, store/   the sweep's (runner.py)
    packages/<member>/     each member exported (``scigpt export``)
    ensemble/              the ensemble package (members with checksums)
    evaluate/              with ``--evaluate CONFIG``: the probabilistic scores, with and
                           without ProbConserve (``scigpt.eval.ensemble``)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from scigpt.atomic import atomic_write_text
from scigpt.config_loader import find_config
from scigpt.export.ensemble import write_ensemble
from scigpt.export.writer import export_run
from scigpt.rundir import check_run_name
from scigpt.sweep import runner
from scigpt.sweep.spec import Point, Sweep

__all__ = ["bundle", "ensemble_sweep", "run"]


def ensemble_sweep(
    config: str | Path,
    members: int,
    out: Path,
    *,
    name: str | None = None,
    seed0: int = 0,
    overrides: dict[str, Any] | None = None,
    from_package: str | Path | None = None,
    slurm: dict[str, Any] | None = None,
) -> Sweep:
    """The sweep of an ensemble: the run config ``config`` (a path or a shipped one) with
    ``overrides``, one point per seed ``seed0 .. seed0 + members − 1``; with ``from_package``
    every member fine-tunes that package (``finetune.package``). Written to ``out/sweep.yaml``."""
    if members < 2:
        raise ValueError(f"--members {members}: an ensemble needs 2 or more members")
    base = Path(find_config(config)).resolve()
    if not base.is_file():
        raise FileNotFoundError(f"run config {config} not found (a path or a shipped config)")
    sets = dict(overrides or {})
    if "seed" in sets:
        raise ValueError("the members' seeds are the ensemble's axis: do not --set seed")
    if from_package is not None:
        pkg = Path(from_package).resolve()
        if not (pkg / "format.json").is_file():
            raise FileNotFoundError(f"--from {from_package}: not a model package (format.json)")
        sets["finetune.package"] = str(pkg)
    raw = {
        "name": check_run_name(name or base.stem),
        "base": str(base),
        "set": sets,
        "design": "grid",
        "axes": {"seed": list(range(seed0, seed0 + members))},
        "metric": "rmse_model",
        "max_points": members,
        "slurm": slurm or {},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.yaml", yaml.safe_dump(raw, sort_keys=False))
    return Sweep.load(out / "sweep.yaml")


def bundle(sweep: Sweep, out: Path, points: list[Point]) -> Path:
    """Export every finished member (once: an existing package is kept) and write the ensemble
    package ``out/ensemble``. Refused while a member has not finished."""
    names = [p.name for p in points]
    pending = [n for n in names if runner.read_status(out, n)["state"] != "done"]
    if pending:
        raise RuntimeError(
            f"members {pending} have not finished (see {out / 'status'}); rerun the ensemble "
            "command to train them, then package"
        )
    pkgs = []
    for n in names:
        pkg = out / "packages" / n
        if not pkg.is_dir():
            export_run(out / "runs" / n, pkg, diagnostics=False)
        pkgs.append(pkg)
    return write_ensemble(pkgs, out / "ensemble", names=names, force=True)


def run(
    sweep: Sweep,
    out: Path,
    *,
    slurm: bool = False,
    cluster: str | None = None,
    env: dict | None = None,
) -> dict[str, Any]:
    """Train (or continue) the members and package them. With ``slurm`` the members are
    submitted as a job array and nothing is packaged yet (rerun without ``--slurm`` when they
    have finished: finished members are not rerun). Returns the summary."""
    points = runner.plan(sweep, out)
    todo = runner.todo(sweep, out, points)
    if slurm:
        ids = runner.submit_arrays(sweep, out, todo, cluster=cluster, env=env) if todo else []
        return {"points": points, "todo": todo, "job_ids": ids, "package": None, "failed": []}
    runner.run_local(sweep, out, todo, env=env)
    done, failed = runner.summary(sweep, out, points)
    package = bundle(sweep, out, points) if not failed and done == len(points) else None
    if package is not None:
        atomic_write_text(out / "members.json", json.dumps([p.name for p in points]) + "\n")
    return {"points": points, "todo": todo, "job_ids": [], "package": package, "failed": failed}
