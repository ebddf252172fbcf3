"""``scigpt plan``: memory per rank and step time of every valid parallel layout.

Every layout (dp, tp, pp, ZeRO stage, activation checkpointing) with dp·tp·pp = the GPU count is
sized from the config alone — nothing is built or allocated — then the layouts that fit the
device are ranked by estimated time per sample (= step time: every layout trains the same global
batch, so their steps do the same work).

Notation: Ψ = parameters held by one pipeline stage on one tensor-parallel rank, dp/tp/pp the
layout, N_p = ⌈Ψ / dp⌉ (a ZeRO partition), b = bytes per value of the training dtype (bf16: 2,
fp32: 4), s = tokens per sample, B = micro-batch, D = ``embed_dim``, a = heads, V = variables
per sample, p = patch size, m = micro-batches per optimizer step (gradient accumulation).
Sizes are bytes; GiB = 2^30 bytes.

Parameters per stage
--------------------
Counts come from ``scigpt.models.sizing.param_count``. The layer list DeepSpeed's
``PipelineModule`` partitions (``scigpt.parallel.pipeline``) is [embed (tokenizer + mask token),
block × depth, head (final norm + forecast, reconstruction and pooled heads)];
``partition_method='parameters'`` (``parallel.pp_partition``'s default) splits it with
``deepspeed.runtime.utils.partition_balanced`` on the whole model's layer parameter counts (the
same cut on every tensor-parallel rank), reimplemented exactly here (``partition_balanced``;
tests compare it with DeepSpeed's); ``blocks`` balances block counts, ``uniform`` layer counts.
Tensor parallelism (``scigpt.parallel.tensor_parallel``) divides each block's qkv/proj/fc1/fc2
matrices and the column-parallel biases (qkv, fc1) by tp; row-parallel biases (proj, fc2),
LayerNorms, tokenizer and heads are replicated.

Model states (ZeRO: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training
Trillion Parameter Models", §3: 2Ψ + 2Ψ + KΨ bytes with K = 12 for mixed-precision Adam, and
the 1/dp partitioning of stages 1-3). What DeepSpeed 0.19.8 really allocates with torch's AdamW
was read in its source and measured per rank on CPU (gloo; tensors alive after ``engine.step()``
and the allocator's peak over a step):

============  ==============  =====================  ===============  =========================
ZeRO / dtype  params          optimizer              grads            buffers (transient)
============  ==============  =====================  ===============  =========================
0 fp32        4Ψ              8Ψ (exp_avg, sq)       4Ψ               4·min(Ψ, 5e8): the engine
                                                                      flattens gradients to
                                                                      all-reduce them
0 bf16        2Ψ              12Ψ (fp32 master +     2Ψ + 4Ψ: fp32    —
                              moments)               copies made at
                                                     the step
1 (2: Ψ ≤ R)  bΨ (a flat      12·N_p: a fp32         bΨ: the full     R·b reduce bucket, made
              buffer)         partition copy         gradient until   every micro-step; or, if
                              (``single_partition_   the reduction    larger, the step's
                              of_fp32_groups``,      after backward   N_p·(2b + 4·[bf16]):
                              also in fp32) + its                     flat gradient partition,
                              moments                                 its copy and fp32 cast
2 (Ψ > R)     bΨ              12·N_p                 b·N_p: own       same as above
                                                     partition
3             b·N_p           12·N_p (fp32 master    b·N_p (a         b·P whole copies of the
                              copy even in fp32)     persistent flat  parameters ≤ 1e5 elements
                                                     partition        (dp > 1) + b·R₃ reduce
                                                     buffer)          bucket (both kept) +
                                                                      max(1.5·b·min(Ψ, 1e9)
                                                                      gathered in forward/
                                                                      backward (dp > 1);
                                                                      N_p·(b + 4·[bf16]) at the
                                                                      step)
============  ==============  =====================  ===============  =========================

R is ``scigpt.parallel.engine.bucket_elements``: min(5e8, max(2^20, parameters the engine sees)),
i.e. Ψ for ZeRO 0-2 and only P for ZeRO-3 (partitioned parameters have no local elements). The
ZeRO-3 gather factor 1.5 and max-live cap 1e9 (``stage3_max_live_parameters`` and
``stage3_max_reuse_distance`` defaults: below 1e9 parameters, everything stays gathered) are
measured. ``params`` and ``optimizer`` (master copy + moments) are what
``scigpt.parallel.memory.rank_memory`` counts into ``memory.json`` (its ``params`` and
``optimizer``), except that it does not list ``FP16_UnfusedOptimizer.fp32_groups``, the fp32
master copies of bf16 ZeRO-0 without pipeline (4Ψ, measured: they are there).
``MemoryBreakdown.persistent`` is what a rank holds between steps (params + optimizer, plus
ZeRO-3's gradient partition, whole small parameters and bucket): the number to compare with all
tensors alive after ``engine.step()``. Measured on CPU (1-4 ranks, ZeRO 0-3, fp32 and bf16,
tp 1-2): persistent within 0.2%, peak (``total``) within 0-9% over.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", §4: s·b·h·(34 + 5·a·s/h) bytes per block in 16-bit, of which 24 + 5as/h is split by
tensor parallelism), restated for this model and measured on it (values per token·D, times b
bytes, tensor-parallel parts / tp):

* block, ``none``: 4 + 12/tp (LN inputs, qkv and fc1 inputs replicated; q/k/v, attention output,
  fc1 and GELU outputs split). Dropout is 0 here and flash/SDPA kernels keep no scores, so the
  34 shrinks to 32 bytes per sbh; ``attention: math`` adds the softmax a·s²/tp per sample, and
  dropout > 0 one mask value per token·D;
* block, ``selective`` (scigpt.parallel.checkpointing): 5 + 8/tp — the GELU output is replaced
  by fc2's (matmul outputs are kept), the attention core (and its scores) is recomputed;
* block, ``full``: 1 (the block's input) per block, plus one block's ``none`` working set while
  it is recomputed;
* tokenizer (first stage): 4·V + 3 — the per-variable tensors (B, V, N, D) of the patch
  embedding, variable embedding and aggregation keys/values dominate with many variables;
* head and loss (last stage): 1 per token·D plus (3b + 10) bytes per output pixel (B·V·s·p²).

Under pipeline parallelism with the 1F1B schedule stage k holds min(m, pp − k) micro-batches in
flight (the first stage: pp). ``MemoryBreakdown.total`` adds every part — the peak when
gradients are accumulated over micro-batches (grads stay while the next micro-batch's
activations build up); with one micro-batch per step ZeRO 0-2 free the activations before the
reduction, so it over-states that peak by up to the smaller of the two.

Step time (no overlap of communication with compute is assumed: an upper bound)
---------------------------------------------------------------------------------
* compute: the slowest stage's FLOPs per micro-batch (``sizing.flops_breakdown``: 3 × forward,
  block and attention FLOPs / tp, tokenizer on the first stage and head on the last), plus
  recomputation (selective: the attention core's forward; full: the blocks' whole forward),
  over peak × MFU assumption (fp32: half the bf16 peak, TF32 tensor cores), × m;
* tp-comm: per block and micro-batch 4 all-reduces (6 with full recomputation) of B·s·D values,
  ring cost 2(tp − 1)/tp × bytes over the intra-node bandwidth (TP stays inside a node), × m;
* pp-comm: per micro-batch one activation send forward and one gradient send back, × m;
* bubble: (pp − 1) × one micro-batch of the slowest stage (the (pp−1)/(m+pp−1) share of 1F1B);
* dp-comm: ZeRO-0/1 all-reduce 2(dp−1)/dp × gradient bytes once per step; ZeRO-2 a
  reduce-scatter (dp−1)/dp per micro-batch plus the parameter all-gather after the step; ZeRO-3
  all-gathers in forward and backward plus a reduce-scatter per micro-batch, 3(dp−1)/dp; over the
  inter-node bandwidth per GPU when a data-parallel group spans nodes (ranks are
  ``(dp_i · pp + pp_i) · tp + tp_i``, so it does once (dp − 1)·tp·pp ≥ GPUs per node), else
  intra-node.

TFLOP/s per GPU counts model FLOPs only (3 × forward, no recomputation: PaLM appendix B).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from scigpt.config import ModelConfig
from scigpt.models.sizing import flops_breakdown, grid_tokens, param_count
from scigpt.models.vit import ModelSpec
from scigpt.tables import Table

GiB = 2**30
PRECISIONS = ("bf16", "fp32")
CHECKPOINTING = ("none", "selective", "full")
ZERO_STAGES = (0, 1, 2, 3)

# DeepSpeed 0.19.8 defaults the memory model depends on.
ALLREDUCE_FLATTEN = 500_000_000  # engine.MEMORY_OPT_ALLREDUCE_SIZE (ZeRO-0 gradient all-reduce)
ZERO3_PERSISTENCE = 100_000  # stage3_param_persistence_threshold: smaller params stay whole
ZERO3_MAX_LIVE = 1_000_000_000  # stage3_max_live_parameters / stage3_max_reuse_distance
ZERO3_GATHER_FACTOR = 1.5  # measured: gathered parameters plus all-gather staging

# Reserve kept free on every device: CUDA context, NCCL buffers, allocator fragmentation.
RESERVE_FRACTION, RESERVE_MIN_GIB = 0.10, 2.0
MAX_ADVICE_GPUS = 4096  # how far "more GPUs" advice looks


# --- public types -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    dp: int
    tp: int
    pp: int
    zero_stage: int
    activation_checkpointing: str

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp

    def describe(self) -> str:
        return (
            f"dp{self.dp} tp{self.tp} pp{self.pp} ZeRO-{self.zero_stage} "
            f"checkpointing {self.activation_checkpointing}"
        )


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one rank (the worst pipeline stage unless one was asked for).

    ``params``/``grads``/``optimizer``/``activations`` at their peak (module docstring);
    ``buffers``: DeepSpeed's transient communication and staging buffers at their peak;
    ``persistent``: what the rank holds between optimizer steps (after ``engine.step()``).
    """

    params: float
    grads: float
    optimizer: float
    activations: float
    buffers: float = 0.0
    persistent: float = 0.0

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.buffers


@dataclass(frozen=True)
class Hardware:
    peak_tflops: float = 989.0  # dense bf16 TFLOP/s per GPU (H100/H200 SXM)
    mfu: float = 0.45  # fraction of peak the compute reaches
    intra_bw: float = 900.0  # GB/s inside a node (NVLink, H100/H200 class)
    inter_bw: float = 25.0  # GB/s per GPU between nodes (200 Gb/s InfiniBand)


@dataclass(frozen=True)
class StepEstimate:
    seconds: float
    compute_s: float
    tp_comm_s: float
    dp_comm_s: float
    bubble_s: float
    tflops_per_gpu: float
    bottleneck: str  # compute, tp-comm, dp-comm, pp-comm or bubble
    pp_comm_s: float = 0.0


@dataclass(frozen=True)
class PlanRow:
    layout: Layout
    memory: MemoryBreakdown  # worst rank
    step: StepEstimate
    worst_stage: int
    micro_batch: int
    grad_accum: int
    precision: str = "bf16"
    context: str = ""  # what was planned, for the config fragment's comment
    partition: str = "parameters"  # parallel.pp_partition

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.layout.dp

    @property
    def seconds_per_sample(self) -> float:
        return self.step.seconds / self.global_batch


class NoLayoutFits(ValueError):
    """No layout fits the device; the message names the smallest requirement and what to
    change. ``smallest`` is the least-memory row."""

    def __init__(self, message: str, smallest: PlanRow | None):
        super().__init__(message)
        self.smallest = smallest


# --- model loading ----------------------------------------------------------------------------


def load_model(name: str) -> ModelConfig:
    """A model preset (``vit-1b``) or a preset ``.yaml`` path → ``ModelConfig``, resolved by the
    config loader exactly as ``model.preset`` in a run config."""
    from pydantic import ValidationError

    from scigpt.config_loader import ConfigError, _apply_preset

    raw = _apply_preset({"model": {"preset": name}}, "--model", Path.cwd())
    try:
        return ModelConfig.model_validate_json(json.dumps(raw["model"]))
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()]
        raise ConfigError(f"model preset {name!r}", problems) from None


def parse_grid(text: str) -> tuple[int, int]:
    """``"64x64"`` → (64, 64)."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--grid {text!r} must look like HxW, e.g. 64x64") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"--grid {text!r}: both sides must be positive")
    return h, w


# --- DeepSpeed's pipeline partition -----------------------------------------------------------


def _partition_uniform(num_items: int, num_parts: int) -> list[int]:
    # deepspeed.runtime.utils.partition_uniform
    if num_items <= num_parts:
        return [min(p, num_items) for p in range(num_parts + 1)]
    chunk, residual = divmod(num_items, num_parts)
    parts = [p * chunk for p in range(num_parts + 1)]
    for i in range(residual):
        for j in range(i + 1, num_parts + 1):
            parts[j] += 1
    return parts


@functools.lru_cache(maxsize=256)
def partition_balanced(weights: tuple[int, ...], num_parts: int) -> tuple[int, ...]:
    """Layer boundaries of ``deepspeed.runtime.utils.partition_balanced`` (the linear partition
    dynamic programme minimising max − min stage weight), reimplemented exactly: stage i holds
    layers ``parts[i]:parts[i + 1]``."""
    n, m = len(weights), num_parts
    if n <= m:
        return tuple(_partition_uniform(n, m))
    inf = math.inf
    dp_max = [[inf] * (m + 1) for _ in range(n + 1)]
    dp_min = [[inf] * (m + 1) for _ in range(n + 1)]
    dp_cost = [[inf] * (m + 1) for _ in range(n + 1)]
    position = [[0] * (m + 1) for _ in range(n + 1)]
    prefix = [0.0] * (n + 1)
    for i, w in enumerate(weights):
        prefix[i + 1] = prefix[i] + float(w)
    dp_max[0][0] = 0.0
    dp_cost[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, min(i, m) + 1):
            for k in range(i):
                seg = prefix[i] - prefix[k]
                max_sum = max(dp_max[k][j - 1], seg)
                min_sum = min(dp_min[k][j - 1], seg)
                cost = max_sum - min_sum
                if dp_cost[i][j] >= cost:
                    dp_cost[i][j], dp_max[i][j], dp_min[i][j] = cost, max_sum, min_sum
                    position[i][j] = k
    parts = [n]
    for i in reversed(range(1, m + 1)):
        parts.append(position[parts[-1]][i])
    return tuple(reversed(parts))


def _hidden(model: ModelConfig) -> int:
    return int(model.embed_dim * model.mlp_ratio)  # as vit.Block builds it


def layer_params(model: ModelConfig, spec: ModelSpec, *, tp: int = 1) -> list[int]:
    """Parameters per pipeline layer on one tensor-parallel rank: [embed, block × depth, head]."""
    pc = param_count(model, spec)
    depth, dim = model.depth, model.embed_dim
    block = pc["blocks"] // depth
    sharded = pc["blocks_matmul"] // depth + 3 * dim + _hidden(model)  # + qkv and fc1 biases
    block_local = sharded // tp + (block - sharded)
    embed = pc["tokenizer"] + pc["mask_token"]
    head = pc["norm"] + pc["heads"]
    return [embed] + [block_local] * depth + [head]


PARTITIONS = ("parameters", "blocks", "uniform")  # parallel.pp_partition


def stage_bounds(
    model: ModelConfig, spec: ModelSpec, pp: int, *, partition: str = "parameters"
) -> list[int]:
    """Layer boundaries of the ``pp`` stages (stage i: layers ``[b[i], b[i + 1])``), as
    ``scigpt.parallel.pipeline.build_pipeline`` has DeepSpeed cut them: ``parameters`` balances
    the whole model's layer parameter counts (the same on every tensor-parallel rank),
    ``blocks`` the block counts (DeepSpeed's ``type:PipeBlock``), ``uniform`` the layer counts."""
    n = model.depth + 2
    if partition == "parameters":
        return list(partition_balanced(tuple(layer_params(model, spec)), pp))
    if partition == "blocks":
        return list(partition_balanced(tuple([0] + [1] * model.depth + [0]), pp))
    if partition == "uniform":
        return _partition_uniform(n, pp)
    raise ValueError(f"pp_partition={partition!r}: choose one of {list(PARTITIONS)}")


def stage_layer_params(
    model: ModelConfig, spec: ModelSpec, pp: int, *, tp: int = 1, partition: str = "parameters"
) -> list[int]:
    """Parameters of each pipeline stage on one tensor-parallel rank, the layer list split as
    DeepSpeed's ``PipelineModule(partition_method='parameters')`` splits it (``stage_bounds``)."""
    weights = layer_params(model, spec, tp=tp)
    parts = stage_bounds(model, spec, pp, partition=partition)
    return [sum(weights[parts[i] : parts[i + 1]]) for i in range(pp)]


@dataclass(frozen=True)
class _Stage:
    index: int
    params: int
    blocks: int
    first: bool  # holds the tokenizer
    last: bool  # holds the heads


def _stages(
    model: ModelConfig, spec: ModelSpec, pp: int, tp: int, partition: str = "parameters"
) -> list[_Stage]:
    weights = layer_params(model, spec, tp=tp)
    parts = stage_bounds(model, spec, pp, partition=partition)
    n = len(weights)
    out = []
    for i in range(pp):
        lo, hi = parts[i], parts[i + 1]
        blocks = sum(1 for j in range(lo, hi) if 1 <= j <= model.depth)
        out.append(_Stage(i, sum(weights[lo:hi]), blocks, lo == 0 < hi, lo < n == hi))
    return out


@functools.lru_cache(maxsize=32)
def _persistent_numel(model_json: str, spec: ModelSpec) -> int:
    """Elements of the parameters ZeRO-3 keeps whole (numel <= the persistence threshold), from
    the model's shapes (built on the meta device: nothing is allocated)."""
    from scigpt.models.build import build_model

    net = build_model(ModelConfig.model_validate_json(model_json), spec)
    return sum(p.numel() for p in net.parameters() if p.numel() <= ZERO3_PERSISTENCE)


def bucket_elements(n_params: int) -> int:
    """ZeRO bucket of ``scigpt.parallel.engine.bucket_elements`` (no config override)."""
    return int(min(5e8, max(2**20, n_params)))


# --- constraints and enumeration --------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {list(PRECISIONS)}")


def _shape_problem(model: ModelConfig, layout: Layout) -> str | None:
    """Why ``layout`` cannot shard ``model`` at all (None: it can)."""
    if min(layout.dp, layout.tp, layout.pp) < 1:
        return f"dp, tp and pp must be >= 1, got {layout.describe()}"
    if layout.zero_stage not in ZERO_STAGES:
        return f"zero_stage={layout.zero_stage} is not one of {list(ZERO_STAGES)}"
    if layout.activation_checkpointing not in CHECKPOINTING:
        return (
            f"activation_checkpointing={layout.activation_checkpointing!r} is not one of "
            f"{list(CHECKPOINTING)}"
        )
    if model.heads % layout.tp:
        return f"tp={layout.tp} does not divide heads={model.heads}"
    if _hidden(model) % layout.tp:
        return f"tp={layout.tp} does not divide the MLP width {_hidden(model)}"
    if layout.pp > model.depth:
        return f"pp={layout.pp} is larger than depth={model.depth}"
    return None


def layout_problem(
    model: ModelConfig, layout: Layout, *, gpus_per_node: int, precision: str
) -> str | None:
    """Why ``layout`` is not a valid training layout (None: it is). The config's rules
    (scigpt.config.RunConfig) plus: TP inside a node, and pp > 1 in bf16 only with ZeRO-1
    (DeepSpeed 0.19.8 cannot load ZeRO-0 bf16 pipeline checkpoints)."""
    shape = _shape_problem(model, layout)
    if shape:
        return shape
    if layout.tp > gpus_per_node or gpus_per_node % layout.tp:
        return f"tp={layout.tp} does not fit in a node of {gpus_per_node} GPUs"
    if layout.tp > 1 and layout.zero_stage > 1:
        return f"tp={layout.tp} runs with ZeRO <= 1"
    if layout.pp > 1 and layout.zero_stage > 1:
        return f"pp={layout.pp} runs with ZeRO <= 1"
    if layout.pp > 1 and precision == "bf16" and layout.zero_stage != 1:
        return f"pp={layout.pp} in bf16 runs with ZeRO-1 only"
    return None


def enumerate_layouts(
    model: ModelConfig, gpus: int, *, gpus_per_node: int, precision: str
) -> list[Layout]:
    """Every valid layout with dp·tp·pp == ``gpus``."""
    _check_precision(precision)
    if gpus < 1 or gpus_per_node < 1:
        raise ValueError(f"gpus={gpus} and gpus_per_node={gpus_per_node} must be >= 1")
    out = []
    for tp in _divisors(gpus):
        for pp in _divisors(gpus // tp):
            for zero in ZERO_STAGES:
                for ckpt in CHECKPOINTING:
                    layout = Layout(gpus // (tp * pp), tp, pp, zero, ckpt)
                    if not layout_problem(
                        model, layout, gpus_per_node=gpus_per_node, precision=precision
                    ):
                        out.append(layout)
    return out


# --- memory -----------------------------------------------------------------------------------


def _model_states(
    model: ModelConfig, spec: ModelSpec, layout: Layout, psi: int, precision: str
) -> tuple[float, float, float, float, float]:
    """(params, grads, optimizer, buffers, persistent) bytes of a rank holding ``psi``."""
    b = 2 if precision == "bf16" else 4
    bf16 = precision == "bf16"
    dp, zero = layout.dp, layout.zero_stage
    n_p = -(-psi // dp)
    if zero == 0:
        if bf16:  # FP16_UnfusedOptimizer: fp32 master params; grads copied to fp32 at the step
            params, opt, grads, buffers = 2.0 * psi, 12.0 * psi, 6.0 * psi, 0.0
        else:  # torch AdamW as is; the engine flattens gradients to all-reduce them
            params, opt, grads = 4.0 * psi, 8.0 * psi, 4.0 * psi
            buffers = 4.0 * min(psi, ALLREDUCE_FLATTEN)
        return params, grads, opt, buffers, params + opt
    if zero in (1, 2):
        bucket = bucket_elements(psi)
        params, opt = float(b * psi), 12.0 * n_p
        full = zero == 1 or psi <= bucket  # reduced only after backward: the whole gradient
        grads = float(b * (psi if full else n_p))
        transient = max(grads + b * bucket, n_p * (2 * b + (4 if bf16 else 0)))
        return params, grads, opt, transient - grads, params + opt
    # ZeRO-3
    persist = min(_persistent_numel(model.model_dump_json(), spec), psi)
    bucket = bucket_elements(persist)
    params, opt, grads = float(b * n_p), 12.0 * n_p, float(b * n_p)
    whole = b * persist if dp > 1 else 0  # small parameters also kept whole beside the partition
    gathered = ZERO3_GATHER_FACTOR * b * min(psi, ZERO3_MAX_LIVE) if dp > 1 else 0.0
    buffers = whole + b * bucket + max(gathered, n_p * (b + (4 if bf16 else 0)))
    return params, grads, opt, buffers, params + opt + grads + whole + b * bucket


def _activations(
    model: ModelConfig,
    layout: Layout,
    stage: _Stage,
    *,
    tokens: int,
    micro_batch: int,
    vars_per_sample: int,
    precision: str,
    in_flight: int,
) -> float:
    b = 2 if precision == "bf16" else 4
    tp, dim = layout.tp, model.embed_dim
    tok = float(tokens * micro_batch * dim)  # values of one (B, s, D) tensor
    scores = micro_batch * model.heads * tokens**2 / tp if model.attention == "math" else 0.0
    drop = tok if model.dropout > 0 else 0.0
    none_block = tok * (4 + 12 / tp) + scores + drop
    mode = layout.activation_checkpointing
    if mode == "none":
        per_block, working = none_block, 0.0
    elif mode == "selective":
        per_block, working = tok * (5 + 8 / tp) + drop, 0.0
    else:
        per_block, working = tok, (none_block if stage.blocks else 0.0)
    values = stage.blocks * per_block * in_flight + working
    if stage.first:
        values += (4 * vars_per_sample + 3) * tok * in_flight
    out = b * values
    if stage.last:
        pixels = micro_batch * vars_per_sample * tokens * model.patch_size**2
        out += b * tok + (3 * b + 10) * pixels
    return out


def _in_flight(layout: Layout, stage: _Stage, grad_accum: int | None) -> int:
    if layout.pp == 1:
        return 1
    m = layout.pp if grad_accum is None else grad_accum
    return max(1, min(m, layout.pp - stage.index))


def predict_memory(
    model: ModelConfig,
    spec: ModelSpec,
    layout: Layout,
    *,
    tokens: int,
    micro_batch: int,
    vars_per_sample: int,
    precision: str,
    stage: int | None = None,
    grad_accum: int | None = None,
    partition: str = "parameters",
) -> MemoryBreakdown:
    """Bytes per rank (module docstring). ``stage=None``: the worst pipeline stage (largest
    total); ``stage=k``: a rank of stage k. ``grad_accum`` (micro-batches per step, default
    >= pp) bounds the micro-batches a pipeline stage holds in flight; ``partition`` is
    ``parallel.pp_partition``."""
    return _predict(
        model, spec, layout, tokens=tokens, micro_batch=micro_batch,
        vars_per_sample=vars_per_sample, precision=precision, stage=stage,
        grad_accum=grad_accum, partition=partition,
    )[0]  # fmt: skip


def _predict(
    model: ModelConfig,
    spec: ModelSpec,
    layout: Layout,
    *,
    tokens: int,
    micro_batch: int,
    vars_per_sample: int,
    precision: str,
    stage: int | None,
    grad_accum: int | None,
    partition: str = "parameters",
) -> tuple[MemoryBreakdown, int]:
    _check_precision(precision)
    problem = _shape_problem(model, layout)
    if problem:
        raise ValueError(problem)
    if min(tokens, micro_batch, vars_per_sample) < 1:
        raise ValueError(
            f"tokens={tokens}, micro_batch={micro_batch} and vars_per_sample={vars_per_sample} "
            "must be >= 1"
        )
    stages = _stages(model, spec, layout.pp, layout.tp, partition)
    if stage is not None and not 0 <= stage < layout.pp:
        raise ValueError(f"stage={stage} is not a stage of pp={layout.pp}")
    best: tuple[MemoryBreakdown, int] | None = None
    for st in stages if stage is None else [stages[stage]]:
        params, grads, opt, buffers, persistent = _model_states(
            model, spec, layout, st.params, precision
        )
        act = _activations(
            model, layout, st, tokens=tokens, micro_batch=micro_batch,
            vars_per_sample=vars_per_sample, precision=precision,
            in_flight=_in_flight(layout, st, grad_accum),
        )  # fmt: skip
        mem = MemoryBreakdown(params, grads, opt, act, buffers, persistent)
        if best is None or mem.total > best[0].total:
            best = (mem, st.index)
    assert best is not None
    return best


# --- step time --------------------------------------------------------------------------------


def _ring(n: int) -> float:
    return (n - 1) / n if n > 1 else 0.0


def estimate_step_time(
    model: ModelConfig,
    spec: ModelSpec,
    layout: Layout,
    *,
    tokens: int,
    micro_batch: int,
    vars_per_sample: int,
    precision: str,
    grad_accum: int,
    gpus_per_node: int,
    hardware: Hardware = Hardware(),
    partition: str = "parameters",
) -> StepEstimate:
    """Seconds per optimizer step of ``grad_accum`` micro-batches (module docstring)."""
    _check_precision(precision)
    problem = _shape_problem(model, layout)
    if problem:
        raise ValueError(problem)
    if grad_accum < 1 or gpus_per_node < 1:
        raise ValueError(f"grad_accum={grad_accum} and gpus_per_node={gpus_per_node} must be >= 1")
    b = 2 if precision == "bf16" else 4
    tp, pp, dp, m = layout.tp, layout.pp, layout.dp, grad_accum
    f = flops_breakdown(model, spec, tokens, num_vars=vars_per_sample)
    per_block_fwd = (f["blocks"] + f["attention"]) / model.depth / tp  # per token
    flops_rate = hardware.peak_tflops * 1e12 * hardware.mfu * (1.0 if precision == "bf16" else 0.5)
    act_bytes = float(micro_batch * tokens * model.embed_dim * b)
    intra, inter = hardware.intra_bw * 1e9, hardware.inter_bw * 1e9
    n_allreduce = 6 if layout.activation_checkpointing == "full" else 4

    stages = _stages(model, spec, pp, tp, partition)
    slowest = (0.0, 0.0)  # (compute, tp comm) per micro-batch of the slowest stage
    for st in stages:
        fwd = st.blocks * per_block_fwd
        if st.first:
            fwd += f["embed"] + f["aggregate"] + f["encodings"]
        if st.last:
            fwd += f["head"]
        recompute = 0.0
        if layout.activation_checkpointing == "selective":
            recompute = st.blocks * f["attention"] / model.depth / tp
        elif layout.activation_checkpointing == "full":
            recompute = st.blocks * per_block_fwd
        compute = (3 * fwd + recompute) * tokens * micro_batch / flops_rate
        tp_comm = st.blocks * n_allreduce * 2 * _ring(tp) * act_bytes / intra if tp > 1 else 0.0
        if compute + tp_comm > sum(slowest):
            slowest = (compute, tp_comm)
    compute_mb, tp_mb = slowest
    p2p_mb = 2 * act_bytes / (intra if tp * pp <= gpus_per_node else inter) if pp > 1 else 0.0

    grad_bytes = float(b * max(st.params for st in stages))
    dp_bw = inter if (dp - 1) * tp * pp >= gpus_per_node else intra
    ring = _ring(dp)
    volume = {0: 2 * ring, 1: 2 * ring, 2: (m + 1) * ring, 3: 3 * m * ring}[layout.zero_stage]
    dp_comm = volume * grad_bytes / dp_bw

    parts = {
        "compute": m * compute_mb,
        "tp-comm": m * tp_mb,
        "pp-comm": m * p2p_mb,
        "dp-comm": dp_comm,
        "bubble": (pp - 1) * (compute_mb + tp_mb + p2p_mb),
    }
    seconds = sum(parts.values())
    model_flops = 3 * f["forward"] * tokens * micro_batch * m * dp
    return StepEstimate(
        seconds=seconds,
        compute_s=parts["compute"],
        tp_comm_s=parts["tp-comm"],
        dp_comm_s=parts["dp-comm"],
        bubble_s=parts["bubble"],
        tflops_per_gpu=model_flops / seconds / layout.world / 1e12,
        bottleneck=max(parts, key=lambda k: parts[k]),
        pp_comm_s=parts["pp-comm"],
    )


# --- the plan ---------------------------------------------------------------------------------


def usable_gib(gpu_mem_gib: float) -> float:
    """Device memory a plan may fill: the rest is the reserve (10%, at least 2 GiB)."""
    return gpu_mem_gib - max(RESERVE_MIN_GIB, RESERVE_FRACTION * gpu_mem_gib)


def _grad_accum(
    layout: Layout, micro_batch: int, global_batch: int | None, grad_accum: int | None
) -> int:
    if grad_accum is not None:
        return grad_accum
    assert global_batch is not None
    return max(1, -(-global_batch // (micro_batch * layout.dp)))


def evaluate(
    model: ModelConfig,
    spec: ModelSpec,
    gpus: int,
    *,
    gpus_per_node: int,
    tokens: int,
    micro_batch: int,
    vars_per_sample: int,
    precision: str,
    hardware: Hardware = Hardware(),
    global_batch: int | None = None,
    grad_accum: int | None = None,
    max_tp: int | None = None,
    max_pp: int | None = None,
    partition: str = "parameters",
    context: str = "",
) -> list[PlanRow]:
    """Memory and step time of every valid layout, fitting or not, in enumeration order.
    Every layout trains ``global_batch`` samples per step (default 4 × micro-batch × GPUs:
    m = 4·tp·pp micro-batches), unless ``grad_accum`` fixes m for all of them."""
    if grad_accum is not None and global_batch is not None:
        raise ValueError("give a global batch or a gradient accumulation, not both")
    if grad_accum is not None and grad_accum < 1:
        raise ValueError(f"grad_accum={grad_accum} must be >= 1")
    if global_batch is None and grad_accum is None:
        global_batch = 4 * micro_batch * gpus
    if global_batch is not None and global_batch < 1:
        raise ValueError(f"global_batch={global_batch} must be >= 1")
    rows = []
    for layout in enumerate_layouts(model, gpus, gpus_per_node=gpus_per_node, precision=precision):
        if (max_tp and layout.tp > max_tp) or (max_pp and layout.pp > max_pp):
            continue
        m = _grad_accum(layout, micro_batch, global_batch, grad_accum)
        kw = dict(tokens=tokens, micro_batch=micro_batch, vars_per_sample=vars_per_sample,
                  precision=precision, partition=partition)  # fmt: skip
        mem, worst = _predict(model, spec, layout, stage=None, grad_accum=m, **kw)
        step = estimate_step_time(
            model, spec, layout, grad_accum=m, gpus_per_node=gpus_per_node, hardware=hardware, **kw
        )
        rows.append(PlanRow(layout, mem, step, worst, micro_batch, m, precision, context,
                            partition))  # fmt: skip
    return rows


def rank_rows(rows: list[PlanRow]) -> list[PlanRow]:
    """Fastest first (seconds per sample, i.e. step time at a common global batch); ties: less
    memory."""
    return sorted(rows, key=lambda r: (round(r.seconds_per_sample, 12), r.memory.total))


def plan(
    model: ModelConfig,
    spec: ModelSpec,
    gpus: int,
    *,
    gpus_per_node: int,
    gpu_mem_gib: float,
    tokens: int,
    micro_batch: int,
    vars_per_sample: int,
    precision: str,
    hardware: Hardware = Hardware(),
    global_batch: int | None = None,
    grad_accum: int | None = None,
    max_tp: int | None = None,
    max_pp: int | None = None,
    partition: str = "parameters",
    context: str = "",
) -> list[PlanRow]:
    """The layouts that fit ``usable_gib(gpu_mem_gib)``, ranked (``rank_rows``). Raises
    ``NoLayoutFits`` (a ValueError) naming the smallest requirement and what to change."""
    kw = dict(
        gpus_per_node=gpus_per_node, tokens=tokens, micro_batch=micro_batch,
        vars_per_sample=vars_per_sample, precision=precision, hardware=hardware,
        global_batch=global_batch, grad_accum=grad_accum, max_tp=max_tp, max_pp=max_pp,
        partition=partition, context=context,
    )  # fmt: skip
    rows = evaluate(model, spec, gpus, **kw)
    limit = usable_gib(gpu_mem_gib) * GiB
    fitting = [r for r in rows if r.memory.total <= limit]
    if fitting:
        return rank_rows(fitting)
    raise NoLayoutFits(_advice(model, spec, gpus, gpu_mem_gib, rows, kw), _smallest(rows))


def _smallest(rows: list[PlanRow]) -> PlanRow | None:
    return min(rows, key=lambda r: r.memory.total) if rows else None


def _advice(
    model: ModelConfig,
    spec: ModelSpec,
    gpus: int,
    gpu_mem_gib: float,
    rows: list[PlanRow],
    kw: dict,
) -> str:
    usable = usable_gib(gpu_mem_gib)
    head = (
        f"no layout fits {gpus} GPU(s) of {gpu_mem_gib:g} GiB "
        f"({max(usable, 0):.1f} GiB usable after the "
        f"{max(RESERVE_MIN_GIB, RESERVE_FRACTION * gpu_mem_gib):.1f} GiB reserve)"
    )
    best = _smallest(rows)
    if best is None:
        return f"{head}: no valid layout for this model on {gpus} GPU(s); try another GPU count"
    need = best.memory.total / GiB
    m = best.memory
    lines = [
        f"{head}: the smallest layout ({best.layout.describe()}, micro-batch "
        f"{best.micro_batch}) needs {need:.1f} GiB per GPU (params {m.params / GiB:.1f}, grads "
        f"{m.grads / GiB:.1f}, optimizer {m.optimizer / GiB:.1f}, activations "
        f"{m.activations / GiB:.1f}, buffers {m.buffers / GiB:.1f})",
        f"GPUs with at least {math.ceil(_device_for(need))} GiB would fit it",
    ]
    more = gpus * 2
    while more <= MAX_ADVICE_GPUS:
        rows_more = evaluate(model, spec, more, **kw)
        if any(r.memory.total <= usable * GiB for r in rows_more):
            lines.append(f"or {more} GPUs of {gpu_mem_gib:g} GiB (ZeRO-3/tp/pp spread the model)")
            break
        more *= 2
    else:
        lines.append(f"more GPUs of {gpu_mem_gib:g} GiB do not help (up to {MAX_ADVICE_GPUS})")
    if best.micro_batch > 1 and m.activations > 0.1 * m.total:
        lines.append(f"or a smaller --micro-batch (activations are {m.activations / GiB:.1f} GiB)")
    if best.layout.activation_checkpointing != "full":
        lines.append("or activation checkpointing (full)")
    if best.precision == "fp32":
        lines.append("or --precision bf16")
    return "; ".join(lines)


def _device_for(need_gib: float) -> float:
    """Smallest device whose usable part holds ``need_gib``."""
    return max(need_gib + RESERVE_MIN_GIB, need_gib / (1 - RESERVE_FRACTION))


# --- output -----------------------------------------------------------------------------------

_COLUMNS = [
    ("rank", 4), ("dp", 4), ("tp", 3), ("pp", 3), ("zero", 4), ("ckpt", 9), ("accum", 5),
    ("params", 7), ("grads", 7), ("optim", 7), ("act", 7), ("buffers", 7), ("total", 7),
    ("step s", 8), ("TFLOP/s", 7), ("bottleneck", 10),
]  # fmt: skip


def render_table(rows: list[PlanRow]) -> str:
    """A ranked table; memory columns in GiB per GPU (worst rank), TFLOP/s per GPU."""
    table = Table([name for name, _ in _COLUMNS])
    for i, r in enumerate(rows, 1):
        m, lay, s = r.memory, r.layout, r.step
        cells = [
            str(i), str(lay.dp), str(lay.tp), str(lay.pp), str(lay.zero_stage),
            lay.activation_checkpointing, str(r.grad_accum),
            *(f"{x / GiB:.2f}" for x in (m.params, m.grads, m.optimizer, m.activations,
                                         m.buffers, m.total)),
            f"{s.seconds:.3f}", f"{s.tflops_per_gpu:.0f}", s.bottleneck,
        ]  # fmt: skip
        table.add(cells)
    return table.text([w for _, w in _COLUMNS])


def config_fragment(row: PlanRow) -> str:
    """A run-config fragment (YAML) for ``row``: ``parallel`` and ``schedule`` sections and the
    precision, with the prediction as comments."""
    lay, m, s = row.layout, row.memory, row.step
    lines = ["# scigpt plan" + (f": {row.context}" if row.context else "")]
    lines += [
        f"# layout: {lay.describe()} on {lay.world} GPU(s); global batch {row.global_batch}",
        f"# predicted per GPU (worst rank, pipeline stage {row.worst_stage}): "
        f"{m.total / GiB:.2f} GiB = params {m.params / GiB:.2f} + grads {m.grads / GiB:.2f} "
        f"+ optimizer {m.optimizer / GiB:.2f} + activations {m.activations / GiB:.2f} "
        f"+ buffers {m.buffers / GiB:.2f}",
        f"# predicted step: {s.seconds:.3f} s (compute {s.compute_s:.3f}, tp-comm "
        f"{s.tp_comm_s:.3f}, pp-comm {s.pp_comm_s:.3f}, dp-comm {s.dp_comm_s:.3f}, bubble "
        f"{s.bubble_s:.3f}), {s.tflops_per_gpu:.0f} TFLOP/s per GPU, bottleneck {s.bottleneck}",
        f"precision: {row.precision}",
        "parallel:",
        f"  tp: {lay.tp}",
        f"  pp: {lay.pp}",
        f"  zero_stage: {lay.zero_stage}",
        f"  activation_checkpointing: {lay.activation_checkpointing}",
        f"  pp_partition: {row.partition}",
        "schedule:",
        f"  micro_batch_size: {row.micro_batch}",
        f"  grad_accum: {row.grad_accum}",
    ]
    return "\n".join(lines) + "\n"


def run_cli(args) -> int:
    """``scigpt plan`` (arguments from scigpt.cli)."""
    from scigpt.atomic import atomic_write_text

    for name in ("gpus", "gpu_mem", "micro_batch", "vars", "history", "top", "intra_bw",
                 "inter_bw", "peak_tflops", "mfu_assumption"):  # fmt: skip
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be positive")
    gpus_per_node = _gpus_per_node(args.gpus, args.nodes, args.gpus_per_node)
    model = load_model(args.model)
    spec = ModelSpec(num_vars=args.vars, history=args.history)
    h, w = parse_grid(args.grid)
    tokens = grid_tokens(model, h, w)
    hardware = Hardware(args.peak_tflops, args.mfu_assumption, args.intra_bw, args.inter_bw)
    nodes = -(-args.gpus // gpus_per_node)
    context = (
        f"{args.model} on {args.gpus} GPU(s) ({nodes} node(s) x {gpus_per_node}), "
        f"{args.gpu_mem:g} GiB each, {args.precision}, grid {h}x{w} ({tokens} tokens), "
        f"{args.vars} variables, history {args.history}"
    )
    rows = plan(
        model, spec, args.gpus, gpus_per_node=gpus_per_node, gpu_mem_gib=args.gpu_mem,
        tokens=tokens, micro_batch=args.micro_batch, vars_per_sample=args.vars,
        precision=args.precision, hardware=hardware, global_batch=args.global_batch,
        grad_accum=args.grad_accum, max_tp=args.max_tp, max_pp=args.max_pp,
        partition=args.pp_partition, context=context,
    )  # fmt: skip
    n_params = param_count(model, spec)["total"]
    print(f"# {context}")
    print(
        f"# {n_params / 1e9:.3g}B parameters; {len(rows)} layouts fit in "
        f"{usable_gib(args.gpu_mem):.1f} GiB usable per GPU; global batch "
        f"{rows[0].global_batch}; memory in GiB per GPU (worst rank)"
    )
    print(render_table(rows[: args.top]))
    if args.out is not None:
        atomic_write_text(args.out, config_fragment(rows[0]))
        print(f"# best layout written to {args.out}")
    return 0


def _gpus_per_node(gpus: int, nodes: int | None, per_node: int | None) -> int:
    if nodes is not None and nodes <= 0:
        raise ValueError(f"--nodes={nodes} must be positive")
    if per_node is not None and per_node <= 0:
        raise ValueError(f"--gpus-per-node={per_node} must be positive")
    if nodes is not None:
        if gpus % nodes:
            raise ValueError(f"--gpus={gpus} is not a multiple of --nodes={nodes}")
        if per_node is not None and per_node * nodes != gpus:
            raise ValueError(
                f"--nodes={nodes} x --gpus-per-node={per_node} != --gpus={gpus}: give two of them"
            )
        return gpus // nodes
    return per_node if per_node is not None else min(gpus, 8)


__all__ = [
    "CHECKPOINTING",
    "PARTITIONS",
    "Hardware",
    "Layout",
    "MemoryBreakdown",
    "NoLayoutFits",
    "PlanRow",
    "StepEstimate",
    "config_fragment",
    "enumerate_layouts",
    "estimate_step_time",
    "evaluate",
    "layer_params",
    "layout_problem",
    "load_model",
    "partition_balanced",
    "plan",
    "predict_memory",
    "rank_rows",
    "render_table",
    "stage_bounds",
    "stage_layer_params",
    "usable_gib",
]
