"""`scigpt finetune PACKAGE CONFIG` end to end: a package pretrained on 10 of the demo's 14
variables is fine-tuned on all 14 (4 new variables appended to its registry) with a frozen
backbone and with LoRA; the LoRA run exports as a plain package that fine-tunes again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scigpt.parallel.reshard import client_state, consolidate
from tests.conftest import job_env

COMMON = ["--set", "logging.progress=false", "--set", "schedule.warmup_steps=2",
          "--set", "logging.tensorboard=false", "--set", "schedule.steps=6"]  # fmt: skip
PRE_VARS = "[d2m, sp, tcw, u10, v10, q850, q700, q500, u850, u700]"


def _scigpt(args: list[str], tex: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "scigpt", *args], capture_output=True,
                          text=True, timeout=600, env=job_env(tex))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def package(tmp_path_factory, torch_extensions_dir) -> Path:
    root = tmp_path_factory.mktemp("ft")
    _scigpt(["demo", "--runs-dir", str(root), "--run-name", "pre", *COMMON,
             "--set", f"data.sources.0.variables={PRE_VARS}"], torch_extensions_dir)  # fmt: skip
    _scigpt(["export", str(root / "pre"), str(root / "pkg")], torch_extensions_dir)
    return root / "pkg"


def _finetune(package: Path, root: Path, name: str, mode: str, tex: str) -> Path:
    _scigpt(["finetune", str(package), "runs/demo.yaml", "--runs-dir", str(root),
             "--run-name", name, *COMMON, "--set", f"finetune.mode={mode}"], tex)  # fmt: skip
    return root / name / "checkpoints" / "step_00000006"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_finetune_keeps_the_backbone_and_appends_new_variables(
    package, tmp_path, torch_extensions_dir, mode
):
    base = load_file(package / "model.safetensors")
    ckpt = _finetune(package, tmp_path, mode, mode, torch_extensions_dir)
    names = [v["name"] for v in client_state(ckpt)["variables"]]
    # the package's 10 variables keep their ids; the data's 4 others are appended
    assert names[:10] == PRE_VARS.strip("[]").split(", ")
    assert sorted(names[10:]) == ["u500", "v500", "v700", "v850"]
    full = consolidate(ckpt)
    for key, value in base.items():
        if key.startswith("blocks."):  # backbone (LoRA: its base weights) bitwise unchanged
            assert torch.equal(full[key], value.float()), key
    # the head trains; the pretrained variables' tokenizer rows stay exactly as they were
    assert not torch.equal(full["head.weight"][:10], base["head.weight"].float())
    for key in ("tokenizer.embed.weight", "tokenizer.var_embed"):
        assert torch.equal(full[key][:10], base[key].float()), key
    assert (full["tokenizer.aggregate.gate"][10:] != 0).any()  # new variables' gates opened
    assert any(k.endswith("lora_A") for k in full) == (mode == "lora")


@pytest.mark.slow
def test_lora_run_exports_a_plain_package_that_finetunes_again(
    package, tmp_path, torch_extensions_dir
):
    ckpt = _finetune(package, tmp_path, "lora", "lora", torch_extensions_dir)
    _scigpt(["export", str(ckpt.parent.parent), str(tmp_path / "pkg2")], torch_extensions_dir)
    merged = load_file(tmp_path / "pkg2" / "model.safetensors")
    assert not any("lora" in k for k in merged)
    base, full = load_file(package / "model.safetensors"), consolidate(ckpt)
    a, b = full["blocks.0.attn.qkv.lora_A"].double(), full["blocks.0.attn.qkv.lora_B"].double()
    want = base["blocks.0.attn.qkv.weight"].double() + (16.0 / 8) * (b @ a)  # alpha / rank
    torch.testing.assert_close(merged["blocks.0.attn.qkv.weight"].double(), want, rtol=0,
                               atol=1e-7)  # fmt: skip
    again = _finetune(tmp_path / "pkg2", tmp_path, "again", "frozen", torch_extensions_dir)
    names = [v["name"] for v in client_state(again)["variables"]]
    assert len(names) == 14  # nothing new this time: the registry carried over


SEIS_CONFIG = """
name: ft-seis
data:
  sources:
    - name: era5-rhine
      format: netcdf
      unit: all
      path: pkg:sample_data/era5_rhine_2020-01-01
      variables: {pre_vars}
    - name: seisbench
      format: seisbench
      path: {waveforms}
      window: 1200
      patch: [50]
      splits:  # the catalogue's own years: 1-4 Jan 2007 train, 5-7 Jan test
        train: {{start: "2007-01-01T00:00", end: "2007-01-05T00:00"}}
        test: {{start: "2007-01-05T00:00", end: "2007-01-08T00:00"}}
  splits:
    train: {{start: "2020-01-01T00:00", end: "2020-01-01T19:00"}}
    test: {{start: "2020-01-01T19:00", end: "2020-01-01T23:00"}}
objectives: {{forecast: 1.0, pooled: 1.0, pooled_targets: [source_magnitude]}}
finetune: {{mode: frozen, train: [head, "modality:waveform"]}}
optim: {{lr: 2.0e-3}}
schedule: {{steps: 6, warmup_steps: 2, micro_batch_size: 9}}
logging: {{every: 2, progress: false, tensorboard: false}}
runtime: {{threads: 1}}
"""


@pytest.mark.slow
def test_new_modality_with_a_magnitude_head(package, tmp_path, shared_data, torch_extensions_dir):
    """A grid-pretrained package meets SeisBench waveforms (a modality it never saw, three new
    channels with all gates closed) and a new pooled regression head for the event magnitude;
    the backbone stays frozen. The exported package reproduces the run's test magnitude MAE,
    recomputed here with numpy on the same test windows."""
    import json

    import numpy as np

    from scigpt import load_pretrained
    from scigpt.data_pipeline.loader import SeriesWindowDataset, collate_series
    from scigpt.data_pipeline.store import PatchStore

    waveforms = shared_data / "seismic" / "seisbench_ipoc_pb01" / "waveforms.hdf5"
    cfg = tmp_path / "ft-seis.yaml"
    cfg.write_text(SEIS_CONFIG.format(pre_vars=PRE_VARS, waveforms=waveforms))
    _scigpt(["finetune", str(package), str(cfg), "--runs-dir", str(tmp_path), "--run-name",
             "seis"], torch_extensions_dir)  # fmt: skip
    run = tmp_path / "seis"
    full, base = (
        consolidate(run / "checkpoints" / "step_00000006"),
        load_file(package / "model.safetensors"),
    )
    for key, value in base.items():
        if key.startswith("blocks."):
            assert torch.equal(full[key], value.float()), key
    assert not torch.equal(full["tokenizer.series_embed.weight"][:10],
                           base["tokenizer.series_embed.weight"])  # fmt: skip
    assert full["pooled.proj.weight"].shape == (1, 96)
    test = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    test = next(r for r in test if r.get("kind") == "test")
    assert test["seisbench/n_windows"] == 29

    _scigpt(["export", str(run), str(tmp_path / "pkg")], torch_extensions_dir)
    pkg = load_pretrained(tmp_path / "pkg")
    assert pkg.config["spec"]["pooled"] == {"kind": "regression", "targets": ["source_magnitude"]}
    assert pkg.var_names[-3:] == ["vel_z", "vel_n", "vel_e"]
    store = PatchStore(run / "store")
    ds = SeriesWindowDataset(
        store, "seisbench", targets=["source_magnitude"], var_ids=pkg.var_ids(pkg.var_names[-3:]),
        time_range=(np.datetime64("2007-01-05T00:00"), np.datetime64("2007-01-08T00:00")),
    )  # fmt: skip
    batch = collate_series([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        pred = pkg.model.pooled(pkg.model.encode(batch))[:, 0].double().numpy()
    mae = float(np.mean(np.abs(pred - batch["targets"][:, 0].double().numpy())))
    assert abs(mae - test["seisbench/source_magnitude_mae"]) < 1e-6, (mae, test)

    # scigpt evaluate scores the series source too: the same MAE, and per-channel masked scores
    _scigpt(["evaluate", str(tmp_path / "pkg"), str(cfg), "--set", "eval.acc=false"],
            torch_extensions_dir)  # fmt: skip
    import csv

    with open(tmp_path / "pkg-eval" / "series_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    pooled = next(r for r in rows if r["kind"] == "pooled")
    assert pooled["target"] == "source_magnitude" and int(pooled["n"]) == 29
    assert abs(float(pooled["mae"]) - mae) < 1e-6
    masked = [r for r in rows if r["kind"] == "masked"]
    assert [r["channel"] for r in masked] == ["vel_z", "vel_n", "vel_e"]
    assert all(np.isfinite(float(r["masked_rmse"])) for r in masked)


@pytest.mark.slow
def test_new_lead_time_head_exports_and_finetunes_again(package, tmp_path, torch_extensions_dir):
    """finetune.lead_head at data.lead=2 adds a zero-initialised head (the package's 1-step
    head stays bitwise); the export forecasts with it and records both leads; fine-tuning that
    package at lead 1 goes back to the original head and keeps the 2-step one bitwise."""
    from scigpt import load_pretrained

    _scigpt(["finetune", str(package), "runs/demo.yaml", "--runs-dir", str(tmp_path),
             "--run-name", "lead2", *COMMON, "--set", "finetune.mode=frozen",
             "--set", "finetune.lead_head=true", "--set", "data.lead=2"],
            torch_extensions_dir)  # fmt: skip
    base = load_file(package / "model.safetensors")
    full = consolidate(tmp_path / "lead2" / "checkpoints" / "step_00000006")
    assert torch.equal(full["head.weight"][:10], base["head.weight"].float())
    assert full["lead_heads.lead2.weight"].abs().sum() > 0  # trained from zero
    _scigpt(["export", str(tmp_path / "lead2"), str(tmp_path / "pkg2")], torch_extensions_dir)
    pkg = load_pretrained(tmp_path / "pkg2")
    assert pkg.config["spec"]["leads"] == {"head": 1, "lead2": 2}
    assert pkg.config["data"]["lead"] == 2 and pkg.model.active_lead_head == "lead2"

    _scigpt(["finetune", str(tmp_path / "pkg2"), "runs/demo.yaml", "--runs-dir",
             str(tmp_path), "--run-name", "lead1", *COMMON, "--set", "finetune.mode=frozen"],
            torch_extensions_dir)  # fmt: skip
    again = consolidate(tmp_path / "lead1" / "checkpoints" / "step_00000006")
    assert torch.equal(again["lead_heads.lead2.weight"], full["lead_heads.lead2.weight"])
    assert not torch.equal(again["head.weight"], full["head.weight"])
    heads = client_state(tmp_path / "lead1" / "checkpoints" / "step_00000006")["heads"]
    assert heads["forecast_head"] is None and heads["leads"] == {"head": 1, "lead2": 2}
