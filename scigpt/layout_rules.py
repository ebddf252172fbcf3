"""The layout rules, stated once: which (dp, tp, pp, sp, ZeRO, checkpointing) layouts SciGPT trains.

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
``positive``           dp, tp, pp and sp are process counts
``zero-stage``         DeepSpeed's ZeRO stages are 0-3
``checkpointing``      ``scigpt.parallel.checkpointing``'s modes
``tp-heads``           tensor parallelism splits attention by whole heads
``tp-mlp``             ... and the MLP by hidden columns
``sp-heads``           Ulysses' all-to-all gives each sp rank whole heads of its tp shard
``sp-rows``            every sp rank holds at least one patch row of the grid (tokens are cut
                       by patch rows; rows padded to a multiple of sp are masked)
``pp-depth``           every pipeline stage needs at least one block
``world``              dp = world / (tp · pp · sp) must be a whole number of ranks
``tp-node``            a tensor-parallel group stays inside a node (all-reduces per block)
``tp-zero``            tensor parallelism runs with ZeRO 0 or 1 in this release
``pp-zero``            DeepSpeed's pipeline engine supports ZeRO 0/1
``sp-pp``              DeepSpeed's PipelineEngine has no sequence axis (its grid and its
                       data-parallel gradient reduction know dp, pp and tp only)
``sp-zero3``           ZeRO-3 with sp > 1 is not verified (its construction partitions over
                       the world, not the sequence-data-parallel group): use ZeRO 0-2
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
    sp: int = 1,
    activation_checkpointing: str = "none",
    heads: int | None = None,
    embed_dim: int | None = None,
    mlp_ratio: float | None = None,
    depth: int | None = None,
    precision: str | None = None,
    world_size: int | None = None,
    gpus_per_node: int | None = None,
    patch_rows: int | None = None,
) -> list[LayoutProblem]:
    """Every rule the layout breaks, in the order above (empty: the layout is valid).

    ``heads``/``embed_dim``/``mlp_ratio``/``depth``: the model's shape; ``precision``: the run's
    training precision; ``world_size``: the processes launched (then ``dp`` is not checked: it
    is derived); ``gpus_per_node``: the node size; ``patch_rows``: the grid's patch rows
    (ceil(H / patch)), the axis sequence parallelism cuts. A rule whose inputs are None is
    skipped."""
    out: list[LayoutProblem] = []

    def bad(rule: str, message: str) -> None:
        out.append(LayoutProblem(rule, message))

    if min(dp, tp, pp, sp) < 1:
        bad("positive", f"dp, tp, pp and sp must be >= 1, got dp={dp} tp={tp} pp={pp} sp={sp}")
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
    if heads is not None and sp > 1 and heads % (sp * tp):
        bad(
            "sp-heads",
            f"parallel.sp={sp} x parallel.tp={tp} = {sp * tp} does not divide model.heads={heads}: "
            "Ulysses' all-to-all gives each sequence-parallel rank whole heads; choose sp x tp "
            f"from {_divisors(heads)}",
        )
    if patch_rows is not None and sp > patch_rows:
        bad(
            "sp-rows",
            f"parallel.sp={sp} is larger than the grid's {patch_rows} patch rows: sequence "
            f"parallelism gives each rank whole patch rows; use sp <= {patch_rows}",
        )
    if depth is not None and pp > depth:
        bad(
            "pp-depth",
            f"parallel.pp={pp} is larger than model.depth={depth}: every pipeline stage "
            f"needs at least one block; use pp <= {depth}",
        )
    if world_size is not None and world_size % (tp * pp * sp):
        n = tp * pp * sp
        keys, sizes = ("tp x parallel.pp", f"{tp} x {pp}") if sp == 1 else (
            "tp x parallel.pp x parallel.sp", f"{tp} x {pp} x {sp}"
        )  # fmt: skip
        bad(
            "world",
            f"world size {world_size} is not divisible by parallel.{keys} = {sizes} = {n}: "
            f"launch a multiple of {n} processes or change tp/pp{'/sp' if sp > 1 else ''}",
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
    if sp > 1 and pp > 1:
        bad(
            "sp-pp",
            f"parallel.sp={sp} with parallel.pp={pp} is not supported: DeepSpeed's pipeline "
            "engine has no sequence axis (its process grid and its data-parallel gradient "
            "reduction know dp, pp and tp only): set pp: 1 (sp composes with dp, tp and ZeRO 0-2)",
        )
    if sp > 1 and zero_stage == 3:
        bad(
            "sp-zero3",
            f"parallel.sp={sp} with parallel.zero_stage=3 is not supported in this release: "
            "ZeRO-3's construction partitions over the whole world, not the sequence-data-"
            "parallel group: set zero_stage: 1 or 2 (they partition over dp x sp ranks)",
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
