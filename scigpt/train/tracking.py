"""Experiment trackers as metrics sinks: MLflow (``logging.mlflow``) and Weights & Biases
(``logging.wandb``), both kept inside the run directory.

- MLflow: a SQLite store per run, ``sqlite:///RUN_DIR/mlflow.db`` (MLflow 3 refuses plain
  ``file:`` stores; one database per run keeps a job array's runs off one shared SQLite file, on
  which they would contend). Read it with ``MlflowClient(tracking_uri=...)`` or
  ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db``.
- W&B: offline, under ``RUN_DIR/wandb`` (``WANDB_DIR``, ``WANDB_CACHE_DIR``,
  ``WANDB_CONFIG_DIR`` and ``WANDB_DATA_DIR`` inside the run directory too); upload with
  ``wandb sync RUN_DIR/wandb/offline-run-*``.

Every numeric field of a record becomes the metric ``kind/field`` at the record's step
(``train/loss``, ``val/rmse_model``, ``test/rmse_model`` …), as in metrics.jsonl. A resumed run
continues the same MLflow run and W&B run (their ids are in ``RUN_DIR/tracking.json``) with one
record per step: on start each sink reads which (kind, step) its tracker already holds, from the
tracker's own storage (MLflow's store; W&B's offline files, which a killed process may not have
flushed), then sends what metrics.jsonl holds beyond that, and later skips records its tracker
already has (an exact resume logs the same values again).

Both libraries are optional (the ``tracking`` extra) and imported only when a config turns
them on.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scigpt.atomic import atomic_write_text
from scigpt.config import RunConfig
from scigpt.rundir import RunDir
from scigpt.train.callbacks import Callback, JsonlMetrics, TensorBoardSink

if TYPE_CHECKING:
    from scigpt.train.trainer import Trainer

TRACKING_FILE = "tracking.json"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A record's finite numbers as ``kind/field`` (what metrics.jsonl holds as numbers)."""
    kind = record.get("kind", "train")
    return {
        f"{kind}/{k}": float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class TrackerSink(Callback):
    """A tracker run continued across resumes: its id in RUN_DIR/tracking.json under
    ``name``; ``held`` {kind: steps} is what the tracker already has."""

    name = ""

    def __init__(self, run: RunDir):
        self.run = run
        self.path = run.path / TRACKING_FILE
        self.run_id: str | None = self._read().get(self.name, {}).get("run_id")
        self.held: dict[str, set[int]] = {}

    def _read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _save_id(self, run_id: str) -> None:
        self.run_id = run_id
        whole = self._read()
        whole[self.name] = {"run_id": run_id}
        atomic_write_text(self.path, json.dumps(whole, indent=1, sort_keys=True) + "\n")

    def _hold(self, keys: Iterator[tuple[str, int]]) -> None:
        for key, step in keys:
            kind = key.split("/", 1)[0]
            self.held.setdefault(kind, set()).add(step)

    def on_train_start(self, trainer: Trainer) -> None:
        """Catch up with metrics.jsonl (what a killed segment logged but never sent here)."""
        for rec in self.run.metrics():
            self.on_log({k: v for k, v in rec.items() if k != "step"}, rec["step"])

    def on_log(self, record: dict[str, Any], step: int) -> None:
        kind = record.get("kind", "train")
        if step in self.held.get(kind, ()):
            return
        metrics = scalars(record)
        if metrics:
            self.write(metrics, step)
        self.held.setdefault(kind, set()).add(step)

    def write(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError


class MlflowSink(TrackerSink):
    """An MLflow run in ``sqlite:///RUN_DIR/mlflow.db`` (experiment: the config's name); the
    resolved config as its parameters."""

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
        self._metric = Metric
        self.uri = f"sqlite:///{run.path / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in sorted(_flat(config).items())]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i : i + 100])
            self._save_id(run_id)
        else:
            self.client.update_run(self.run_id, status="RUNNING")
            for key in self.client.get_run(self.run_id).data.metrics:
                hist = self.client.get_metric_history(self.run_id, key)
                self._hold((key, m.step) for m in hist)

    def write(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [self._metric(k, v, now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        final = {"completed": "FINISHED", "preempted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, status=final)


# W&B's offline run file (``run-ID.wandb``): a LevelDB-style log of wandb.proto ``Record``s.
# Header ":W&B", magic 0xBEE1, version 0; then 32 KiB blocks of chunks, each with a 7-byte
# header (CRC-32 uint32, length uint16, type uint8: 1 full, 2 first, 3 middle, 4 last).
_WANDB_HEADER, _BLOCK, _CHUNK = 7, 32768, 7


def wandb_records(path: Path) -> Iterator[bytes]:
    """The serialized records of an offline W&B run file, in order; a record cut by a kill
    ends the scan."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (no ':W&B' header)")
    pos, pending = _WANDB_HEADER, b""
    while pos + _CHUNK <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK:  # the block's zero-filled tail
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK])
        if kind == 0 or pos + _CHUNK + n > len(data):  # padding, or cut by a kill
            break
        chunk = data[pos + _CHUNK : pos + _CHUNK + n]
        pos += _CHUNK + n
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def wandb_history(run_dir: Path, run_id: str) -> list[dict[str, Any]]:
    """Every history row the offline W&B files of ``run_id`` under RUN_DIR/wandb hold, file
    by file in the order they were written: {key: value} with ``_step``."""
    from wandb.proto import wandb_internal_pb2  # optional: the tracking extra

    rows = []
    files = sorted(Path(run_dir, "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    for f in files:
        for raw in wandb_records(f):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(raw)
            if rec.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                        for item in rec.history.item
                    }
                )
    return rows


class WandbSink(TrackerSink):
    """A W&B run, offline, under RUN_DIR/wandb (project: the config's name); one history row
    per step holding that step's ``kind/field`` values."""

    name = "wandb"

    def __init__(self, run: RunDir, *, project: str, run_name: str, config: dict[str, Any]):
        super().__init__(run)
        root = run.path / "wandb"
        for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                         ("WANDB_DATA_DIR", "data")):  # fmt: skip
            (root / sub).mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(root / sub)
        os.environ["WANDB_DIR"] = str(run.path)  # W&B adds the wandb/ folder itself
        os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb  # optional: the tracking extra
        except ImportError as e:
            raise ImportError(
                f"logging.wandb needs wandb ({e}): pip install 'scigpt[tracking]'"
            ) from e
        if self.run_id is None:
            self._save_id(secrets.token_hex(4))  # W&B ids: [a-z0-9]
        else:
            for row in wandb_history(run.path, self.run_id):
                self._hold((k, int(row["_step"])) for k in row if not k.startswith("_"))
        self.wb = wandb.init(
            project=project, name=run_name, id=self.run_id, resume="allow", mode="offline",
            dir=str(run.path), config=config,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )  # fmt: skip

    def write(self, metrics: dict[str, float], step: int) -> None:
        self.wb.log(metrics, step=step)

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        self.wb.finish(exit_code=0 if status == "completed" else 1)


def metrics_sinks(
    cfg: RunConfig, run: RunDir, *, run_name: str, config: dict[str, Any], purge_step: int | None
) -> list[Callback]:
    """Rank 0's sinks: metrics.jsonl, and TensorBoard, MLflow and W&B as ``logging`` turns
    them on (``purge_step``: a resumed run's first step, for TensorBoard)."""
    sinks: list[Callback] = [JsonlMetrics(run.open_metrics())]
    if cfg.logging.tensorboard:
        sinks.append(TensorBoardSink(run.tb, purge_step=purge_step))
    if cfg.logging.mlflow:
        sinks.append(MlflowSink(run, experiment=cfg.name, run_name=run_name, config=config))
    if cfg.logging.wandb:
        sinks.append(WandbSink(run, project=cfg.name, run_name=run_name, config=config))
    return sinks
