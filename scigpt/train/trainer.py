"""The training loop: data → DeepSpeed engine → metrics, checkpoint, evaluation, plots.

Every rank runs this function; rank 0 alone writes the run directory and the store.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scigpt.config import RunConfig
from scigpt.config_loader import ConfigError, LoadedConfig
from scigpt.rundir import RunDir, Segment, default_run_name, provenance, runs_root
from scigpt.runlock import RunLocked, RunLockLost
from scigpt.train.checkpoint import barrier


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    test: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    preempted: bool = False  # stopped by SIGUSR1 after checkpointing; resume with --resume
    main: bool = True  # this process is rank 0 (it reports for the run)
    finished_before: bool = False  # resumed a run that had finished: nothing was done


@dataclass
class _Held:
    """What rank 0 holds while it trains: the run directory (and its lock), its segment."""

    run: RunDir | None = None
    segment: Segment | None = None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(
    batch: dict[str, Any], device: torch.device, non_blocking: bool = False
) -> dict[str, Any]:
    return {
        k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
        for k, v in batch.items()
    }


class _Preemption:
    """SIGUSR1 (Slurm's ``--signal=B:USR1@grace``, forwarded by the batch script) asks the run
    to checkpoint at the end of the current step and exit cleanly. Installed before the data
    loaders fork, so their workers inherit the handler instead of dying on the signal."""

    def __init__(self) -> None:
        import signal
        import threading

        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def agreed(
        self, world: int, device: torch.device, lock_lost: bool = False
    ) -> tuple[bool, bool]:
        """(any rank was signalled, rank 0 lost the run directory's lock), agreed by all
        ranks: all stop at the same step."""
        flags = [float(self.requested), float(lock_lost)]
        if world > 1:
            import torch.distributed as dist

            t = torch.tensor(flags, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = t.tolist()
        return bool(flags[0]), bool(flags[1])

    def restore(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)


def _train_paths(model, train: list[str], cfg) -> list[str]:
    """``finetune.train`` expanded: ``modality:<grid|waveform|series>`` → that modality's own
    parameters; ``head`` → also the active lead-time head; a run's pooled objective trains the
    pooled head."""
    from scigpt.data_pipeline.variables import MODALITIES
    from scigpt.finetune.adapt import modality_parameters

    out: list[str] = []
    for path in train:
        if path.startswith("modality:"):
            name = path.split(":", 1)[1]
            if name not in MODALITIES:
                raise ValueError(
                    f"finetune.train entry {path!r}: modality {name!r} is not one of "
                    f"{sorted(MODALITIES)}"
                )
            out += modality_parameters(model, MODALITIES.index(name))
        else:
            out.append(path)
    active = getattr(model, "active_lead_head", None)
    if "head" in out and active:  # "head": the forecast head in use
        out[out.index("head")] = f"lead_heads.{active}"
    if cfg.objectives.pooled and "pooled" not in out:
        out.append("pooled")
    return out


def _finetune_heads(base, cfg, num_targets: int, pkg_config: dict) -> dict[str, Any]:
    """Fit the package model's heads to the run: a fresh pooled head when the run trains one of
    another size, kind or targets (or the package has none); for ``data.lead`` the package's
    forecast head of that lead, or a new zero-initialised one (``finetune.lead_head``), or else
    the active head, trained for the new lead. Returns the run's heads record (exports carry
    it: ``leads`` {head key: lead steps}, ``forecast_head``, ``pooled``)."""
    from scigpt.finetune.adapt import add_lead_head, add_pooled_head, use_lead_head

    spec = pkg_config["spec"]
    oc = cfg.objectives
    lead = 0 if cfg.data.task == "operator" else cfg.data.lead
    pooled = spec.get("pooled")
    if oc.pooled:
        want = {"kind": oc.pooled_kind, "targets": list(oc.pooled_targets)}
        if base.pooled is None or base.spec.num_targets != num_targets or pooled != want:
            add_pooled_head(base, num_targets, oc.pooled_kind, seed=cfg.seed)
        pooled = want
    leads = dict(spec.get("leads") or {"head": int(pkg_config["data"]["lead"])})
    active = spec.get("forecast_head")
    same = [k for k, v in leads.items() if v == lead]
    if same:
        active = None if same[0] == "head" else same[0]
    elif cfg.finetune.lead_head:
        active = f"lead{lead}"
        add_lead_head(base, active)
        leads[active] = lead
    else:
        leads[active or "head"] = lead
    use_lead_head(base, active)
    if len(leads) > 1 and (cfg.parallel.pp > 1 or cfg.parallel.zero_stage == 3):
        raise ValueError(
            f"the package has extra forecast heads {sorted(set(leads) - {'head'})}: fine-tune "
            "it with parallel.pp=1 and zero_stage <= 2"
        )
    return {"leads": leads, "forecast_head": active, "pooled": pooled}


def _finetune_model(model, base, cfg, new_ids, *, topo, tp_rank: int, device):
    """Start the run's model from the package model ``base`` (already extended with the data's
    new variables): load its weights into whatever layout ``model`` is, then freeze or add
    LoRA adapters as ``finetune.mode`` says. Returns the model to train."""
    from scigpt.finetune.adapt import freeze_backbone, train_new_variable_rows
    from scigpt.parallel import reshard

    ft = cfg.finetune
    if ft.mode == "lora":  # one whole model per rank (config checks tp = pp = 1, ZeRO <= 2)
        from scigpt.finetune.lora import apply_lora

        model = base.to(device)
        apply_lora(model, rank=ft.lora_rank, alpha=ft.lora_alpha, seed=cfg.seed)
    else:
        from scigpt.finetune.adapt import copy_lead_heads

        copy_lead_heads(base, model)  # the package's extra forecast heads, before the load
        reshard.load_full_state(
            model, base.state_dict(), heads=cfg.model.heads, tp=topo.tp, tp_rank=tp_rank
        )
    if ft.mode in ("frozen", "lora"):
        freeze_backbone(model, train=tuple(_train_paths(model, ft.train, cfg)))
        if new_ids:
            train_new_variable_rows(model, new_ids)
    return model


def _subset(ds, fraction: float):
    """The first ceil(fraction · n) samples of one fixed permutation (seed 0, independent of the
    run's seed): nested across fractions, so a data axis adds samples and never swaps them."""
    n = len(ds)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    keep = sorted(order[: max(1, math.ceil(fraction * n))].tolist())
    return torch.utils.data.Subset(ds, keep)


def _test_nan_steps() -> set[int]:
    """Fault injection for the numerical-guard tests: SCIGPT_TEST_NAN_STEPS="5,6" turns those
    steps' inputs into NaN. Unset in normal runs."""
    raw = os.environ.get("SCIGPT_TEST_NAN_STEPS", "")
    return {int(x) for x in raw.split(",") if x.strip()}


def _on_rank0(fn, *, is_main: bool, world: int):
    """Run ``fn`` on rank 0 only; every rank returns its result, or raises what it raised (a
    refusal on rank 0 stops every rank cleanly instead of leaving them in a collective)."""
    from scigpt.export.errors import PackageError
    from scigpt.prepare import IngestRejected

    out: tuple[str, Any] = ("ok", None)
    if is_main:
        try:
            out = ("ok", fn())
        except (ConfigError, RunLocked, ValueError, OSError, IngestRejected, PackageError) as e:
            if world == 1:
                raise
            out = ("error", e)
    if world > 1:
        import torch.distributed as dist

        box = [out]
        dist.broadcast_object_list(box, src=0)
        out = box[0]
    if out[0] == "error":
        raise out[1]
    return out[1]


def train(
    loaded: LoadedConfig,
    *,
    run_name: str | None = None,
    root: Path | None = None,
    resume: bool = False,
    break_lock: bool = False,
    trusted_keys: list | None = None,
) -> TrainResult:
    """Train the configured model; returns where everything went and the test scores.

    ``resume``: continue the run directory ``run_name`` from its latest checkpoint (exactly:
    model, optimizer, scheduler, data stream and RNG states), or start it if it has none; a run
    that has finished is left as it is. Rank 0 holds the run directory's lock while it trains
    (``scigpt.runlock``; ``break_lock`` takes it from a holder judged alive). ``trusted_keys``:
    a fine-tune package must be signed by one of these public keys.
    """
    held = _Held()
    try:
        return _train(
            loaded, run_name=run_name, root=root, resume=resume, break_lock=break_lock,
            trusted_keys=trusted_keys, held=held,
        )  # fmt: skip
    finally:
        if held.segment is not None and held.segment.record["state"] == "running":
            held.segment.close("failed")
        if held.run is not None:
            held.run.unlock()


def _open_run(
    loaded: LoadedConfig, run: RunDir, resolved: dict[str, Any], *, resume: bool,
    break_lock: bool, target, package_config: dict | None, held: _Held,
) -> dict[str, Any]:  # fmt: skip
    """Rank 0, before anything is written: everything ``scigpt validate`` checks (against this
    machine), the lock, and whether the run resumes or has finished already."""
    from scigpt.preflight import check_run

    cfg = loaded.config
    check_run(loaded, target=target, run_name=run.path.name, package_config=package_config)
    run.lock(break_lock=break_lock)
    held.run = run
    if run.run_lock is not None and run.run_lock.broke:
        print(f"scigpt: {run.path}: {run.run_lock.broke}", flush=True)
    resuming = resume and run.config_path.is_file()
    if not resuming:
        RunDir.create(run.path.parent, run.path.name, resolved)
        return {"resuming": False}
    run.check_same_config(resolved)
    test = run.finished(cfg.schedule.steps)
    return {"resuming": True, "finished": test}


def _train(
    loaded: LoadedConfig,
    *,
    run_name: str | None,
    root: Path | None,
    resume: bool,
    break_lock: bool,
    trusted_keys: list | None,
    held: _Held,
) -> TrainResult:
    from tqdm import tqdm

    from scigpt.data_pipeline.loader import (
        ForecastDataset,
        SeriesWindowDataset,
        build_loader,
        collate_forecast,
        collate_series,
    )
    from scigpt.data_pipeline.mixing import MixedDataset, MixingBatchSampler
    from scigpt.data_pipeline.store import GridStore
    from scigpt.eval.forecast import evaluate_forecast
    from scigpt.eval.metrics import lat_weights
    from scigpt.launch.distributed import init_distributed
    from scigpt.models.build import build_model, forward_flops_per_token
    from scigpt.models.objectives import Objectives
    from scigpt.models.vit import ModelSpec
    from scigpt.parallel.engine import build_engine
    from scigpt.parallel.parallelize import parallelize  # also registers the attention kernels
    from scigpt.parallel.topology import Topology
    from scigpt.train.checkpoint import CheckpointManager, read_info, step_of, tag_of
    from scigpt.train.metrics import MetricsLogger, detect_peak_tflops

    cfg = loaded.config
    package = None
    if cfg.finetune.package:
        import dataclasses

        from scigpt.config import ModelConfig
        from scigpt.export.package import load_pretrained

        # The model is the package's: its config replaces the run's model section.
        package = load_pretrained(
            loaded.resolve_path(cfg.finetune.package), trusted_keys=trusted_keys
        )
        model_cfg = ModelConfig.model_validate_json(json.dumps(package.config["model"]))
        cfg = cfg.model_copy(update={"model": model_cfg})
        loaded = dataclasses.replace(loaded, config=cfg)
        if package.config["spec"]["history"] != cfg.data.history:
            raise ValueError(
                f"finetune.package takes {package.config['spec']['history']} input frames; "
                f"data.history={cfg.data.history}: set data.history to match"
            )
    from scigpt.config import check_trainable
    from scigpt.data_pipeline.ingest.base import format_kind

    check_trainable(cfg)

    # Grid sources train the forecast (and masked/pooled) objectives; series sources (waveforms,
    # station series) the masked and pooled ones. The first source is a grid (config check).
    is_series = {src.name: format_kind(src.format) != "grid" for src in cfg.data.sources}
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    if cfg.runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    preemption = _Preemption()
    info = init_distributed()
    rank, world = info.rank, info.world_size
    topo = Topology.from_config(cfg.parallel, world)
    # init_distributed chose the CUDA device (local rank, or 0 with one GPU per task).
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    is_main = rank == 0
    show = is_main and cfg.logging.progress

    # ---- preflight, lock, run directory and data store (rank 0 decides and writes) -------------
    if resume and run_name is None:
        raise ValueError("--resume needs --run-name: the run directory to continue")
    root = root or runs_root()
    name = run_name or default_run_name(cfg.name)
    run = RunDir(root / name)
    run_path = run.path
    store_dir = loaded.resolve_path(cfg.data.store) if cfg.data.store else run_path / "store"
    resolved = loaded.resolved_dict()
    from scigpt.preflight import machine_target

    opened = _on_rank0(
        lambda: _open_run(
            loaded, run, resolved, resume=resume, break_lock=break_lock,
            target=machine_target(world, info.local_world_size),
            package_config=package.config if package is not None else None, held=held,
        ),
        is_main=is_main, world=world,
    )  # fmt: skip
    resuming = opened["resuming"]
    if opened.get("finished"):
        test = opened["finished"]
        if is_main:
            print(f"run {name} has finished (step {test['step']}, its test record is written): "
                  "nothing to do", flush=True)  # fmt: skip
        preemption.restore()
        return TrainResult(run_dir=run_path, steps=int(test["step"]), final_loss=math.nan,
                           main=is_main, finished_before=True)  # fmt: skip

    def ingest() -> None:
        from scigpt.prepare import IngestRejected, prepare_from_config

        manifest = prepare_from_config(loaded, store_dir, progress=show)
        if manifest and manifest["rejects"]:
            raise IngestRejected.of(manifest["rejects"])

    _on_rank0(ingest, is_main=is_main, world=world)
    lc = cfg.data.loader
    stores = {
        src.name: GridStore(store_dir, source=src.name, verify=True, on_corrupt=lc.on_corrupt)
        for src in cfg.data.sources
        if not is_series[src.name]
    }
    store = stores[cfg.data.sources[0].name]  # evaluation, plots and exports use the first
    patch_store = None
    if any(is_series.values()):
        from scigpt.data_pipeline.store import PatchStore

        patch_store = PatchStore(store_dir, verify=True, on_corrupt=lc.on_corrupt)
    # Every source's variables (names, registry entries) and statistics, in config order.
    src_vars: dict[str, tuple[list, np.ndarray, np.ndarray]] = {}
    for src in cfg.data.sources:
        if is_series[src.name]:
            mean, std = patch_store.stats(src.name)
            src_vars[src.name] = (patch_store.variables(src.name), mean, std)
        else:
            st = stores[src.name]
            src_vars[src.name] = (st.variables, st.mean, st.std)
    # One variable registry across sources, in config order (the first source's ids are its
    # store indices); each source's batches carry their variables' registry ids.
    registry: list = []
    for variables, _, _ in src_vars.values():
        registry += [v for v in variables if v.name not in {r.name for r in registry}]
    reg_names = [v.name for v in registry]
    registry_dicts = [v.to_dict() for v in registry]
    # Normalisation statistics of every registry variable (exports need them).
    var_stats = {
        v.name: [float(mean[i]), float(std[i])]
        for variables, mean, std in reversed(list(src_vars.values()))
        for i, v in enumerate(variables)
    }
    finetune_base, new_ids = None, []
    if package is not None:
        from scigpt.finetune.adapt import extend_variables

        # Fine-tuning registry: the package's variables in its order, then the data's new ones.
        finetune_base = package.model
        data_dicts = dict(zip(reg_names, registry_dicts, strict=True))
        reg_names, new_ids = extend_variables(
            finetune_base, package.var_names, reg_names, seed=cfg.seed
        )
        pkg_vars = {v["name"]: v for v in package.variables}
        # the fields a registry entry has (a data variable's), for the package-only ones
        keep = set(next(iter(data_dicts.values()))) if data_dicts else set()
        registry_dicts = [
            data_dicts.get(n) or {k: v for k, v in pkg_vars[n].items() if k in keep or not keep}
            for n in reg_names
        ]
        for n in package.var_names:
            var_stats.setdefault(n, [pkg_vars[n]["mean"], pkg_vars[n]["std"]])

    history, lead = cfg.data.history, cfg.data.lead
    operator = cfg.data.task == "operator"
    if operator:
        lead = 0  # the target is the input frame itself (its hidden outputs)

    def outputs_of(st) -> list[str] | None:
        if not operator:
            return None
        outs = [n for n in cfg.data.operator_outputs if n in st.names]
        if not outs:
            raise ValueError(
                f"source {st.source!r} has none of data.operator_outputs "
                f"{cfg.data.operator_outputs} (it has {st.names})"
            )
        return outs

    oc = cfg.objectives
    pooled_targets = oc.pooled_targets if oc.pooled else []

    def series_dataset(src, block: str):
        splits = src.splits or cfg.data.splits
        return SeriesWindowDataset(
            patch_store, src.name, time_range=getattr(splits, block).bounds(),
            targets=pooled_targets,
            var_ids=[reg_names.index(v.name) for v in src_vars[src.name][0]],
            gap=None if block == "train" else splits.gap_ns(),
        )  # fmt: skip

    train_dss, collates = [], []
    for src in cfg.data.sources:
        if is_series[src.name]:
            train_dss.append(series_dataset(src, "train"))
            collates.append(collate_series)
            continue
        splits = src.splits or cfg.data.splits
        st = stores[src.name]
        train_dss.append(
            ForecastDataset(
                st,
                time_range=splits.train.bounds(),
                history=history,
                lead=lead,
                var_ids=[reg_names.index(n) for n in st.names],
                outputs=outputs_of(st),
            )
        )
        collates.append(collate_forecast)
    empty = [src.name for src, d in zip(cfg.data.sources, train_dss, strict=True) if not len(d)]
    if empty:
        raise ValueError(
            f"sources {empty} have no training samples in their train block: widen "
            "data.splits.train (or the source's own splits), or shorten history/lead"
        )
    if cfg.data.train_fraction < 1:
        train_dss = [_subset(d, cfg.data.train_fraction) for d in train_dss]
    train_ds = train_dss[0]
    first_splits = cfg.data.sources[0].splits or cfg.data.splits
    gap = first_splits.gap_ns()  # val/test samples start this long after their block's start
    store_ids = [reg_names.index(n) for n in store.names]  # registry ids (fine-tunes reorder)
    test_ds = ForecastDataset(
        store, time_range=first_splits.test.bounds(), history=history, lead=lead, gap=gap,
        outputs=outputs_of(store), var_ids=store_ids,
    )  # fmt: skip
    series_test = {
        src.name: series_dataset(src, "test") for src in cfg.data.sources if is_series[src.name]
    }
    if len(train_ds) == 0 or len(test_ds) == 0:
        raise ValueError(
            f"splits leave {len(train_ds)} training and {len(test_ds)} test samples with "
            f"history={history}, lead={lead}: widen data.splits or shorten history/lead"
        )

    # ---- checkpoint to resume from, and its layout ----------------------------------------------
    from scigpt.parallel import reshard

    layout = topo
    ckpts = CheckpointManager(
        run.checkpoints,
        rank=rank,
        world_size=world,
        keep_last=cfg.checkpoint.keep_last,
        keep_every=cfg.checkpoint.keep_every,
    )
    resume_tag, foreign = None, None  # foreign: the checkpoint's layout when it is not ours
    if resuming:
        ckpts.clean_interrupted()
        resume_tag = ckpts.latest()
    if resume_tag is not None:
        saved_info = read_info(run.checkpoints / resume_tag)
        saved = (
            Topology.of(**saved_info["layout"]) if saved_info
            else reshard.checkpoint_layout(run.checkpoints / resume_tag)
        )  # fmt: skip
        foreign = saved if saved != layout else None

    # ---- model + engine -------------------------------------------------------------------------
    unknown = sorted(set(oc.variable_weights) - set(reg_names))
    if unknown:
        raise ValueError(
            f"objectives.variable_weights names {unknown}, not variables of the run "
            f"({reg_names}): use canonical names such as {reg_names[0]!r}"
        )
    objectives = Objectives(
        forecast=oc.forecast,
        masked=oc.masked,
        mask_ratio=oc.mask_ratio,
        pooled=oc.pooled,
        pooled_kind=oc.pooled_kind,
        variable_weights={reg_names.index(k): w for k, w in oc.variable_weights.items()},
    )
    _seed_everything(cfg.seed)
    # the pooled head's outputs: the run's targets (or classes), else the package's head size
    num_targets = (
        (oc.pooled_classes if oc.pooled_kind == "classification" else len(oc.pooled_targets))
        if oc.pooled
        else (finetune_base.spec.num_targets if finetune_base is not None else 0)
    )
    heads_info = {
        "leads": {"head": lead},
        "forecast_head": None,
        "pooled": {"kind": oc.pooled_kind, "targets": list(oc.pooled_targets)}
        if oc.pooled
        else None,
    }
    if finetune_base is not None:
        heads_info = _finetune_heads(finetune_base, cfg, num_targets, package.config)
    spec = ModelSpec(num_vars=len(reg_names), history=history, num_targets=num_targets)
    meta = build_model(cfg.model, spec)  # on the meta device: sizes, and the layouts' source
    # Sizes of the whole model, before any parallelism shards it.
    h, w = len(store.lat), len(store.lon)
    n_tokens = meta.num_tokens(h, w)
    flops_per_sample = 3 * forward_flops_per_token(meta, n_tokens) * n_tokens
    n_params = sum(p.numel() for p in meta.parameters())

    def fits() -> None:  # now that the grid is known: activations count too
        from scigpt.preflight import machine_target, memory_problem

        problem = memory_problem(
            cfg, cfg.model, machine_target(world, info.local_world_size), tokens=n_tokens,
            vars_per_sample=len(store.names), num_vars=len(reg_names), num_targets=num_targets,
        )  # fmt: skip
        if problem:
            raise ConfigError(str(loaded.path or "<config>"), [problem])

    _on_rank0(fits, is_main=is_main, world=world)
    groups = None
    if topo.tp > 1 or topo.pp > 1:
        from scigpt.parallel.topology import ProcessGroups

        groups = ProcessGroups(topo, rank)
    # TP, (SP), pipeline stages, ZeRO-3, checkpointing, kernels: scigpt.parallel.parallelize
    model = parallelize(meta, cfg, topo, groups=groups, device=device, objectives=objectives)
    if finetune_base is not None:
        model = _finetune_model(
            model, finetune_base, cfg, new_ids, topo=topo, tp_rank=groups.tp_rank if groups else 0,
            device=device,
        )  # fmt: skip
    if foreign is not None:  # reshard: the checkpoint's weights into this layout, exactly
        reshard.load_full_state(
            model, reshard.consolidate(run.checkpoints / resume_tag), heads=cfg.model.heads,
            tp=topo.tp, tp_rank=groups.tp_rank if groups else 0,
        )  # fmt: skip
    engine, _ = build_engine(model, cfg, topo, mpu=groups if topo.pp == 1 else None)
    if topo.pp > 1:
        from scigpt.parallel.pipeline import PipelineForecaster

        forecaster = PipelineForecaster(engine, residual=meta.residual)
    else:
        forecaster = engine.module
    _seed_everything(cfg.seed + rank)  # per-rank streams for dropout etc.
    start_step, loader_state, best_val, skipped_total = 0, None, math.inf, 0
    if resume_tag is not None:
        if foreign is None:  # the same layout: everything, exactly (DeepSpeed's own load)
            client = ckpts.load(engine, resume_tag)
        else:  # weights were loaded above; continue the schedule, restart AdamW's moments
            client = reshard.client_state(run.checkpoints / resume_tag)
            engine.lr_scheduler.load_state_dict(client["lr_scheduler"])
            engine.global_steps = client["global_steps"]
            engine.global_samples = client["global_samples"]
            if is_main:
                warnings.warn(
                    f"resharding {resume_tag} from {foreign.describe()} to {layout.describe()}: "
                    "weights, step, learning-rate schedule and data position continue exactly; "
                    "the optimizer state (AdamW moments) restarts, and the per-rank RNG streams "
                    "are reseeded. Resume at the saved layout to keep them.",
                    stacklevel=1,
                )
        start_step, loader_state = client["step"], client["loader"]
        best_val, skipped_total = client.get("best_val", math.inf), client.get("skipped", 0)
        if is_main:
            print(f"resumed {name} from step {start_step}", flush=True)
    elif resuming and is_main:
        print(f"resumed {name} from step 0 (it has no checkpoint yet)", flush=True)
    if is_main:
        # What a killed or preempted segment logged past start_step goes; this segment logs it
        # again, so every step has one record.
        run.resume_metrics(start_step)
        held.segment = run.begin_segment(start_step=start_step, world_size=world)

    peak = cfg.logging.peak_tflops or detect_peak_tflops(cfg.precision)
    # ZeRO-3 partitions parameters: ds_numel is the full size, ds_tensor this rank's share.
    n_local = sum(
        p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters()
    )
    weights = lat_weights(torch.as_tensor(store.lat)).to(device)

    if is_main:
        prov = provenance(
            data_manifest_sha256=store.manifest_sha256,
            hosts=[info.master_addr],
            extra={
                "world_size": world,
                "topology": topo.describe(),
                "launcher": info.launcher,
                "n_params": n_params,
                "params_local_fraction": n_local / n_params,
                "store": str(store_dir),
            },
        )
        if resuming and (run.path / "provenance.json").is_file():
            # Keep the run's original provenance; record each restart (Slurm requeues too).
            first = json.loads((run.path / "provenance.json").read_text())
            first.setdefault("restarts", []).append(
                {
                    "utc": prov["created_utc"],
                    "step": start_step,
                    "git": prov["git"],
                    "world_size": world,
                    "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
                }
            )
            prov = first
        run.write_json("provenance.json", prov)
        print(
            f"run {name}: {n_params / 1e6:.2f}M parameters, "
            f"{'+'.join(str(len(d)) for d in train_dss)} train / "
            f"{len(test_ds)} test samples, {n_tokens} tokens/sample, {topo.describe()}",
            flush=True,
        )

    # Data order: the resumable, rank-elastic mixing sampler (one source per micro-batch);
    # data-parallel ranks draw disjoint samples, tensor/pipeline peers the same ones.
    batch_sampler = MixingBatchSampler(
        [len(d) for d in train_dss],
        [src.weight for src in cfg.data.sources],
        batch_size=cfg.schedule.micro_batch_size,
        rank=topo.dp_rank(rank),  # TP and pipeline peers share batches
        world_size=topo.dp,
        seed=cfg.seed,
        shuffle=lc.shuffle,
        policy=lc.policy,
        state=loader_state,
    )
    if lc.backend == "dali":
        from scigpt.data_pipeline.dali import DaliForecastLoader

        # DALI takes a finite plan: the run's micro-batches, drawn from the same sampler.
        plan = list(
            itertools.islice(iter(batch_sampler), cfg.schedule.steps * cfg.schedule.grad_accum)
        )
        stream = iter(
            DaliForecastLoader(
                train_ds,
                plan,
                num_threads=max(1, lc.num_workers),
                device="gpu" if device.type == "cuda" else "cpu",
                parallel=lc.num_workers > 0,
                num_workers=max(1, lc.num_workers),
                prefetch_queue_depth=lc.prefetch_factor,
            )
        )
    else:
        mixed = MixedDataset(train_dss, collates)
        pin = lc.pin_memory and device.type == "cuda"
        stream = iter(build_loader(mixed, batch_sampler, lc, pin_memory=pin))

    logger = (
        MetricsLogger(
            run.open_metrics(), run.tb if cfg.logging.tensorboard else None,
            purge_step=start_step + 1 if resuming else None,
        )
        if is_main
        else None
    )  # fmt: skip
    steps, accum = cfg.schedule.steps, cfg.schedule.grad_accum
    val_ds = None
    if cfg.eval.every:  # check_trainable: the first source has a val block
        val_ds = ForecastDataset(
            store, time_range=first_splits.val.bounds(), history=history, lead=lead,
            gap=gap, outputs=outputs_of(store), var_ids=store_ids,
        )  # fmt: skip

    def client_state(step: int) -> dict[str, Any]:
        return {
            "config": resolved,
            "step": step,
            "world_size": world,
            "variables": registry_dicts,
            "variable_stats": var_stats,
            "stats": {"mean": store.mean.tolist(), "std": store.std.tolist()},
            "source_stats": {
                n: {"variables": [v.name for v in vs], "mean": m.tolist(), "std": sd.tolist()}
                for n, (vs, m, sd) in src_vars.items()
            },
            "heads": heads_info,
            "time_step_ns": int(test_ds.time_step_ns),  # one step of the first grid source
            "data_manifest_sha256": store.manifest_sha256,
            # The stream position after the last consumed micro-batch: resume continues exactly.
            "loader": batch_sampler.state_dict(step * accum),
            "best_val": best_val,
            "skipped": skipped_total,
            "layout": layout.to_dict(),
        }

    def ckpt_info(step: int) -> dict[str, Any]:
        return {"step": step, "layout": layout.to_dict(), "world_size": world}

    nan_steps = _test_nan_steps()
    bar = tqdm(total=steps, initial=start_step, desc="train", unit="step", disable=not show,
               dynamic_ncols=True)  # fmt: skip
    window_t, window_samples, loss = time.perf_counter(), 0, float("nan")
    if held.segment is not None:
        held.segment.start()  # device-hours: training and the final evaluation
    consecutive, stale_evals, saved_at = 0, 0, -1
    source_counts = [0] * len(train_dss)  # micro-batches drawn per source (mixing weights)

    def micro_batches():
        """The training stream as engine-ready micro-batches (device, dtype, fault injection)."""
        while True:
            batch = _to_device(next(stream), device, non_blocking=lc.pin_memory)
            source_counts[batch.get("source", 0)] += 1
            if cfg.precision == "bf16":
                batch["fields"] = batch["fields"].to(torch.bfloat16)  # the model's dtype
            if step in nan_steps:  # fault injection for the guard tests
                batch["fields"] = batch["fields"] * float("nan")
            yield batch

    batches = micro_batches()
    if topo.pp > 1:
        from scigpt.parallel.pipeline import to_pipe

        # Only the first and last stages draw micro-batches (inputs and labels of one batch).
        pipe_batches = (to_pipe(b) for b in batches)
    engine.train()
    for step in range(start_step + 1, steps + 1):
        if topo.pp > 1:
            # One call runs the whole 1F1B schedule of grad_accum micro-batches and the step;
            # the loss comes back averaged over micro-batches and data-parallel replicas.
            loss = float(engine.train_batch(data_iter=pipe_batches))
            window_samples += cfg.schedule.micro_batch_size * accum * topo.dp
        else:
            loss_sum = 0.0
            for _ in range(accum):
                batch = next(batches)
                loss_t, _parts = engine(batch, objectives=objectives)
                engine.backward(loss_t)
                engine.step()
                loss_sum += loss_t.item()
                window_samples += batch["fields"].shape[0] * topo.dp
            loss = loss_sum / accum
            if world > 1:
                import torch.distributed as dist

                t = torch.tensor([loss], device=device)
                dist.all_reduce(t)
                loss = t.item() / world
        # Every rank agrees to stop at this step (SIGUSR1), or that rank 0 lost the run lock
        # (another process took the directory over: write nothing more). Rank 0 re-reads the
        # lock before the steps that write; its heartbeat checks it in between.
        writes = step % cfg.logging.every == 0 or step == steps or (
            cfg.checkpoint.every and step % cfg.checkpoint.every == 0
        ) or (cfg.eval.every and step % cfg.eval.every == 0)  # fmt: skip
        lock = run.run_lock if is_main else None
        lost = lock is not None and (lock.lost or (bool(writes) and not lock.verify()))
        stop, lost = preemption.agreed(world, device, lock_lost=lost)
        if lost:
            raise RunLockLost(
                f"rank 0 lost the lock of {run.path} at step {step}: another process took the "
                "run directory over; this job stops without writing"
            )
        # DeepSpeed's ZeRO optimizers skip an update whose gradients are not finite; a
        # non-finite loss always yields such gradients.
        finite = math.isfinite(loss) and engine.was_step_applied()
        if not finite:
            if not cfg.guards.skip_nonfinite:
                raise FloatingPointError(f"loss is {loss} at step {step}: lower optim.lr")
            skipped_total += 1
            consecutive += 1
            if logger:
                logger.log({"kind": "skip", "loss": loss, "consecutive": consecutive}, step)
            if cfg.guards.rollback_after and consecutive >= cfg.guards.rollback_after:
                if ckpts.latest() is None:
                    raise FloatingPointError(
                        f"{consecutive} non-finite steps in a row at step {step} and no "
                        "checkpoint to roll back to: lower optim.lr or set checkpoint.every"
                    )
                # Weights, optimizer and scheduler from the checkpoint; data and RNG go on.
                ckpts.load(engine, restore_rng_state=False)
                if logger:
                    logger.log({"kind": "rollback", "to": ckpts.latest()}, step)
                consecutive = 0
        else:
            consecutive = 0
        bar.update(1)
        if held.segment is not None:
            held.segment.at(step)
        if step == 1:  # the run's first step (a resume from step 0 included)
            _write_memory(run, engine, layout, rank, world)
        if finite and (step % cfg.logging.every == 0 or step == steps):
            dt = time.perf_counter() - window_t
            tflops = window_samples * flops_per_sample / dt / 1e12 / world
            rec = {
                "kind": "train",
                "loss": loss,
                "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "lr": engine.get_lr()[0],
                "samples_per_s": window_samples / dt,
                "tokens_per_s": window_samples * n_tokens / dt,
                "tflops_per_device": tflops,
                "mfu": tflops / peak if peak else None,
                "mem_gb": torch.cuda.max_memory_allocated() / 1e9
                if device.type == "cuda"
                else None,
                "skipped_steps": skipped_total,
                "micro_batches_per_source": list(source_counts),
            }
            if logger:
                logger.log(rec, step)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{rec['lr']:.2e}")
            window_t, window_samples = time.perf_counter(), 0
        improved = False
        if val_ds is not None and step % cfg.eval.every == 0:
            val = evaluate_forecast(forecaster, val_ds, weights, device, batch_size=8)
            score = val["summary"][cfg.eval.metric]
            improved = score < best_val
            if improved:
                best_val, stale_evals = score, 0
            else:
                stale_evals += 1
            if logger:
                logger.log({"kind": "val", **val["summary"], "best": improved}, step)
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or improved:
            ckpts.save(engine, step, client_state(step), best=improved, info=ckpt_info(step))
            saved_at = step
        patience = cfg.eval.early_stop_patience
        if patience and stale_evals >= patience:
            if logger:
                logger.log({"kind": "early_stop", "best_val": best_val}, step)
            steps = step
            break
        if stop and step < steps:
            if saved_at != step:
                ckpts.save(engine, step, client_state(step), info=ckpt_info(step))
            if logger:
                logger.log({"kind": "preempted", "checkpoint": tag_of(step)}, step)
                logger.close()
                held.segment.close("preempted")
            bar.close()
            if is_main:
                print(f"preempted at step {step}: checkpoint {tag_of(step)} saved; "
                      "continue with --resume", flush=True)  # fmt: skip
            barrier(world)
            preemption.restore()
            return TrainResult(run_dir=run.path, steps=step, final_loss=loss, preempted=True,
                               main=is_main)  # fmt: skip
    bar.close()
    preemption.restore()

    # ---- checkpoint, evaluation, plots ----------------------------------------------------------
    ckpt = (
        ckpts.save(engine, steps, client_state(steps), info=ckpt_info(steps))
        if saved_at != steps
        else run.checkpoints / tag_of(steps)
    )  # fmt: skip
    # With validation, the test scores the best validation checkpoint: the run's choice of
    # step is made on the validation block, never on the test block.
    tested = ckpts.best() if val_ds is not None else None
    if tested is not None and tested != tag_of(steps):
        best_info = read_info(run.checkpoints / tested)
        best_layout = (
            Topology.of(**best_info["layout"]) if best_info
            else reshard.checkpoint_layout(run.checkpoints / tested)
        )  # fmt: skip
        if best_layout == layout:
            ckpts.load(engine, tested, restore_rng_state=False)
        else:  # saved before a resume at another layout: its weights, resharded (no optimizer)
            reshard.load_full_state(
                engine.module, reshard.consolidate(run.checkpoints / tested),
                heads=cfg.model.heads, tp=topo.tp, tp_rank=groups.tp_rank if groups else 0,
            )  # fmt: skip
    tested = tested or tag_of(steps)
    test = evaluate_forecast(forecaster, test_ds, weights, device, batch_size=8)
    if series_test:
        from scigpt.eval.series import evaluate_series

        test["series"] = {
            name: evaluate_series(
                forecaster, ds, device, pooled_kind=oc.pooled_kind if oc.pooled else None,
                mask_ratio=oc.mask_ratio if oc.masked else None,
            )
            for name, ds in series_test.items()
            if len(ds)
        }  # fmt: skip
    files: dict[str, Path] = {"checkpoint": ckpt, "tested": run.checkpoints / tested}
    if is_main:
        assert logger is not None and held.segment is not None
        held.segment.stop()  # its seconds count in the test record's device-hours
        files.update(_write_outputs(run, store, test, cfg, run.metrics()))
        samples = steps * accum * cfg.schedule.micro_batch_size * topo.dp
        # The test record comes last: a run that has one has finished (a resume does nothing).
        logger.log(
            {
                "kind": "test",
                **test["summary"],
                "checkpoint_step": step_of(tested),
                **_wins_and_losses(test, store.names),
                **{
                    f"{name}/{k}": v
                    for name, res in test.get("series", {}).items()
                    for k, v in res["summary"].items()
                },
                # the run's scale, for scaling sweeps: parameters, unique training data, compute
                "n_params": n_params,
                "train_samples": sum(len(d) for d in train_dss),
                "tokens_per_sample": n_tokens,
                "samples_seen": samples,
                "train_flops": samples * flops_per_sample,
                # every segment's training time (killed and resumed ones too) x its ranks
                "device_hours": run.device_hours(),
                "segments": len(run.segments()),
            },
            steps,
        )
        logger.close()
        held.segment.close("completed")  # after the test record: a kill before it is "killed"
    barrier(world)
    return TrainResult(
        run_dir=run.path, steps=steps, final_loss=loss, test=test, files=files, main=is_main
    )


def _wins_and_losses(test: dict[str, Any], names: list[str]) -> dict[str, list[str]]:
    """The scored variables whose test RMSE is below persistence's, and those above it."""
    scored = test.get("scored") or [True] * len(names)
    pairs = [
        (n, float(m), float(p))
        for n, m, p, ok in zip(
            names, test["rmse_model"], test["rmse_persistence"], scored, strict=True
        )
        if ok
    ]
    return {
        "better_than_persistence": [n for n, m, p in pairs if m < p],
        "worse_than_persistence": [n for n, m, p in pairs if m >= p],
    }


def _write_memory(run: RunDir, engine, layout, rank: int, world: int) -> None:
    """Per-rank parameter and optimizer-state bytes after the first step → memory.json."""
    from scigpt.parallel.memory import rank_memory

    mine = {"rank": rank, **rank_memory(engine)}
    ranks = [mine]
    if world > 1:
        import torch.distributed as dist

        ranks = [None] * world
        dist.all_gather_object(ranks, mine)
    if rank == 0:
        run.write_json("memory.json", {"layout": layout.to_dict(), "ranks": ranks})


def _write_outputs(run: RunDir, store, test: dict, cfg: RunConfig, records: list) -> dict:
    from scigpt.eval.forecast import write_tables
    from scigpt.train.plots import plot_forecast_map, plot_loss

    files = write_tables(run.eval_dir, test, [v.name for v in store.variables])
    files["loss_plot"] = plot_loss(
        records, run.plots / "loss.png", title=f"{cfg.name}: training loss"
    )
    names = [v.name for v in store.variables]
    scored = [n for n, ok in zip(names, test.get("scored") or [True] * len(names), strict=True)
              if ok]  # fmt: skip
    var = cfg.eval.plot_variable or (scored or names)[0]
    if var not in names:
        raise ValueError(f"eval.plot_variable={var!r} is not one of the run's variables {names}")
    vi = names.index(var)
    mean, std = store.mean[vi], store.std[vi]
    k = -1  # the last test forecast
    files["forecast_map"] = plot_forecast_map(
        lat=np.asarray(store.lat),
        lon=np.asarray(store.lon),
        current=test["current"][k, vi].numpy() * std + mean,
        truth=test["truth"][k, vi].numpy() * std + mean,
        pred=test["pred"][k, vi].numpy() * std + mean,
        variable=var,
        units=store.variables[vi].units,
        valid_time=str(test["valid_times"][k]),
        out=run.plots / f"forecast_{var}.png",
    )
    return files
