"""The layout rules are stated once and asked everywhere; Topology's ranks and groups.

Each rule is broken on purpose and the same message must come back from the config
(``RunConfig``), the planner (``layout_problem``), the engine (``build_engine``, before DeepSpeed
is imported) and the world-size check (``Topology.from_config``). Topology's rank arithmetic is
compared with a brute-force enumeration of the rank formula. Runs in about 1 s (no processes).
"""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch
from pydantic import ValidationError

from scigpt.config import ModelConfig, ParallelConfig, RunConfig
from scigpt.config_loader import load_config, shipped_config
from scigpt.layout_rules import LayoutError, check_layout, layout_problems
from scigpt.parallel.engine import build_engine
from scigpt.parallel.planner import Layout, enumerate_layouts, layout_problem
from scigpt.parallel.topology import Topology

MODEL = ModelConfig(patch_size=4, embed_dim=96, depth=3, heads=6, mlp_ratio=4.0)


@pytest.fixture(scope="module")
def demo() -> dict:
    return load_config(shipped_config("runs/demo.yaml")).config.model_dump(mode="json")


def _config(demo: dict, topo: Topology, precision: str) -> RunConfig:
    raw = dict(demo, model=MODEL.model_dump(mode="json"), precision=precision)
    raw["parallel"] = {"tp": topo.tp, "pp": topo.pp, "zero_stage": topo.zero_stage}
    return RunConfig.model_validate_json(json.dumps(raw))


# (layout, precision, rule it breaks): one per rule the config can see
BROKEN = [
    (Topology(1, 4, 1, 1), "fp32", "tp-heads"),  # 4 does not divide 6 heads
    (Topology(1, 1, 4, 1), "fp32", "pp-depth"),
    (Topology(1, 2, 1, 2), "fp32", "tp-zero"),
    (Topology(1, 1, 2, 2), "fp32", "pp-zero"),
    (Topology(1, 1, 2, 0), "bf16", "pp-bf16"),
]


@pytest.mark.parametrize(("topo", "precision", "rule"), BROKEN, ids=[b[2] for b in BROKEN])
def test_one_message_from_config_planner_and_engine(demo, topo, precision, rule):
    problems = layout_problems(
        tp=topo.tp, pp=topo.pp, zero_stage=topo.zero_stage, heads=MODEL.heads,
        embed_dim=MODEL.embed_dim, mlp_ratio=MODEL.mlp_ratio, depth=MODEL.depth,
        precision=precision,
    )  # fmt: skip
    assert [p.rule for p in problems] == [rule]
    message = problems[0].message
    with pytest.raises(ValidationError) as exc:
        _config(demo, topo, precision)
    assert message in str(exc.value)
    assert layout_problem(MODEL, topo, gpus_per_node=8, precision=precision) == message
    ok = _config(demo, Topology(1), precision)  # a valid run config; the engine gets ``topo``
    with pytest.raises(LayoutError, match="^" + re.escape(message)):
        build_engine(torch.nn.Linear(2, 2), ok, topo)


def test_world_size_and_node_rules():
    with pytest.raises(LayoutError) as exc:
        Topology.from_config(ParallelConfig(tp=2, pp=2), 6)
    assert exc.value.problem.rule == "world"
    assert "world size 6 is not divisible" in str(exc.value)
    assert "node of 4 GPUs" in layout_problem(
        MODEL, Layout(1, 6, 1, 1, "none"), gpus_per_node=4, precision="fp32"
    )
    check_layout(tp=2, pp=2, zero_stage=1, world_size=8)  # valid: no exception


def test_planner_enumerates_exactly_the_valid_layouts():
    """Every (dp, tp, pp, ZeRO, checkpointing) of 8 GPUs: enumerated iff no rule is broken."""
    got = {(t.dp, t.tp, t.pp, t.zero_stage, t.activation_checkpointing)
           for t in enumerate_layouts(MODEL, 8, gpus_per_node=4, precision="bf16")}  # fmt: skip
    want = set()
    for tp, pp, zero, ckpt in itertools.product(
        (1, 2, 4, 8), (1, 2, 4, 8), (0, 1, 2, 3), ("none", "selective", "full")
    ):
        if 8 % (tp * pp):
            continue
        if not layout_problems(
            dp=8 // (tp * pp), tp=tp, pp=pp, zero_stage=zero, activation_checkpointing=ckpt,
            heads=MODEL.heads, embed_dim=MODEL.embed_dim, mlp_ratio=MODEL.mlp_ratio,
            depth=MODEL.depth, precision="bf16", gpus_per_node=4,
        ):  # fmt: skip
            want.add((8 // (tp * pp), tp, pp, zero, ckpt))
    assert got == want and len(got) > 10


@pytest.mark.parametrize(("dp", "tp", "pp"), [(2, 2, 2), (3, 1, 2), (1, 4, 1), (4, 1, 1)])
def test_topology_ranks_and_groups(dp, tp, pp):
    topo = Topology(dp, tp, pp)
    world = dp * tp * pp
    assert topo.world_size == topo.world == world
    coords = {}
    for d, p, t in itertools.product(range(dp), range(pp), range(tp)):
        rank = (d * pp + p) * tp + t  # the documented layout, written out
        assert topo.rank_of(dp_rank=d, pp_rank=p, tp_rank=t) == rank
        coords[rank] = (d, p, t)
    assert sorted(coords) == list(range(world))
    for rank, (d, p, t) in coords.items():
        assert (topo.dp_rank(rank), topo.pp_rank(rank), topo.tp_rank(rank)) == (d, p, t)
        assert topo.tp_group_of(rank) == [r for r, c in coords.items() if c[:2] == (d, p)]
        assert topo.dp_group_of(rank) == [r for r, c in coords.items() if c[1:] == (p, t)]
    for groups, size in ((topo.tp_groups(), tp), (topo.dp_groups(), dp)):
        assert sorted(r for g in groups for r in g) == list(range(world))  # a partition
        assert {len(g) for g in groups} == {size}


def test_checkpointing_is_not_part_of_the_sharding():
    """A checkpoint records dp/tp/pp/ZeRO; resuming with another checkpointing mode must not
    count as another layout (no resharding)."""
    run = Topology.from_config(ParallelConfig(activation_checkpointing="full"), 2)
    saved = Topology.of(**run.to_dict())
    assert saved == run and saved.same_sharding(run)
    assert run.activation_checkpointing == "full" and "checkpointing full" in run.label()
    assert Topology(2, zero_stage=3) != Topology(2, zero_stage=1)


def test_config_attention_names_are_the_registry_after_parallelize():
    """The config states the attention names without importing models or kernels; they must be
    exactly what the registry holds once parallelize has registered the kernels."""
    import scigpt.parallel.parallelize  # noqa: F401  (registers the kernels)
    from scigpt.config import ATTENTION_NAMES
    from scigpt.models.attention import available_attention

    assert sorted(ATTENTION_NAMES) == available_attention()
