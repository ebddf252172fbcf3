"""The GPU suite must start on a machine with no network (benchmarks/gpu_suite.py).

Two parts, since this machine cannot copy the GPU image (Python 3.12, CUDA torch 2.11):
a static check that the wheelhouse resolves for the image with no index, and a rehearsal of the
suite's whole control flow on the CPU — a fresh venv holding only the image's packages, the
install from the wheelhouse with no index (and no pip configuration), the same imports, stages
in order and result files, on tiny shapes. `make test` builds the wheelhouse first
(`make gpu-wheelhouse`); a missing one fails here, it is never skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / ".whl" / "gpu"
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_suite  # noqa: E402
import gpu_wheelhouse  # noqa: E402


def _wheelhouse() -> Path:
    assert (WHEELHOUSE / "BUILD_INFO.json").is_file(), (
        f"no wheelhouse at {WHEELHOUSE}: `make test` builds it (`make gpu-wheelhouse`)"
    )
    return WHEELHOUSE


def test_wheelhouse_resolves_for_the_gpu_image_with_no_index():
    summary = gpu_wheelhouse.check(_wheelhouse())
    for name in ("deepspeed", "pydantic", "pydantic_core", "hjson", "scigpt"):
        assert name in summary.replace("-", "_"), summary
    # torch and numpy come from the image (stand-ins at the image's versions), not the wheelhouse
    assert not list(WHEELHOUSE.glob("torch-*.whl")) and not list(WHEELHOUSE.glob("numpy-*.whl"))
    assert "torch-2.11.0" in summary


def test_wheelhouse_check_names_what_is_missing(tmp_path):
    broken = tmp_path / "wh"
    broken.mkdir()
    for wheel in _wheelhouse().iterdir():
        if not wheel.name.startswith("pydantic_core"):
            (broken / wheel.name).symlink_to(wheel)
    with pytest.raises(
        SystemExit, match=r"(?s)does not resolve for the GPU image.*pydantic-core==2"
    ):
        gpu_wheelhouse.check(broken)


@pytest.mark.slow
def test_rehearsal_runs_every_stage_offline(tmp_path, torch_extensions_dir):
    out = tmp_path / "rehearsal"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(torch_extensions_dir)}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--rehearsal", "--out", str(out),
         "--pack", str(tmp_path / "pack.tar.gz")],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "suite.json").read_text())
    stages = record["stages"]
    assert list(stages) == ["install", "kernel_numerics", "kernel_bench", "train_step", "mfu"]
    assert all(s["status"] == "ok" for s in stages.values()), stages
    # installed from the wheelhouse into a venv that held only the image's packages
    linked = (out / "image_linked.txt").read_text().split()
    assert "torch" in linked and "deepspeed" not in linked and "pydantic" not in linked
    assert record["wheelhouse"]["stale"] is False
    assert record["environment"]["deepspeed"] == gpu_wheelhouse.pins()["deepspeed"]
    # numerics: JUnit XML with passing tests
    suite = ET.parse(out / "kernel_tests.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 2 and suite.get("failures") == "0"
    assert suite.get("errors") == "0"
    # kernel benchmark rows record how they were timed
    for name in ("kernels_attention_smoke.json", "kernels_patch_embed_smoke.json"):
        rows = json.loads((out / name).read_text())
        assert rows and all("timing_method" in r and r["timing_rounds"] >= 1 for r in rows)
        assert all(r["timing_calls_per_round"] >= 1 for r in rows)
    steps = {r["variant"]: r for r in json.loads((out / "train_step_cpu_smoke.json").read_text())}
    assert {"plain-bf16", "zero1", "plain"} <= set(steps)
    assert steps["plain-bf16"]["numerics"] == steps["zero1"]["numerics"] == "bf16 weights" or (
        steps["zero1"]["numerics"] == "fp32"  # the CPU smoke runs the engine in fp32
    )
    assert json.loads((out / "model_flops_cpu_step.json").read_text())
    assert (tmp_path / "pack.tar.gz").stat().st_size > 0


def test_a_stage_past_its_budget_is_stopped_and_recorded(tmp_path):
    suite = gpu_suite.Suite(tmp_path / "out", budget_s=60, pack=None, rehearsal=True)
    code = "import signal, time\nprint('started', flush=True)\ntime.sleep(60)"
    res = suite.run("slow", [sys.executable, "-c", code], 1.5, dict(os.environ))
    assert res["status"] == "timeout" and res["wall_s"] < 30
    assert "started" in (tmp_path / "out" / "slow.log").read_text()
    st = gpu_suite.Stage("late", 100, 100, [[sys.executable, "-c", "pass"]])
    suite.t0 -= 55  # 5 s of the suite's budget left: too little to start a stage
    suite.stage(st, dict(os.environ))
    assert suite.record["stages"]["late"]["status"] == "skipped"
    assert json.loads((tmp_path / "out" / "suite.json").read_text())["stages"]["late"]


def test_a_stale_or_missing_wheelhouse_stops_the_suite_with_one_line(tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    info = json.loads((_wheelhouse() / "BUILD_INFO.json").read_text())
    (stale / "BUILD_INFO.json").write_text(json.dumps({**info, "source_sha256": "0" * 64}))
    for args, match in (
        (["--wheelhouse", str(stale)], "built from other sources"),
        (["--wheelhouse", str(tmp_path / "none")], "no wheelhouse"),
    ):
        out = tmp_path / f"out{len(match)}"
        assert gpu_suite.main(["--rehearsal", "--out", str(out), *args]) == 3
        record = json.loads((out / "suite.json").read_text())
        assert match in record["stages"]["install"]["reason"]


def test_first_config_subset_keeps_one_config_per_kernel(monkeypatch):
    """SCIGPT_KERNEL_CONFIGS=first (the suite's numerics stage): one compiled config per
    kernel, dtype and head dim — the first shipped one; unset: every shipped config."""
    from scigpt.kernels import flash_attention as fa
    from scigpt.kernels import patch_embed as pe

    q = torch.empty(1, 1, 1, 64, dtype=torch.bfloat16)
    x, w = torch.empty(1, dtype=torch.bfloat16), torch.empty(1, dtype=torch.float32)
    for value, many in (("first", False), ("all", True)):
        monkeypatch.setenv("SCIGPT_KERNEL_CONFIGS", value)
        for kind in ("fwd", "dkdv", "dq"):
            kept = fa._prune(kind)(fa.CONFIGS[kind], {"Q": q}, HEAD_DIM=64)
            shipped = fa.shipped_configs(kind, torch.bfloat16, 64)
            assert [fa.config_key(c) for c in kept] == [
                fa.config_key(c) for c in (shipped if many else shipped[:1])
            ]
        tuner = pe._patch_embed_fwd_tuned
        kept = tuner.early_config_prune(tuner.configs, {"x_ptr": x, "w_ptr": w})
        want = pe.FWD_CONFIGS["16bit"]
        assert [pe._shape(c) for c in kept] == (want if many else want[:1])
    monkeypatch.setenv("SCIGPT_KERNEL_CONFIGS", "some")
    with pytest.raises(ValueError, match="SCIGPT_KERNEL_CONFIGS='some'"):
        fa._prune("fwd")(fa.CONFIGS["fwd"], {"Q": q}, HEAD_DIM=64)


def test_fp32_peak_counts_tf32_only_when_enabled():
    from scigpt.train import metrics

    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert not metrics.tf32_enabled()
        torch.set_float32_matmul_precision("high")  # TF32 allowed: the tensor-core peak counts
        assert metrics.tf32_enabled()
    finally:
        torch.set_float32_matmul_precision(saved)
    assert metrics.PEAK_TFLOPS_FP32["H200"] < metrics.PEAK_TFLOPS_BF16["H200"] / 2
