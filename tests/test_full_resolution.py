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
            "--micro-batch", str(cfg["schedule"]["micro_batch_size"]), "--top", "50",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "grid 721x1440 (65160 tokens), 69 variables" in table
    par = cfg["parallel"]
    rows = [line.split() for line in table.splitlines() if line[:4].strip().isdigit()]
    # columns: rank dp tp pp zero ckpt ...; the config's (tp, pp 1, zero) fits on the H200s
    assert any(r[2] == str(par["tp"]) and r[3] == "1" and r[4] == str(par["zero_stage"])
               for r in rows), table  # fmt: skip
    assert yaml.safe_load(out.read_text())["parallel"]["tp"] >= 1
