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

import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from scigpt.config_loader import ConfigError, LoadedConfig
from scigpt.finetune import recipe
from scigpt.launch.distributed import init_distributed
from scigpt.models.build import build_model, forward_flops_per_token
from scigpt.models.vit import ModelSpec
from scigpt.parallel import reshard
from scigpt.parallel.engine import build_engine
from scigpt.parallel.parallelize import parallelize  # importing it registers the kernels
from scigpt.parallel.pipeline import PipelineForecaster, to_pipe
from scigpt.parallel.topology import ProcessGroups, Topology
from scigpt.preflight import machine_target, memory_problem
from scigpt.rundir import RunDir, default_run_name, runs_root
from scigpt.runlock import RunLockLost
from scigpt.train import data as run_data
from scigpt.train import series_run
from scigpt.train.callbacks import CallbackList, MemoryReport, RunOutputs, WeightDiagnostics
from scigpt.train.checkpoint import (
    RESHARD_NOTE,
    CheckpointManager,
    CheckpointState,
    barrier,
    load_schedule,
    read_info,
    tag_of,
)
from scigpt.train.evaluate import build_test_record, run_test
from scigpt.train.metrics import detect_peak_tflops
from scigpt.train.model import heads_record, objectives_of, pooled_outputs
from scigpt.train.session import (
    Held,
    Preemption,
    TrainResult,
    describe_run,
    on_rank0,
    open_run,
    seed_everything,
    test_nan_steps,
    to_device,
)
from scigpt.train.tracking import metrics_sinks
from scigpt.trainable import check_trainable


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
    held = Held()
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


class Trainer:
    """One run on one rank. ``run()`` sets up and trains; see the module docstring."""

    def __init__(
        self, loaded: LoadedConfig, *, run_name: str | None = None, root: Path | None = None,
        resume: bool = False, break_lock: bool = False, trusted_keys: list | None = None,
        held: Held | None = None,
    ):  # fmt: skip
        if resume and run_name is None:
            raise ValueError("--resume needs --run-name: the run directory to continue")
        self.loaded, self.cfg = loaded, loaded.config
        self.run_name, self.root, self.resume = run_name, root, resume
        self.break_lock, self.trusted_keys = break_lock, trusted_keys
        self.held = held or Held()
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
        self.preemption = Preemption()
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
        self.nan_steps = test_nan_steps()
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
        opened = on_rank0(
            lambda: open_run(
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
        on_rank0(
            lambda: run_data.ingest(self.loaded, self.store_dir, progress=self.show),
            is_main=self.is_main, world=self.world,
        )  # fmt: skip
        self.data = run_data.open_data(self.cfg, self.store_dir)
        if self.package is not None:
            reg = self.data.registry
            reg.names, reg.dicts, reg.new_ids = recipe.extend_registry(
                self.package, reg.names, reg.dicts, reg.stats, seed=self.cfg.seed
            )
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

    def _build_model(self) -> None:
        """The single-device model on the meta device, then the run's layout of it."""
        cfg, topo, data = self.cfg, self.topo, self.data
        self.objectives = objectives_of(cfg, data.registry.names)
        seed_everything(cfg.seed)
        base = self.package.model if self.package is not None else None
        num_targets = pooled_outputs(cfg, base)
        self.heads_info = (
            recipe.finetune_heads(base, cfg, num_targets, self.package.config) if base is not None
            else heads_record(cfg, data.lead)
        )  # fmt: skip
        spec = ModelSpec(num_vars=len(data.registry.names), history=cfg.data.history,
                         num_targets=num_targets, **series_run.series_spec(cfg))  # fmt: skip
        meta = build_model(cfg.model, spec)  # on the meta device: sizes, and the layouts' source
        self.residual = meta.residual
        # Sizes of the whole model, before any parallelism shards it.
        self.n_tokens, vars_per_sample = series_run.primary_size(data, meta)
        self.flops_per_sample = 3 * forward_flops_per_token(meta, self.n_tokens) * self.n_tokens
        self.n_params = sum(p.numel() for p in meta.parameters())

        def fits() -> None:  # now that the grid is known: activations count too
            problem = memory_problem(
                cfg, cfg.model, machine_target(self.world, self.info.local_world_size),
                tokens=self.n_tokens, vars_per_sample=vars_per_sample,
                num_vars=len(data.registry.names), num_targets=num_targets,
            )  # fmt: skip
            if problem:
                raise ConfigError(str(self.loaded.path or "<config>"), [problem])

        on_rank0(fits, is_main=self.is_main, world=self.world)
        self.groups = ProcessGroups(topo, self.rank) if topo.tp * topo.pp * topo.sp > 1 else None
        self.tp_rank = self.groups.tp_rank if self.groups else 0
        # TP, (SP), pipeline stages, ZeRO-3, checkpointing, kernels: the one parallelize step.
        model = parallelize(
            meta, cfg, topo, groups=self.groups, device=self.device, objectives=self.objectives
        )
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
        seed_everything(self.cfg.seed + self.rank)  # per-rank streams for dropout etc.

    def _resume(self) -> None:
        """Load the checkpoint to resume from (same layout: everything, exactly; another
        layout: the weights were loaded resharded; continue the schedule, restart AdamW's
        moments), and start this segment's records."""
        self.loader_state = None
        if self.resume_tag is not None:
            if self.foreign is None:  # the same layout: everything, exactly (DeepSpeed's load)
                state = CheckpointState.from_dict(self.ckpts.load(self.engine, self.resume_tag))
            else:  # the weights were loaded resharded (_build_model)
                state = load_schedule(self.engine, self.run.checkpoints / self.resume_tag)
                if self.is_main:
                    warnings.warn(
                        f"resharding {self.resume_tag} from {self.foreign.describe()} to "
                        f"{self.layout.describe()}: {RESHARD_NOTE}",
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
        """Peak FLOP/s, latitude weights; rank 0: provenance.json and the run's summary line."""
        self.peak = self.cfg.logging.peak_tflops or detect_peak_tflops(self.cfg.precision)
        self.weights = series_run.area_weights(self.data, self.device)
        if self.is_main:
            describe_run(self)

    def _build_stream(self) -> None:
        topo = self.topo
        self.batch_sampler = run_data.batch_sampler(
            self.data, dp_rank=topo.dp_rank(self.rank), dp=topo.dp,
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
        purge = self.start_step + 1 if self.resuming else None
        for sink in metrics_sinks(
            cfg, run, run_name=self.name, config=self.resolved, purge_step=purge
        ):
            self.callbacks.append(sink)
        if cfg.diagnostics.every:  # HTSR weight diagnostics
            self.callbacks.append(WeightDiagnostics(**cfg.diagnostics.model_dump()))
        self.callbacks.append(RunOutputs())

    def checkpoint_state(self, step: int) -> CheckpointState:
        data = self.data
        return CheckpointState(
            config=self.resolved, step=step, world_size=self.world,
            variables=data.registry.dicts, variable_stats=data.registry.stats,
            source_stats=data.source_stats(), heads=self.heads_info,
            **series_run.primary_stats(data),
            # The stream position after the last consumed micro-batch: resume continues exactly.
            loader=self.batch_sampler.state_dict(step * self.accum),
            best_val=self.best_val, skipped=self.skipped_total, layout=self.layout.to_dict(),
        )  # fmt: skip

    # ---- steps --------------------------------------------------------------------------------
    def _micro_batches(self):
        """The training stream as engine-ready micro-batches (device, dtype, fault injection)."""
        lc = self.cfg.data.loader
        while True:
            batch = to_device(next(self.stream), self.device, non_blocking=lc.pin_memory)
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
        writes = step % cfg.logging.every == 0 or step == self.steps or (
            cfg.checkpoint.every and step % cfg.checkpoint.every == 0
        ) or (cfg.eval.every and step % cfg.eval.every == 0)  # fmt: skip
        lock = self.run.run_lock if self.is_main else None
        stop = self.preemption.stop_here(step, lock, writes=bool(writes), world=self.world,
                                         device=self.device, run=self.run.path)  # fmt: skip
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
        summary, score = series_run.validation(self)
        improved = score < self.best_val
        if improved:
            self.best_val, self.stale_evals = score, 0
        else:
            self.stale_evals += 1
        self.log({"kind": "val", **summary, "best": improved}, step)
        self.callbacks.on_validation_end(self, step, summary, improved)
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

    def finish(self) -> TrainResult:
        """The final checkpoint, the test on the tested checkpoint, outputs and the test
        record (last: a run that has one has finished)."""
        steps, run = self.steps, self.run
        ckpt = self.save(steps) if self.saved_at != steps else run.checkpoints / tag_of(steps)
        tested = self._load_tested()
        test = run_test(self)
        self.files.update({"checkpoint": ckpt, "tested": run.checkpoints / tested})
        if self.is_main:
            assert self.held.segment is not None
            self.held.segment.stop()  # its seconds count in the test record's device-hours
            self.callbacks.on_test_end(self, test)
            self.log(build_test_record(self, test, tested), steps)
            self.end_callbacks("completed")
            self.held.segment.close("completed")  # after the test record: a kill before it is
        barrier(self.world)  # "killed"
        return TrainResult(run_dir=run.path, steps=steps, final_loss=self.loss, test=test,
                           files=self.files, main=self.is_main)  # fmt: skip
