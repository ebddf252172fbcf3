"""``scigpt evaluate PACKAGE_OR_RUN CONFIG``: score a model on a config's data and write tables,
plots and the model card's evaluation section.

* Gridded sources (the first one): autoregressive rollouts to ``eval.horizon`` model calls,
  WeatherBench-2 RMSE / bias / ACC per variable and lead (``scigpt.eval.gridded``), persistence
  and climatology baselines, skill-vs-lead and error-map plots.
* Series sources: the pooled head's per-target scores (e.g. magnitude MAE) and the masked
  reconstruction's per-channel RMSE / MAE / NSE / KGE (``scigpt.eval.series``).

A run directory is evaluated at its latest checkpoint (consolidated through ``scigpt export``
into a temporary package) and its outputs go to ``RUN/eval/evaluate``, where a later
``scigpt export`` finds them for the card. A package is evaluated as it is, and its
MODEL_CARD.md (and checksum list) is updated in place unless ``card=False``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from scigpt.eval.gridded import Climatology, evaluate_rollouts, write_gridded_report
from scigpt.eval.gridded import _fmt as _cell

EVAL_DIR = "evaluate"  # RUN/eval/evaluate


def _is_package(path: Path) -> bool:
    return (path / "format.json").is_file()


def default_out(target: Path) -> Path:
    target = Path(target)
    if _is_package(target):
        return target.parent / f"{target.name}-eval"
    return target / "eval" / EVAL_DIR


def evaluate(
    target: str | Path,
    loaded,
    *,
    out: str | Path | None = None,
    card: bool = True,
    progress: bool = True,
    trusted_keys: list | None = None,
) -> dict[str, Any]:
    """Evaluate a package or run directory ``target`` on the data of ``loaded`` (a
    ``LoadedConfig``); returns the written files and the summary. ``trusted_keys``: a package
    must be signed by one of these public keys. A signed package's card is left as it is (a
    change would break its signature): the tables are in ``out``."""
    from scigpt.atomic import atomic_write_text
    from scigpt.data_pipeline.ingest.base import format_kind
    from scigpt.data_pipeline.store import GridStore
    from scigpt.export.package import PackageError, export_run, load_pretrained
    from scigpt.prepare import IngestRejected, prepare_from_config

    target = Path(target).resolve()
    cfg = loaded.config
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: not a model package or run directory")
    is_pkg = _is_package(target)
    if not is_pkg and not (target / "checkpoints").is_dir():
        raise PackageError(
            f"{target} is neither a model package (format.json) nor a run directory "
            "(checkpoints/): pass one of them"
        )
    out = Path(out) if out is not None else default_out(target)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".pkg-") as tmp:
        pkg_path = target if is_pkg else export_run(target, Path(tmp) / "pkg")
        pm = load_pretrained(pkg_path, trusted_keys=trusted_keys if is_pkg else None)
    task = (pm.config.get("run_config") or {}).get("data", {}).get("task", "forecast")
    if "operator" in (task, cfg.data.task):
        raise ValueError(
            "an operator-task model (data.task: operator) has no lead time to roll out: its "
            "score is the run's test record (eval/test_rmse.csv); evaluate scores forecasters"
        )
    store_dir = loaded.resolve_path(cfg.data.store) if cfg.data.store else out / "store"
    manifest = prepare_from_config(loaded, store_dir, progress=progress)
    if manifest and manifest["rejects"]:
        raise IngestRejected.of(manifest["rejects"])

    ev = cfg.eval
    first = cfg.data.sources[0]
    splits = first.splits or cfg.data.splits
    block = getattr(splits, ev.split)
    if block is None:
        raise ValueError(f"eval.split={ev.split}: the config has no data.splits.{ev.split}")
    store = GridStore(store_dir, source=first.name)
    names = [n for n in store.names if n in pm.var_names]
    clim = None
    if ev.acc:
        if ev.climatology:
            clim = Climatology.open(loaded.resolve_path(ev.climatology))
        else:
            clim = Climatology.from_store(store, splits.train.bounds(), names)
            clim.save(out / "climatology.nc")
    result = evaluate_rollouts(
        pm, store, block.bounds(), horizon=ev.horizon, climatology=clim, variables=names,
        geographic=first.format != "pde", progress=progress,
        gap=None if ev.split == "train" else splits.gap_ns(),
    )  # fmt: skip
    files = write_gridded_report(result, out)
    if clim is not None and not ev.climatology:
        files["climatology"] = out / "climatology.nc"

    series_rows: list[dict[str, Any]] = []
    for src in cfg.data.sources:
        if format_kind(src.format) == "grid":
            continue
        series_rows += _series_rows(pm, loaded, store_dir, src, ev.split)
    if series_rows:
        files.update(_write_series(series_rows, out))

    summary = {
        "target": str(target),
        "kind": "package" if is_pkg else "run",
        "split": ev.split,
        "time_range": [str(t) for t in block.bounds()],
        "horizon": ev.horizon,
        "n_forecasts": result["n_forecasts"],
        "climatology": result["climatology"],
        "gridded": result["rows"],
        "series": series_rows,
    }
    files["eval_json"] = out / "eval.json"
    atomic_write_text(files["eval_json"], json.dumps(summary, indent=1, default=float) + "\n")
    from scigpt.export.signing import is_signed

    if card and is_pkg and is_signed(target):
        print(f"{target} is signed: its MODEL_CARD.md is left as it is; the scores are in {out}")
    elif card and is_pkg:
        update_package_card(target, result["rows"], series_rows)
        files["model_card"] = target / "MODEL_CARD.md"
    return {"files": files, "summary": summary, "out": out}


def _series_rows(pm, loaded, store_dir: Path, src, split: str) -> list[dict[str, Any]]:
    from scigpt.data_pipeline.loader import SeriesWindowDataset
    from scigpt.data_pipeline.store import PatchStore
    from scigpt.eval.series import evaluate_series

    cfg = loaded.config
    splits = src.splits or cfg.data.splits
    block = getattr(splits, split)
    store = PatchStore(store_dir)
    channels = [v.name for v in store.variables(src.name)]
    unknown = [c for c in channels if c not in pm.var_names]
    if unknown:
        raise ValueError(
            f"source {src.name!r} has channels {unknown} the model was not trained on: "
            "fine-tune it on them first (scigpt finetune)"
        )
    pooled = pm.config["spec"].get("pooled") if pm.model.pooled is not None else None
    ds = SeriesWindowDataset(
        store, src.name, time_range=block.bounds(),
        targets=pooled["targets"] if pooled else (), var_ids=pm.var_ids(channels).tolist(),
        gap=None if split == "train" else splits.gap_ns(),
    )  # fmt: skip
    if not len(ds):
        return []
    res = evaluate_series(
        pm.model, ds, next(pm.model.parameters()).device,
        pooled_kind=pooled["kind"] if pooled else None,
        mask_ratio=cfg.objectives.mask_ratio,
    )  # fmt: skip
    rows = [{"source": src.name, "kind": "pooled", **r} for r in res["per_target"]]
    rows += [{"source": src.name, "kind": "masked", **r} for r in res["per_channel"]]
    return rows


def _write_series(rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    import csv
    import io

    from scigpt.atomic import atomic_write_text

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", restval="")
    w.writeheader()
    w.writerows(rows)
    files = {"series_csv": out / "series_metrics.csv", "series_md": out / "series_metrics.md"}
    atomic_write_text(files["series_csv"], buf.getvalue())
    md = ["# Series scores", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    atomic_write_text(files["series_md"], "\n".join(md) + "\n")
    return files


def evaluation_markdown(gridded: list[dict[str, Any]], series: list[dict[str, Any]]) -> str:
    """The model card's ``scigpt evaluate`` section: RMSE/ACC per variable and lead."""
    lines = [
        "### WeatherBench-2 scores (`scigpt evaluate`)",
        "",
        "Area-weighted RMSE (squared error averaged over space and time, root last), bias and "
        "ACC against the climatology, physical units.",
        "",
        "| variable | units | lead (h) | RMSE | bias | ACC | RMSE persistence |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variable']} | {r['units']} | {r['lead_hours']:g} | {_cell(r['rmse'])} | "
        f"{_cell(r['bias'])} | {_cell(r['acc'])} | {_cell(r['rmse_persistence'])} |"
        for r in gridded
    ]
    pooled = [r for r in series if r["kind"] == "pooled"]
    if pooled:
        lines += [
            "",
            "| source | target | n | MAE | RMSE | accuracy |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['source']} | {r['target']} | {r['n']} | {_cell(r.get('mae', ''))} | "
            f"{_cell(r.get('rmse', ''))} | {_cell(r.get('accuracy', ''))} |"
            for r in pooled
        ]
    return "\n".join(lines) + "\n"


MARK_BEGIN = "<!-- scigpt-evaluate:begin -->"
MARK_END = "<!-- scigpt-evaluate:end -->"


def fill_card(card: str, section: str) -> str:
    """Put ``section`` into the card's Evaluation part (replacing an earlier one)."""
    block = f"{MARK_BEGIN}\n{section}{MARK_END}\n"
    if MARK_BEGIN in card and MARK_END in card:
        head, rest = card.split(MARK_BEGIN, 1)
        return head + block + rest.split(MARK_END, 1)[1].lstrip("\n")
    anchor = "## Intended use and limits"
    if anchor in card:
        head, tail = card.split(anchor, 1)
        return head.rstrip("\n") + "\n\n" + block + "\n" + anchor + tail
    return card.rstrip("\n") + "\n\n" + block


def update_package_card(pkg: Path, gridded: list, series: list) -> None:
    """Rewrite the package's MODEL_CARD.md with the evaluation section and its checksum line,
    each file atomically (the card first; a crash between leaves a checksum mismatch that
    ``load_pretrained`` reports, never a silently wrong card)."""
    from scigpt.atomic import atomic_write_text, sha256_file
    from scigpt.export.package import CARD, CHECKSUMS

    card = (pkg / CARD).read_text()
    atomic_write_text(pkg / CARD, fill_card(card, evaluation_markdown(gridded, series)))
    lines = []
    for line in (pkg / CHECKSUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        lines.append(f"{sha256_file(pkg / CARD) if name == CARD else digest}  {name}\n")
    atomic_write_text(pkg / CHECKSUMS, "".join(lines))


def run_evaluation_section(run_dir: Path) -> str | None:
    """The evaluation section of a run's ``scigpt evaluate`` outputs, for exports."""
    path = Path(run_dir) / "eval" / EVAL_DIR / "eval.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return evaluation_markdown(data.get("gridded", []), data.get("series", []))
