"""The parallel layout as one explicit object (DESIGN.md §2).

Built once from the world size and the config, checked, and passed explicitly: no module-level
process groups. ``Topology`` is the one layout object: the trainer's run layout, the layout a
checkpoint records (``to_dict``), and the planner's candidates (``scigpt.parallel.planner``
enumerates Topologies). It knows every rank's place:
``rank = ((dp_i · pp + pp_i) · tp + tp_i) · sp + sp_i`` (sequence-parallel innermost, then
tensor-parallel, so the per-block all-to-alls and all-reduces stay inside a node; then pipeline,
then data; with sp = 1 the layout of earlier releases), and the ranks of every group;
``ProcessGroups`` creates those groups. Its rules are ``scigpt.layout_rules``'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist

from scigpt.config import ParallelConfig
from scigpt.layout_rules import check_layout


@dataclass(frozen=True)
class Topology:
    """dp × pp × tp × sp ranks, the ZeRO stage and the activation checkpointing of a layout.

    Equality (and ``same_sharding``) compares what a checkpoint's tensors depend on — dp, tp,
    pp, sp and the ZeRO stage (``to_dict``) — not the activation checkpointing, which changes no
    tensor: a checkpoint written with another checkpointing mode resumes without resharding."""

    dp: int
    tp: int = 1
    pp: int = 1
    zero_stage: int = 1
    activation_checkpointing: str = field(default="none", compare=False)
    sp: int = 1

    @classmethod
    def from_config(cls, cfg: ParallelConfig, world_size: int) -> Topology:
        """The run's layout on ``world_size`` processes (raises ``LayoutError`` when the world
        does not fit ``parallel.tp x parallel.pp``)."""
        check_layout(
            tp=cfg.tp, pp=cfg.pp, sp=cfg.sp, zero_stage=cfg.zero_stage,
            activation_checkpointing=cfg.activation_checkpointing, world_size=world_size,
        )  # fmt: skip
        return cls(
            dp=world_size // (cfg.tp * cfg.pp * cfg.sp),
            sp=cfg.sp,
            tp=cfg.tp,
            pp=cfg.pp,
            zero_stage=cfg.zero_stage,
            activation_checkpointing=cfg.activation_checkpointing,
        )

    @classmethod
    def of(cls, *, dp: int, tp: int, pp: int, zero_stage: int, sp: int = 1) -> Topology:
        """The layout as recorded in checkpoints (``to_dict``; records before sp have none)."""
        return cls(dp=dp, tp=tp, pp=pp, zero_stage=zero_stage, sp=sp)

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp * self.sp

    world = world_size

    def to_dict(self) -> dict[str, int]:
        """What checkpoints record: the sharding (activation checkpointing changes no tensor).
        ``sp`` only when > 1, so records of sp-free layouts read as before."""
        out = {"dp": self.dp, "tp": self.tp, "pp": self.pp, "zero_stage": self.zero_stage}
        if self.sp > 1:
            out["sp"] = self.sp
        return out

    def same_sharding(self, other: Topology) -> bool:
        """Whether a checkpoint written at ``other`` loads here as it is (no resharding)."""
        return self.to_dict() == other.to_dict()

    def describe(self) -> str:
        """The run's layout, for logs and provenance."""
        sp = f" sp={self.sp}" if self.sp > 1 else ""
        return (
            f"world={self.world_size} dp={self.dp} tp={self.tp} pp={self.pp}{sp} "
            f"zero={self.zero_stage}"
        )

    def label(self) -> str:
        """The layout with its checkpointing, as ``scigpt plan`` prints it."""
        sp = f" sp{self.sp}" if self.sp > 1 else ""
        return (
            f"dp{self.dp} tp{self.tp} pp{self.pp}{sp} ZeRO-{self.zero_stage} "
            f"checkpointing {self.activation_checkpointing}"
        )

    # ---- ranks --------------------------------------------------------------------------------
    def rank_of(self, *, dp_rank: int, pp_rank: int, tp_rank: int, sp_rank: int = 0) -> int:
        """The global rank at these coordinates."""
        return ((dp_rank * self.pp + pp_rank) * self.tp + tp_rank) * self.sp + sp_rank

    def sp_rank(self, rank: int) -> int:
        return rank % self.sp

    def tp_rank(self, rank: int) -> int:
        return (rank // self.sp) % self.tp

    def pp_rank(self, rank: int) -> int:
        return (rank // (self.sp * self.tp)) % self.pp

    def dp_rank(self, rank: int) -> int:
        """The data-parallel rank of ``rank``: ranks of one tensor/pipeline/sequence group share
        it (and their batches)."""
        return rank // (self.sp * self.tp * self.pp)

    def tp_groups(self) -> list[list[int]]:
        """Every tensor-parallel group's ranks, in the order ``ProcessGroups`` creates them."""
        return [
            [self.rank_of(dp_rank=d, pp_rank=p, tp_rank=t, sp_rank=s) for t in range(self.tp)]
            for d in range(self.dp)
            for p in range(self.pp)
            for s in range(self.sp)
        ]

    def dp_groups(self) -> list[list[int]]:
        """Every data-parallel group's ranks, in the order ``ProcessGroups`` creates them."""
        return [
            [self.rank_of(dp_rank=d, pp_rank=p, tp_rank=t, sp_rank=s) for d in range(self.dp)]
            for p in range(self.pp)
            for t in range(self.tp)
            for s in range(self.sp)
        ]

    def sp_groups(self) -> list[list[int]]:
        """Every sequence-parallel group's ranks (consecutive: sp is innermost)."""
        return [
            [self.rank_of(dp_rank=d, pp_rank=p, tp_rank=t, sp_rank=s) for s in range(self.sp)]
            for d in range(self.dp)
            for p in range(self.pp)
            for t in range(self.tp)
        ]

    def sp_dp_groups(self) -> list[list[int]]:
        """Every sequence-data-parallel group: the dp x sp ranks that hold the same parameters
        (ZeRO partitions and gradients are reduced over them; DeepSpeed divides by dp only, as
        each sp rank's gradient is its tokens' part of the sample's)."""
        return [
            [
                self.rank_of(dp_rank=d, pp_rank=p, tp_rank=t, sp_rank=s)
                for d in range(self.dp)
                for s in range(self.sp)
            ]
            for p in range(self.pp)
            for t in range(self.tp)
        ]

    def tp_group_of(self, rank: int) -> list[int]:
        return next(g for g in self.tp_groups() if rank in g)

    def dp_group_of(self, rank: int) -> list[int]:
        return next(g for g in self.dp_groups() if rank in g)


class ProcessGroups:
    """The process groups of a topology, created once, passed explicitly; also the ``mpu``
    object DeepSpeed asks for (so ZeRO partitions and averages over data-parallel ranks only,
    and gradient clipping counts tensor-parallel shards once).

    Rank layout: ``Topology``'s (``rank = ((dp_i · pp + pp_i) · tp + tp_i) · sp + sp_i``).
    With sp > 1 it also answers DeepSpeed's sequence-parallel questions (Ulysses): the engine
    and ZeRO then reduce over the dp x sp group and divide by dp.
    """

    def __init__(self, topo: Topology, rank: int):
        self.topo, self.rank = topo, rank
        self.tp_rank = topo.tp_rank(rank)
        self.pp_rank = topo.pp_rank(rank)
        self.dp_rank = topo.dp_rank(rank)
        self.sp_rank = topo.sp_rank(rank)
        # Every rank creates every group, in the same order (torch.distributed requires it).
        self.tp_group = self.dp_group = self.sp_group = self.sp_dp_group = None
        self.sp_ranks, self.sp_dp_ranks = [rank], [rank]
        for ranks in topo.tp_groups():
            g = dist.new_group(ranks)
            if rank in ranks:
                self.tp_group, self.tp_ranks = g, ranks
        for ranks in topo.dp_groups():
            g = dist.new_group(ranks)
            if rank in ranks:
                self.dp_group, self.dp_ranks = g, ranks
        if topo.sp > 1:
            for ranks in topo.sp_groups():
                g = dist.new_group(ranks)
                if rank in ranks:
                    self.sp_group, self.sp_ranks = g, ranks
            for ranks in topo.sp_dp_groups():
                g = dist.new_group(ranks)
                if rank in ranks:
                    self.sp_dp_group, self.sp_dp_ranks = g, ranks
        else:
            self.sp_dp_group, self.sp_dp_ranks = self.dp_group, self.dp_ranks

    # ---- the mpu interface DeepSpeed uses (model parallel = tensor parallel here) -------------
    def get_model_parallel_rank(self) -> int:
        return self.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.topo.tp

    def get_model_parallel_group(self):
        return self.tp_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self.tp_ranks[0]

    def get_data_parallel_rank(self) -> int:
        return self.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.topo.dp

    def get_data_parallel_group(self):
        return self.dp_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self.dp_ranks)

    # ---- the sequence-parallel interface (DeepSpeed's Ulysses; only with sp > 1) --------------
    def __getattr__(self, name: str):
        # DeepSpeed switches to its sequence-parallel paths when the mpu *has* these methods,
        # so they exist only when sp > 1 (hasattr is False otherwise).
        topo = self.__dict__.get("topo")
        if topo is None or topo.sp == 1 or name not in _SP_METHODS:
            raise AttributeError(name)
        return getattr(self, _SP_METHODS[name])

    def _sp_world(self) -> int:
        return self.topo.sp

    def _sp_rank(self) -> int:
        return self.sp_rank

    def _sp_group(self):
        return self.sp_group

    def _sp_dp_world(self) -> int:
        return self.topo.sp * self.topo.dp

    def _sp_dp_rank(self) -> int:
        return self.sp_dp_ranks.index(self.rank)

    def _sp_dp_group(self):
        return self.sp_dp_group


_SP_METHODS = {
    "get_sequence_parallel_world_size": "_sp_world",
    "get_sequence_parallel_rank": "_sp_rank",
    "get_sequence_parallel_group": "_sp_group",
    "get_sequence_data_parallel_world_size": "_sp_dp_world",
    "get_sequence_data_parallel_rank": "_sp_dp_rank",
    "get_sequence_data_parallel_group": "_sp_dp_group",
}
