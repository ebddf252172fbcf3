"""What ``scigpt train`` would refuse, found before anything runs.

``scigpt validate`` and the trainer call the same ``check_run``, so a config that validates does
not then fail in training on something the config alone decides. Beyond the typed config
(``scigpt.config``), it checks:

* what training needs of the sources (``check_trainable``: a grid source first, series through
  the masked or pooled objective, the DALI loader's limits);
* each source's reader options (against the reader's signature) and paths (they match files);
  for netCDF, GRIB and Zarr, from the files' metadata alone, that the first work unit holds every
  variable asked for, ``data.operator_outputs``, ``objectives.variable_weights`` and
  ``eval.plot_variable`` (other formats are checked when ingested: their variable names come out
  of the data);
* the run name (one directory name);
* a fine-tune package (format, checksums, fields of config.json and variables.json);
* the layout against the world size, and memory: what each rank will hold by the planner's model
  (``scigpt.parallel.planner``: parameters, gradients, optimizer states, activations and
  DeepSpeed's buffers, measured against DeepSpeed) against the **target**: for ``validate`` the
  ``--gpu-mem``/``--gpus`` flags or a cluster profile (never the login node it runs on), for
  ``train`` the device the rank runs on.

Every problem is one line naming the key and the fix; together they raise one ``ConfigError``
(exit code 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scigpt.cluster import load_profile
from scigpt.config import ModelConfig, RunConfig
from scigpt.config_loader import ConfigError, LoadedConfig
from scigpt.data_pipeline.ingest.base import ReaderError, probe
from scigpt.data_pipeline.prepare import plan_units
from scigpt.export.errors import PackageError
from scigpt.export.verify import read_package
from scigpt.models.sizing import grid_tokens, param_count
from scigpt.models.vit import ModelSpec
from scigpt.parallel.planner import predict_memory, usable_gib
from scigpt.parallel.topology import Topology
from scigpt.prepare import source_specs
from scigpt.rundir import check_run_name
from scigpt.trainable import check_trainable

DEFAULT_GPU_MEM_GIB = 80.0  # validate's target when none is given: one H100-class GPU per rank


@dataclass(frozen=True)
class Target:
    """Where a run will run: ranks, ranks per node, memory per rank (GiB), and how it was
    chosen (quoted in messages)."""

    world_size: int
    per_node: int
    mem_gib: float
    what: str


def validate_target(
    cfg: RunConfig,
    *,
    gpus: int | None = None,
    gpu_mem: float | None = None,
    cluster: Any = None,
    nodes: int | None = None,
) -> Target:
    """The target ``scigpt validate`` (and ``scigpt submit``) judges memory against:
    ``--gpus``/``--gpu-mem``, else the cluster profile's (a name, a .yaml or a ``Profile``)
    nodes x tasks and ``gpu_mem_gib``, else one rank per model-parallel group (dp 1) on an
    80 GiB GPU."""
    for flag, value in (("--gpus", gpus), ("--gpu-mem", gpu_mem), ("--nodes", nodes)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag}={value} must be positive")
    profile = None
    label = f"profile {cluster}"
    if cluster is not None and not isinstance(cluster, str):
        profile, label = cluster, "the job's profile"
    elif cluster is not None:
        profile = load_profile(cluster)
    per_node = profile.tasks if profile else None
    if gpus is not None:
        world, how = gpus, f"{gpus} rank(s) (--gpus)"
    elif profile is not None:
        n = nodes or profile.nodes
        world, how = n * profile.tasks, f"{n} node(s) x {profile.tasks} ranks ({label})"
    else:
        world = cfg.parallel.tp * cfg.parallel.pp
        how = f"{world} rank(s), data parallel 1 (pass --gpus N or --cluster for your job)"
    if gpu_mem is not None:
        mem, where = gpu_mem, f"{gpu_mem:g} GiB per rank (--gpu-mem)"
    elif profile is not None and profile.gpu_mem_gib is not None:
        unit = "GPU" if profile.gpus_per_node else "task"
        mem, where = profile.gpu_mem_gib, f"{profile.gpu_mem_gib:g} GiB per {unit}"
    else:
        mem = DEFAULT_GPU_MEM_GIB
        where = f"{mem:g} GiB per rank (default; pass --gpu-mem or --cluster)"
    return Target(world, per_node or min(world, 8), mem, f"{where}, {how}")


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (containers, Slurm's task/cgroup), if any."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def machine_target(world_size: int, local_world_size: int) -> Target:
    """The target ``scigpt train`` judges memory against: the CUDA device of this rank, or
    without one this machine's memory (its cgroup limit if lower) shared by its ranks."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gib = props.total_memory / 2**30
        return Target(world_size, local_world_size, gib, f"this rank's {props.name}, {gib:.0f} GiB")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit()
    total = min(total, limit) if limit else total
    gib = total / 2**30 / local_world_size
    return Target(
        world_size, local_world_size, gib,
        f"this machine's {total / 2**30:.0f} GiB shared by {local_world_size} rank(s)",
    )  # fmt: skip


def memory_problem(
    cfg: RunConfig,
    model: ModelConfig,
    target: Target,
    *,
    tokens: int | None,
    vars_per_sample: int,
    num_vars: int,
    num_targets: int = 0,
) -> str | None:
    """ "this model needs N GiB per rank, the target has M" by the planner's memory model, or
    None when it fits. ``tokens=None``: the grid is not known yet, so activations are left out
    and N is a lower bound."""
    layout = Topology.from_config(cfg.parallel, target.world_size)  # with its checkpointing
    spec = ModelSpec(num_vars=num_vars, history=cfg.data.history, num_targets=num_targets)
    mem = predict_memory(
        model, spec, layout, tokens=tokens or 1, micro_batch=cfg.schedule.micro_batch_size,
        vars_per_sample=max(1, vars_per_sample), precision=cfg.precision,
        grad_accum=cfg.schedule.grad_accum, partition=cfg.parallel.pp_partition,
    )  # fmt: skip
    need, have = mem.total / 2**30, usable_gib(target.mem_gib)
    if need <= have:
        return None
    gib = 2**30
    parts = (
        f"parameters {mem.params / gib:.1f}, gradients {mem.grads / gib:.1f}, optimizer "
        f"{mem.optimizer / gib:.1f}, "
        + (f"activations {mem.activations / gib:.1f}, " if tokens else "activations not counted, ")
        + f"buffers {mem.buffers / gib:.1f}"
    )
    n = param_count(model, spec)["total"]
    return (
        f"model: this model needs {'at least ' if not tokens else ''}{need:,.1f} GiB per rank "
        f"({n / 1e9:,.4g}B parameters, {layout.label()}; {parts}), the target has "
        f"{have:,.1f} GiB usable of {target.what}: use a smaller model (model.embed_dim, "
        "model.depth), more ranks with parallel.zero_stage: 3, parallel.tp or parallel.pp, a "
        "smaller schedule.micro_batch_size or parallel.activation_checkpointing (`scigpt plan "
        "--model ... --gpus N --gpu-mem GIB` ranks the layouts that fit)"
    )


@dataclass
class SourceFacts:
    """What the probes found: variables per source (None: not probed) and the first grid."""

    variables: dict[str, list[str] | None]
    grid: tuple[int, int] | None


def _source_problems(loaded: LoadedConfig) -> tuple[list[str], SourceFacts]:
    cfg = loaded.config
    try:
        specs = source_specs(loaded)
    except ConfigError as e:
        return list(e.problems), SourceFacts({}, None)
    problems: list[str] = []
    facts = SourceFacts({}, None)
    for i, (src, spec) in enumerate(zip(cfg.data.sources, specs, strict=True)):
        units = plan_units([spec])
        found = None
        if units and units[0].paths:
            try:
                found = probe(spec.format, units[0].paths, spec.options)
            except (ReaderError, OSError, ValueError, KeyError) as e:
                problems.append(
                    f"data.sources.{i}.path: {e} (the unit {units[0].name} would be rejected "
                    "at ingest)"
                )
                facts.variables[src.name] = None
                continue
        if found is None:
            facts.variables[src.name] = None
            continue
        names, shape = found
        if i == 0:
            facts.grid = shape
        if src.variables is not None:
            missing = [v for v in src.variables if v not in names]
            if missing:
                shown = ", ".join(str(p.name) for p in units[0].paths[:3])
                problems.append(
                    f"data.sources.{i}.variables: {missing} are not in {shown}"
                    f"{' ...' if len(units[0].paths) > 3 else ''} (it holds {names}): list only "
                    "variables the files hold (canonical names with level, e.g. 'u850')"
                )
            names = [v for v in src.variables if v in names]
        facts.variables[src.name] = names
    return problems, facts


def _variable_problems(cfg: RunConfig, facts: SourceFacts) -> list[str]:
    if not facts.variables or any(v is None for v in facts.variables.values()):
        return []  # some source could not be probed: checked after ingest
    known = [n for names in facts.variables.values() for n in names or []]
    problems = []
    unknown = sorted(set(cfg.objectives.variable_weights) - set(known))
    if unknown:
        problems.append(
            f"objectives.variable_weights names {unknown}, not variables of the run ({known}): "
            "use canonical names of the sources' variables"
        )
    if cfg.data.task == "operator" and not set(cfg.data.operator_outputs) & set(known):
        problems.append(
            f"data.operator_outputs {cfg.data.operator_outputs}: no source holds any of them "
            f"(they hold {known}): name a variable of the data"
        )
    first = facts.variables[cfg.data.sources[0].name] or []
    if cfg.eval.plot_variable is not None and cfg.eval.plot_variable not in first:
        problems.append(
            f"eval.plot_variable={cfg.eval.plot_variable!r} is not a variable of the first "
            f"source ({first}): choose one of them"
        )
    return problems


def check_run(
    loaded: LoadedConfig,
    *,
    target: Target | None,
    run_name: str | None = None,
    trusted_keys: Any = None,
    data: bool = True,
    package_config: dict[str, Any] | None = None,
) -> SourceFacts:
    """Raise ``ConfigError`` listing every problem ``train`` would hit (module docstring);
    ``target=None`` skips the layout and memory checks, ``data=False`` the sources' files;
    ``package_config``: the fine-tune package's config.json, already verified. Returns what
    the probes found."""
    cfg = loaded.config
    problems: list[str] = []
    try:
        check_trainable(cfg)
    except ValueError as e:
        problems.append(str(e))
    if run_name is not None:
        try:
            check_run_name(run_name)
        except ValueError as e:
            problems.append(str(e))
    facts = SourceFacts({}, None)
    if data:
        found, facts = _source_problems(loaded)
        problems += found + _variable_problems(cfg, facts)
    model, num_vars, num_targets = cfg.model, None, 0
    if cfg.finetune.package:
        try:
            pkg_config = (
                package_config
                or read_package(
                    loaded.resolve_path(cfg.finetune.package), trusted_keys=trusted_keys
                )[0]
            )
            model = ModelConfig.model_validate(pkg_config["model"])
            num_vars = int(pkg_config["spec"]["num_vars"])
            num_targets = int(pkg_config["spec"].get("num_targets", 0))
        except PackageError as e:
            problems.append(f"finetune.package: {e}")
    if target is not None and not problems:
        oc = cfg.objectives
        if oc.pooled:
            num_targets = (
                oc.pooled_classes if oc.pooled_kind == "classification" else len(oc.pooled_targets)
            ) or num_targets
        first = facts.variables.get(cfg.data.sources[0].name) if facts.variables else None
        known = [n for v in facts.variables.values() for n in v or []]
        tokens = None
        if facts.grid is not None:
            tokens = grid_tokens(model, *facts.grid)
        try:
            problem = memory_problem(
                cfg, model, target, tokens=tokens, vars_per_sample=len(first or []) or 1,
                num_vars=num_vars or max(1, len(dict.fromkeys(known))), num_targets=num_targets,
            )  # fmt: skip
        except ValueError as e:  # the layout does not fit the world size
            problem = f"{e} (target: {target.what})"
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError(str(loaded.path or "<config>"), problems)
    return facts


__all__ = [
    "DEFAULT_GPU_MEM_GIB",
    "SourceFacts",
    "Target",
    "check_run",
    "machine_target",
    "memory_problem",
    "validate_target",
]
