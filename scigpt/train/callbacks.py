"""What happens around training steps, as callbacks: metrics sinks (metrics.jsonl, TensorBoard,
MLflow, Weights & Biases), the per-rank memory report, and the run's tables and plots.

The trainer calls a ``CallbackList`` at fixed points of the loop (``Callback`` lists them). Every
record the run logs goes through ``on_log`` to every sink, so metrics.jsonl, TensorBoard, MLflow
and W&B hold the same numbers. Sinks live on rank 0 only; callbacks that take part in
collectives (``MemoryReport``) run on every rank.

MLflow and W&B are optional (the ``tracking`` extra) and imported only when a config turns them
on. Both keep their state inside the run directory: MLflow a SQLite store per run
(``RUN_DIR/mlflow.db``: MLflow 3 refuses plain ``file:`` stores, and one database per run keeps
job arrays off a shared SQLite file), W&B an offline run under ``RUN_DIR/wandb`` (its
``WANDB_DIR``, ``WANDB_CACHE_DIR`` and ``WANDB_CONFIG_DIR`` too; upload with ``wandb sync``).
A resumed run continues the same MLflow and W&B run: their ids, and the last step each sink has
written per record kind, are kept in ``RUN_DIR/tracking.json``. On start a sink replays what
metrics.jsonl holds beyond its last written step, and skips what it has written already, so each
step reaches it once even after a kill (a kill between a tracker's write and the bookkeeping
can repeat that one record).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.distributed as dist

from scigpt.atomic import atomic_write_text
from scigpt.eval.forecast import write_tables
from scigpt.parallel.memory import rank_memory
from scigpt.rundir import MetricsLog, RunDir
from scigpt.train.plots import plot_forecast_map, plot_loss

if TYPE_CHECKING:  # the trainer imports this module
    from scigpt.train.trainer import Trainer

TRACKING_FILE = "tracking.json"


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


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """A record's finite numbers as ``kind/key`` (what metrics.jsonl stores as numbers)."""
    kind = record.get("kind", "train")
    return {
        f"{kind}/{k}": float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


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


class _TrackerSink(Callback):
    """A tracker continued across resumes: its run id and, per record kind, the last step it
    has written, in RUN_DIR/tracking.json under ``name``."""

    name = ""

    def __init__(self, run: RunDir):
        self.run = run
        self.path = run.path / TRACKING_FILE
        self.state: dict[str, Any] = self._read().get(self.name, {})
        self.state.setdefault("written", {})

    def _read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _save(self) -> None:
        whole = self._read()
        whole[self.name] = self.state
        atomic_write_text(self.path, json.dumps(whole, indent=1, sort_keys=True) + "\n")

    def on_train_start(self, trainer: Trainer) -> None:
        """Catch up with metrics.jsonl (what a killed segment logged but never sent here)."""
        for rec in self.run.metrics():
            self.on_log({k: v for k, v in rec.items() if k != "step"}, rec["step"])

    def on_log(self, record: dict[str, Any], step: int) -> None:
        kind = record.get("kind", "train")
        if step <= self.state["written"].get(kind, -1):
            return  # written by an earlier segment (an exact resume logs the same values)
        self.write(_scalars(record), step)
        self.state["written"][kind] = step
        self._save()

    def write(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class MlflowSink(_TrackerSink):
    """MLflow run in ``sqlite:///RUN_DIR/mlflow.db`` (experiment: the config's name); metrics
    ``kind/key`` at each record's step, the resolved config as parameters."""

    name = "mlflow"

    def __init__(self, run: RunDir, *, experiment: str, run_name: str, config: dict[str, Any]):
        super().__init__(run)
        try:
            from mlflow.entities import Metric, Param  # optional: the tracking extra
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ImportError(
                f"logging.mlflow needs MLflow ({e}): pip install 'scigpt[tracking]'"
            ) from e
        self._Metric = Metric
        self.uri = f"sqlite:///{run.path / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        if "run_id" not in self.state:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in sorted(_flat(config).items())]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i : i + 100])
            self.state["run_id"] = run_id
            self._save()
        else:
            self.client.update_run(self.state["run_id"], status="RUNNING")

    def write(self, metrics: dict[str, float], step: int) -> None:
        if metrics:
            now = int(time.time() * 1000)
            batch = [self._Metric(k, v, now, step) for k, v in metrics.items()]
            self.client.log_batch(self.state["run_id"], metrics=batch)

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        final = {"completed": "FINISHED", "preempted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.state["run_id"], status=final)


class WandbSink(_TrackerSink):
    """Weights & Biases run, offline, under RUN_DIR/wandb (project: the config's name); one
    history row per step holding that step's ``kind/key`` values."""

    name = "wandb"

    def __init__(self, run: RunDir, *, project: str, run_name: str, config: dict[str, Any]):
        super().__init__(run)
        root = run.path / "wandb"
        for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "cache"),
                         ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):  # fmt: skip
            (root / sub).mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(root / sub) if sub else str(run.path)
        os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb  # optional: the tracking extra
        except ImportError as e:
            raise ImportError(
                f"logging.wandb needs wandb ({e}): pip install 'scigpt[tracking]'"
            ) from e
        if "run_id" not in self.state:
            self.state["run_id"] = wandb.util.generate_id()
            self._save()
        self.wb = wandb.init(
            project=project, name=run_name, id=self.state["run_id"], resume="allow",
            mode="offline", dir=str(run.path), config=config,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )  # fmt: skip

    def write(self, metrics: dict[str, float], step: int) -> None:
        if metrics:
            self.wb.log(metrics, step=step)

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        self.wb.finish(exit_code=0 if status == "completed" else 1)


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


class RunOutputs(Callback):
    """Rank 0, after the test: eval tables, the loss curve and a forecast map of the last test
    sample (``trainer.files`` lists them)."""

    def on_test_end(self, trainer: Trainer, test: dict[str, Any]) -> None:
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
