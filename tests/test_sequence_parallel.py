"""Ulysses sequence parallelism (scigpt.parallel.sequence) against one process.

Fast tests: the layout rules, the sp axis of the Topology and the cut of a 721-row ERA5 grid.
Slow tests (gloo, DeepSpeed, the demo under torchrun): one process, sp2 and dp2 x sp2 train the
same 18 samples a step for 20 steps (the demo's 41 x 41 grid is 11 patch rows, so sp2 pads one
patch row: the padded rows' masking is exercised by every slow test); the sp2 run's checkpoint
resumes bitwise at sp2 and reshards into one process; the Triton attention kernel (interpreter,
fp32) runs inside the all-to-all. Tolerances: relative 1e-5 (fp32, reductions in another order),
test_engine's.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from scigpt.config import ParallelConfig
from scigpt.layout_rules import LayoutError, check_layout
from scigpt.models.encodings import patch_centres
from scigpt.parallel.sequence import RowSplit, key_padding_mask, padded_lat, shard_batch
from scigpt.parallel.topology import Topology
from tests.conftest import free_port, job_env, run_job
from tests.test_engine import MB9, MB18, _assert_matches_single, _curves, _torchrun

# --- one process ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "rule", "says"),
    [
        ({"sp": 3, "heads": 4}, "sp-heads", "parallel.sp=3 x parallel.tp=1 = 3 does not divide"),
        ({"sp": 2, "tp": 4, "heads": 4}, "sp-heads", "choose sp x tp from [1, 2, 4]"),
        ({"sp": 2, "pp": 2}, "sp-pp", "pipeline engine has no sequence axis"),
        ({"sp": 2, "zero_stage": 3}, "sp-zero3", "set zero_stage: 1 or 2"),
        ({"sp": 2, "tp": 2, "world_size": 6}, "world", "tp x parallel.pp x parallel.sp = 2 x 1"),
        ({"sp": 4, "patch_rows": 3}, "sp-rows", "use sp <= 3"),
    ],
)
def test_layout_rules_refuse_with_the_reason(layout, rule, says) -> None:
    args = {"tp": 1, "pp": 1, "zero_stage": 1, **layout}
    with pytest.raises(LayoutError, match=re.escape(says)) as err:
        check_layout(**args)
    assert err.value.problem.rule == rule
    check_layout(tp=2, pp=1, sp=2, zero_stage=1, heads=4, world_size=8)  # dp2 x tp2 x sp2


def test_topology_sp_is_innermost() -> None:
    topo = Topology.from_config(ParallelConfig(tp=2, sp=2), 8)
    assert (topo.dp, topo.tp, topo.sp, topo.world_size) == (2, 2, 2, 8)
    assert topo.sp_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert topo.tp_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert topo.dp_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert topo.sp_dp_groups() == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert [topo.dp_rank(r) for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]  # same batches
    assert topo.to_dict()["sp"] == 2 and topo.describe().endswith("sp=2 zero=1")
    # sp = 1: the layout (and the checkpoint record) of earlier releases
    old = Topology(dp=2, tp=2, pp=2)
    assert [old.rank_of(dp_rank=d, pp_rank=p, tp_rank=t) for d in (0, 1) for p in (0, 1)
            for t in (0, 1)] == list(range(8))  # fmt: skip
    assert "sp" not in old.to_dict() and Topology.of(**old.to_dict()) == old


def test_era5_rows_are_cut_into_whole_patch_rows() -> None:
    """721 latitudes at patch 4 (181 patch rows, a prime) over sp = 2: one padding patch row,
    masked as keys and out of the loss, with the positions one process gives each token."""
    split = RowSplit(721, 4, 2)
    assert (split.patch_rows, split.padded_patch_rows, split.rows) == (181, 182, 364)
    lat = torch.linspace(90, -90, 721, dtype=torch.float64)
    b, v, w = 1, 2, 8
    batch = {
        "fields": torch.randn(b, v, 2, 721, w, dtype=torch.float64),
        "target": torch.randn(b, v, 721, w),
        "lat": lat,
        "lon": torch.arange(w, dtype=torch.float64),
    }
    bands = [shard_batch(batch, split, r) for r in range(2)]
    fields = torch.cat([p["fields"] for p in bands], -2)
    assert torch.equal(fields[..., :721, :], batch["fields"]) and not fields[..., 721:, :].any()
    mask = torch.cat([p["mask"] for p in bands], -2)
    assert mask[..., :721, :].all() and not mask[..., 721:, :].any()
    # every band's patch centres are the whole grid's, bit for bit
    whole = patch_centres(lat, 4)  # (181,)
    band = torch.cat([patch_centres(p["lat"], 4) for p in bands])  # (182,)
    assert torch.equal(band[:181], whole)
    assert padded_lat(lat, 728)[721] == pytest.approx(-90.25)
    keep = key_padding_mask(split, 2, b, "cpu")
    assert keep.shape == (1, 182 * 2) and int(keep.sum()) == 181 * 2
    assert key_padding_mask(RowSplit(720, 4, 2), 2, b, "cpu") is None  # 180 rows: no padding


# --- gloo, DeepSpeed, torchrun ---------------------------------------------------------------

# sp2 keeps its step-10 checkpoint (resume and reshard start there).
KEEP10 = ["--set", "checkpoint.every=10", "--set", "checkpoint.keep_last=2"]
SP2 = ["--set", "parallel.sp=2", *MB18, *KEEP10]
SP_LAYOUTS = {"one": (1, MB18), "sp2": (2, SP2), "dp2xsp2": (4, ["--set", "parallel.sp=2", *MB9])}


@pytest.fixture(scope="module")
def sp_runs(tmp_path_factory, torch_extensions_dir) -> dict[str, Path]:
    """The 20-step demo at one process, sp2 and dp2 x sp2 (one launch each, shared)."""
    root = tmp_path_factory.mktemp("sp")
    for name, (nproc, extra) in SP_LAYOUTS.items():
        _torchrun(root, name, torch_extensions_dir, nproc, *extra)
    return {name: root / name for name in SP_LAYOUTS}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sp2", "dp2xsp2"])
def test_sequence_parallel_matches_one_process(sp_runs, name):
    _assert_matches_single(sp_runs["one"], sp_runs[name])
    prov = json.loads((sp_runs[name] / "provenance.json").read_text())
    assert "sp=2" in prov["topology"], prov["topology"]
    info = json.loads((sp_runs[name] / "checkpoints" / "step_00000020" / "scigpt.json").read_text())
    assert info["layout"]["sp"] == 2


def _back_to_step_10(src: Path, dest: Path) -> Path:
    """A copy of a finished run as if it had stopped after its step-10 checkpoint."""
    shutil.copytree(src, dest)
    ck = dest / "checkpoints"
    shutil.rmtree(ck / "step_00000020")
    (ck / "latest").write_text("step_00000010")
    if (ck / "best").is_file() and (ck / "best").read_text() == "step_00000020":
        (ck / "best").unlink()
    lines = (dest / "metrics.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln).get("kind") != "test"]
    (dest / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    return dest


@pytest.mark.slow
def test_sp2_resumes_bitwise_and_reshards_to_one_process(sp_runs, tmp_path, torch_extensions_dir):
    """From sp2's step-10 checkpoint: at sp2, steps 11-20 are the uninterrupted run's, bitwise;
    at one process the weights reshard (step 11's loss, computed from them, agrees to 1e-5)."""
    sp2 = sp_runs["sp2"]
    same = _back_to_step_10(sp2, tmp_path / "same")
    _torchrun(tmp_path, "same", torch_extensions_dir, 2, *SP_LAYOUTS["sp2"][1], "--resume")
    assert _curves(same) == _curves(sp2)  # bitwise: weights, AdamW, data stream, RNG
    moved = _back_to_step_10(sp2, tmp_path / "moved")
    proc = _torchrun(
        tmp_path, "moved", torch_extensions_dir, 1, *MB18, *KEEP10, "--resume", steps=11
    )
    assert "from world=2 dp=1 tp=1 pp=1 sp=2 zero=1 to world=1 dp=1 tp=1 pp=1 zero=1" in (
        proc.stderr
    )
    assert _curves(moved)[11][0] == pytest.approx(_curves(sp2)[11][0], rel=1e-5)


@pytest.mark.slow
def test_triton_attention_inside_the_all_to_all(torch_extensions_dir, tmp_path):
    """The Triton kernel (interpreter, fp32) as the local attention of sp2, padded rows
    included: loss, forecast and gradients (summed over the ranks) equal the model with fp32
    PyTorch attention on one device (tests/probes/sp_probe.py) to relative 1e-5."""
    env = {**job_env(torch_extensions_dir), "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(Path(__file__).parent / "probes" / "sp_probe.py")]  # fmt: skip
    _, report = run_job(cmd, env, tmp_path, 240)
    records = [json.loads((tmp_path / f"sp_probe_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in records] == [0, 1], report
    for r in records:
        assert r["out_shape"] == [2, 3, 10, 12], r  # cropped to the 10 rows
        assert r["block_grad"] > 0, r  # gradients reach the attention
        assert r["local_attention"] == "triton_attention", r
        for key in ("loss_rel", "out_rel", "grad_rel"):
            assert r[key] < 1e-5, (key, r)


@pytest.mark.slow
def test_planner_predicts_what_each_sp_rank_holds(sp_runs):
    """`scigpt plan`'s parameter and optimizer bytes per rank against memory.json of every rank
    of sp2 and dp2 x sp2 (ZeRO-1 partitions over the dp x sp ranks): within 10%."""
    import yaml

    from scigpt.config_loader import validate
    from scigpt.models.vit import ModelSpec
    from scigpt.parallel import planner

    for name in ("sp2", "dp2xsp2"):
        run = sp_runs[name]
        mem = json.loads((run / "memory.json").read_text())
        cfg = validate(yaml.safe_load((run / "config.yaml").read_text()))
        lay = planner.Layout(**mem["layout"], activation_checkpointing="none")
        assert lay.sp == 2
        for r in mem["ranks"]:
            pred = planner.predict_memory(
                cfg.model, ModelSpec(num_vars=14, history=cfg.data.history), lay, tokens=121,
                micro_batch=cfg.schedule.micro_batch_size, vars_per_sample=14,
                precision=cfg.precision,
            )  # fmt: skip
            assert pred.params == pytest.approx(r["params"], rel=0.10), (name, r, pred)
            assert pred.optimizer == pytest.approx(r["optimizer"], rel=0.10), (name, r, pred)


def test_planner_divides_activations_by_sp_and_charges_the_all_to_all() -> None:
    """At 0.25 degrees (721 x 1440, patch 4: 65,160 tokens) vit-10b fits eight 141 GiB GPUs only
    with sp; a rank's activations are one process's / sp; the all-to-all time is counted."""
    from scigpt.models.sizing import grid_tokens
    from scigpt.models.vit import ModelSpec
    from scigpt.parallel import planner
    from scigpt.parallel.step_time import estimate_step_time

    model, spec = planner.load_model("vit-10b"), ModelSpec(100, 2)
    tokens = grid_tokens(model, 721, 1440)
    assert tokens == 65160
    kw = dict(tokens=tokens, micro_batch=1, vars_per_sample=100, precision="bf16")
    act = {
        sp: planner.predict_memory(model, spec, Topology(dp=8 // sp, sp=sp), **kw).activations
        for sp in (1, 2, 8)
    }
    assert act[2] == pytest.approx(act[1] / 2, rel=1e-4)
    assert act[8] == pytest.approx(act[1] / 8, rel=1e-3)
    steps = {
        sp: estimate_step_time(
            model, spec, Topology(dp=8 // sp, sp=sp), grad_accum=1, gpus_per_node=8, **kw
        )
        for sp in (1, 8)
    }
    assert steps[1].sp_comm_s == 0 < steps[8].sp_comm_s < steps[8].compute_s
    with pytest.raises(planner.NoLayoutFits):
        planner.plan(model, spec, 8, gpus_per_node=8, gpu_mem_gib=141, **kw)
    rows = planner.plan(model, spec, 8, gpus_per_node=8, gpu_mem_gib=141, max_sp=8, **kw)
    assert rows and all(r.layout.sp > 1 for r in rows)
    assert " sp " in planner.render_table(rows).splitlines()[0] + " "
    assert "  sp: " in planner.config_fragment(rows[0])
