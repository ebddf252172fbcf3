"""`scigpt transfer`: the report's arithmetic by hand, the spec's checks, and a tiny real
experiment (pretrain on Poisson + advection-diffusion, fine-tune vs scratch on held-out
Helmholtz, 3 seeds) in which the pretrained arm must beat scratch at the smallest size by more
than the seed spread."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from scigpt.sweep.transfer import TransferSpec, summarise, verdicts
from tests.conftest import job_env


def test_summary_and_verdict_by_hand():
    rows = [
        {"arm": "pretrained", "fraction": 0.1, "seed": s, "train_samples": 8, "m": v}
        for s, v in enumerate([0.50, 0.52, 0.51])
    ] + [
        {"arm": "scratch", "fraction": 0.1, "seed": s, "train_samples": 8, "m": v}
        for s, v in enumerate([0.60, 0.66, 0.63])
    ]  # fmt: skip
    summary = summarise(rows, "m")
    p = next(r for r in summary if r["arm"] == "pretrained")
    assert p["mean"] == pytest.approx(0.51, rel=1e-12)
    assert p["std"] == pytest.approx(0.01, rel=1e-9)  # ddof 1: sqrt((1e-4 + 1e-4 + 0) / 2)
    (v,) = verdicts(summary)
    assert v["margin"] == pytest.approx(0.12, rel=1e-9)
    assert v["spread"] == pytest.approx(0.06, rel=1e-9)  # scratch 0.60..0.66
    assert v["beyond_spread"]
    rows[3]["m"] = 0.55  # a scratch seed as good as the pretrained ones: spread 0.11 > margin
    (v,) = verdicts(summarise(rows, "m"))
    assert v["margin"] == pytest.approx(0.1033, abs=1e-4) and not v["beyond_spread"]


def test_spec_needs_three_seeds_and_known_keys():
    base = {"name": "t", "pretrain": {"config": "a.yaml"},
            "downstream": {"config": "b.yaml", "fractions": [0.5], "seeds": [0, 1, 2]}}  # fmt: skip
    TransferSpec.model_validate(base)
    with pytest.raises(ValueError, match="at least 3"):
        TransferSpec.model_validate({**base, "downstream": {**base["downstream"], "seeds": [0]}})
    with pytest.raises(ValueError, match="Extra inputs"):
        TransferSpec.model_validate({**base, "pretrian": {}})


@pytest.mark.slow
def test_tiny_transfer_pretrained_beats_scratch_beyond_seed_spread(tmp_path, torch_extensions_dir):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "name: ci-transfer\n"
        "pretrain: {config: runs/transfer-pretrain.yaml, set: {schedule.steps: 200}}\n"
        "downstream:\n"
        "  config: runs/transfer-helmholtz.yaml\n"
        "  set: {schedule.steps: 40}\n"
        "  fractions: [0.05, 0.25]\n"
        "  seeds: [0, 1, 2]\n"
    )
    out = tmp_path / "exp"
    proc = subprocess.run(
        [sys.executable, "-m", "scigpt", "transfer", str(spec), "--out", str(out)],
        env=job_env(torch_extensions_dir), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "points.csv") as f:
        points = list(csv.DictReader(f))
    assert len(points) == 12  # 2 sizes x 3 seeds x 2 arms
    small = [p for p in points if float(p["fraction"]) == 0.05]
    pre = [float(p["rmse_model"]) for p in small if p["arm"] == "pretrained"]
    scr = [float(p["rmse_model"]) for p in small if p["arm"] == "scratch"]
    margin = sum(scr) / 3 - sum(pre) / 3
    spread = max(max(pre) - min(pre), max(scr) - min(scr))
    assert margin > spread, (pre, scr)
    assert (out / "transfer.png").is_file()
    assert "beyond seed spread" in (out / "report.md").read_text()
    # the same models: the scratch arm trained the package's architecture
    pkg_model = json.loads((out / "package" / "config.json").read_text())["model"]
    scratch_cfg = (out / "runs" / "scratch-f0.05-s0" / "config.yaml").read_text()
    assert f"embed_dim: {pkg_model['embed_dim']}" in scratch_cfg
    # operator models have no lead time: evaluate and predict say so instead of rolling out
    from scigpt.cli import main

    pkg = out / "package"
    assert main(["evaluate", str(pkg), "runs/transfer-helmholtz.yaml",
                 "--out", str(tmp_path / "ev")]) == 2  # fmt: skip
    assert main(["predict", str(pkg), str(spec), "--lead", "1"]) == 2
    # a rerun starts nothing and reports again
    again = subprocess.run(
        [sys.executable, "-m", "scigpt", "transfer", str(spec), "--out", str(out)],
        env=job_env(torch_extensions_dir), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0 and "beyond the spread" in again.stdout, again.stderr[-2000:]
