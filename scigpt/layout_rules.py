"""The layout rules, stated once: which (dp, tp, pp, ZeRO, checkpointing) layouts SciGPT trains.

Config validation (``scigpt.config.RunConfig``), the world-size check (``Topology.from_config``),
the planner (``scigpt.parallel.planner``: which layouts it enumerates, and why it refuses one)
and the engine (``scigpt.parallel.engine.build_engine``) all ask ``layout_problems``; each rule
has a name (``LayoutProblem.rule``) and one message that names the config keys and the fix.

The rules take plain numbers and import nothing, so any layer can ask them (the config asks
before any model or process exists; it lives beside the config, not in ``scigpt.parallel``, so
that loading a config loads no parallel code). Rules whose inputs are not given are skipped: the
config knows no world size, the planner's shape checks no precision.

=====================  =================================================================
rule                   why
=====================  =================================================================
``positive``           dp, tp and pp are process counts
``zero-stage``         DeepSpeed's ZeRO stages are 0-3
``checkpointing``      ``scigpt.parallel.checkpointing``'s modes
``tp-heads``           tensor parallelism splits attention by whole heads
``tp-mlp``             ... and the MLP by hidden columns
``pp-depth``           every pipeline stage needs at least one block
``world``              dp = world / (tp · pp) must be a whole number of ranks
``tp-node``            a tensor-parallel group stays inside a node (all-reduces per block)
``tp-zero``            tensor parallelism runs with ZeRO 0 or 1 in this release
``pp-zero``            DeepSpeed's pipeline engine supports ZeRO 0/1
``pp-bf16``            DeepSpeed 0.19.8 cannot reload a bf16 pipeline checkpoint without ZeRO
=====================  =================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

ZERO_STAGES = (0, 1, 2, 3)
CHECKPOINTING = ("none", "selective", "full")


@dataclass(frozen=True)
class LayoutProblem:
    rule: str  # the rule's name (module docstring)
    message: str  # what is wrong, naming the config keys, and the fix


class LayoutError(ValueError):
    """A layout that breaks a rule; ``problem`` is the first rule it breaks."""

    def __init__(self, problem: LayoutProblem):
        super().__init__(problem.message)
        self.problem = problem


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def mlp_width(embed_dim: int, mlp_ratio: float) -> int:
    """The MLP hidden width, as ``scigpt.models.vit.Block`` builds it."""
    return int(embed_dim * mlp_ratio)


def layout_problems(
    *,
    tp: int,
    pp: int,
    zero_stage: int,
    dp: int = 1,
    activation_checkpointing: str = "none",
    heads: int | None = None,
    embed_dim: int | None = None,
    mlp_ratio: float | None = None,
    depth: int | None = None,
    precision: str | None = None,
    world_size: int | None = None,
    gpus_per_node: int | None = None,
) -> list[LayoutProblem]:
    """Every rule the layout breaks, in the order above (empty: the layout is valid).

    ``heads``/``embed_dim``/``mlp_ratio``/``depth``: the model's shape; ``precision``: the run's
    training precision; ``world_size``: the processes launched (then ``dp`` is not checked: it
    is derived); ``gpus_per_node``: the node size. A rule whose inputs are None is skipped."""
    out: list[LayoutProblem] = []

    def bad(rule: str, message: str) -> None:
        out.append(LayoutProblem(rule, message))

    if min(dp, tp, pp) < 1:
        bad("positive", f"dp, tp and pp must be >= 1, got dp={dp} tp={tp} pp={pp}")
        return out
    if zero_stage not in ZERO_STAGES:
        bad("zero-stage", f"parallel.zero_stage={zero_stage} is not one of {list(ZERO_STAGES)}")
    if activation_checkpointing not in CHECKPOINTING:
        bad(
            "checkpointing",
            f"parallel.activation_checkpointing={activation_checkpointing!r} is not one of "
            f"{list(CHECKPOINTING)}",
        )
    if heads is not None and heads % tp:
        bad(
            "tp-heads",
            f"parallel.tp={tp} does not divide model.heads={heads}: "
            f"choose tp from {_divisors(heads)}",
        )
    if embed_dim is not None and mlp_ratio is not None:
        hidden = mlp_width(embed_dim, mlp_ratio)
        if hidden % tp:
            bad(
                "tp-mlp",
                f"parallel.tp={tp} does not divide the MLP width {hidden} "
                f"(model.embed_dim={embed_dim} x model.mlp_ratio={mlp_ratio}): "
                "choose a tp that divides it",
            )
    if depth is not None and pp > depth:
        bad(
            "pp-depth",
            f"parallel.pp={pp} is larger than model.depth={depth}: every pipeline stage "
            f"needs at least one block; use pp <= {depth}",
        )
    if world_size is not None and world_size % (tp * pp):
        bad(
            "world",
            f"world size {world_size} is not divisible by parallel.tp x parallel.pp = "
            f"{tp} x {pp} = {tp * pp}: launch a multiple of {tp * pp} processes or change tp/pp",
        )
    if gpus_per_node is not None and (tp > gpus_per_node or gpus_per_node % tp):
        bad(
            "tp-node",
            f"parallel.tp={tp} does not fit in a node of {gpus_per_node} GPUs: tensor "
            "parallelism stays inside a node; choose a tp that divides the GPUs per node",
        )
    if tp > 1 and zero_stage > 1:
        bad(
            "tp-zero",
            f"parallel.tp={tp} runs with parallel.zero_stage <= 1 (ZeRO <= 1), got "
            f"{zero_stage}: set zero_stage: 1",
        )
    if pp > 1 and zero_stage > 1:
        bad(
            "pp-zero",
            f"parallel.pp={pp} needs parallel.zero_stage <= 1 (DeepSpeed's pipeline engine "
            f"supports ZeRO 0/1), got {zero_stage}: set zero_stage: 1",
        )
    if pp > 1 and precision == "bf16" and zero_stage != 1:
        bad(
            "pp-bf16",
            f"parallel.pp={pp} with precision=bf16 needs parallel.zero_stage=1 (ZeRO-1 only: "
            "DeepSpeed 0.19.8 cannot reload a bf16 pipeline checkpoint without ZeRO): set "
            "zero_stage: 1",
        )
    return out


def check_layout(**layout) -> None:
    """Raise ``LayoutError`` (a ValueError) naming the first rule the layout breaks
    (arguments: ``layout_problems``')."""
    problems = layout_problems(**layout)
    if problems:
        raise LayoutError(problems[0])


__all__ = [
    "CHECKPOINTING",
    "ZERO_STAGES",
    "LayoutError",
    "LayoutProblem",
    "check_layout",
    "layout_problems",
    "mlp_width",
]
