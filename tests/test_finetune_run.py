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
