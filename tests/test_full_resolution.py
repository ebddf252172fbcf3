"""Issue 22: the 0.25-degree run config validates and `scigpt plan` lays it out on H200 nodes
(8 x 141 GiB) with the config's own layout among those that fit. About 2 s."""

from __future__ import annotations

from pathlib import Path

import yaml

from scigpt.cli import main
from scigpt.models.sizing import grid_tokens
from scigpt.parallel.planner import load_model

CONFIG = Path(__file__).parents[1] / "configs" / "runs" / "era5-0.25deg.yaml"


def test_era5_025deg_config_validates_and_plans_on_h200(tmp_path, capsys) -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    src = cfg["data"]["sources"][0]
    assert not Path(src["path"]).is_absolute() and len(src["variables"]) == 69
    assert (
        main(["validate", str(CONFIG), "--no-data", "-q", "--gpus", "8", "--gpu-mem", "141"]) == 0
    )
    assert grid_tokens(load_model(cfg["model"]["preset"]), 721, 1440) == 181 * 360
    out = tmp_path / "best.yaml"
    argv = ["plan", "--model", cfg["model"]["preset"], "--gpus", "8", "--gpu-mem", "141",
            "--grid", "721x1440", "--vars", "69", "--history", str(cfg["data"]["history"]),
            "--micro-batch", str(cfg["schedule"]["micro_batch_size"]), "--top", "80",
            "--max-sp", "8",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "grid 721x1440 (65160 tokens), 69 variables" in table
    par = cfg["parallel"]
    lines = table.splitlines()
    head = next(line.split() for line in lines if line.startswith("rank"))
    rows = [dict(zip(head, line.split(), strict=False)) for line in lines
            if line[:4].strip().isdigit()]  # fmt: skip
    want = {"tp": par.get("tp", 1), "pp": par.get("pp", 1), "sp": par.get("sp", 1),
            "zero": par["zero_stage"]}  # fmt: skip
    # the config's layout (sp2, ZeRO-1, data parallel over the rest) fits on the H200s
    assert any(all(r[k] == str(v) for k, v in want.items()) for r in rows), table
    best = yaml.safe_load(out.read_text())["parallel"]
    assert best.get("sp", 1) >= 2  # 65,160 tokens a sample: the planner's best splits tokens
