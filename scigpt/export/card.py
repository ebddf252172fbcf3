"""MODEL_CARD.md of a model package: data and licences, training, evaluation, intended use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

UNKNOWN_LICENCE = "see the data provider"
SAMPLE_ERA5_LICENCE = (
    "Licence to Use Copernicus Products (Copernicus Climate Change Service (C3S) / ECMWF)"
)
_SAMPLE_ATTRIBUTION = (
    "Generated using Copernicus Climate Change Service information [2023]. ERA5 data are "
    "provided by the Copernicus Climate Change Service (C3S) / ECMWF under the Licence to Use "
    "Copernicus Products; neither the European Commission nor ECMWF is responsible for any use "
    "that may be made of the Copernicus information or data it contains."
)


def _sample_attribution() -> str:
    """The shipped ERA5 sample's licence and attribution, from sample_data/PROVENANCE.md."""
    path = Path(__file__).resolve().parent.parent / "sample_data" / "PROVENANCE.md"
    try:
        text = path.read_text()
    except OSError:
        return _SAMPLE_ATTRIBUTION
    marker = "**Data licence and attribution:**"
    start = text.find(marker)
    if start < 0:
        return _SAMPLE_ATTRIBUTION
    rest = text[start + len(marker) :]
    end = rest.find("\n- **")
    return " ".join(rest[: end if end >= 0 else None].split())


def source_licence(source: dict[str, Any]) -> tuple[str, str | None]:
    """(licence, attribution or None) of one ``data.sources`` entry."""
    path = str(source.get("path") or "")
    if path.startswith("pkg:sample_data/era5"):
        return SAMPLE_ERA5_LICENCE, _sample_attribution()
    return UNKNOWN_LICENCE, None


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None:
        return "n/a"
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)


def render_card(
    *,
    config: dict[str, Any],
    variables: list[dict[str, Any]],
    provenance: dict[str, Any],
    test: dict[str, Any] | None,
    per_variable: list[dict[str, str]],
) -> str:
    run = config["run_config"]
    model, data = config["model"], config["data"]
    name = run.get("name", provenance.get("source_run"))
    lines = [
        f"# SciGPT model card: {name} (step {provenance.get('step')})",
        "",
        f"A SciGPT ViT forecaster exported from run `{provenance.get('source_run')}` "
        f"(checkpoint `{provenance.get('checkpoint')}`) as a `scigpt-model` package. Load it "
        "with `scigpt.load_pretrained(path)`.",
        "",
        "## Model",
        "",
        f"- architecture: ViT, patch {model.get('patch_size')}, width {model.get('embed_dim')}, "
        f"depth {model.get('depth')}, heads {model.get('heads')}, MLP ratio "
        f"{model.get('mlp_ratio')}, residual forecast: {model.get('residual')}",
        f"- parameters: {provenance.get('n_params'):,}",
        f"- input: {data['history']} frames of {len(variables)} variables; forecast "
        f"{data['lead']} time step(s) ahead",
        f"- weights: {provenance.get('export_dtype')} (`model.safetensors`)",
        "",
        "## Data sources and licences",
        "",
        "| source | format | path | licence |",
        "|---|---|---|---|",
    ]
    attributions = []
    for src in run.get("data", {}).get("sources", []):
        licence, attribution = source_licence(src)
        lines.append(
            f"| {src.get('name')} | {src.get('format')} | `{src.get('path')}` | {licence} |"
        )
        if attribution:
            attributions.append(f"- {src.get('name')}: {attribution}")
    if attributions:
        lines += ["", "Attribution:", "", *attributions]
    lines += [
        "",
        f"Data manifest sha256: `{provenance.get('data_manifest_sha256')}`",
        "",
        "Variables (normalisation: (x − mean) / std):",
        "",
        "| id | variable | units | mean | std |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {v['id']} | {v['name']} | {v.get('units') or ''} | {_fmt(v['mean'], '.6g')} | "
        f"{_fmt(v['std'], '.6g')} |"
        for v in variables
    ]
    layout = provenance.get("layout") or {}
    lines += [
        "",
        "## Training",
        "",
        f"- steps: {provenance.get('step')}",
        f"- samples seen: {provenance.get('samples_seen') or 'n/a'}; tokens per sample: "
        f"{provenance.get('tokens_per_sample') or 'n/a'}",
        f"- compute: {_fmt(provenance.get('train_flops'), '.3e')} FLOPs, "
        f"{_fmt(provenance.get('device_hours'), '.3g')} device-hours",
        f"- layout: dp={layout.get('dp')} tp={layout.get('tp')} pp={layout.get('pp')} "
        f"ZeRO-{layout.get('zero_stage')}",
        f"- precision: {provenance.get('precision')}",
        f"- code: git {provenance.get('git_sha')}"
        + (" (dirty checkout)" if provenance.get("git_dirty") else ""),
        "",
        "## Evaluation",
        "",
    ]
    if test:
        lines += [
            f"Test split, {test.get('n_forecasts')} forecasts, latitude-weighted RMSE over "
            "normalised channels:",
            "",
            "| forecast | RMSE |",
            "|---|---|",
            f"| model | {_fmt(test.get('rmse_model'), '.6f')} |",
            f"| persistence | {_fmt(test.get('rmse_persistence'), '.6f')} |",
            "",
            f"Improvement over persistence: {100 * float(test.get('improvement_vs_persistence', 0)):.1f}%",  # noqa: E501
        ]
        if per_variable:
            cols = list(per_variable[0])
            lines += ["", "Per variable:", "", "| " + " | ".join(cols) + " |"]
            lines.append("|" + "---|" * len(cols))
            lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in per_variable]
    else:
        lines.append(
            "No test evaluation of this checkpoint is recorded (the run's test record is for "
            "another step, or the run has none)."
        )
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- Research use: short-range forecasts of the listed variables on grids like the "
        "training data's (same variables, units, resolution and region), from "
        f"{data['history']} consecutive input frames.",
        "- Not an operational forecast: the model is trained on the data above only and is not "
        "validated outside its training region, period or resolution; check it against "
        "persistence and climatology before relying on it.",
        "- Inputs must be in the units listed above; missing values (NaN) are read as the mean.",
        "- The data licences above apply to the training data; derived outputs may carry the "
        "providers' attribution requirements.",
        "",
    ]
    return "\n".join(lines)
