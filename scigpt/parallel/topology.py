"""The parallel layout as one explicit object (DESIGN.md §2).

Built once from the world size and the config, checked, and passed explicitly: no module-level
process groups. ``Topology`` is the one layout object: the trainer's run layout, the layout a
checkpoint records (``to_dict``), and the planner's candidates (``scigpt.parallel.planner``
enumerates Topologies). It knows every rank's place: ``rank = (dp_i · pp + pp_i) · tp + tp_i``
(tensor-parallel innermost, so a TP group stays inside a node; then pipeline, then data), and the
ranks of every group; ``ProcessGroups`` creates those groups. Its rules are
``scigpt.layout_rules``'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist

from scigpt.config import ParallelConfig
from scigpt.layout_rules import check_layout


@dataclass(frozen=True)
class Topology:
    """dp × tp × pp ranks, the ZeRO stage and the activation checkpointing of a layout.

    Equality (and ``same_sharding``) compares what a checkpoint's tensors depend on — dp, tp,
    pp and the ZeRO stage (``to_dict``) — not the activation checkpointing, which changes no
    tensor: a checkpoint written with another checkpointing mode resumes without resharding."""

    dp: int
    tp: int = 1
    pp: int = 1
    zero_stage: int = 1
    activation_checkpointing: str = field(default="none", compare=False)

    @classmethod
    def from_config(cls, cfg: ParallelConfig, world_size: int) -> Topology:
        """The run's layout on ``world_size`` processes (raises ``LayoutError`` when the world
        does not fit ``parallel.tp x parallel.pp``)."""
        check_layout(
            tp=cfg.tp, pp=cfg.pp, zero_stage=cfg.zero_stage,
            activation_checkpointing=cfg.activation_checkpointing, world_size=world_size,
        )  # fmt: skip
        return cls(
            dp=world_size // (cfg.tp * cfg.pp),
            tp=cfg.tp,
            pp=cfg.pp,
            zero_stage=cfg.zero_stage,
            activation_checkpointing=cfg.activation_checkpointing,
        )

    @classmethod
    def of(cls, *, dp: int, tp: int, pp: int, zero_stage: int) -> Topology:
        """The layout as recorded in checkpoints (``to_dict``)."""
        return cls(dp=dp, tp=tp, pp=pp, zero_stage=zero_stage)

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    world = world_size

    def to_dict(self) -> dict[str, int]:
        """What checkpoints record: the sharding (activation checkpointing changes no tensor)."""
        return {"dp": self.dp, "tp": self.tp, "pp": self.pp, "zero_stage": self.zero_stage}

    def same_sharding(self, other: Topology) -> bool:
        """Whether a checkpoint written at ``other`` loads here as it is (no resharding)."""
        return self.to_dict() == other.to_dict()

    def describe(self) -> str:
        """The run's layout, for logs and provenance."""
        return (
            f"world={self.world_size} dp={self.dp} tp={self.tp} pp={self.pp} zero={self.zero_stage}"
        )

    def label(self) -> str:
        """The layout with its checkpointing, as ``scigpt plan`` prints it."""
        return (
            f"dp{self.dp} tp{self.tp} pp{self.pp} ZeRO-{self.zero_stage} "
            f"checkpointing {self.activation_checkpointing}"
        )

    # ---- ranks --------------------------------------------------------------------------------
    def rank_of(self, *, dp_rank: int, pp_rank: int, tp_rank: int) -> int:
        """The global rank at these coordinates."""
        return (dp_rank * self.pp + pp_rank) * self.tp + tp_rank

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp

    def pp_rank(self, rank: int) -> int:
        return (rank // self.tp) % self.pp

    def dp_rank(self, rank: int) -> int:
        """The data-parallel rank of ``rank``: ranks of one tensor/pipeline group share it (and
        their batches)."""
        return rank // (self.tp * self.pp)

    def tp_groups(self) -> list[list[int]]:
        """Every tensor-parallel group's ranks, in the order ``ProcessGroups`` creates them."""
        return [
            [self.rank_of(dp_rank=d, pp_rank=p, tp_rank=t) for t in range(self.tp)]
            for d in range(self.dp)
            for p in range(self.pp)
        ]

    def dp_groups(self) -> list[list[int]]:
        """Every data-parallel group's ranks, in the order ``ProcessGroups`` creates them."""
        return [
            [self.rank_of(dp_rank=d, pp_rank=p, tp_rank=t) for d in range(self.dp)]
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

    Rank layout: ``Topology``'s (``rank = (dp_i · pp + pp_i) · tp + tp_i``).
    """

    def __init__(self, topo: Topology, rank: int):
        self.topo, self.rank = topo, rank
        self.tp_rank = topo.tp_rank(rank)
        self.pp_rank = topo.pp_rank(rank)
        self.dp_rank = topo.dp_rank(rank)
        # Every rank creates every group, in the same order (torch.distributed requires it).
        self.tp_group = self.dp_group = None
        for ranks in topo.tp_groups():
            g = dist.new_group(ranks)
            if rank in ranks:
                self.tp_group, self.tp_ranks = g, ranks
        for ranks in topo.dp_groups():
            g = dist.new_group(ranks)
            if rank in ranks:
                self.dp_group, self.dp_ranks = g, ranks

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
