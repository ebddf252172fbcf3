"""Fine-tuning a series forecaster from a series package (issue 26's comparison): a tiny binned
run pretrained on GHCN (prcp, tmax, tmin) is exported, then fine-tuned on CAMELS discharge,
where streamflow is a new variable. At step 0 the fine-tuned model holds the package's weights —
the pretrained variables' rows and the backbone, compared with the package's safetensors read
directly — and the run ends with a test record of streamflow scores.

One subprocess (pretrain 3 steps, export, fine-tune 3 steps): ~20 s at OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import job_env

ROOT = Path(__file__).resolve().parents[1]
GHCN = ROOT / "tests" / "data" / "station" / "ghcn" / "AGE00147704.dly"
PRE_VARS = ["prcp", "tmax", "tmin"]
# per-variable tensors a binned series model uses (rows = variable ids), named independently of
# scigpt.models.vit._PER_VARIABLE
PER_VARIABLE = ("tokenizer.series_embed.weight", "tokenizer.series_embed.bias",
                "tokenizer.var_embed", "tokenizer.aggregate.gate", "series_head.bin_proj",
                "series_head.bin_log_width")  # fmt: skip
SHORT = ["schedule.steps=3", "schedule.warmup_steps=1", "eval.every=3", "logging.progress=false",
         "logging.tensorboard=false"]  # fmt: skip

_RUN = """
import json, sys
from pathlib import Path
import torch
from scigpt.config_loader import load_config
from scigpt.export.writer import export_run
from scigpt.train.callbacks import Callback
from scigpt.train.trainer import Held, Trainer, train
root, pre_cfg, sets = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
store = lambda n: "data.store=" + json.dumps(str(root / n))
train(load_config(pre_cfg, sets + [store("pre-store")]), run_name="pre", root=root)
export_run(root / "pre", root / "pkg", diagnostics=False)

class AtStart(Callback):  # the model the first step trains, before any update
    def on_train_start(self, trainer):
        state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        torch.save({"state": state, "names": list(trainer.data.registry.names)},
                   root / "step0.pt")

ft = sets + [store("ft-store"), "finetune.package=" + json.dumps(str(root / "pkg")),
             "data.train_fraction=0.25"]
trainer = Trainer(load_config("series/camels-bins.yaml", ft), run_name="ft", root=root,
                  held=Held())
trainer.callbacks.append(AtStart())
trainer.run()
"""


def test_series_package_fine_tunes_on_camels(tmp_path, torch_extensions_dir):
    # the benchmark's pretraining config, GHCN only (FLUXNET's ingest would double the time)
    cfg = yaml.safe_load((ROOT / "benchmarks" / "series" / "pretrain-bins.yaml").read_text())
    ghcn = next(s for s in cfg["data"]["sources"] if s["name"] == "ghcn")
    ghcn["path"] = str(GHCN)
    ghcn["splits"] = cfg["data"]["splits"] = {
        "train": {"start": "1935-01-01T00:00", "end": "1935-12-31T00:00"},
        "val": {"start": "1936-01-01T00:00", "end": "1936-03-31T00:00"},
        "test": {"start": "1936-04-01T00:00", "end": "1936-06-30T00:00"},
    }
    cfg["data"]["sources"] = [ghcn]
    pre = tmp_path / "pretrain.yaml"
    pre.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, str(tmp_path), str(pre), json.dumps(SHORT)],
        env=job_env(torch_extensions_dir), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    package = load_file(tmp_path / "pkg" / "model.safetensors")
    variables = json.loads((tmp_path / "pkg" / "variables.json").read_text())
    variables = variables["variables"] if isinstance(variables, dict) else variables
    assert [v["name"] for v in variables] == PRE_VARS
    step0 = torch.load(tmp_path / "step0.pt")
    state, names = step0["state"], step0["names"]
    # the package's variables keep their ids; CAMELS's streamflow is appended
    assert names == [*PRE_VARS, "streamflow"]
    n = len(PRE_VARS)
    for key in PER_VARIABLE:
        assert state[key].shape[0] == n + 1, (key, state[key].shape)
    # every package tensor is in the model at step 0, exactly (a load is a copy: tolerance 0):
    # whole, or its variables' rows where the model has grown a row for streamflow
    for key, value in package.items():
        got = state[key]
        if key in PER_VARIABLE or got.shape != value.shape:
            assert got.shape == (n + 1, *value.shape[1:]), (key, got.shape, value.shape)
            got = got[:n]
        assert torch.equal(got, value.float()), key
    # the new variable's gate starts closed: the package's forecasts are unchanged at step 0
    assert torch.all(state["tokenizer.aggregate.gate"][n] == 0)

    records = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").open()]
    test = [r for r in records if r["kind"] == "test"][-1]
    for key in ("model_crps_lead1", "model_mase_lead1", "persistence_crps_lead1"):
        value = test[f"streamflow/{key}"]
        assert value == value and value >= 0, (key, value)  # finite scores, not NaN
    assert not any(k.startswith(("prcp/", "tmax/", "tmin/")) for k in test)  # inputs only
