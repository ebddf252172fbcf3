"""``scigpt.parallel.parallelize`` on one process: what it applies, and that the values are a
plain build's.

The multi-rank steps (tensor parallelism, pipeline stages, ZeRO-3) are covered by the layout
runs of tests/test_engine.py, which train through ``parallelize``; here the model is compared
with an independent ``materialise(build_model(...))`` of the same seed (bitwise), and the
checkpointing, kernel and compile steps are checked on the result. About 4 s (3 s: importing
Triton for the fused patch embedding).
"""

from __future__ import annotations

import pytest
import torch

from scigpt.config_loader import load_config, shipped_config
from scigpt.models.attention import get_attention
from scigpt.models.build import build_model, materialise
from scigpt.models.objectives import Objectives
from scigpt.models.vit import ModelSpec
from scigpt.parallel.checkpointing import checkpointed_blocks
from scigpt.parallel.parallelize import parallelize
from scigpt.parallel.topology import Topology

SPEC = ModelSpec(num_vars=5, history=2)


def _cfg(**parallel):
    cfg = load_config(shipped_config("runs/demo.yaml")).config
    model = cfg.model.model_copy(update={"embed_dim": 64, "heads": 2, "depth": 2})
    return cfg.model_copy(
        update={"model": model, "parallel": cfg.parallel.model_copy(update=parallel)}
    )


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_one_process_model_is_the_plain_build_with_checkpointing(mode):
    cfg = _cfg(activation_checkpointing=mode)
    topo = Topology.from_config(cfg.parallel, 1)
    model = parallelize(
        build_model(cfg.model, SPEC), cfg, topo, groups=None, device=torch.device("cpu"),
        objectives=Objectives(),
    )  # fmt: skip
    ref = materialise(build_model(cfg.model, SPEC), "cpu", seed=cfg.seed)
    assert model.state_dict().keys() == ref.state_dict().keys()
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert checkpointed_blocks(model) == {i: mode for i in range(cfg.model.depth)}
    assert not checkpointed_blocks(ref)


def test_kernels_are_registered_and_swapped_and_compile_is_last():
    from scigpt.kernels import triton_attention
    from scigpt.kernels.patch_embed import fused_patch_embed_impl

    cfg = _cfg()
    cfg = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"attention": "triton",
                                                     "patch_embed": "triton"})}
    )  # fmt: skip
    assert get_attention("triton") is triton_attention  # put there when parallelize is imported
    meta = build_model(cfg.model, SPEC)
    model = parallelize(
        meta, cfg, Topology.from_config(cfg.parallel, 1), groups=None,
        device=torch.device("cpu"), objectives=Objectives(), compile=True,
    )  # fmt: skip
    assert all(blk.attn.attn_fn is triton_attention for blk in model.blocks)
    assert fused_patch_embed_impl(model) == {"tokenizer.embed": "triton"}
    assert all(blk._compiled_call_impl is not None for blk in model.blocks)  # nothing run


def test_model_parallel_layouts_need_the_process_groups():
    cfg = _cfg(tp=2)
    with pytest.raises(ValueError, match="needs the run's ProcessGroups"):
        parallelize(
            build_model(cfg.model, SPEC), cfg, Topology.from_config(cfg.parallel, 2),
            groups=None, device=torch.device("cpu"), objectives=Objectives(),
        )  # fmt: skip
