"""The parallel layout as one explicit object (DESIGN.md §2).

Built once from the world size and the config, checked, and passed explicitly: no module-level
process groups. Constraints that need only the config (tp divides heads, pp <= depth) are checked
when the config loads; this object adds the ones that need the world size.
"""

from __future__ import annotations

from dataclasses import dataclass

from scigpt.config import ParallelConfig


@dataclass(frozen=True)
class Topology:
    world_size: int
    dp: int
    tp: int
    pp: int
    zero_stage: int

    @classmethod
    def from_config(cls, cfg: ParallelConfig, world_size: int) -> Topology:
        model_parallel = cfg.tp * cfg.pp
        if world_size % model_parallel:
            raise ValueError(
                f"world size {world_size} is not divisible by parallel.tp x parallel.pp = "
                f"{cfg.tp} x {cfg.pp} = {model_parallel}: launch a multiple of {model_parallel} "
                "processes or change tp/pp"
            )
        return cls(
            world_size=world_size,
            dp=world_size // model_parallel,
            tp=cfg.tp,
            pp=cfg.pp,
            zero_stage=cfg.zero_stage,
        )

    @classmethod
    def of(cls, *, dp: int, tp: int, pp: int, zero_stage: int) -> Topology:
        """The layout as recorded in checkpoints (``to_dict``)."""
        return cls(world_size=dp * tp * pp, dp=dp, tp=tp, pp=pp, zero_stage=zero_stage)

    def to_dict(self) -> dict[str, int]:
        return {"dp": self.dp, "tp": self.tp, "pp": self.pp, "zero_stage": self.zero_stage}

    def describe(self) -> str:
        return (
            f"world={self.world_size} dp={self.dp} tp={self.tp} pp={self.pp} zero={self.zero_stage}"
        )


class ProcessGroups:
    """The process groups of a topology, created once, passed explicitly; also the ``mpu``
    object DeepSpeed asks for (so ZeRO partitions and averages over data-parallel ranks only,
    and gradient clipping counts tensor-parallel shards once).

    Rank layout: tensor-parallel innermost (consecutive ranks, so a TP group stays inside a
    node), then pipeline, then data: ``rank = (dp_i · pp + pp_i) · tp + tp_i``.
    """

    def __init__(self, topo: Topology, rank: int):
        import torch.distributed as dist

        self.topo, self.rank = topo, rank
        tp, pp, dp = topo.tp, topo.pp, topo.dp
        self.tp_rank = rank % tp
        self.pp_rank = (rank // tp) % pp
        self.dp_rank = rank // (tp * pp)
        # Every rank creates every group, in the same order (torch.distributed requires it).
        self.tp_group = self.dp_group = None
        for d in range(dp):
            for p in range(pp):
                ranks = [(d * pp + p) * tp + t for t in range(tp)]
                g = dist.new_group(ranks)
                if rank in ranks:
                    self.tp_group, self.tp_ranks = g, ranks
        for p in range(pp):
            for t in range(tp):
                ranks = [(d * pp + p) * tp + t for d in range(dp)]
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
