"""Memory per rank of a layout, predicted from the config alone (``scigpt plan``'s memory model).

Notation: Ψ = parameters held by one pipeline stage on one tensor-parallel rank, dp/tp/pp/sp the
layout, N_p = ⌈Ψ / (dp·sp)⌉ (a ZeRO partition: ZeRO 1-2 partition over the dp × sp ranks that
hold the same parameters), b = bytes per value of the training dtype (bf16: 2,
fp32: 4), s = tokens per sample, B = micro-batch, D = ``embed_dim``, a = heads, V = variables
per sample, p = patch size, m = micro-batches per optimizer step (gradient accumulation).
Sizes are bytes; GiB = 2^30 bytes.

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

Sequence parallelism (Ulysses, ``scigpt.parallel.sequence``) cuts every token-sized tensor above
— tokenizer, blocks (q/k/v and the attention output are all-to-all'd to (B, s, a/sp, d): the
same bytes), head and loss — over sp ranks: s becomes ⌈s / sp⌉ tokens per rank, and the
``attention: math`` scores a·s²/(tp·sp). Parameters are replicated over sp (only ZeRO's
partitions shrink).

Under pipeline parallelism with the 1F1B schedule stage k holds min(m, pp − k) micro-batches in
flight (the first stage: pp). ``MemoryBreakdown.total`` adds every part — the peak when
gradients are accumulated over micro-batches (grads stay while the next micro-batch's
activations build up); with one micro-batch per step ZeRO 0-2 free the activations before the
reduction, so it over-states that peak by up to the smaller of the two.

"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from scigpt.config import ModelConfig
from scigpt.layout_rules import layout_problems
from scigpt.models.build import build_model
from scigpt.models.vit import ModelSpec
from scigpt.parallel.stages import Stage, pipeline_stages
from scigpt.parallel.topology import Topology

GiB = 2**30
PRECISIONS = ("bf16", "fp32")

# DeepSpeed 0.19.8 defaults the memory model depends on.
ALLREDUCE_FLATTEN = 500_000_000  # engine.MEMORY_OPT_ALLREDUCE_SIZE (ZeRO-0 gradient all-reduce)
ZERO3_PERSISTENCE = 100_000  # stage3_param_persistence_threshold: smaller params stay whole
ZERO3_MAX_LIVE = 1_000_000_000  # stage3_max_live_parameters / stage3_max_reuse_distance
ZERO3_GATHER_FACTOR = 1.5  # measured: gathered parameters plus all-gather staging


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


@functools.lru_cache(maxsize=32)
def _persistent_numel(model_json: str, spec: ModelSpec) -> int:
    """Elements of the parameters ZeRO-3 keeps whole (numel <= the persistence threshold), from
    the model's shapes (built on the meta device: nothing is allocated)."""
    net = build_model(ModelConfig.model_validate_json(model_json), spec)
    return sum(p.numel() for p in net.parameters() if p.numel() <= ZERO3_PERSISTENCE)


def bucket_elements(n_params: int) -> int:
    """ZeRO reduce/all-gather bucket in elements when the config sets none: the parameter
    count, at least 2**20 and at most DeepSpeed's 5e8, rounded up to an even count (ZeRO 1/2
    asserts the bucket is a multiple of its NCCL alignment factor, 2; an odd parameter count
    crashed the engine — the 512² downscaling model)."""
    n = int(min(5e8, max(2**20, n_params)))
    return n + n % 2


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {list(PRECISIONS)}")


def shape_problem(model: ModelConfig, layout: Topology) -> str | None:
    """Why ``layout`` cannot shard ``model`` at all (None: it can): the layout rules
    (``scigpt.layout_rules``) that need the model's shape only."""
    problems = layout_problems(
        dp=layout.dp, tp=layout.tp, pp=layout.pp, sp=layout.sp, zero_stage=layout.zero_stage,
        activation_checkpointing=layout.activation_checkpointing, heads=model.heads,
        embed_dim=model.embed_dim, mlp_ratio=model.mlp_ratio, depth=model.depth,
    )  # fmt: skip
    return problems[0].message if problems else None


def _model_states(
    model: ModelConfig, spec: ModelSpec, layout: Topology, psi: int, precision: str
) -> tuple[float, float, float, float, float]:
    """(params, grads, optimizer, buffers, persistent) bytes of a rank holding ``psi``."""
    b = 2 if precision == "bf16" else 4
    bf16 = precision == "bf16"
    dp, zero = layout.dp * layout.sp, layout.zero_stage  # ZeRO partitions over dp x sp
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
    layout: Topology,
    stage: Stage,
    *,
    tokens: int,
    micro_batch: int,
    vars_per_sample: int,
    precision: str,
    in_flight: int,
) -> float:
    b = 2 if precision == "bf16" else 4
    tp, dim, sp = layout.tp, model.embed_dim, layout.sp
    local = -(-tokens // sp)  # tokens per sequence-parallel rank
    tok = float(local * micro_batch * dim)  # values of one (B, s/sp, D) tensor
    scores = micro_batch * model.heads * tokens**2 / (tp * sp) if model.attention == "math" else 0.0
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
        pixels = micro_batch * vars_per_sample * local * model.patch_size**2
        out += b * tok + (3 * b + 10) * pixels
    return out


def _in_flight(layout: Topology, stage: Stage, grad_accum: int | None) -> int:
    if layout.pp == 1:
        return 1
    m = layout.pp if grad_accum is None else grad_accum
    return max(1, min(m, layout.pp - stage.index))


def predict_memory(
    model: ModelConfig,
    spec: ModelSpec,
    layout: Topology,
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
    return predict_worst_stage(
        model, spec, layout, tokens=tokens, micro_batch=micro_batch,
        vars_per_sample=vars_per_sample, precision=precision, stage=stage,
        grad_accum=grad_accum, partition=partition,
    )[0]  # fmt: skip


def predict_worst_stage(
    model: ModelConfig,
    spec: ModelSpec,
    layout: Topology,
    *,
    tokens: int,
    micro_batch: int,
    vars_per_sample: int,
    precision: str,
    stage: int | None,
    grad_accum: int | None,
    partition: str = "parameters",
) -> tuple[MemoryBreakdown, int]:
    check_precision(precision)
    problem = shape_problem(model, layout)
    if problem:
        raise ValueError(problem)
    if min(tokens, micro_batch, vars_per_sample) < 1:
        raise ValueError(
            f"tokens={tokens}, micro_batch={micro_batch} and vars_per_sample={vars_per_sample} "
            "must be >= 1"
        )
    stages = pipeline_stages(model, spec, layout.pp, layout.tp, partition)
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


__all__ = [
    "PRECISIONS",
    "GiB",
    "MemoryBreakdown",
    "bucket_elements",
    "predict_memory",
    "predict_worst_stage",
]
