"""Megatron-style tensor parallelism, applied to a single-device model from outside.

Shoeybi et al. 2019 (Megatron-LM, arXiv:1909.08053, §3): a transformer block needs only two
all-reduces in forward (and two in backward) if the first linear of each pair is split by output
features (column-parallel) and the second by input features (row-parallel)::

    Y = X A        A = [A_1 ... A_p]   (column split)   →  rank r: Y_r = X A_r
    Z = Y B        B = [B_1; ...; B_p] (row split)      →  Z = sum_r Y_r B_r   (one all-reduce)

so the activation between the two linears (GELU, or attention per head) stays local. Two tiny
autograd "mapping" primitives carry all the communication — Megatron's ``f`` and ``g``:

* ``copy_to_tp``   (f): forward identity,   backward all-reduce  (dL/dX = sum_r dL/dX_r);
* ``reduce_from_tp`` (g): forward all-reduce, backward identity  (every rank holds dL/dZ).

Every function takes its process group explicitly (DESIGN.md §2: no module-level groups). The
model code (scigpt.models.vit) is untouched; ``apply_tensor_parallel`` swaps each block's linears
for parallel ones built by slicing the full ``nn.Linear``, so a single-device model converts
exactly: the sharded model computes the same function, up to floating-point summation order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ColumnParallelLinear",
    "RowParallelLinear",
    "apply_tensor_parallel",
    "check_tensor_parallel",
    "copy_to_tp",
    "gather_from_tp",
    "qkv_shard_rows",
    "reduce_from_tp",
    "scatter_to_tp",
    "tensor_parallel_block",
]

Group = dist.ProcessGroup


def _layout(group: Group) -> tuple[int, int]:
    """(rank within ``group``, size of ``group``)."""
    return dist.get_rank(group), dist.get_world_size(group)


# --- the mapping primitives ---------------------------------------------------------------------


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)  # a new autograd node over the same storage, no copy

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # Each rank's column shard saw all of X, so dL/dX is the sum of every shard's part.
        grad = grad.contiguous()
        if dist.get_world_size(ctx.group) > 1:
            dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        if dist.get_world_size(group) == 1:
            return x.view_as(x)
        # A copy, not in place: the input may be saved by another node or be a leaf.
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # Z = sum_r Z_r, so dL/dZ_r = dL/dZ on every rank.
        return grad, None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        rank, size = _layout(group)
        ctx.rank, ctx.size = rank, size
        if size == 1:
            return x.view_as(x)
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=-1)  # (..., size * local)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if ctx.size == 1:
            return grad, None
        return grad.chunk(ctx.size, dim=-1)[ctx.rank].contiguous(), None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        rank, size = _layout(group)
        ctx.group = group
        if size == 1:
            return x.view_as(x)
        if x.shape[-1] % size:
            raise ValueError(f"last dim ({x.shape[-1]}) must be divisible by tp ({size})")
        return x.chunk(size, dim=-1)[rank].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _GatherFromTP.apply(grad, ctx.group), None


def copy_to_tp(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Megatron ``f``: forward ``y = x``; backward ``dx = sum over group of dy``."""
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Megatron ``g``: forward ``y = sum over group of x``; backward ``dx = dy``."""
    return _ReduceFromTP.apply(x, group)


def gather_from_tp(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Forward: concatenate every rank's last dim in rank order; backward: this rank's chunk."""
    return _GatherFromTP.apply(x, group)


def scatter_to_tp(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Forward: this rank's chunk of the last dim; backward: all-gather of the chunks."""
    return _ScatterToTP.apply(x, group)


# --- parallel linears -----------------------------------------------------------------------------


def _param(t: torch.Tensor, *, sharded: bool = False) -> nn.Parameter:
    # clone: the shard must own its storage, or the full weight would stay alive behind it.
    p = nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
    # DeepSpeed's gradient-norm computation counts a parameter without this mark on tensor-
    # parallel rank 0 only (it is replicated); a shard must count on every rank.
    p.tensor_model_parallel = sharded
    return p


def _chunk(full: int, group: Group, what: str) -> torch.Tensor:
    """Indices of this rank's contiguous 1/tp of ``full`` features."""
    rank, tp = _layout(group)
    if full % tp:
        raise ValueError(f"{what} ({full}) must be divisible by tp ({tp})")
    return torch.arange(rank * full // tp, (rank + 1) * full // tp)


class ColumnParallelLinear(nn.Module):
    """``Y = X A^T + b`` with A's output features (rows of ``weight``) split over ``group``.

    Built from the full ``linear``: this rank keeps ``weight[rows]`` and ``bias[rows]``, by
    default the rank's contiguous chunk; pass ``rows`` for another layout (e.g. whole attention
    heads of each of q, k and v, ``qkv_shard_rows``). The input is replicated and passes through
    ``copy_to_tp``; the output holds this rank's ``len(rows)`` features (``gather_output=False``,
    ready for a row-parallel layer), or every feature with ``gather_output=True`` (contiguous
    layout only: a gather concatenates shards in rank order).
    """

    def __init__(
        self,
        linear: nn.Linear,
        group: Group,
        *,
        rows: torch.Tensor | None = None,
        gather_output: bool = False,
    ):
        super().__init__()
        if rows is None:
            rows = _chunk(linear.out_features, group, "out_features")
        elif gather_output:
            raise ValueError("gather_output=True needs the contiguous layout: leave rows=None")
        rows = rows.to(device=linear.weight.device, dtype=torch.long)
        self.group, self.gather_output = group, gather_output
        self.in_features, self.out_features = linear.in_features, rows.numel()  # local
        self.weight = _param(linear.weight[rows], sharded=True)  # (out_local, in)
        self.bias = _param(linear.bias[rows], sharded=True) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(copy_to_tp(x, self.group), self.weight, self.bias)  # (..., out_local)
        return gather_from_tp(y, self.group) if self.gather_output else y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features(local)={self.out_features}, "
            f"bias={self.bias is not None}, gather_output={self.gather_output}"
        )


class RowParallelLinear(nn.Module):
    """``Z = X B^T + b`` with B's input features (columns of ``weight``) split over ``group``.

    This rank keeps ``weight[:, cols]`` (its contiguous chunk unless ``cols`` is given) and
    computes the partial product ``X_r B_r^T``; ``reduce_from_tp`` sums the partials, then the
    replicated bias is added once. ``input_is_parallel=True`` (the usual case, after a
    column-parallel layer) takes this rank's input features; ``False`` takes the full input and
    scatters it (contiguous layout only).
    """

    def __init__(
        self,
        linear: nn.Linear,
        group: Group,
        *,
        cols: torch.Tensor | None = None,
        input_is_parallel: bool = True,
    ):
        super().__init__()
        if cols is None:
            cols = _chunk(linear.in_features, group, "in_features")
        elif not input_is_parallel:
            raise ValueError("input_is_parallel=False needs the contiguous layout: leave cols=None")
        cols = cols.to(device=linear.weight.device, dtype=torch.long)
        self.group, self.input_is_parallel = group, input_is_parallel
        self.in_features, self.out_features = cols.numel(), linear.out_features  # in: local
        self.weight = _param(linear.weight[:, cols], sharded=True)  # (out, in_local)
        # Replicated: added after the reduction, so it counts once, and its gradient (from the
        # replicated dL/dZ) is identical on every rank.
        self.bias = _param(linear.bias) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tp(x, self.group)
        z = reduce_from_tp(F.linear(x, self.weight), self.group)  # (..., out)
        return z + self.bias if self.bias is not None else z

    def extra_repr(self) -> str:
        return (
            f"in_features(local)={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, input_is_parallel={self.input_is_parallel}"
        )


# --- the model plan -------------------------------------------------------------------------------


def check_tensor_parallel(model: nn.Module, tp: int) -> None:
    """Raise ValueError, quoting the numbers, if ``model``'s blocks cannot be split ``tp`` ways."""
    if tp < 1:
        raise ValueError(f"tp ({tp}) must be >= 1")
    for i, blk in enumerate(model.blocks):
        heads, hidden = blk.attn.heads, blk.mlp.fc1.out_features
        if heads % tp:
            raise ValueError(
                f"blocks[{i}]: attention heads ({heads}) must be divisible by tp ({tp}); "
                "choose parallel.tp among the divisors of model.heads"
            )
        if hidden % tp:
            raise ValueError(
                f"blocks[{i}]: MLP hidden width ({hidden}) must be divisible by tp ({tp}); "
                "change model.mlp_ratio or parallel.tp"
            )


def qkv_shard_rows(dim: int, heads: int, tp: int, rank: int) -> torch.Tensor:
    """Rows of a fused ``qkv`` weight (3 * dim, dim) that ``rank`` keeps: its whole heads of each
    of q, k and v. The weight's rows are laid out as (3, heads, head_dim); rank r keeps heads
    [r * h_l, (r + 1) * h_l) with h_l = heads / tp of each third, so its local output reshapes
    as (3, h_l, head_dim) exactly like the single-device output reshapes as (3, heads, head_dim).
    """
    if heads % tp or dim % heads:
        raise ValueError(f"need heads ({heads}) | dim ({dim}) and tp ({tp}) | heads ({heads})")
    local = heads // tp
    rows = torch.arange(3 * dim).view(3, heads, dim // heads)  # (3, heads, head_dim)
    return rows[:, rank * local : (rank + 1) * local].reshape(-1)  # (3 * h_l * head_dim,)


def tensor_parallel_block(blk: nn.Module, group: Group) -> nn.Module:
    """Shard one ``Block`` over ``group``, in place; returns it (see ``apply_tensor_parallel``).
    Pipeline stages call this on their own blocks only."""
    rank, tp = _layout(group)
    attn, mlp = blk.attn, blk.mlp
    if isinstance(attn.qkv, ColumnParallelLinear):
        # A second pass would shard the shards (and divide heads again).
        raise ValueError("the block is already tensor-parallel: apply tensor parallelism once")
    dim, heads = attn.proj.in_features, attn.heads
    if heads % tp or mlp.fc1.out_features % tp:
        raise ValueError(
            f"attention heads ({heads}) and MLP hidden width ({mlp.fc1.out_features}) must be "
            f"divisible by tp ({tp}): choose parallel.tp among their common divisors"
        )
    local = heads // tp
    head_dim = dim // heads
    attn.qkv = ColumnParallelLinear(attn.qkv, group, rows=qkv_shard_rows(dim, heads, tp, rank))
    # The attention output is (B, N, h_l * head_dim) in head order: exactly this rank's
    # contiguous chunk of proj's input columns.
    cols = torch.arange(rank * local * head_dim, (rank + 1) * local * head_dim)
    attn.proj = RowParallelLinear(attn.proj, group, cols=cols)
    attn.heads = local
    mlp.fc1 = ColumnParallelLinear(mlp.fc1, group)
    mlp.fc2 = RowParallelLinear(mlp.fc2, group)
    return blk


def apply_tensor_parallel(model: nn.Module, group: Group) -> nn.Module:
    """Shard every block of ``model`` (a SciGPTModel) over ``group``, in place; returns it.

    Per block: ``attn.qkv`` → column-parallel by whole heads, ``attn.proj`` → row-parallel (its
    input columns follow the heads: head h owns columns [h * head_dim, (h + 1) * head_dim)),
    ``mlp.fc1`` → column-parallel, ``mlp.fc2`` → row-parallel, and ``attn.heads`` becomes
    heads / tp so the attention reshape sees the local heads. Everything else (tokenizer, norms,
    mask token, heads) stays replicated and must receive identical updates on every rank.
    """
    _, tp = _layout(group)
    if any(isinstance(blk.attn.qkv, ColumnParallelLinear) for blk in model.blocks):
        raise ValueError("the model is already tensor-parallel: apply_tensor_parallel once")
    check_tensor_parallel(model, tp)
    for blk in model.blocks:
        tensor_parallel_block(blk, group)
    return model
