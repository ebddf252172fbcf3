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

    def describe(self) -> str:
        return (
            f"world={self.world_size} dp={self.dp} tp={self.tp} pp={self.pp} zero={self.zero_stage}"
        )
