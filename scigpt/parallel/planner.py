"""``scigpt plan``: memory per rank and step time of every valid parallel layout.

Every layout (dp, tp, pp, sp, ZeRO stage, activation checkpointing) with dp·tp·pp·sp = the GPU
count (sp only up to ``max_sp``, ``--max-sp``: 1 unless asked) is sized from the config alone —
nothing is built or allocated — then the layouts that fit the device are ranked by estimated
time per sample (= step time: every layout trains the same global batch, so their steps do the
same work).

The layouts are ``Topology`` objects (``scigpt.parallel.topology``; ``Layout`` is its old name
here), valid by the layout rules (``scigpt.layout_rules``) plus the node size. The
models: pipeline stages in ``scigpt.parallel.stages``, memory per rank in
``scigpt.parallel.memory_model``, step time in ``scigpt.parallel.step_time`` (each states its
formulas and sources).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from scigpt.atomic import atomic_write_text
from scigpt.config import ModelConfig
from scigpt.config_loader import ConfigError, _apply_preset
from scigpt.layout_rules import CHECKPOINTING, ZERO_STAGES, layout_problems
from scigpt.models.sizing import grid_tokens, param_count
from scigpt.models.vit import ModelSpec
from scigpt.parallel.memory_model import (
    PRECISIONS,
    GiB,
    MemoryBreakdown,
    bucket_elements,
    check_precision,
    predict_memory,
    predict_worst_stage,
)
from scigpt.parallel.stages import (
    PARTITIONS,
    layer_params,
    partition_balanced,
    stage_bounds,
    stage_layer_params,
)
from scigpt.parallel.step_time import DEFAULT_HARDWARE, Hardware, StepEstimate, estimate_step_time
from scigpt.parallel.topology import Topology
from scigpt.tables import Table

Layout = Topology  # the planner's old name for a layout: one layout object

# Reserve kept free on every device: CUDA context, NCCL buffers, allocator fragmentation.
RESERVE_FRACTION, RESERVE_MIN_GIB = 0.10, 2.0
MAX_ADVICE_GPUS = 4096  # how far "more GPUs" advice looks


@dataclass(frozen=True)
class PlanRow:
    layout: Topology
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


# --- constraints and enumeration --------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layout_problem(
    model: ModelConfig, layout: Topology, *, gpus_per_node: int, precision: str
) -> str | None:
    """Why ``layout`` is not a valid training layout (None: it is): the first layout rule
    (``scigpt.layout_rules``: the config's, plus a tensor-parallel group inside a
    node) it breaks."""
    problems = layout_problems(
        dp=layout.dp, tp=layout.tp, pp=layout.pp, sp=layout.sp, zero_stage=layout.zero_stage,
        activation_checkpointing=layout.activation_checkpointing, heads=model.heads,
        embed_dim=model.embed_dim, mlp_ratio=model.mlp_ratio, depth=model.depth,
        precision=precision, gpus_per_node=gpus_per_node,
    )  # fmt: skip
    return problems[0].message if problems else None


def enumerate_layouts(
    model: ModelConfig, gpus: int, *, gpus_per_node: int, precision: str, max_sp: int = 1
) -> list[Topology]:
    """Every valid layout with dp·tp·pp·sp == ``gpus`` (sp <= ``max_sp``)."""
    check_precision(precision)
    if gpus < 1 or gpus_per_node < 1:
        raise ValueError(f"gpus={gpus} and gpus_per_node={gpus_per_node} must be >= 1")
    out = []
    for sp in (s for s in _divisors(gpus) if s <= max_sp):
        for tp in _divisors(gpus // sp):
            for pp in _divisors(gpus // (sp * tp)):
                for zero in ZERO_STAGES:
                    for ckpt in CHECKPOINTING:
                        layout = Topology(gpus // (tp * pp * sp), tp, pp, zero, ckpt, sp=sp)
                        if not layout_problem(
                            model, layout, gpus_per_node=gpus_per_node, precision=precision
                        ):
                            out.append(layout)
    return out


# --- the plan ---------------------------------------------------------------------------------


def usable_gib(gpu_mem_gib: float) -> float:
    """Device memory a plan may fill: the rest is the reserve (10%, at least 2 GiB)."""
    return gpu_mem_gib - max(RESERVE_MIN_GIB, RESERVE_FRACTION * gpu_mem_gib)


def _grad_accum(
    layout: Topology, micro_batch: int, global_batch: int | None, grad_accum: int | None
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
    hardware: Hardware = DEFAULT_HARDWARE,
    global_batch: int | None = None,
    grad_accum: int | None = None,
    max_tp: int | None = None,
    max_pp: int | None = None,
    partition: str = "parameters",
    context: str = "",
    max_sp: int = 1,
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
    for layout in enumerate_layouts(
        model, gpus, gpus_per_node=gpus_per_node, precision=precision, max_sp=max_sp
    ):
        if (max_tp and layout.tp > max_tp) or (max_pp and layout.pp > max_pp):
            continue
        m = _grad_accum(layout, micro_batch, global_batch, grad_accum)
        kw = dict(tokens=tokens, micro_batch=micro_batch, vars_per_sample=vars_per_sample,
                  precision=precision, partition=partition)  # fmt: skip
        mem, worst = predict_worst_stage(model, spec, layout, stage=None, grad_accum=m, **kw)
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
    hardware: Hardware = DEFAULT_HARDWARE,
    global_batch: int | None = None,
    grad_accum: int | None = None,
    max_tp: int | None = None,
    max_pp: int | None = None,
    partition: str = "parameters",
    context: str = "",
    max_sp: int = 1,
) -> list[PlanRow]:
    """The layouts that fit ``usable_gib(gpu_mem_gib)``, ranked (``rank_rows``). Raises
    ``NoLayoutFits`` (a ValueError) naming the smallest requirement and what to change."""
    kw = dict(
        gpus_per_node=gpus_per_node, tokens=tokens, micro_batch=micro_batch,
        vars_per_sample=vars_per_sample, precision=precision, hardware=hardware,
        global_batch=global_batch, grad_accum=grad_accum, max_tp=max_tp, max_pp=max_pp,
        partition=partition, context=context, max_sp=max_sp,
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
        f"{head}: the smallest layout ({best.layout.label()}, micro-batch "
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
    if kw.get("max_sp", 1) == 1 and m.activations > 0.5 * m.total:
        lines.append("or sequence parallelism (--max-sp 8; parallel.sp splits every token-sized "
                     "activation over sp ranks)")  # fmt: skip
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
    """A ranked table; memory columns in GiB per GPU (worst rank), TFLOP/s per GPU. An ``sp``
    column after ``pp`` when a row has sp > 1."""
    with_sp = any(r.layout.sp > 1 for r in rows)
    columns = [*_COLUMNS[:4], ("sp", 3), *_COLUMNS[4:]] if with_sp else _COLUMNS
    table = Table([name for name, _ in columns])
    for i, r in enumerate(rows, 1):
        m, lay, s = r.memory, r.layout, r.step
        cells = [
            str(i), str(lay.dp), str(lay.tp), str(lay.pp), *([str(lay.sp)] if with_sp else []),
            str(lay.zero_stage),
            lay.activation_checkpointing, str(r.grad_accum),
            *(f"{x / GiB:.2f}" for x in (m.params, m.grads, m.optimizer, m.activations,
                                         m.buffers, m.total)),
            f"{s.seconds:.3f}", f"{s.tflops_per_gpu:.0f}", s.bottleneck,
        ]  # fmt: skip
        table.add(cells)
    return table.text([w for _, w in columns])


def config_fragment(row: PlanRow) -> str:
    """A run-config fragment (YAML) for ``row``: ``parallel`` and ``schedule`` sections and the
    precision, with the prediction as comments."""
    lay, m, s = row.layout, row.memory, row.step
    lines = ["# scigpt plan" + (f": {row.context}" if row.context else "")]
    lines += [
        f"# layout: {lay.label()} on {lay.world} GPU(s); global batch {row.global_batch}",
        f"# predicted per GPU (worst rank, pipeline stage {row.worst_stage}): "
        f"{m.total / GiB:.2f} GiB = params {m.params / GiB:.2f} + grads {m.grads / GiB:.2f} "
        f"+ optimizer {m.optimizer / GiB:.2f} + activations {m.activations / GiB:.2f} "
        f"+ buffers {m.buffers / GiB:.2f}",
        f"# predicted step: {s.seconds:.3f} s (compute {s.compute_s:.3f}, tp-comm "
        f"{s.tp_comm_s:.3f}, pp-comm {s.pp_comm_s:.3f}, sp-comm {s.sp_comm_s:.3f}, dp-comm "
        f"{s.dp_comm_s:.3f}, bubble "
        f"{s.bubble_s:.3f}), {s.tflops_per_gpu:.0f} TFLOP/s per GPU, bottleneck {s.bottleneck}",
        f"precision: {row.precision}",
        "parallel:",
        f"  tp: {lay.tp}",
        f"  pp: {lay.pp}",
        *([f"  sp: {lay.sp}"] if lay.sp > 1 else []),
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
        partition=args.pp_partition, context=context, max_sp=getattr(args, "max_sp", 1),
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
    "PRECISIONS",
    "ZERO_STAGES",
    "GiB",
    "Hardware",
    "Layout",
    "MemoryBreakdown",
    "NoLayoutFits",
    "PlanRow",
    "StepEstimate",
    "Topology",
    "bucket_elements",
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
