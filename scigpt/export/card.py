"""MODEL_CARD.md of a model package: data and licences, training, evaluation, intended use.

``render_card`` writes the card at export; ``evaluation_markdown`` turns the rows that
``scigpt evaluate`` scored into the card's evaluation section, ``fill_card`` puts that section
into a card (replacing an earlier one) and ``update_package_card`` rewrites a package's card
and its checksum line. Evaluation hands this module its rows; nothing here imports
``scigpt.eval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scigpt.atomic import atomic_write_text, sha256_file
from scigpt.diagnostics.htsr import summary_markdown
from scigpt.export.verify import CARD, CHECKSUMS
from scigpt.tables import Table, fmt

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


def _fmt(x: Any, spec: str) -> str:
    return fmt(x, spec, none="n/a")


def render_card(
    *,
    config: dict[str, Any],
    variables: list[dict[str, Any]],
    provenance: dict[str, Any],
    test: dict[str, Any] | None,
    per_variable: list[dict[str, str]],
    diagnostics: dict[str, Any] | None = None,
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
    ]
    sources = Table(["source", "format", "path", "licence"])
    attributions = []
    for src in run.get("data", {}).get("sources", []):
        licence, attribution = source_licence(src)
        sources.add([str(src.get("name")), str(src.get("format")), f"`{src.get('path')}`", licence])
        if attribution:
            attributions.append(f"- {src.get('name')}: {attribution}")
    lines.append(sources.markdown())
    if attributions:
        lines += ["", "Attribution:", "", *attributions]
    lines += [
        "",
        f"Data manifest sha256: `{provenance.get('data_manifest_sha256')}`",
        "",
        "Variables (normalisation: (x − mean) / std):",
        "",
        Table(
            ["id", "variable", "units", "mean", "std"],
            [{**v, "variable": v["name"], "units": v.get("units") or ""} for v in variables],
            specs={"mean": ".6g", "std": ".6g"},
        ).markdown(),
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
            Table(
                ["forecast", "RMSE"],
                [
                    {"forecast": "model", "RMSE": test.get("rmse_model")},
                    {"forecast": "persistence", "RMSE": test.get("rmse_persistence")},
                ],
                specs={"RMSE": ".6f"},
                none="n/a",
            ).markdown(),
            "",
            f"Improvement over persistence: {100 * float(test.get('improvement_vs_persistence', 0)):.1f}%",  # noqa: E501
        ]
        if per_variable:
            lines += ["", "Per variable:", "", Table.of(per_variable).markdown()]
    else:
        lines.append(
            "No test evaluation of this checkpoint is recorded (the run's test record is for "
            "another step, or the run has none)."
        )
    if diagnostics is not None:
        lines += [
            "",
            "## Weight diagnostics (HTSR)",
            "",
            "Power-law exponent α of each weight matrix's eigenvalue spectrum (heavy-tailed "
            "self-regularization; α of 2–6 is the range of well-trained layers). Full table: "
            "`scigpt diagnose` on this package.",
            "",
            summary_markdown(diagnostics),
        ]
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


# ---- the evaluation section (rows from ``scigpt evaluate``) -------------------------------------
MARK_BEGIN = "<!-- scigpt-evaluate:begin -->"
MARK_END = "<!-- scigpt-evaluate:end -->"


def evaluation_markdown(gridded: list[dict[str, Any]], series: list[dict[str, Any]]) -> str:
    """The model card's ``scigpt evaluate`` section: RMSE/ACC per variable and lead (the
    gridded rows), and the pooled head's scores (the ``kind: pooled`` series rows)."""
    scores = Table(["variable", "units", "lead (h)", "RMSE", "bias", "ACC", "RMSE persistence"])
    for r in gridded:
        scores.add([r["variable"], r["units"], r["lead_hours"], r["rmse"], r["bias"], r["acc"],
                    r["rmse_persistence"]])  # fmt: skip
    lines = [
        "### WeatherBench-2 scores (`scigpt evaluate`)",
        "",
        "Area-weighted RMSE (squared error averaged over space and time, root last), bias and "
        "ACC against the climatology, physical units.",
        "",
        scores.markdown(),
    ]
    pooled = [r for r in series if r["kind"] == "pooled"]
    if pooled:
        table = Table(["source", "target", "n", "MAE", "RMSE", "accuracy"])
        for r in pooled:
            table.add([r["source"], r["target"], r["n"], r.get("mae"), r.get("rmse"),
                       r.get("accuracy")])  # fmt: skip
        lines += ["", table.markdown()]
    return "\n".join(lines) + "\n"


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


def update_package_card(pkg: Path, section: str) -> None:
    """Rewrite the package's MODEL_CARD.md with the evaluation ``section`` and its checksum
    line, each file atomically (the card first; a crash between leaves a checksum mismatch
    that ``load_pretrained`` reports, never a silently wrong card)."""
    card = (pkg / CARD).read_text()
    atomic_write_text(pkg / CARD, fill_card(card, section))
    lines = []
    for line in (pkg / CHECKSUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        lines.append(f"{sha256_file(pkg / CARD) if name == CARD else digest}  {name}\n")
    atomic_write_text(pkg / CHECKSUMS, "".join(lines))
