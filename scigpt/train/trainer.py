"""The training loop: data → DeepSpeed engine → metrics, checkpoint, evaluation, plots.

``train`` runs a ``Trainer`` on every rank; rank 0 alone writes the run directory and the store.
The trainer is made of parts: the run's data (``scigpt.train.data``), the fine-tune recipe
(``scigpt.finetune.recipe``), the typed checkpoint state (``scigpt.train.checkpoint``) and the
callbacks around the steps (``scigpt.train.callbacks``: metrics sinks, memory report, outputs).
Its methods follow one run: ``setup`` (config, run directory, data, model, engine, resume),
then per step ``train_step`` and ``after_step`` (guards, logging, ``validate``, ``save``), and
``finish`` (final checkpoint, test on the best validation checkpoint, the test record).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from scigpt.config import check_trainable
from scigpt.config_loader import ConfigError, LoadedConfig
from scigpt.eval.forecast import evaluate_forecast
from scigpt.eval.metrics import lat_weights
from scigpt.eval.series import evaluate_series
from scigpt.export.errors import PackageError
from scigpt.finetune import recipe
from scigpt.launch.distributed import init_distributed
from scigpt.models.build import (
    build_model,
    build_model_zero3,
    forward_flops_per_token,
    materialise,
)
from scigpt.models.objectives import Objectives
from scigpt.models.vit import ModelSpec
from scigpt.parallel import reshard
from scigpt.parallel.checkpointing import apply_activation_checkpointing
from scigpt.parallel.engine import build_engine, deepspeed_config
from scigpt.parallel.pipeline import PipelineForecaster, build_pipeline, to_pipe
from scigpt.parallel.tensor_parallel import apply_tensor_parallel
from scigpt.parallel.topology import ProcessGroups, Topology
from scigpt.preflight import check_run, machine_target, memory_problem
from scigpt.prepare import IngestRejected
from scigpt.rundir import RunDir, Segment, default_run_name, provenance, runs_root
from scigpt.runlock import RunLocked, RunLockLost
from scigpt.train import data as run_data
from scigpt.train.callbacks import (
    CallbackList,
    JsonlMetrics,
    MemoryReport,
    RunOutputs,
    TensorBoardSink,
)
from scigpt.train.checkpoint import (
    CheckpointManager,
    CheckpointState,
    barrier,
    read_info,
    step_of,
    tag_of,
)
from scigpt.train.metrics import detect_peak_tflops
from scigpt.train.tracking import MlflowSink, WandbSink


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
            t = torch.tensor(flags, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = t.tolist()
        return bool(flags[0]), bool(flags[1])

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)


def _test_nan_steps() -> set[int]:
    """Fault injection for the numerical-guard tests: SCIGPT_TEST_NAN_STEPS="5,6" turns those
    steps' inputs into NaN. Unset in normal runs."""
    raw = os.environ.get("SCIGPT_TEST_NAN_STEPS", "")
    return {int(x) for x in raw.split(",") if x.strip()}


def _on_rank0(fn, *, is_main: bool, world: int):
    """Run ``fn`` on rank 0 only; every rank returns its result, or raises what it raised (a
    refusal on rank 0 stops every rank cleanly instead of leaving them in a collective)."""
    out: tuple[str, Any] = ("ok", None)
    if is_main:
        try:
            out = ("ok", fn())
        except (ConfigError, RunLocked, ValueError, OSError, IngestRejected, PackageError) as e:
            if world == 1:
                raise
            out = ("error", e)
    if world > 1:
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
    trainer = Trainer(
        loaded, run_name=run_name, root=root, resume=resume, break_lock=break_lock,
        trusted_keys=trusted_keys, held=held,
    )  # fmt: skip
    try:
        return trainer.run()
    except BaseException as e:
        if not isinstance(e, RunLockLost):  # a job that lost the run directory writes nothing
            try:
                trainer.end_callbacks("failed")
            except Exception as cb_error:  # the run's own error is the one to see
                warnings.warn(f"closing the metrics sinks failed: {cb_error}", stacklevel=1)
        raise
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


class Trainer:
    """One run on one rank. ``run()`` sets up and trains; see the module docstring."""

    def __init__(
        self, loaded: LoadedConfig, *, run_name: str | None = None, root: Path | None = None,
        resume: bool = False, break_lock: bool = False, trusted_keys: list | None = None,
        held: _Held | None = None,
    ):  # fmt: skip
        if resume and run_name is None:
            raise ValueError("--resume needs --run-name: the run directory to continue")
        self.loaded, self.cfg = loaded, loaded.config
        self.run_name, self.root, self.resume = run_name, root, resume
        self.break_lock, self.trusted_keys = break_lock, trusted_keys
        self.held = held or _Held()
        self.package = None
        self.callbacks = CallbackList()
        self._ended = False
        self.files: dict[str, Path] = {}
        # loop state
        self.step, self.start_step, self.loss = 0, 0, float("nan")
        self.best_val, self.skipped_total = math.inf, 0
        self.consecutive, self.stale_evals, self.saved_at = 0, 0, -1

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        early = self.setup()
        if early is not None:
            return early
        self.callbacks.on_train_start(self)
        if self.held.segment is not None:
            self.held.segment.start()  # device-hours: training and the final evaluation
        self.engine.train()
        for step in range(self.start_step + 1, self.steps + 1):
            self.step = step
            self.loss = self.train_step()
            outcome = self.after_step(step)
            if outcome == "early_stop":
                self.steps = step
                break
            if outcome == "preempted":
                return self.preempted(step)
        self.bar.close()
        self.preemption.restore()
        return self.finish()

    def log(self, record: dict[str, Any], step: int) -> None:
        """One metrics record to every sink (rank 0 holds them)."""
        self.callbacks.on_log(record, step)

    def end_callbacks(self, status: str) -> None:
        if not self._ended:
            self._ended = True
            self.callbacks.on_train_end(self, status)

    # ---- setup --------------------------------------------------------------------------------
    def setup(self) -> TrainResult | None:
        """Everything before the first step; a TrainResult when there is nothing to train."""
        if self.cfg.finetune.package:
            # The model is the package's: its config replaces the run's model section.
            self.loaded, self.package = recipe.load_package(self.loaded, self.trusted_keys)
            self.cfg = self.loaded.config
        cfg = self.cfg
        check_trainable(cfg)
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        if cfg.runtime.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.preemption = _Preemption()
        self.info = init_distributed()
        self.rank, self.world = self.info.rank, self.info.world_size
        self.topo = self.layout = Topology.from_config(cfg.parallel, self.world)
        # init_distributed chose the CUDA device (local rank, or 0 with one GPU per task).
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        self.is_main = self.rank == 0
        self.show = self.is_main and cfg.logging.progress
        finished = self._open()
        if finished is not None:
            return finished
        self._build_data()
        self._find_resume_checkpoint()
        self._build_model()
        self._build_engine()
        self._resume()
        self._describe()
        self._build_stream()
        self._build_callbacks()
        self.steps, self.accum = cfg.schedule.steps, cfg.schedule.grad_accum
        self.nan_steps = _test_nan_steps()
        self.bar = tqdm(total=self.steps, initial=self.start_step, desc="train", unit="step",
                        disable=not self.show, dynamic_ncols=True)  # fmt: skip
        self.window_t, self.window_samples = time.perf_counter(), 0
        self.source_counts = [0] * len(self.data.train_dss)  # micro-batches drawn per source
        self.batches = self._micro_batches()
        if self.topo.pp > 1:
            # Only the first and last stages draw micro-batches (inputs and labels of a batch).
            self.pipe_batches = (to_pipe(b) for b in self.batches)
        return None

    def _open(self) -> TrainResult | None:
        """Preflight, lock and run directory (rank 0 decides and writes)."""
        cfg = self.cfg
        self.name = self.run_name or default_run_name(cfg.name)
        self.run = RunDir((self.root or runs_root()) / self.name)
        self.store_dir = (
            self.loaded.resolve_path(cfg.data.store) if cfg.data.store else self.run.path / "store"
        )
        self.resolved = self.loaded.resolved_dict()
        target = machine_target(self.world, self.info.local_world_size)
        pkg_config = self.package.config if self.package is not None else None
        opened = _on_rank0(
            lambda: _open_run(
                self.loaded, self.run, self.resolved, resume=self.resume,
                break_lock=self.break_lock, target=target, package_config=pkg_config,
                held=self.held,
            ),
            is_main=self.is_main, world=self.world,
        )  # fmt: skip
        self.resuming = opened["resuming"]
        if not opened.get("finished"):
            return None
        test = opened["finished"]
        if self.is_main:
            print(f"run {self.name} has finished (step {test['step']}, its test record is "
                  "written): nothing to do", flush=True)  # fmt: skip
        self.preemption.restore()
        return TrainResult(run_dir=self.run.path, steps=int(test["step"]), final_loss=math.nan,
                           main=self.is_main, finished_before=True)  # fmt: skip

    def _build_data(self) -> None:
        """Ingest (rank 0), open the stores, the registry (a fine-tune's: the package's
        variables first) and the datasets."""
        _on_rank0(
            lambda: run_data.ingest(self.loaded, self.store_dir, progress=self.show),
            is_main=self.is_main, world=self.world,
        )  # fmt: skip
        self.data = run_data.open_data(self.cfg, self.store_dir)
        if self.package is not None:
            recipe.extend_registry(self.package, self.data.registry, seed=self.cfg.seed)
        run_data.build_datasets(self.data)

    def _find_resume_checkpoint(self) -> None:
        """The checkpoint to resume from, and its layout when it is not this run's."""
        self.ckpts = CheckpointManager(
            self.run.checkpoints, rank=self.rank, world_size=self.world,
            keep_last=self.cfg.checkpoint.keep_last, keep_every=self.cfg.checkpoint.keep_every,
        )  # fmt: skip
        self.resume_tag, self.foreign = None, None
        if self.resuming:
            self.ckpts.clean_interrupted()
            self.resume_tag = self.ckpts.latest()
        if self.resume_tag is not None:
            saved = self._layout_of(self.resume_tag)
            self.foreign = saved if saved != self.layout else None

    def _layout_of(self, tag: str) -> Topology:
        info = read_info(self.run.checkpoints / tag)
        return (
            Topology.of(**info["layout"]) if info
            else reshard.checkpoint_layout(self.run.checkpoints / tag)
        )  # fmt: skip

    def _objectives(self) -> Objectives:
        oc, reg_names = self.cfg.objectives, self.data.registry.names
        unknown = sorted(set(oc.variable_weights) - set(reg_names))
        if unknown:
            raise ValueError(
                f"objectives.variable_weights names {unknown}, not variables of the run "
                f"({reg_names}): use canonical names such as {reg_names[0]!r}"
            )
        return Objectives(
            forecast=oc.forecast, masked=oc.masked, mask_ratio=oc.mask_ratio, pooled=oc.pooled,
            pooled_kind=oc.pooled_kind,
            variable_weights={reg_names.index(k): w for k, w in oc.variable_weights.items()},
        )  # fmt: skip

    def _heads(self) -> tuple[int, dict[str, Any]]:
        """The pooled head's outputs (the run's targets or classes, else the package's head
        size) and the run's heads record."""
        oc, base = self.cfg.objectives, self.package.model if self.package else None
        num_targets = (
            (oc.pooled_classes if oc.pooled_kind == "classification" else len(oc.pooled_targets))
            if oc.pooled
            else (base.spec.num_targets if base is not None else 0)
        )
        if base is not None:
            return num_targets, recipe.finetune_heads(
                base, self.cfg, num_targets, self.package.config
            )
        pooled = {"kind": oc.pooled_kind, "targets": list(oc.pooled_targets)} if oc.pooled else None
        return num_targets, {"leads": {"head": self.data.lead}, "forecast_head": None,
                             "pooled": pooled}  # fmt: skip

    def _build_model(self) -> None:
        """The single-device model on the meta device, then the run's layout of it."""
        cfg, topo, data = self.cfg, self.topo, self.data
        self.objectives = self._objectives()
        _seed_everything(cfg.seed)
        num_targets, self.heads_info = self._heads()
        spec = ModelSpec(num_vars=len(data.registry.names), history=cfg.data.history,
                         num_targets=num_targets)  # fmt: skip
        meta = build_model(cfg.model, spec)  # on the meta device: sizes, and the layouts' source
        self.residual = meta.residual
        # Sizes of the whole model, before any parallelism shards it.
        store = data.store
        self.n_tokens = meta.num_tokens(len(store.lat), len(store.lon))
        self.flops_per_sample = 3 * forward_flops_per_token(meta, self.n_tokens) * self.n_tokens
        self.n_params = sum(p.numel() for p in meta.parameters())

        def fits() -> None:  # now that the grid is known: activations count too
            problem = memory_problem(
                cfg, cfg.model, machine_target(self.world, self.info.local_world_size),
                tokens=self.n_tokens, vars_per_sample=len(store.names),
                num_vars=len(data.registry.names), num_targets=num_targets,
            )  # fmt: skip
            if problem:
                raise ConfigError(str(self.loaded.path or "<config>"), [problem])

        _on_rank0(fits, is_main=self.is_main, world=self.world)
        self.groups = ProcessGroups(topo, self.rank) if topo.tp > 1 or topo.pp > 1 else None
        self.tp_rank = self.groups.tp_rank if self.groups else 0
        ac = cfg.parallel.activation_checkpointing
        if ac != "none":
            # Patches block forwards: survives materialisation, pipelining and tensor parallelism.
            apply_activation_checkpointing(meta, ac)
        if topo.pp > 1:
            model = build_pipeline(
                meta, topo=topo, groups=self.groups, device=self.device, seed=cfg.seed,
                objectives=self.objectives, partition=cfg.parallel.pp_partition,
                dynamic_shape=len(cfg.data.sources) > 1,
            )  # fmt: skip
        elif topo.zero_stage == 3:
            model = build_model_zero3(
                cfg.model, spec, deepspeed_config(cfg, topo, self.n_params), device=self.device,
                seed=cfg.seed,
            )  # fmt: skip
            if ac != "none":
                apply_activation_checkpointing(model, ac)
        else:
            model = materialise(meta, self.device, seed=cfg.seed)
            if topo.tp > 1:
                apply_tensor_parallel(model, self.groups.tp_group)
        if self.package is not None:
            model = recipe.finetune_model(
                model, self.package.model, cfg, self.data.registry.new_ids, tp=topo.tp,
                tp_rank=self.tp_rank, device=self.device,
            )  # fmt: skip
        if self.foreign is not None:  # reshard: the checkpoint's weights into this layout
            reshard.load_full_state(
                model, reshard.consolidate(self.run.checkpoints / self.resume_tag),
                heads=cfg.model.heads, tp=topo.tp, tp_rank=self.tp_rank,
            )  # fmt: skip
        self.model = model

    def _build_engine(self) -> None:
        topo = self.topo
        self.engine, _ = build_engine(
            self.model, self.cfg, topo, mpu=self.groups if topo.pp == 1 else None
        )
        self.forecaster = (
            PipelineForecaster(self.engine, residual=self.residual) if topo.pp > 1
            else self.engine.module
        )  # fmt: skip
        _seed_everything(self.cfg.seed + self.rank)  # per-rank streams for dropout etc.

    def _resume(self) -> None:
        """Load the checkpoint to resume from (same layout: everything, exactly; another
        layout: the weights were loaded resharded; continue the schedule, restart AdamW's
        moments), and start this segment's records."""
        self.loader_state = None
        if self.resume_tag is not None:
            if self.foreign is None:  # the same layout: everything, exactly (DeepSpeed's load)
                state = CheckpointState.from_dict(self.ckpts.load(self.engine, self.resume_tag))
            else:
                raw = reshard.client_state(self.run.checkpoints / self.resume_tag)
                self.engine.lr_scheduler.load_state_dict(raw["lr_scheduler"])
                self.engine.global_steps = raw["global_steps"]
                self.engine.global_samples = raw["global_samples"]
                state = CheckpointState.from_dict(raw)
                if self.is_main:
                    warnings.warn(
                        f"resharding {self.resume_tag} from {self.foreign.describe()} to "
                        f"{self.layout.describe()}: weights, step, learning-rate schedule and "
                        "data position continue exactly; the optimizer state (AdamW moments) "
                        "restarts, and the per-rank RNG streams are reseeded. Resume at the "
                        "saved layout to keep them.",
                        stacklevel=1,
                    )
            self.start_step, self.loader_state = state.step, state.loader
            self.best_val, self.skipped_total = state.best_val, state.skipped
            if self.is_main:
                print(f"resumed {self.name} from step {self.start_step}", flush=True)
        elif self.resuming and self.is_main:
            print(f"resumed {self.name} from step 0 (it has no checkpoint yet)", flush=True)
        if self.is_main:
            # What a killed or preempted segment logged past start_step goes; this segment logs
            # it again, so every step has one record.
            self.run.resume_metrics(self.start_step)
            self.held.segment = self.run.begin_segment(
                start_step=self.start_step, world_size=self.world
            )

    def _describe(self) -> None:
        """Peak FLOP/s, latitude weights; rank 0: provenance.json and the run's one-line
        summary."""
        cfg, store = self.cfg, self.data.store
        self.peak = cfg.logging.peak_tflops or detect_peak_tflops(cfg.precision)
        self.weights = lat_weights(torch.as_tensor(store.lat)).to(self.device)
        if not self.is_main:
            return
        # ZeRO-3 partitions parameters: ds_numel is the full size, ds_tensor this rank's share.
        n_local = sum(
            p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
            for p in self.model.parameters()
        )
        prov = provenance(
            data_manifest_sha256=store.manifest_sha256,
            hosts=[self.info.master_addr],
            extra={
                "world_size": self.world, "topology": self.topo.describe(),
                "launcher": self.info.launcher, "n_params": self.n_params,
                "params_local_fraction": n_local / self.n_params, "store": str(self.store_dir),
            },
        )  # fmt: skip
        if self.resuming and (self.run.path / "provenance.json").is_file():
            # Keep the run's original provenance; record each restart (Slurm requeues too).
            first = json.loads((self.run.path / "provenance.json").read_text())
            first.setdefault("restarts", []).append(
                {
                    "utc": prov["created_utc"],
                    "step": self.start_step,
                    "git": prov["git"],
                    "world_size": self.world,
                    "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
                }
            )
            prov = first
        self.run.write_json("provenance.json", prov)
        print(
            f"run {self.name}: {self.n_params / 1e6:.2f}M parameters, "
            f"{'+'.join(str(len(d)) for d in self.data.train_dss)} train / "
            f"{len(self.data.test_ds)} test samples, {self.n_tokens} tokens/sample, "
            f"{self.topo.describe()}",
            flush=True,
        )

    def _build_stream(self) -> None:
        topo = self.topo
        self.batch_sampler = run_data.batch_sampler(
            self.data, dp_rank=self.rank // (topo.tp * topo.pp), dp=topo.dp,
            state=self.loader_state,
        )  # fmt: skip
        self.stream = run_data.training_stream(self.data, self.batch_sampler, device=self.device)

    def _build_callbacks(self) -> None:
        """Every rank: the memory report. Rank 0: the metrics sinks the config turns on and
        the run's outputs."""
        cfg, run = self.cfg, self.run
        self.callbacks.append(MemoryReport())
        if not self.is_main:
            return
        self.callbacks.append(JsonlMetrics(run.open_metrics()))
        if cfg.logging.tensorboard:
            self.callbacks.append(
                TensorBoardSink(run.tb, purge_step=self.start_step + 1 if self.resuming else None)
            )
        if cfg.logging.mlflow:
            self.callbacks.append(
                MlflowSink(run, experiment=cfg.name, run_name=self.name, config=self.resolved)
            )
        if cfg.logging.wandb:
            self.callbacks.append(
                WandbSink(run, project=cfg.name, run_name=self.name, config=self.resolved)
            )
        self.callbacks.append(RunOutputs())

    def checkpoint_state(self, step: int) -> CheckpointState:
        data, store = self.data, self.data.store
        return CheckpointState(
            config=self.resolved, step=step, world_size=self.world,
            variables=data.registry.dicts, variable_stats=data.registry.stats,
            stats={"mean": store.mean.tolist(), "std": store.std.tolist()},
            source_stats=data.source_stats(), heads=self.heads_info,
            time_step_ns=int(data.test_ds.time_step_ns),
            data_manifest_sha256=store.manifest_sha256,
            # The stream position after the last consumed micro-batch: resume continues exactly.
            loader=self.batch_sampler.state_dict(step * self.accum),
            best_val=self.best_val, skipped=self.skipped_total, layout=self.layout.to_dict(),
        )  # fmt: skip

    # ---- steps --------------------------------------------------------------------------------
    def _micro_batches(self):
        """The training stream as engine-ready micro-batches (device, dtype, fault injection)."""
        lc = self.cfg.data.loader
        while True:
            batch = _to_device(next(self.stream), self.device, non_blocking=lc.pin_memory)
            self.source_counts[batch.get("source", 0)] += 1
            if self.cfg.precision == "bf16":
                batch["fields"] = batch["fields"].to(torch.bfloat16)  # the model's dtype
            if self.step in self.nan_steps:  # fault injection for the guard tests
                batch["fields"] = batch["fields"] * float("nan")
            yield batch

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; the loss averaged over
        micro-batches and data-parallel replicas."""
        topo, engine, accum = self.topo, self.engine, self.accum
        if topo.pp > 1:
            # One call runs the whole 1F1B schedule of grad_accum micro-batches and the step.
            loss = float(engine.train_batch(data_iter=self.pipe_batches))
            self.window_samples += self.cfg.schedule.micro_batch_size * accum * topo.dp
            return loss
        loss_sum = 0.0
        for _ in range(accum):
            batch = next(self.batches)
            loss_t, _parts = engine(batch, objectives=self.objectives)
            engine.backward(loss_t)
            engine.step()
            loss_sum += loss_t.item()
            self.window_samples += batch["fields"].shape[0] * topo.dp
        loss = loss_sum / accum
        if self.world > 1:
            t = torch.tensor([loss], device=self.device)
            dist.all_reduce(t)
            loss = t.item() / self.world
        return loss

    def _agree_to_stop(self, step: int) -> bool:
        """Every rank agrees to stop at this step (SIGUSR1), or that rank 0 lost the run lock
        (another process took the directory over: write nothing more). Rank 0 re-reads the
        lock before the steps that write; its heartbeat checks it in between."""
        cfg = self.cfg
        writes = step % cfg.logging.every == 0 or step == self.steps or (
            cfg.checkpoint.every and step % cfg.checkpoint.every == 0
        ) or (cfg.eval.every and step % cfg.eval.every == 0)  # fmt: skip
        lock = self.run.run_lock if self.is_main else None
        lost = lock is not None and (lock.lost or (bool(writes) and not lock.verify()))
        stop, lost = self.preemption.agreed(self.world, self.device, lock_lost=lost)
        if lost:
            raise RunLockLost(
                f"rank 0 lost the lock of {self.run.path} at step {step}: another process took "
                "the run directory over; this job stops without writing"
            )
        return stop

    def _guard(self, step: int) -> bool:
        """Whether the step was applied. DeepSpeed's ZeRO optimizers skip an update whose
        gradients are not finite (a non-finite loss always yields such gradients); after
        ``guards.rollback_after`` in a row, weights, optimizer and scheduler go back to the
        latest checkpoint (data and RNG go on)."""
        guards, loss = self.cfg.guards, self.loss
        finite = math.isfinite(loss) and self.engine.was_step_applied()
        if finite:
            self.consecutive = 0
            return True
        if not guards.skip_nonfinite:
            raise FloatingPointError(f"loss is {loss} at step {step}: lower optim.lr")
        self.skipped_total += 1
        self.consecutive += 1
        self.log({"kind": "skip", "loss": loss, "consecutive": self.consecutive}, step)
        if guards.rollback_after and self.consecutive >= guards.rollback_after:
            if self.ckpts.latest() is None:
                raise FloatingPointError(
                    f"{self.consecutive} non-finite steps in a row at step {step} and no "
                    "checkpoint to roll back to: lower optim.lr or set checkpoint.every"
                )
            self.ckpts.load(self.engine, restore_rng_state=False)
            self.log({"kind": "rollback", "to": self.ckpts.latest()}, step)
            self.consecutive = 0
        return False

    def _log_train(self, step: int) -> None:
        dt = time.perf_counter() - self.window_t
        n = self.window_samples
        tflops = n * self.flops_per_sample / dt / 1e12 / self.world
        rec = {
            "kind": "train",
            "loss": self.loss,
            "grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
            "lr": self.engine.get_lr()[0],
            "samples_per_s": n / dt,
            "tokens_per_s": n * self.n_tokens / dt,
            "tflops_per_device": tflops,
            "mfu": tflops / self.peak if self.peak else None,
            "mem_gb": torch.cuda.max_memory_allocated() / 1e9
            if self.device.type == "cuda"
            else None,
            "skipped_steps": self.skipped_total,
            "micro_batches_per_source": list(self.source_counts),
        }
        self.log(rec, step)
        self.bar.set_postfix(loss=f"{self.loss:.4f}", lr=f"{rec['lr']:.2e}")
        self.window_t, self.window_samples = time.perf_counter(), 0

    def after_step(self, step: int) -> str | None:
        """Guards, logging, validation and checkpoints after the step; ``"early_stop"``,
        ``"preempted"`` or None (go on)."""
        cfg = self.cfg
        stop = self._agree_to_stop(step)
        finite = self._guard(step)
        self.bar.update(1)
        if self.held.segment is not None:
            self.held.segment.at(step)
        self.callbacks.on_step_end(self, step)
        if finite and (step % cfg.logging.every == 0 or step == self.steps):
            self._log_train(step)
        improved = False
        if self.data.val_ds is not None and step % cfg.eval.every == 0:
            improved = self.validate(step)
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or improved:
            self.save(step, best=improved)
        patience = cfg.eval.early_stop_patience
        if patience and self.stale_evals >= patience:
            self.log({"kind": "early_stop", "best_val": self.best_val}, step)
            return "early_stop"
        if stop and step < self.steps:
            return "preempted"
        return None

    def validate(self, step: int) -> bool:
        """Score the validation block; whether it is the best score so far."""
        val = evaluate_forecast(
            self.forecaster, self.data.val_ds, self.weights, self.device, batch_size=8
        )
        score = val["summary"][self.cfg.eval.metric]
        improved = score < self.best_val
        if improved:
            self.best_val, self.stale_evals = score, 0
        else:
            self.stale_evals += 1
        self.log({"kind": "val", **val["summary"], "best": improved}, step)
        self.callbacks.on_validation_end(self, step, val["summary"], improved)
        return improved

    def save(self, step: int, *, best: bool = False) -> Path:
        path = self.ckpts.save(
            self.engine, step, self.checkpoint_state(step).to_dict(), best=best,
            info={"step": step, "layout": self.layout.to_dict(), "world_size": self.world},
        )  # fmt: skip
        self.saved_at = step
        self.callbacks.on_checkpoint(self, step, path)
        return path

    # ---- the end ------------------------------------------------------------------------------
    def preempted(self, step: int) -> TrainResult:
        """SIGUSR1: checkpoint this step (unless saved already) and stop cleanly."""
        if self.saved_at != step:
            self.save(step)
        if self.is_main:
            self.log({"kind": "preempted", "checkpoint": tag_of(step)}, step)
        self.end_callbacks("preempted")
        if self.is_main:
            self.held.segment.close("preempted")
        self.bar.close()
        if self.is_main:
            print(f"preempted at step {step}: checkpoint {tag_of(step)} saved; "
                  "continue with --resume", flush=True)  # fmt: skip
        barrier(self.world)
        self.preemption.restore()
        return TrainResult(run_dir=self.run.path, steps=step, final_loss=self.loss,
                           preempted=True, main=self.is_main)  # fmt: skip

    def _load_tested(self) -> str:
        """With validation, the test scores the best validation checkpoint: the run's choice
        of step is made on the validation block, never on the test block."""
        steps = self.steps
        tested = self.ckpts.best() if self.data.val_ds is not None else None
        if tested is not None and tested != tag_of(steps):
            if self._layout_of(tested) == self.layout:
                self.ckpts.load(self.engine, tested, restore_rng_state=False)
            else:  # saved before a resume at another layout: its weights, resharded
                reshard.load_full_state(
                    self.engine.module, reshard.consolidate(self.run.checkpoints / tested),
                    heads=self.cfg.model.heads, tp=self.topo.tp, tp_rank=self.tp_rank,
                )  # fmt: skip
        return tested or tag_of(steps)

    def _test(self) -> dict[str, Any]:
        test = evaluate_forecast(
            self.forecaster, self.data.test_ds, self.weights, self.device, batch_size=8
        )
        oc = self.cfg.objectives
        if self.data.series_test:
            test["series"] = {
                name: evaluate_series(
                    self.forecaster, ds, self.device,
                    pooled_kind=oc.pooled_kind if oc.pooled else None,
                    mask_ratio=oc.mask_ratio if oc.masked else None,
                )
                for name, ds in self.data.series_test.items()
                if len(ds)
            }  # fmt: skip
        return test

    def finish(self) -> TrainResult:
        """The final checkpoint, the test on the tested checkpoint, outputs and the test
        record (last: a run that has one has finished)."""
        steps, run = self.steps, self.run
        ckpt = self.save(steps) if self.saved_at != steps else run.checkpoints / tag_of(steps)
        tested = self._load_tested()
        test = self._test()
        self.files.update({"checkpoint": ckpt, "tested": run.checkpoints / tested})
        if self.is_main:
            assert self.held.segment is not None
            self.held.segment.stop()  # its seconds count in the test record's device-hours
            self.callbacks.on_test_end(self, test)
            self.log(self._test_record(test, tested), steps)
            self.end_callbacks("completed")
            self.held.segment.close("completed")  # after the test record: a kill before it is
        barrier(self.world)  # "killed"
        return TrainResult(run_dir=run.path, steps=steps, final_loss=self.loss, test=test,
                           files=self.files, main=self.is_main)  # fmt: skip

    def _test_record(self, test: dict[str, Any], tested: str) -> dict[str, Any]:
        cfg, data, run = self.cfg, self.data, self.run
        samples = self.steps * self.accum * cfg.schedule.micro_batch_size * self.topo.dp
        return {
            "kind": "test",
            **test["summary"],
            "checkpoint_step": step_of(tested),
            **_wins_and_losses(test, data.store.names),
            **{
                f"{name}/{k}": v
                for name, res in test.get("series", {}).items()
                for k, v in res["summary"].items()
            },
            # the run's scale, for scaling sweeps: parameters, unique training data, compute
            "n_params": self.n_params,
            "train_samples": sum(len(d) for d in data.train_dss),
            "tokens_per_sample": self.n_tokens,
            "samples_seen": samples,
            "train_flops": samples * self.flops_per_sample,
            # every segment's training time (killed and resumed ones too) x its ranks
            "device_hours": run.device_hours(),
            "segments": len(run.segments()),
        }


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
