"""Scoring an ensemble package: the body of ``scigpt evaluate`` (and ``scigpt ensemble
--evaluate``) when the target is an ensemble (``scigpt.export.ensemble``).

Every member forecasts every sample of the config's ``eval.split`` (forecasters: one model call,
``history`` frames → the frame ``lead`` ahead; operator models: a frame's other fields → its
``operator_outputs``). The scores of ``scigpt.eval.probabilistic`` (CRPS, ensemble-mean RMSE,
spread, spread–skill ratio, rank histogram, Theisen et al.'s diagnostics) are computed per
variable, in physical units, and — with ``eval.constraints`` — twice: as forecast, and after
ProbConserve (``scigpt.eval.conserve``, Hansen et al. 2023).

ProbConserve on an ensemble: per sample, μ is the member mean and Σ the diagonal of the member
variances (ddof 1; a floor of 1e-9 × their mean keeps GΣGᵀ invertible where members agree).
Each member x_m is moved by the same oblique projection, x̃_m = x_m − ΣGᵀ(GΣGᵀ)⁻¹(Gx_m − b),
so every member satisfies G x̃ = b and the members' mean is ProbConserve's μ̃ (the map is
affine). G sums the field over the grid's cells (uniform cells: the PDE grids); b is the same sum
of ``initial`` in the input frame plus ``flux`` (``conserve.mass_constraint``). This module is
the config-facing layer of ``eval.constraints`` (``config.ConstraintConfig``).

Two more scores, per variable:

* ``conservation_error`` — mean over samples of |Σ x̄ − b| / |b| (relative mass error of the
  ensemble mean), for constrained fields (NaN otherwise);
* ``front_rmse`` — the ensemble-mean RMSE over the *front*: the cells where the truth's gradient
  magnitude (``np.gradient``) is in the top 10 % of its sample (the sharp front of the Stefan
  problem, where conservation matters most).

The seed spread is each member's own score: ``member_rmse_{min,max,std}`` in the table, and the
member points in ``ensemble_scores.png``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from scigpt.atomic import atomic_write, atomic_write_text
from scigpt.config import ConstraintConfig
from scigpt.config_loader import LoadedConfig, load_config
from scigpt.data_pipeline.loader import ForecastDataset
from scigpt.data_pipeline.store import GridStore
from scigpt.eval import conserve
from scigpt.eval.metrics import lat_weights
from scigpt.eval.probabilistic import plot_rank_histogram, probabilistic_scores, rank_histogram
from scigpt.export.ensemble import load_ensemble
from scigpt.prepare import IngestRejected, prepare_from_config
from scigpt.tables import Table

FRONT_QUANTILE = 0.9  # front cells: truth gradient magnitude above this quantile of its sample
VAR_FLOOR = 1e-9  # × the sample's mean member variance, added to Σ's diagonal
ARMS = ("none", "probconserve")

__all__ = [
    "apply_constraints",
    "ensemble_forecasts",
    "evaluate_ensemble_package",
    "score_ensemble",
    "score_forecasts",
]


def _task(pm) -> tuple[str, list[str]]:
    data = (pm.config.get("run_config") or {}).get("data") or {}
    task = data.get("task", "forecast")
    return task, list(data.get("operator_outputs") or []) if task == "operator" else []


@torch.no_grad()
def ensemble_forecasts(
    models: Sequence, store: GridStore, time_range, *, gap=None, batch_size: int = 16
) -> dict[str, Any]:
    """Every member's forecast of every sample in ``time_range``. Returns ``ens`` (M, N, S, H, W)
    and ``obs`` (N, S, H, W) of the scored variables ``names`` (S: the operator outputs, or
    every model variable in the store), ``inputs`` (N, V, H, W) the last input frame of all
    ``input_names`` (raw, physical), ``lat``, ``lon``."""
    pm = models[0]
    task, outputs = _task(pm)
    names = [n for n in store.names if n in pm.var_names]
    missing = [o for o in outputs if o not in names]
    if missing or not names:
        raise ValueError(
            f"the store (variables {store.names}) lacks the model's "
            f"{'outputs ' + str(missing) if missing else 'variables ' + str(pm.var_names)}: "
            "evaluate on data with the variables the ensemble was trained on"
        )
    hist, lead = (1, 0) if outputs else (pm.history, int(pm.config["data"]["lead"]))
    ds = ForecastDataset(store, time_range=time_range, history=hist, lead=lead, normalise=False,
                         variables=names, gap=gap, outputs=outputs or None)  # fmt: skip
    scored = outputs or names
    sidx = [names.index(n) for n in scored]
    lat, lon = np.asarray(store.lat), np.asarray(store.lon)
    ens: list[list[np.ndarray]] = [[] for _ in models]
    obs, inputs = [], []
    for s in range(0, len(ds), batch_size):
        items = [ds.raw_item(i) for i in range(s, min(s + batch_size, len(ds)))]
        frames = np.stack([it[0] for it in items])  # (B, T, V, H, W)
        times = np.array([it[2] for it in items], dtype=np.int64)
        obs.append(np.stack([it[1] for it in items])[:, sidx].astype(np.float64))
        inputs.append(frames[:, -1].astype(np.float64))
        x = frames.copy()
        if outputs:  # hidden from the inputs, as in training
            x[:, :, sidx] = np.nan
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1, 3, 4)))
        for m, model in enumerate(models):
            y = model.model(model.batch(model.normalise(x, names), names, lat, lon, times))
            ens[m].append(model.denormalise(y.float(), names).double().cpu().numpy()[:, sidx])
    return {
        "ens": np.stack([np.concatenate(e) for e in ens]),
        "obs": np.concatenate(obs),
        "inputs": np.concatenate(inputs),
        "names": scored,
        "input_names": names,
        "task": task,
        "lat": lat,
        "lon": lon,
    }


def _initial_state(fc: dict[str, Any], constraints: Sequence[ConstraintConfig]) -> dict:
    """The input-frame fields the constraints name, checked: (N, H, W) per name."""
    state = {}
    for c in constraints:
        if c.variable not in fc["names"]:
            raise ValueError(
                f"eval.constraints: variable {c.variable!r} is not forecast by this model; it "
                f"forecasts {fc['names']}"
            )
        ref = c.initial or c.variable
        if fc["task"] == "operator" and ref in fc["names"]:
            raise ValueError(
                f"eval.constraints: {c.variable}'s initial {ref!r} is an output of this operator "
                "model (hidden from its inputs): name an input field, e.g. initial: pde_u0"
            )
        if ref not in fc["input_names"]:
            raise ValueError(
                f"eval.constraints: initial {ref!r} is not an input field; the inputs are "
                f"{fc['input_names']}"
            )
        state[ref] = fc["inputs"][:, fc["input_names"].index(ref)]
    return state


def apply_constraints(
    fc: dict[str, Any],
    constraints: Sequence[ConstraintConfig],
    *,
    cell_area: float | np.ndarray = 1.0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The members after ProbConserve (module docstring: every member moved by the projection
    built from the ensemble's variance) and the target total b per constrained variable.
    Constraints on one variable are applied together (stacked rows of G). ``cell_area``: the
    weight of each grid cell in a total (a scalar, or an array of the grid's shape: e.g. the
    cosine of latitude on a latitude-longitude grid)."""
    state = _initial_state(fc, constraints)
    ens = fc["ens"].copy()
    m, n = ens.shape[:2]
    totals: dict[str, np.ndarray] = {}
    rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for c in constraints:
        spatial = ens.shape[3:]
        area = np.broadcast_to(np.asarray(cell_area, dtype=np.float64), spatial)
        total = (state[c.initial or c.variable] * area).sum(axis=(-2, -1)) + c.flux  # (N,)
        rows.setdefault(c.variable, []).append(conserve.mass_constraint(spatial, area, total))
        totals[c.variable] = total
    for name, cons in rows.items():
        j = fc["names"].index(name)
        g = np.concatenate([gi for gi, _ in cons], axis=0)  # (k, P)
        b = np.concatenate([bi for _, bi in cons], axis=-1)  # (N, k)
        x = ens[:, :, j].reshape(m, n, -1)
        var = x.var(axis=0, ddof=1)  # (N, P)
        var = var + VAR_FLOOR * np.maximum(var.mean(axis=-1, keepdims=True), 1e-30)
        mu_t, _ = conserve.probconserve(x, np.broadcast_to(var, x.shape), g,
                                        np.broadcast_to(b, (m, *b.shape)))  # fmt: skip
        ens[:, :, j] = mu_t.reshape(ens[:, :, j].shape)
    return ens, totals


def _front_mask(obs: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(obs, axis=(-2, -1))
    mag = np.hypot(gx, gy)
    q = np.quantile(mag.reshape(*mag.shape[:-2], -1), FRONT_QUANTILE, axis=-1)
    return mag >= q[..., None, None]


def _rmse(pred: np.ndarray, obs: np.ndarray, w: np.ndarray, mask=None) -> float:
    ww = np.broadcast_to(w, obs.shape) * (1.0 if mask is None else mask)
    return float(np.sqrt((ww * (pred - obs) ** 2).sum() / ww.sum()))


def _mass_error(pred: np.ndarray, b: np.ndarray | None) -> float:
    if b is None:
        return float("nan")
    return float(np.mean(np.abs(pred.sum(axis=(-2, -1)) - b) / np.maximum(np.abs(b), 1e-30)))


def score_forecasts(
    fc: dict[str, Any], constraints: Sequence[ConstraintConfig], *, geographic: bool = False
) -> dict[str, Any]:
    """The table rows (per variable × {none, probconserve}), per-member scores and rank
    histograms of the forecasts ``fc`` (``ensemble_forecasts``)."""
    lat = fc["lat"]
    w = lat_weights(torch.as_tensor(lat)).double().numpy() if geographic else np.ones(len(lat))
    w = w[:, None]  # (H, 1): broadcasts over (…, H, W)
    arms = {"none": (fc["ens"], {})}
    if constraints:
        arms["probconserve"] = apply_constraints(fc, constraints)
    totals = arms.get("probconserve", (None, {}))[1]
    rows, members, hists = [], [], {}
    rng = np.random.default_rng(0)
    for arm, (ens, _) in arms.items():
        for j, name in enumerate(fc["names"]):
            e, o = ens[:, :, j], fc["obs"][:, j]
            front = _front_mask(o)
            b = totals.get(name)
            scores = probabilistic_scores(o, e, 0, w)
            per = [{"variable": name, "constraint": arm, "member": k,
                    "rmse": _rmse(e[k], o, w), "front_rmse": _rmse(e[k], o, w, front),
                    "mae": float(np.mean(np.abs(e[k] - o))),
                    "conservation_error": _mass_error(e[k], b)}
                   for k in range(e.shape[0])]  # fmt: skip
            members += per
            rmses = np.array([p["rmse"] for p in per])
            rows.append({
                "variable": name,
                "constraint": arm,
                "n_forecasts": int(o.shape[0]),
                "n_members": int(e.shape[0]),
                "rmse": scores["ensemble_mean_rmse"],
                "crps": scores["crps"],
                "spread": scores["spread"],
                "spread_skill_ratio": scores["spread_skill_ratio"],
                "conservation_error": _mass_error(e.mean(axis=0), b),
                "front_rmse": _rmse(e.mean(axis=0), o, w, front),
                "member_rmse_mean": float(rmses.mean()),
                "member_rmse_min": float(rmses.min()),
                "member_rmse_max": float(rmses.max()),
                "member_rmse_std": float(rmses.std(ddof=1)),
                **{k: scores[k] for k in ("avg_member_error", "ensemble_error", "ambiguity",
                                          "improvement_rate", "disagreement_error_ratio")},
            })  # fmt: skip
            hists[(name, arm)] = rank_histogram(o, e, 0, rng=rng)
    return {"rows": rows, "members": members, "rank_histograms": hists}


def plot_scores(rows: list[dict], members: list[dict], path: Path, title: str = "") -> Path:
    """RMSE, CRPS, conservation error and front RMSE of the ensemble (bars) and of each member
    (points: the seed spread), without and with ProbConserve, for the first variable."""
    name = rows[0]["variable"]
    arms = [a for a in ARMS if any(r["constraint"] == a for r in rows)]
    panels = [("rmse", "RMSE"), ("crps", "CRPS (members: MAE)"),
              ("conservation_error", "relative mass error"),
              ("front_rmse", "RMSE near front")]  # fmt: skip
    fig = Figure(figsize=(11, 3.0))
    axes = fig.subplots(1, len(panels))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for i, arm in enumerate(arms):
            row = next(r for r in rows if r["variable"] == name and r["constraint"] == arm)
            ax.bar(i, row[key], width=0.6, color=("tab:orange", "tab:blue")[i], alpha=0.7)
            mkey = "mae" if key == "crps" else key
            pts = [p[mkey] for p in members if p["variable"] == name and p["constraint"] == arm]
            ax.scatter(np.full(len(pts), i) + np.linspace(-0.15, 0.15, len(pts)), pts, s=12,
                       color="k", zorder=3, label="members" if i == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        ax.set_title(label, fontsize=9)
        if key == "conservation_error":
            ax.set_yscale("symlog", linthresh=1e-8)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or f"{name}: ensemble (bars) and members (points)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path


def write_report(res: dict[str, Any], out: Path, title: str = "") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"ensemble_csv": out / "ensemble_metrics.csv",
             "ensemble_md": out / "ensemble_metrics.md",
             "members_csv": out / "member_metrics.csv"}  # fmt: skip
    table = Table.of(res["rows"])
    atomic_write_text(files["ensemble_csv"], table.csv())
    atomic_write_text(files["members_csv"], Table.of(res["members"]).csv())
    md = [f"# Ensemble evaluation{': ' + title if title else ''}", "",
          "Scores of the ensemble in physical units (`scigpt.eval.ensemble`); `constraint` "
          "`probconserve`: after ProbConserve under `eval.constraints`. member_rmse_*: each "
          "member's own RMSE (the seed spread).", "", table.markdown()]  # fmt: skip
    atomic_write_text(files["ensemble_md"], "\n".join(md) + "\n")
    for (name, arm), counts in res["rank_histograms"].items():
        key = f"rank_histogram_{name}_{arm}"
        files[key] = plot_rank_histogram(counts, out / f"{key}.png", title=f"{name} ({arm})")
    files["scores_plot"] = plot_scores(res["rows"], res["members"], out / "ensemble_scores.png",
                                       title)  # fmt: skip
    return files


def score_ensemble(
    models: Sequence, loaded: LoadedConfig, store_dir: Path, out: Path
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Score the loaded members on ``loaded``'s ``eval.split`` (data in ``store_dir``); write
    the tables and plots to ``out``. Returns (files, summary)."""
    cfg = loaded.config
    first = cfg.data.sources[0]
    splits = first.splits or cfg.data.splits
    block = getattr(splits, cfg.eval.split)
    if block is None:
        split = cfg.eval.split
        raise ValueError(f"eval.split={split}: the config has no data.splits.{split}")
    store = GridStore(store_dir, source=first.name)
    fc = ensemble_forecasts(models, store, block.bounds(), gap=splits.gap_ns())
    res = score_forecasts(fc, cfg.eval.constraints, geographic=first.format != "pde")
    files = write_report(res, out, title=f"{first.name}, {cfg.eval.split} split")
    summary = {
        "split": cfg.eval.split,
        "source": first.name,
        "n_members": len(models),
        "n_forecasts": int(fc["obs"].shape[0]),
        "constraints": [c.model_dump() for c in cfg.eval.constraints],
        "ensemble": res["rows"],
        "members": res["members"],
        "rank_histograms": {f"{n}/{a}": c.tolist() for (n, a), c in res["rank_histograms"].items()},
    }
    return files, summary


def evaluate_ensemble_package(
    package: str | Path,
    config: str | Path | LoadedConfig,
    out: str | Path,
    *,
    progress: bool = False,
    trusted_keys: Sequence | None = None,
) -> dict[str, Any]:
    """Load an ensemble package, ingest ``config``'s data and score it (``score_ensemble``);
    writes ``eval.json`` too. Returns files, rows and the summary."""
    loaded = config if isinstance(config, LoadedConfig) else load_config(config, [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = load_ensemble(package, trusted_keys=trusted_keys)
    cfg = loaded.config
    store_dir = loaded.resolve_path(cfg.data.store) if cfg.data.store else out / "store"
    manifest = prepare_from_config(loaded, store_dir, progress=progress)
    if manifest and manifest["rejects"]:
        raise IngestRejected.of(manifest["rejects"])
    files, summary = score_ensemble(models, loaded, store_dir, out)
    summary = {"target": str(Path(package).resolve()), "kind": "ensemble", **summary}
    files["eval_json"] = out / "eval.json"
    atomic_write_text(files["eval_json"], json.dumps(summary, indent=1, default=float) + "\n")
    return {"files": files, "rows": summary["ensemble"], "summary": summary}
