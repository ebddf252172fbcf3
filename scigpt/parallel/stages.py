"""Pipeline stages of a model: which layers each stage holds and how many parameters.

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
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from scigpt.config import ModelConfig
from scigpt.layout_rules import mlp_width
from scigpt.models.sizing import param_count
from scigpt.models.vit import ModelSpec


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


def layer_params(model: ModelConfig, spec: ModelSpec, *, tp: int = 1) -> list[int]:
    """Parameters per pipeline layer on one tensor-parallel rank: [embed, block × depth, head]."""
    pc = param_count(model, spec)
    depth, dim = model.depth, model.embed_dim
    block = pc["blocks"] // depth
    # + the qkv and fc1 biases
    sharded = pc["blocks_matmul"] // depth + 3 * dim + mlp_width(dim, model.mlp_ratio)
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
class Stage:
    index: int
    params: int
    blocks: int
    first: bool  # holds the tokenizer
    last: bool  # holds the heads


def pipeline_stages(
    model: ModelConfig, spec: ModelSpec, pp: int, tp: int, partition: str = "parameters"
) -> list[Stage]:
    weights = layer_params(model, spec, tp=tp)
    parts = stage_bounds(model, spec, pp, partition=partition)
    n = len(weights)
    out = []
    for i in range(pp):
        lo, hi = parts[i], parts[i + 1]
        blocks = sum(1 for j in range(lo, hi) if 1 <= j <= model.depth)
        out.append(Stage(i, sum(weights[lo:hi]), blocks, lo == 0 < hi, lo < n == hi))
    return out


__all__ = [
    "PARTITIONS",
    "Stage",
    "layer_params",
    "partition_balanced",
    "pipeline_stages",
    "stage_bounds",
    "stage_layer_params",
]
