"""What happens around training steps, as callbacks: metrics sinks (metrics.jsonl, TensorBoard,
MLflow, Weights & Biases), the per-rank memory report, and the run's tables and plots.

The trainer calls a ``CallbackList`` at fixed points of the loop (``Callback`` lists them). Every
record the run logs goes through ``on_log`` to every sink, so metrics.jsonl, TensorBoard, MLflow
and W&B hold the same numbers. Sinks live on rank 0 only; callbacks that take part in
collectives (``MemoryReport``) run on every rank.

MLflow and W&B sinks live in ``scigpt.train.tracking``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.distributed as dist

from scigpt.diagnostics.htsr import analyze_state, summarize
from scigpt.eval.forecast import write_tables
from scigpt.parallel.memory import rank_memory
from scigpt.rundir import MetricsLog, RunDir
from scigpt.train.plots import plot_forecast_map, plot_loss
from scigpt.train.series_run import write_series_outputs

if TYPE_CHECKING:  # the trainer imports this module
    from scigpt.train.trainer import Trainer


class Callback:
    """The hooks of the training loop; each does nothing unless overridden. ``trainer`` is the
    running ``Trainer`` (its config, run directory, engine, step)."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first step of this segment (after a resume: the first new step)."""

    def on_log(self, record: dict[str, Any], step: int) -> None:
        """A metrics record (``kind``: train, val, skip, rollback, early_stop, preempted,
        test) at ``step``."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After the optimizer step and the guards, before logging and validation."""

    def on_validation_end(self, trainer: Trainer, step: int, summary: dict, improved: bool) -> None:
        """After a validation pass (``improved``: the best score so far)."""

    def on_checkpoint(self, trainer: Trainer, step: int, path: Path) -> None:
        """After a checkpoint was saved (every rank)."""

    def on_test_end(self, trainer: Trainer, test: dict[str, Any]) -> None:
        """After the final test evaluation, before the test record is logged."""

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        """The segment ends: ``completed``, ``preempted`` or ``failed``."""


class CallbackList(Callback):
    """Calls its callbacks in order."""

    def __init__(self, callbacks: list[Callback] | None = None):
        self.callbacks = list(callbacks or [])

    def append(self, cb: Callback) -> None:
        self.callbacks.append(cb)

    def on_train_start(self, trainer: Trainer) -> None:
        for cb in self.callbacks:
            cb.on_train_start(trainer)

    def on_log(self, record: dict[str, Any], step: int) -> None:
        for cb in self.callbacks:
            cb.on_log(record, step)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        for cb in self.callbacks:
            cb.on_step_end(trainer, step)

    def on_validation_end(self, trainer: Trainer, step: int, summary: dict, improved: bool) -> None:
        for cb in self.callbacks:
            cb.on_validation_end(trainer, step, summary, improved)

    def on_checkpoint(self, trainer: Trainer, step: int, path: Path) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(trainer, step, path)

    def on_test_end(self, trainer: Trainer, test: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_test_end(trainer, test)

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        for cb in self.callbacks:
            cb.on_train_end(trainer, status)


# ---- metrics sinks ------------------------------------------------------------------------------
class JsonlMetrics(Callback):
    """metrics.jsonl through the run directory's one writer (flushed per record)."""

    def __init__(self, log: MetricsLog):
        self._log = log

    def on_log(self, record: dict[str, Any], step: int) -> None:
        self._log.append(record, step)

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        self._log.close()


class TensorBoardSink(Callback):
    """TensorBoard scalars under the record's own keys. ``purge_step``: a resumed run's first
    step; TensorBoard hides the killed segment's events from there on, as metrics.jsonl drops
    its records."""

    def __init__(self, tb_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # optional: the tensorboard package

        self._tb = SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step)

    def on_log(self, record: dict[str, Any], step: int) -> None:
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, step)

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        self._tb.close()


# ---- around the steps ---------------------------------------------------------------------------
class MemoryReport(Callback):
    """Per-rank parameter and optimizer-state bytes after the run's first step → memory.json
    (every rank: a collective)."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if step != 1:  # the run's first step (a resume from step 0 included)
            return
        mine = {"rank": trainer.rank, **rank_memory(trainer.engine)}
        ranks = [mine]
        if trainer.world > 1:
            ranks = [None] * trainer.world
            dist.all_gather_object(ranks, mine)
        if trainer.rank == 0:
            layout = trainer.layout.to_dict()
            trainer.run.write_json("memory.json", {"layout": layout, "ranks": ranks})


class WeightDiagnostics(Callback):
    """``diagnostics.every: N`` (rank 0, tp = pp = 1, ZeRO ≤ 2: its module holds whole matrices):
    every N steps, the HTSR summary and each fitted layer's α (``alpha.<name>``) as a
    ``kind: diagnostics`` record to every sink, with its cost: ``seconds``, the mean
    ``step_seconds`` of the training wall time since the last one, ``cost_in_steps`` (their
    ratio) and ``share_of_training`` (its share of the wall time of the interval)."""

    SUMMARY = ("fitted_layers", "too_small", "mean_alpha", "mean_alpha_weighted",
               "mean_log_spectral_norm", "share_alpha_outside", "traps")  # fmt: skip

    def __init__(self, every: int, *, min_evals: int = 50, workers: int = 1):
        self.every, self.min_evals, self.workers = every, min_evals, workers
        self._since, self._steps = time.perf_counter(), 0

    def on_train_start(self, trainer: Trainer) -> None:
        self._since, self._steps = time.perf_counter(), 0

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self._steps += 1
        if step % self.every:
            return
        t0 = time.perf_counter()
        wall = t0 - self._since
        weights = {n: p.detach() for n, p in trainer.engine.module.named_parameters()}
        layers = analyze_state(weights, min_evals=self.min_evals, workers=self.workers)
        summary = summarize(layers)
        spent = time.perf_counter() - t0
        step_s = wall / max(self._steps, 1)
        rec: dict[str, Any] = {"kind": "diagnostics", **{k: summary[k] for k in self.SUMMARY}}
        rec |= {
            "seconds": spent,
            "step_seconds": step_s,
            "cost_in_steps": spent / step_s if step_s > 0 else None,
            "share_of_training": spent / (spent + wall),
        }
        rec |= {f"alpha.{d.name}": d.alpha for d in layers if d.status == "ok"}
        trainer.log(rec, step)
        self._since, self._steps = time.perf_counter(), 0


class RunOutputs(Callback):
    """Rank 0, after the test: eval tables, the loss curve and a forecast map of the last test
    sample (``trainer.files`` lists them)."""

    def on_test_end(self, trainer: Trainer, test: dict[str, Any]) -> None:
        if trainer.data.series_first:
            trainer.files.update(write_series_outputs(trainer.run, test, trainer.cfg))
            return
        trainer.files.update(write_outputs(trainer.run, trainer.data.store, test, trainer.cfg))


def write_outputs(run: RunDir, store, test: dict, cfg) -> dict[str, Path]:
    files = write_tables(run.eval_dir, test, [v.name for v in store.variables])
    files["loss_plot"] = plot_loss(
        run.metrics(), run.plots / "loss.png", title=f"{cfg.name}: training loss"
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
