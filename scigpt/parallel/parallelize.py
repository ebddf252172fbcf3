"""The one place that turns a single-device model into the run's layout (DESIGN.md §1, §2, §4).

The model (``scigpt.models``) is single-device PyTorch built on the ``meta`` device; everything
a layout or a kernel changes is applied here, from outside, in this order (torchtitan's
``parallelize_llama`` is the model: TP → activation checkpointing → compile → FSDP):

1. **Tensor parallelism** (``tensor_parallel``): swaps each block's qkv/proj/fc1/fc2 linears for
   column/row-parallel ones built by slicing the whole ``nn.Linear``. First, because it must see
   the plain modules, and everything after it (checkpointing, compile) must see the sharded
   ones. With ``pp > 1`` each stage shards its own blocks as step 3 builds them.
2. **Sequence parallelism** (``sequence``, Ulysses through DeepSpeed's ``DistributedAttention``):
   with ``parallel.sp > 1`` each block's attention function becomes an all-to-all around it
   and the model's forward runs on the rank's band of patch rows. After step 1 (the all-to-all
   splits the tensor-parallel rank's own heads), before checkpointing and compile (which must
   see the final attention). The layout rules keep it off pipelines and ZeRO-3.
3. **Pipeline stages** (``pipeline.build_pipeline``): each rank materialises only its stage's
   layers of the meta model (the same block instances), as DeepSpeed's ``PipelineModule``.
4. **ZeRO-3 construction** (``build_zero3``): the model is built again inside
   ``deepspeed.zero.Init``, so every parameter is partitioned over the data-parallel ranks as it
   is created and no rank ever holds the whole model. (ZeRO 0-2 need nothing here: the engine
   partitions optimizer states and gradients.) The layout rules exclude ZeRO-3 with steps 1-3.
5. **Activation checkpointing** (``checkpointing``): patches the final blocks' forward
   attributes (names unchanged), after the modules are what will run, before compile.
6. **Kernel swaps**: attention kernels are looked up by name when the blocks are built, from
   the model's attention registry, into which ``register_kernels`` puts ``scigpt.kernels``'
   (it runs when this module is imported: build the meta model after importing it); here the
   grid patch embedding's forward is routed through the fused Triton kernel
   (``model.patch_embed: triton``; same parameters). After checkpointing, which never wraps the
   patch embedding, and before compile, which must trace the final functions.
7. **torch.compile** (optional, off unless asked): per block, one graph shared by every block
   (torchtitan's choice), last, so it compiles exactly what runs.

The engine (``engine.build_engine``) then wraps the result; fine-tuning adapters are applied by
the trainer between the two.
"""

from __future__ import annotations

import torch
from torch import nn

from scigpt.config import ModelConfig, RunConfig
from scigpt.kernels import fuse_patch_embed, register_attention_kernels
from scigpt.models.attention import register_attention
from scigpt.models.build import build_model, init_seed, materialise
from scigpt.models.objectives import Objectives
from scigpt.models.vit import ModelSpec, SciGPTModel
from scigpt.parallel import sequence
from scigpt.parallel.checkpointing import apply_activation_checkpointing
from scigpt.parallel.engine import deepspeed_config
from scigpt.parallel.pipeline import build_pipeline
from scigpt.parallel.tensor_parallel import apply_tensor_parallel
from scigpt.parallel.topology import ProcessGroups, Topology


def register_kernels() -> None:
    """Put the kernels' attention functions (``model.attention: triton``) into the model's
    attention registry. Idempotent; imports no Triton (the kernel loads it on first call)."""
    register_attention_kernels(register_attention)


register_kernels()  # any model built after this module is imported can name a kernel


def apply_sequence_parallel(model: nn.Module, topo: Topology, groups: ProcessGroups | None):
    """Step 2, sequence parallelism (``scigpt.parallel.sequence``): with ``topo.sp > 1``,
    Ulysses attention over ``groups.sp_group`` and the model's forward on this rank's token
    band; ``model`` unchanged otherwise."""
    if topo.sp == 1:
        return model
    return sequence.apply_sequence_parallel(model, topo.sp, groups.sp_group, groups.sp_rank)


def build_zero3(
    cfg: ModelConfig, spec: ModelSpec, ds_config: dict, *, device: str | torch.device, seed: int
) -> SciGPTModel:
    """Step 4, ZeRO-3: construct inside ``deepspeed.zero.Init`` so each parameter is
    partitioned over the data-parallel ranks as soon as it exists. Each init step gathers only
    its own parameters; rank 0's values (drawn from the step's own seed, as in a plain build,
    so both builds start identical) are broadcast to the others."""
    import deepspeed  # optional heavy dependency (slow to import): only ZeRO-3 builds need it

    with deepspeed.zero.Init(config_dict_or_path=ds_config, remote_device=None):
        model = build_model(cfg, spec, device=device)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for i, (params, init) in enumerate(model.init_steps()):
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                torch.manual_seed(init_seed(seed, i))
                init()
    return model


def apply_kernels(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Step 6: route the grid patch embedding through the fused kernel when
    ``model.patch_embed: triton`` (in place; parameters unchanged). Attention kernels were
    chosen by name when the blocks were built (``register_kernels``)."""
    if cfg.patch_embed == "triton":
        fuse_patch_embed(model)
    return model


def compile_blocks(model: SciGPTModel) -> None:
    """Step 7: ``torch.compile`` each transformer block (one graph reused by every block)."""
    for blk in model.blocks:
        blk.compile()


def parallelize(
    meta: SciGPTModel,
    cfg: RunConfig,
    topo: Topology,
    *,
    groups: ProcessGroups | None,
    device: torch.device,
    objectives: Objectives,
    compile: bool = False,
) -> nn.Module:
    """This rank's part of ``meta`` (a model built on the meta device) in ``topo``'s layout,
    materialised on ``device`` from ``cfg.seed`` — the same values whatever the layout — with
    the config's checkpointing and kernels applied (module docstring: the steps and their
    order). ``groups``: the run's ProcessGroups (needed with tp, pp or sp > 1);
    ``objectives``: the forecast loss settings a pipeline's last stage computes. Returns the
    model, or with pp > 1 the stage's ``PipelineModule``, for ``engine.build_engine``."""
    par, seed = cfg.parallel, cfg.seed
    if (topo.tp > 1 or topo.pp > 1 or topo.sp > 1) and groups is None:
        raise ValueError(f"{topo.describe()} needs the run's ProcessGroups (groups=...)")
    model: nn.Module = meta
    # 1. tensor parallelism: the whole model here; with pp > 1, per stage in step 3
    if topo.pp == 1 and topo.zero_stage != 3:
        model = materialise(meta, device, seed=seed)
        if topo.tp > 1:
            apply_tensor_parallel(model, groups.tp_group)
    # 2. sequence parallelism (slot)
    model = apply_sequence_parallel(model, topo, groups)
    # 3. pipeline stages; the stages hold meta's own block and tokenizer instances, so steps
    # 5-7 apply to ``single`` (meta) and reach them
    single = model
    if topo.pp > 1:
        model = build_pipeline(
            meta, topo=topo, groups=groups, device=device, seed=seed, objectives=objectives,
            partition=par.pp_partition, dynamic_shape=len(cfg.data.sources) > 1,
        )  # fmt: skip
    # 4. ZeRO-3 construction
    if topo.zero_stage == 3:
        n_params = sum(p.numel() for p in meta.parameters())
        model = single = build_zero3(
            cfg.model, meta.spec, deepspeed_config(cfg, topo, n_params), device=device, seed=seed
        )
    # 5. activation checkpointing
    apply_activation_checkpointing(single, par.activation_checkpointing)
    # 6. kernel swaps
    apply_kernels(single, cfg.model)
    # 7. torch.compile
    if compile:
        compile_blocks(single)
    return model


__all__ = [
    "apply_kernels",
    "apply_sequence_parallel",
    "build_zero3",
    "compile_blocks",
    "parallelize",
    "register_kernels",
]
