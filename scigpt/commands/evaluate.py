"""``scigpt evaluate PACKAGE_OR_RUN CONFIG``: score a model on a config's data and write tables,
plots and the model card's evaluation section.

A run directory is evaluated at its latest checkpoint (consolidated through ``scigpt export``
into a temporary package) and its outputs go to ``RUN/eval/evaluate`` (``RunDir.evaluate_dir``),
where a later ``scigpt export`` finds them for the card. A package is evaluated as it is, and
its MODEL_CARD.md (and checksum list) is updated in place unless ``card=False``; a signed
package's card is left as it is (a change would break its signature). The scoring itself is
``scigpt.eval.run.score_model``; the card section is ``scigpt.export.card``'s.

``scigpt evaluate PACKAGE_OR_RUN --convergence [--levels 16,32,64,128]`` runs the resolution-
convergence test (``scigpt.eval.convergence``) on an operator-task PDE model instead: the test
cases of its PDE source regenerated at each grid, scored against the continuous solution, and
writes convergence.json/.csv/.png to the same folder. CONFIG is optional there (default: the
model's own run config).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from scigpt.atomic import atomic_write_text
from scigpt.commands import EXIT_OK
from scigpt.config_loader import LoadedConfig, load_config
from scigpt.eval.convergence import write_study
from scigpt.eval.convergence_cases import cases_from_config, package_predictor, pde_study
from scigpt.eval.downscale import check_downscale, score_downscale, superres_table
from scigpt.eval.ensemble import evaluate_ensemble_package
from scigpt.eval.run import check_forecaster, score_model
from scigpt.eval.series_eval import print_series_scores, score_series
from scigpt.export.card import evaluation_markdown, update_package_card
from scigpt.export.ensemble import is_ensemble
from scigpt.export.errors import PackageError
from scigpt.export.loader import load_pretrained
from scigpt.export.signing import is_signed
from scigpt.export.verify import CARD, FORMAT
from scigpt.export.writer import export_run
from scigpt.prepare import IngestRejected, prepare_from_config
from scigpt.rundir import RunDir


def print_ensemble_scores(rows: list[dict[str, Any]], files: dict[str, Path]) -> None:
    """An ensemble's scores, one line per variable and constraint arm, then its files."""
    for r in rows:
        print(f"  {r['variable']:>10s} {r['constraint']:>12s}  RMSE {r['rmse']:.4g}  "
              f"CRPS {r['crps']:.4g}  spread/skill {r['spread_skill_ratio']:.3f}  "
              f"mass error {r['conservation_error']:.2e}")  # fmt: skip
    for key, path in files.items():
        print(f"  {key:18s} {path}")


def _is_package(path: Path) -> bool:
    return (path / FORMAT).is_file()


def default_out(target: Path) -> Path:
    """``PACKAGE-eval`` beside a package; ``RUN/eval/evaluate`` in a run directory."""
    target = Path(target)
    if _is_package(target):
        return target.parent / f"{target.name}-eval"
    return RunDir(target).evaluate_dir


def evaluate(
    target: str | Path,
    loaded: LoadedConfig,
    *,
    out: str | Path | None = None,
    card: bool = True,
    progress: bool = True,
    trusted_keys: list | None = None,
) -> dict[str, Any]:
    """Evaluate a package or run directory ``target`` on the data of ``loaded``; returns the
    written files, the summary and the output folder. ``trusted_keys``: a package must be
    signed by one of these public keys."""
    target = Path(target).resolve()
    cfg = loaded.config
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: not a model package or run directory")
    if is_ensemble(target):  # probabilistic scores, with and without ProbConserve
        out = Path(out) if out is not None else target.parent / f"{target.name}-eval"
        res = evaluate_ensemble_package(target, loaded, out, progress=progress,
                                        trusted_keys=trusted_keys)  # fmt: skip
        return {"files": res["files"], "summary": res["summary"], "out": out}
    is_pkg = _check_target(target)
    out = Path(out) if out is not None else default_out(target)
    out.mkdir(parents=True, exist_ok=True)
    downscale = cfg.data.task == "downscale"
    series = bool(cfg.data.sources[0].horizon)  # a series forecaster (scigpt.eval.series_eval)
    # downscale and series runs are scored at their checkpoint chosen on validation (their
    # test's); a grid forecaster at its latest
    pm = _load_model(target, out, trusted_keys, best=downscale or series)
    if downscale:
        check_downscale(pm, loaded)  # before prepare
    elif not series:
        check_forecaster(pm, loaded)
    store_dir = loaded.resolve_path(cfg.data.store) if cfg.data.store else out / "store"
    manifest = prepare_from_config(loaded, store_dir, progress=progress)
    if manifest and manifest["rejects"]:
        raise IngestRejected.of(manifest["rejects"])
    score = score_downscale if downscale else score_series if series else score_model
    files, scores = score(pm, loaded, store_dir, out, progress=progress)
    summary = {"target": str(target), "kind": "package" if is_pkg else "run", **scores}
    files["eval_json"] = out / "eval.json"
    atomic_write_text(files["eval_json"], json.dumps(summary, indent=1, default=float) + "\n")
    if card and is_pkg and is_signed(target):
        print(f"{target} is signed: its MODEL_CARD.md is left as it is; the scores are in {out}")
    elif card and is_pkg and not downscale and not series:
        section = evaluation_markdown(scores["gridded"], scores["series"])
        update_package_card(target, section)
        files["model_card"] = target / CARD
    return {"files": files, "summary": summary, "out": out}


def _check_target(target: Path) -> bool:
    """True for a package, False for a run directory; anything else is an error."""
    is_pkg = _is_package(target)
    if not is_pkg and not RunDir(target).is_run():
        raise PackageError(
            f"{target} is neither a model package (format.json) nor a run directory "
            "(checkpoints/): pass one of them"
        )
    return is_pkg


def _load_model(target: Path, out: Path, trusted_keys: list | None, *, best: bool = False):
    """The model of a package, or of a run directory's latest checkpoint (``best``: its best
    validation checkpoint when it has one), exported to a temporary package in ``out``."""
    is_pkg = _is_package(target)
    best = best and not is_pkg and (RunDir(target).checkpoints / "best").exists()
    with tempfile.TemporaryDirectory(dir=out, prefix=".pkg-") as tmp:
        pkg_path = target if is_pkg else export_run(target, Path(tmp) / "pkg", best=best)
        return load_pretrained(pkg_path, trusted_keys=trusted_keys if is_pkg else None)


def evaluate_convergence(
    target: str | Path,
    loaded: LoadedConfig | None = None,
    *,
    levels: list[int] | None = None,
    n_cases: int = 8,
    reference: str = "fine",
    source: str | None = None,
    out: str | Path | None = None,
    trusted_keys: list | None = None,
) -> dict[str, Any]:
    """The convergence test of an operator-task PDE model ``target`` (package or run): the
    test cases of its PDE source (of ``loaded``'s config, default the model's run config) at
    grid sizes ``levels``; writes convergence.json/.csv/.png to ``out``."""
    target = Path(target).resolve()
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: not a model package or run directory")
    _check_target(target)
    out = Path(out) if out is not None else default_out(target)
    out.mkdir(parents=True, exist_ok=True)
    pm = _load_model(target, out, trusted_keys)
    run_config = (loaded.config.model_dump(mode="json") if loaded is not None
                  else pm.config.get("run_config") or {})  # fmt: skip
    cases, src = cases_from_config(run_config, source=source, n_cases=n_cases)
    outputs = list(run_config["data"].get("operator_outputs") or ["pde_u"])
    if outputs[0] != "pde_u":
        raise ValueError(f"the convergence test scores pde_u; this model predicts {outputs}")
    levels = sorted(levels or [16, 32, 64, 128])
    result = pde_study(package_predictor(pm, outputs), cases, levels, reference=reference)
    result.update(target=str(target), source=src.get("name"), family=cases[0].family,
                  train_grid=(src.get("options") or {}).get("grid"),
                  cases=[c.index for c in cases])  # fmt: skip
    files = write_study(
        result, out, title=f"{target.name}: {src.get('name')} ({result['verdict']})"
    )
    return {"files": files, "summary": result, "out": out}


def print_convergence(res: dict[str, Any]) -> None:
    """The convergence table (one row per level), the fit and the verdict."""
    s = res["summary"]
    print(f"{s['source']} ({s['family']}, trained at grid {s['train_grid']}), "
          f"{len(s['cases'])} cases, reference: {s['reference']}")  # fmt: skip
    print(f"  {'grid':>6s} {'h':>9s} {'RFNE':>10s} {'order':>7s}")
    for r in s["rows"]:
        print(f"  {r['level']:6d} {r['h']:9.4g} {r['error']:10.4g} {r['pairwise_order']:7.3g}")
    if s["fit"] is not None:
        f = s["fit"]
        print(f"  observed order p = {f['p']:.3g} ± {f['p_se']:.2g} (95 %: {f['p_lo']:.3g} .. "
              f"{f['p_hi']:.3g}), R² {f['r2']:.3f}")  # fmt: skip
    print(f"  verdict: {s['verdict']} — {s['reason']}")
    for key, path in res["files"].items():
        print(f"  {key:18s} {path}")


def run(args: argparse.Namespace) -> int:
    if args.convergence:
        loaded = load_config(args.config, args.overrides) if args.config else None
        res = evaluate_convergence(
            args.target, loaded, levels=args.levels, n_cases=args.cases,
            reference=args.reference, source=args.source, out=args.out,
            trusted_keys=args.trusted_keys,
        )  # fmt: skip
        print_convergence(res)
        return EXIT_OK
    if args.config is None:
        raise ValueError("scigpt evaluate needs a CONFIG (the data to score on), or --convergence")
    loaded = load_config(args.config, args.overrides)
    res = evaluate(
        args.target, loaded, out=args.out, card=not args.no_card, trusted_keys=args.trusted_keys
    )
    if res["summary"]["kind"] == "ensemble":
        print(f"{res['summary']['n_forecasts']} forecasts, {res['summary']['n_members']} members:")
        print_ensemble_scores(res["summary"]["ensemble"], res["files"])
        return EXIT_OK
    if res["summary"].get("task") == "downscale":
        s = res["summary"]
        print(
            f"{s['n_samples']} samples, x{s['factor']} ({s['degradation']}); RFNE gain over "
            f"bicubic: model {100 * s['rfne_gain']:+.1f}%, CNN {100 * s['rfne_gain_cnn']:+.1f}%"
        )
        print(superres_table(s).text([10, 8] + [10] * 6))
        for key, path in res["files"].items():
            print(f"  {key:18s} {path}")
        return EXIT_OK
    if res["summary"].get("task") == "series_forecast":
        print_series_scores(res["summary"], res["files"])
        return EXIT_OK
    rows = res["summary"]["gridded"]
    print(f"{res['summary']['n_forecasts']} forecasts per lead; RMSE (ACC) by lead:")
    for r in rows:
        print(f"  {r['variable']:>10s} {r['lead_hours']:6g} h  {r['rmse']:.4g} {r['units']}"
              f"  ({r['acc']:.3f})  persistence {r['rmse_persistence']:.4g}")  # fmt: skip
    for key, path in res["files"].items():
        print(f"  {key:18s} {path}")
    return EXIT_OK
