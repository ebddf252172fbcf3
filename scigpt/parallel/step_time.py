"""Step time of a layout, estimated from the config alone (``scigpt plan``'s time model).

Notation: Ψ = parameters held by one pipeline stage on one tensor-parallel rank, dp/tp/pp the
layout, N_p = ⌈Ψ / dp⌉ (a ZeRO partition), b = bytes per value of the training dtype (bf16: 2,
fp32: 4), s = tokens per sample, B = micro-batch, D = ``embed_dim``, a = heads, V = variables
per sample, p = patch size, m = micro-batches per optimizer step (gradient accumulation).
Sizes are bytes; GiB = 2^30 bytes.

Step time (no overlap of communication with compute is assumed: an upper bound)
---------------------------------------------------------------------------------
* compute: the slowest stage's FLOPs per micro-batch (``sizing.flops_breakdown``: 3 × forward,
  block and attention FLOPs / tp, tokenizer on the first stage and head on the last), plus
  recomputation (selective: the attention core's forward; full: the blocks' whole forward),
  over peak × MFU assumption (fp32: half the bf16 peak, TF32 tensor cores), × m;
* tp-comm: per block and micro-batch 4 all-reduces (6 with full recomputation) of B·s·D values,
  ring cost 2(tp − 1)/tp × bytes over the intra-node bandwidth (TP stays inside a node), × m;
* sp-comm (Ulysses): per block and micro-batch 4 all-to-alls forward (q, k, v, attention
  output) and 4 backward (6 + 6 with full recomputation) of the rank's B·(s/sp)·D/tp values,
  each rank sending (sp − 1)/sp of them, over the intra-node bandwidth while tp·sp fits a node
  (sp is innermost), × m; compute is the rank's s/sp tokens (attention's s² work / sp);
* pp-comm: per micro-batch one activation send forward and one gradient send back, × m;
* bubble: (pp − 1) × one micro-batch of the slowest stage (the (pp−1)/(m+pp−1) share of 1F1B);
* dp-comm: ZeRO-0/1 all-reduce 2(dp−1)/dp × gradient bytes once per step; ZeRO-2 a
  reduce-scatter (dp−1)/dp per micro-batch plus the parameter all-gather after the step; ZeRO-3
  all-gathers in forward and backward plus a reduce-scatter per micro-batch, 3(dp−1)/dp; over the
  inter-node bandwidth per GPU when a data-parallel group spans nodes (ranks are
  ``((dp_i · pp + pp_i) · tp + tp_i) · sp + sp_i``, so it does once (dp − 1)·tp·pp·sp ≥ GPUs per
  node), else intra-node. With sp > 1 gradients are reduced over the dp × sp ranks (ring over
  dp·sp).

TFLOP/s per GPU counts model FLOPs only (3 × forward, no recomputation: PaLM appendix B).
"""

from __future__ import annotations

from dataclasses import dataclass

from scigpt.config import ModelConfig
from scigpt.models.sizing import flops_breakdown
from scigpt.models.vit import ModelSpec
from scigpt.parallel.memory_model import check_precision, shape_problem
from scigpt.parallel.stages import pipeline_stages
from scigpt.parallel.topology import Topology


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
    bottleneck: str  # compute, tp-comm, dp-comm, pp-comm, sp-comm or bubble
    pp_comm_s: float = 0.0
    sp_comm_s: float = 0.0


DEFAULT_HARDWARE = Hardware()


def _ring(n: int) -> float:
    return (n - 1) / n if n > 1 else 0.0


def estimate_step_time(
    model: ModelConfig,
    spec: ModelSpec,
    layout: Topology,
    *,
    tokens: int,
    micro_batch: int,
    vars_per_sample: int,
    precision: str,
    grad_accum: int,
    gpus_per_node: int,
    hardware: Hardware = DEFAULT_HARDWARE,
    partition: str = "parameters",
) -> StepEstimate:
    """Seconds per optimizer step of ``grad_accum`` micro-batches (module docstring)."""
    check_precision(precision)
    problem = shape_problem(model, layout)
    if problem:
        raise ValueError(problem)
    if grad_accum < 1 or gpus_per_node < 1:
        raise ValueError(f"grad_accum={grad_accum} and gpus_per_node={gpus_per_node} must be >= 1")
    b = 2 if precision == "bf16" else 4
    tp, pp, dp, m, sp = layout.tp, layout.pp, layout.dp, grad_accum, layout.sp
    full_tokens, tokens = tokens, -(-tokens // sp)  # tokens per sequence-parallel rank
    # FLOPs per token at the whole sequence (a rank's s/sp queries attend to all s keys)
    f = flops_breakdown(model, spec, full_tokens, num_vars=vars_per_sample)
    per_block_fwd = (f["blocks"] + f["attention"]) / model.depth / tp  # per token
    flops_rate = hardware.peak_tflops * 1e12 * hardware.mfu * (1.0 if precision == "bf16" else 0.5)
    act_bytes = float(micro_batch * tokens * model.embed_dim * b)
    intra, inter = hardware.intra_bw * 1e9, hardware.inter_bw * 1e9
    n_allreduce = 6 if layout.activation_checkpointing == "full" else 4

    stages = pipeline_stages(model, spec, pp, tp, partition)
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
    n_a2a = 12 if layout.activation_checkpointing == "full" else 8
    a2a_bw = intra if tp * sp <= gpus_per_node else inter
    blocks_max = max(st.blocks for st in stages)
    sp_mb = blocks_max * n_a2a * _ring(sp) * act_bytes / tp / a2a_bw if sp > 1 else 0.0

    grad_bytes = float(b * max(st.params for st in stages))
    dp_bw = inter if (dp * sp - 1) * tp * pp >= gpus_per_node else intra
    ring = _ring(dp * sp)
    volume = {0: 2 * ring, 1: 2 * ring, 2: (m + 1) * ring, 3: 3 * m * ring}[layout.zero_stage]
    dp_comm = volume * grad_bytes / dp_bw

    parts = {
        "compute": m * compute_mb,
        "tp-comm": m * tp_mb,
        "pp-comm": m * p2p_mb,
        "sp-comm": m * sp_mb,
        "dp-comm": dp_comm,
        "bubble": (pp - 1) * (compute_mb + tp_mb + p2p_mb),
    }
    seconds = sum(parts.values())
    model_flops = 3 * f["forward"] * full_tokens * micro_batch * m * dp
    return StepEstimate(
        seconds=seconds,
        compute_s=parts["compute"],
        tp_comm_s=parts["tp-comm"],
        dp_comm_s=parts["dp-comm"],
        bubble_s=parts["bubble"],
        tflops_per_gpu=model_flops / seconds / layout.world / 1e12,
        bottleneck=max(parts, key=lambda k: parts[k]),
        pp_comm_s=parts["pp-comm"],
        sp_comm_s=parts["sp-comm"],
    )


__all__ = ["DEFAULT_HARDWARE", "Hardware", "StepEstimate", "estimate_step_time"]
