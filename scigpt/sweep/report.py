"""The sweep report: a points table, scaling-law fits with intervals, saturation flags, plots.

``write_report(records, out_dir)`` writes, each atomically (``scigpt.atomic``)::

    points.csv            one row per point, every field (nested dicts flattened to a.b keys)
    report.md             the points sorted by compute, the fits with intervals, the joint law,
                          the compute-optimal exponents, saturation per axis in words
    fits.json             the same numbers, machine-readable (null where a fit could not run)
    loss_vs_compute.png   all points coloured by model size, the Pareto frontier and its fit
    loss_vs_params.png    one line per data size + fits
    loss_vs_data.png      one line per model size + fits

A record is a dict with numeric ``params`` (N), ``data`` (D, unique training samples or tokens),
``compute`` (training FLOPs) and the loss, optionally ``tokens`` (tokens processed) and ``name``;
any other field (axis settings, other metrics) is carried to the table. The loss is
``record[objective]`` when the records have that key, else ``record["loss"]`` (``objective`` then
only labels it, e.g. "test model_mse"). Points without a finite positive loss, N, D or C are
listed but left out of fits and plots.

What is fitted (fits that cannot be determined are reported as "not enough points", never
raised):

* compute frontier: ``pareto_frontier`` over all points, then L = A·C^(−α) through it (3–4
  frontier points) or E + A·C^(−α) (5 or more).
* loss vs N per data size and loss vs D per model size: points sharing (N, D) are first reduced
  to their lowest loss (the best over the other axes: learning rate, steps). A line with 5 or
  more distinct values gets E + A·x^(−α); with 3–4, A·x^(−α) (an offset fit with 4 points has
  one degree of freedom left and uninformative intervals); with fewer, no fit. A 3 × 2 sweep
  thus fits loss vs N (no offset) at each data size and no loss vs D line.
* joint law L(N, D) = E + A·N^(−α) + B·D^(−β): needs ≥ 3 distinct N, ≥ 3 distinct D and ≥ 6
  (N, D) pairs (``fit_joint``); with 2 values of an axis its term and E cannot be told apart,
  so a 3 × 2 sweep gets none. Its compute-optimal exponents N_opt ∝ C^a, D_opt ∝ C^b use
  C = k·N·D with k estimated from the records (median of compute / (params · tokens)), or 6.
* saturation (``saturation``, one rule: the largest step fell short of the straight log-log
  trend of the smaller ones beyond a one-sided 95 % bound, a 5 % false-alarm rate where the
  power law holds) per axis at the largest value of the other one: model size at the largest
  D, data at the largest N, compute along the frontier. The noise of one loss is the joint
  fit's rms log-residual, else the line fits' pooled by degrees of freedom, else the trend's
  own; an axis with fewer than 3 values is not determined.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scigpt.atomic import atomic_write_text
from scigpt.sweep.calibration import COVERAGE, SATURATION_CALIBRATION
from scigpt.sweep.estimation import _jsonable
from scigpt.sweep.fit import (
    FrontierFit,
    JointFit,
    PowerLawFit,
    fit_frontier,
    fit_joint,
    fit_power_law,
    pareto_frontier,
    saturation,
)
from scigpt.sweep.report_plots import ci_text as _ci
from scigpt.sweep.report_plots import write_plots
from scigpt.tables import Table

FIRST_COLUMNS = ("name", "params", "data", "tokens", "compute")
NOT_ENOUGH = "not enough points"
FIT_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError)


# ---- records -------------------------------------------------------------------------------------


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _num(v: Any) -> float:
    """A float, or NaN for anything that is not a real number (None, strings, bools)."""
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _val_ci(value: float, fit_ci: tuple[float, float]) -> str:
    return f"{value:.4g}{_ci(fit_ci)}"


# ---- fitting policy ------------------------------------------------------------------------------


def _line_fit(
    x: np.ndarray, y: np.ndarray, *, variable: str, n_boot: int, seed: int
) -> tuple[PowerLawFit | None, str]:
    """The fit a line of points supports: offset with ≥ 5 distinct x, none with 3–4."""
    k = len(np.unique(x))
    if k < 3:
        return None, (
            f"{NOT_ENOUGH}: {k} distinct {variable} value{'s' * (k != 1)} "
            "(A·x^-α needs 3, E + A·x^-α needs 5)"
        )
    try:
        fit = fit_power_law(x, y, offset=k >= 5, n_boot=n_boot, seed=seed, variable=variable)
    except FIT_ERRORS as e:
        return None, f"fit failed: {e}"
    return fit, ""


def _frontier_fit(
    c: np.ndarray, lo: np.ndarray, *, n_boot: int, seed: int
) -> tuple[FrontierFit | None, np.ndarray, str]:
    idx = pareto_frontier(c, lo) if len(c) else np.array([], dtype=int)
    k = len(np.unique(c[idx])) if len(idx) else 0
    if k < 3:
        return (
            None,
            idx,
            f"{NOT_ENOUGH}: the compute frontier has {k} point{'s' * (k != 1)} (need 3)",
        )
    try:
        return fit_frontier(c, lo, offset=k >= 5, n_boot=n_boot, seed=seed), idx, ""
    except FIT_ERRORS as e:
        return None, idx, f"fit failed: {e}"


def _best_per_pair(
    n: np.ndarray, d: np.ndarray, lo: np.ndarray
) -> dict[tuple[float, float], float]:
    best: dict[tuple[float, float], float] = {}
    for ni, di, li in zip(n, d, lo, strict=True):
        key = (float(ni), float(di))
        best[key] = min(best.get(key, math.inf), float(li))
    return best


def _pooled_noise(
    joint: JointFit | None, fits: list[PowerLawFit]
) -> tuple[float | None, float | None, str]:
    """The relative noise of one loss and its degrees of freedom: the joint fit's rms
    log-residual (all points, 5 parameters), else the line fits' pooled by degrees of freedom,
    else None (each trend's own)."""
    if joint is not None:
        return joint.residual_scale, joint.n_points - 5, "the joint fit's rms log-residual"
    dof = [(f.n_points - len(f.params), f.residual_scale) for f in fits]
    total = sum(k for k, _ in dof)
    if not total:
        return None, None, "the trend's own rms log-residual"
    pooled = math.sqrt(sum(k * s**2 for k, s in dof) / total)
    return pooled, total, f"the rms log-residual pooled over {len(fits)} line fit(s), {total} dof"


def _saturation_entry(
    x: np.ndarray,
    y: np.ndarray,
    fit: PowerLawFit | None,
    why: str,
    where: dict[str, Any],
    noise: tuple[float | None, float | None, str],
) -> dict[str, Any]:
    """``saturation`` of one axis (needs 3 distinct values), with the pooled noise when there
    is one."""
    if len(np.unique(x)) < 3:
        k = len(np.unique(x))
        return {"status": "not determined", "reason": f"{NOT_ENOUGH}: {k} distinct value"
                f"{'s' * (k != 1)} (the test needs 3)", **where}  # fmt: skip
    try:
        found = saturation(x, y, fit, noise=noise[0], noise_dof=noise[1])
    except FIT_ERRORS as e:
        return {"status": "not determined", "reason": str(e), **where}
    source = noise[2] if noise[0] is not None else "the trend's own rms log-residual"
    return {"status": "ok", **where, **found, "noise_source": source}


# ---- the report ----------------------------------------------------------------------------------


def write_report(
    records: Sequence[dict[str, Any]],
    out_dir: Path,
    *,
    objective: str = "loss",
    data_unit: str = "tokens",
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, Path]:
    """Write points.csv, report.md, fits.json and three PNG plots into ``out_dir``; return
    {"csv", "markdown", "json", "loss_vs_compute", "loss_vs_params", "loss_vs_data"} → path.

    ``objective``: the record key holding the loss if the records have it, else a label for
    ``record["loss"]``. ``data_unit`` labels D. ``n_boot``/``seed``: bootstrap of every fit
    (the joint fit uses min(n_boot, 300)).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [_flatten(dict(r)) for r in records]
    key = objective if any(objective in r for r in rows) else "loss"
    label = objective

    # Points: valid ones (finite, positive N, D, C, loss) feed the fits and plots.
    n_all = np.array([_num(r.get("params")) for r in rows])
    d_all = np.array([_num(r.get("data")) for r in rows])
    c_all = np.array([_num(r.get("compute")) for r in rows])
    l_all = np.array([_num(r.get(key)) for r in rows])
    excluded: dict[int, str] = {}
    for i in range(len(rows)):
        bad = [
            name
            for name, arr in (("params", n_all), ("data", d_all), ("compute", c_all), (key, l_all))
            if not (math.isfinite(arr[i]) and arr[i] > 0)
        ]
        if bad:
            excluded[i] = "missing or non-positive " + ", ".join(bad)
    valid = np.array([i for i in range(len(rows)) if i not in excluded], dtype=int)
    n_v, d_v, c_v, l_v = n_all[valid], d_all[valid], c_all[valid], l_all[valid]

    # Fits.
    frontier, front_idx, front_why = _frontier_fit(c_v, l_v, n_boot=n_boot, seed=seed)
    on_frontier = {int(valid[i]) for i in front_idx}
    best = _best_per_pair(n_v, d_v, l_v)
    by_data: dict[float, dict[str, Any]] = {}
    for dv in sorted({d for _, d in best}):
        pts = sorted((n, lo) for (n, d), lo in best.items() if d == dv)
        x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        fit, why = _line_fit(x, y, variable="N", n_boot=n_boot, seed=seed)
        by_data[dv] = {"x": x, "y": y, "fit": fit, "why": why}
    by_params: dict[float, dict[str, Any]] = {}
    for nv in sorted({n for n, _ in best}):
        pts = sorted((d, lo) for (n, d), lo in best.items() if n == nv)
        x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        fit, why = _line_fit(x, y, variable="D", n_boot=n_boot, seed=seed)
        by_params[nv] = {"x": x, "y": y, "fit": fit, "why": why}

    k_flops = 6.0
    tok = np.array([_num(rows[i].get("tokens")) for i in valid]) if len(valid) else np.array([])
    with np.errstate(all="ignore"):
        ratio = c_v / (n_v * tok) if len(tok) else np.array([])
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    k_source = "the default 6 (no token counts in the records)"
    if len(ratio):
        k_flops, k_source = float(np.median(ratio)), "the median of compute / (params · tokens)"

    joint: JointFit | None = None
    joint_why = ""
    pair_n = np.array([p[0] for p in best])
    pair_d = np.array([p[1] for p in best])
    pair_l = np.array(list(best.values()))
    kn, kd = len(np.unique(pair_n)), len(np.unique(pair_d))
    if kn < 3 or kd < 3 or len(best) < 6:
        joint_why = (
            f"{NOT_ENOUGH}: {kn} distinct N, {kd} distinct D, {len(best)} (N, D) pairs "
            "(the joint law needs 3, 3 and 6)"
        )
    else:
        try:
            joint = fit_joint(pair_n, pair_d, pair_l, n_boot=min(n_boot, 300), seed=seed,
                              flops_per_param_token=k_flops)  # fmt: skip
        except FIT_ERRORS as e:
            joint_why = f"fit failed: {e}"
    allocation = None
    if joint is not None and joint.params["alpha"] > 0 and joint.params["beta"] > 0:
        allocation = joint.optimal_allocation(float(c_v.max()) * np.array([1.0, 1e1, 1e2, 1e3]))

    line_fits = [g["fit"] for g in (*by_data.values(), *by_params.values()) if g["fit"]]
    noise = _pooled_noise(joint, line_fits)
    sat: dict[str, dict[str, Any]] = {}
    # each axis is judged on its line at the largest value of the other axis
    for axis, groups, at in (("params", by_data, "at_data"), ("data", by_params, "at_params")):
        if groups:
            top = max(groups)
            g = groups[top]
            sat[axis] = _saturation_entry(g["x"], g["y"], g["fit"], g["why"], {at: top}, noise)
        else:
            sat[axis] = {"status": "not determined", "reason": f"{NOT_ENOUGH}: no valid points"}
    sat["compute"] = _saturation_entry(
        c_v[front_idx] if len(front_idx) else c_v, l_v[front_idx] if len(front_idx) else l_v,
        frontier.fit if frontier else None, front_why, {"along": "compute frontier"}, noise,
    )  # fmt: skip

    # points.csv
    columns: list[str] = [c for c in FIRST_COLUMNS if any(c in r for r in rows)]
    if key not in columns:
        columns.append(key)
    for r in rows:
        columns += [c for c in r if c not in columns]
    extra = [c for c in ("on_frontier", "excluded_from_fits") if c not in columns]
    order = sorted(valid.tolist(), key=lambda i: (c_all[i], l_all[i], i)) + sorted(excluded)

    def cells(i: int) -> dict[str, Any]:
        row = {c: rows[i].get(c) for c in columns}
        if "on_frontier" in extra:
            row["on_frontier"] = i in on_frontier
        if "excluded_from_fits" in extra:
            row["excluded_from_fits"] = excluded.get(i, "")
        return row

    points = Table(columns + extra, [cells(i) for i in order])
    paths = {"csv": out_dir / "points.csv"}
    atomic_write_text(paths["csv"], points.csv())

    # fits.json
    def fit_json(fit: Any, why: str) -> dict[str, Any]:
        return fit.to_dict() if fit is not None else {"status": NOT_ENOUGH, "reason": why}

    names = [str(rows[i].get("name", i)) for i in range(len(rows))]
    fits = {
        "objective": label,
        "loss_key": key,
        "data_unit": data_unit,
        "n_points": len(rows),
        "n_fitted": len(valid),
        "excluded": {names[i]: why for i, why in excluded.items()},
        "frontier": {
            "points": [names[int(valid[i])] for i in front_idx],
            "fit": fit_json(frontier, front_why),
        },
        "loss_vs_params": [
            {"data": dv, "fit": fit_json(g["fit"], g["why"])} for dv, g in by_data.items()
        ],
        "loss_vs_data": [
            {"params": nv, "fit": fit_json(g["fit"], g["why"])} for nv, g in by_params.items()
        ],
        "joint": fit_json(joint, joint_why),
        "allocation": allocation.to_dict() if allocation is not None else None,
        "flops_per_param_token": {"value": k_flops, "source": k_source},
        "saturation": sat,
    }
    paths["json"] = out_dir / "fits.json"
    atomic_write_text(paths["json"], json.dumps(_jsonable(fits), indent=1) + "\n")

    # report.md
    md = _markdown(
        rows=rows, order=order, columns=columns, cells=cells, extra=extra, label=label, key=key,
        data_unit=data_unit, n_valid=len(valid), excluded=excluded, names=names,
        frontier=frontier, front_why=front_why, n_front=len(front_idx), by_data=by_data,
        by_params=by_params, joint=joint, joint_why=joint_why, allocation=allocation,
        k_flops=k_flops, k_source=k_source, sat=sat,
    )  # fmt: skip
    paths["markdown"] = out_dir / "report.md"
    atomic_write_text(paths["markdown"], md)

    # plots
    plots = write_plots(
        out_dir, n_v=n_v, c_v=c_v, l_v=l_v, front_idx=front_idx, frontier=frontier,
        by_data=by_data, by_params=by_params, label=label, data_unit=data_unit,
    )  # fmt: skip
    paths.update(plots)
    return paths


# ---- markdown ------------------------------------------------------------------------------------


def _law_row(head: str, n_pts: int, fit: PowerLawFit | None, why: str) -> str:
    if fit is None:
        return f"| {head} | {n_pts} | {why} | | | | |"
    p, ci = fit.params, fit.ci
    e = _val_ci(p["E"], ci["E"]) if fit.offset else "—"
    form = "E + A·x^-α" if fit.offset else "A·x^-α"
    return (
        f"| {head} | {fit.n_points} | {form} | {_val_ci(p['alpha'], ci['alpha'])} | "
        f"{_val_ci(p['A'], ci['A'])} | {e} | {fit.residual_scale:.3g} |"
    )


_LAW_HEADER = (
    "| {what} | points | form | α | A | E | rms log-residual |\n"
    "| --- | ---: | --- | --- | --- | --- | ---: |"
)


def _saturation_words(axis: str, s: dict[str, Any], unit: str) -> str:
    where = ""
    if "at_data" in s:
        where = f"at D = {s['at_data']:.3g} {unit}"
    elif "at_params" in s:
        where = f"at N = {s['at_params']:.3g}"
    elif "along" in s:
        where = f"along the {s['along']}"
    if s["status"] != "ok":
        return f"- **{axis}**: not determined {where} — {s['reason']}."
    verdict = "**saturated**" if s["saturated"] else "not saturated"
    text = (
        f"- **{axis}**: {verdict} {where} — going from {s['x_prev']:.3g} to {s['x_last']:.3g} "
        f"took the loss from {s['loss_prev']:.4g} to {s['loss_last']:.4g} "
        f"({100 * s['observed_improvement']:.2f} % in log terms); the trend of the smaller "
        f"values (exponent {s['trend_exponent']:.3g}) puts the largest "
        f"{100 * s['excess']:+.2f} % away from it, against a one-sided bound of "
        f"{100 * s['bound']:.2f} % (noise {100 * s['noise']:.2f} % from {s['noise_source']})"
    )
    if math.isfinite(s["local_exponent"]):
        text += f"; local exponent of the fit −d ln L/d ln x = {s['local_exponent']:.3g}"
    return text + "."


def _markdown(**k: Any) -> str:
    unit, label, key = k["data_unit"], k["label"], k["key"]
    lines = [
        "# Scaling sweep report",
        "",
        f"Objective: **{label}** (column `{key}`). {len(k['rows'])} points, {k['n_valid']} "
        "used in the fits.",
        "",
    ]
    if k["excluded"]:
        lines += ["Left out of fits and plots:", ""]
        lines += [f"- `{k['names'][i]}`: {why}" for i, why in k["excluded"].items()]
        lines.append("")

    cols = k["columns"] + k["extra"]
    lines += ["## Points (by compute)", ""]
    lines.append(Table(cols, [k["cells"](i) for i in k["order"]]).markdown())
    lines.append("")

    lines += ["## Compute frontier", ""]
    frontier: FrontierFit | None = k["frontier"]
    if frontier is None:
        lines.append(f"Loss vs compute through the frontier: {k['front_why']}.")
    else:
        lines.append(f"Loss vs compute C (FLOPs) through the {k['n_front']} frontier points:")
        lines += ["", "```", str(frontier.fit), "```"]
    lines.append("")

    lines += [f"## Loss vs model size N, one fit per data size D ({unit})", ""]
    lines.append(_LAW_HEADER.format(what=f"D ({unit})"))
    for dv, g in k["by_data"].items():
        lines.append(_law_row(f"{dv:.4g}", len(g["x"]), g["fit"], g["why"]))
    lines += ["", "## Loss vs data D, one fit per model size N", ""]
    lines.append(_LAW_HEADER.format(what="N"))
    for nv, g in k["by_params"].items():
        lines.append(_law_row(f"{nv:.4g}", len(g["x"]), g["fit"], g["why"]))
    lines.append("")

    lines += ["## Joint law L(N, D) = E + A·N^-α + B·D^-β", ""]
    joint: JointFit | None = k["joint"]
    if joint is None:
        lines.append(f"{k['joint_why']}.")
    else:
        lines += ["```", str(joint), "```", ""]
        lines += ["| parameter | value | interval |", "| --- | ---: | --- |"]
        for name in ("E", "A", "alpha", "B", "beta", "a", "b"):
            value = joint.params.get(name, getattr(joint, name, math.nan))
            lines.append(f"| {name} | {value:.4g} | {_ci(joint.ci[name]).strip()} |")
    lines.append("")

    lines += ["## Compute-optimal allocation", ""]
    alloc = k["allocation"]
    if joint is None:
        lines.append("Not available: it needs the joint law.")
    elif alloc is None:
        lines.append("Not available: the joint fit has α ≤ 0 or β ≤ 0 (no finite optimum).")
    else:
        lines += [
            f"N_opt ∝ C^a with a = β/(α+β) = {_val_ci(joint.a, joint.ci['a'])}; "
            f"D_opt ∝ C^b with b = α/(α+β) = {_val_ci(joint.b, joint.ci['b'])}. "
            f"C = k·N·D with k = {k['k_flops']:.3g} FLOPs per parameter per token "
            f"({k['k_source']}); the exponents do not depend on k. This treats D as the tokens "
            "each run trains on once (one epoch): with repeated data it is indicative only.",
            "",
            "| C (FLOPs) | N_opt | D_opt | L(N_opt, D_opt) |",
            "| ---: | --- | --- | ---: |",
        ]
        for j, c in enumerate(alloc.compute):
            lines.append(
                f"| {c:.3g} | {alloc.params[j]:.3g}"
                f"{_ci((alloc.params_ci[0][j], alloc.params_ci[1][j]))} | {alloc.data[j]:.3g}"
                f"{_ci((alloc.data_ci[0][j], alloc.data_ci[1][j]))} | {alloc.loss[j]:.4g} |"
            )
    lines.append("")

    lines += ["## Saturation", ""]
    names = {"params": "model size N", "data": "data D", "compute": "compute C"}
    for axis, s in k["sat"].items():
        lines.append(_saturation_words(names[axis], s, unit))
    lines += [
        "",
        "An axis is saturated when its largest step fell short of the straight log-log trend "
        "of its smaller values by more than the one-sided 95 % bound t·σ·√(1/n + h) (σ the "
        f"relative noise of one loss, h the trend's leverage): {SATURATION_CALIBRATION}",
        "",
        "## Method",
        "",
        "Fits minimise the Huber loss of log-residuals from a grid of starts (Hoffmann et al. "
        "2022, approach 3); intervals are studentized (bootstrap-t) residual-bootstrap "
        f"intervals. {COVERAGE} Per-line fits and the joint fit use the lowest loss of the "
        "points sharing (N, D). References: Kaplan et al. 2020 (arXiv:2001.08361), Hoffmann "
        "et al. 2022 (arXiv:2203.15556), Subramanian et al. 2023 (arXiv:2306.00258).",
        "",
    ]
    return "\n".join(lines)
