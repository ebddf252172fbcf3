"""What one run holds across its ranks: the result, rank 0's run directory and segment, its
decisions broadcast to every rank, the preflight that opens the run directory, and preemption
by SIGUSR1."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from scigpt.config_loader import ConfigError, LoadedConfig, load_resolved
from scigpt.preflight import check_run
from scigpt.prepare import IngestRejected
from scigpt.rundir import RunDir, Segment, provenance
from scigpt.runlock import RunLocked, RunLockLost
from scigpt.train.series_run import primary_stats

if TYPE_CHECKING:
    from scigpt.train.trainer import Trainer


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
class Held:
    """What rank 0 holds while it trains: the run directory (and its lock), its segment."""

    run: RunDir | None = None
    segment: Segment | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(
    batch: dict[str, Any], device: torch.device, non_blocking: bool = False
) -> dict[str, Any]:
    return {
        k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
        for k, v in batch.items()
    }


class Preemption:
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

    def stop_here(
        self, step: int, lock, *, writes: bool, world: int, device: torch.device, run: Path
    ) -> bool:
        """Whether every rank stops at this step (SIGUSR1); raises ``RunLockLost`` when rank 0
        lost the run directory's lock (another process took it over: write nothing more).
        Rank 0 (``lock``: its run lock, None elsewhere) re-reads the lock before the steps
        that write; its heartbeat checks it in between."""
        lost = lock is not None and (lock.lost or (writes and not lock.verify()))
        stop, lost = self.agreed(world, device, lock_lost=lost)
        if lost:
            raise RunLockLost(
                f"rank 0 lost the lock of {run} at step {step}: another process took the run "
                "directory over; this job stops without writing"
            )
        return stop

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)


def test_nan_steps() -> set[int]:
    """Fault injection for the numerical-guard tests: SCIGPT_TEST_NAN_STEPS="5,6" turns those
    steps' inputs into NaN. Unset in normal runs."""
    raw = os.environ.get("SCIGPT_TEST_NAN_STEPS", "")
    return {int(x) for x in raw.split(",") if x.strip()}


def on_rank0(fn, *, is_main: bool, world: int):
    """Run ``fn`` on rank 0 only; every rank returns its result, or raises what it raised (a
    refusal on rank 0 stops every rank cleanly instead of leaving them in a collective)."""
    out: tuple[str, Any] = ("ok", None)
    if is_main:
        try:
            out = ("ok", fn())
        except (
            ConfigError,
            RunLocked,
            ValueError,
            OSError,
            IngestRejected,
        ) as e:  # PackageError too
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


def open_run(
    loaded: LoadedConfig, run: RunDir, resolved: dict[str, Any], *, resume: bool,
    break_lock: bool, target, package_config: dict | None, held: Held,
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
    run.check_same_config(resolved, saved=saved_config(run))
    test = run.finished(cfg.schedule.steps)
    return {"resuming": True, "finished": test}


def saved_config(run: RunDir) -> dict[str, Any]:
    """The run's config.yaml as the current schema reads it, for the resume check. A run written
    before a key existed lacks it; the key then takes its default, chosen to keep what the older
    code did, so resuming with the run's own config.yaml is not refused over it. Since 7c47fe5
    (tests/data/legacy_7c47fe5): data.sources[].units (None: the files' own units),
    unit_timeout_s (only bounds a hung read), plausibility ("reject": the same data, or a refusal
    naming the value), the selection block (read by ``scigpt demo --select`` only),
    logging.mlflow/wandb (off). A stored config the current schema refuses is compared as
    written, so the error still names the keys that differ."""
    saved = run.read_config()
    try:
        return load_resolved(saved, str(run.config_path)).resolved_dict()
    except ConfigError:
        return saved


def write_provenance(
    run: RunDir, *, resuming: bool, start_step: int, data_manifest_sha256: str,
    hosts: list[str], extra: dict[str, Any],
) -> None:  # fmt: skip
    """Rank 0: provenance.json; a resumed run keeps its original one and appends a record of
    each restart (Slurm requeues too)."""
    prov = provenance(data_manifest_sha256=data_manifest_sha256, hosts=hosts, extra=extra)
    if resuming and (run.path / "provenance.json").is_file():
        first = json.loads((run.path / "provenance.json").read_text())
        first.setdefault("restarts", []).append(
            {
                "utc": prov["created_utc"],
                "step": start_step,
                "git": prov["git"],
                "world_size": extra["world_size"],
                "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
            }
        )
        prov = first
    run.write_json("provenance.json", prov)


def describe_run(t: Trainer) -> None:
    """Rank 0: the run's provenance.json and its one-line summary."""
    # ZeRO-3 partitions parameters: ds_numel is the full size, ds_tensor this rank's share.
    n_local = sum(
        p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in t.model.parameters()
    )
    write_provenance(
        t.run, resuming=t.resuming, start_step=t.start_step,
        data_manifest_sha256=primary_stats(t.data)["data_manifest_sha256"],
        hosts=[t.info.master_addr],
        extra={
            "world_size": t.world, "topology": t.topo.describe(),
            "launcher": t.info.launcher, "n_params": t.n_params,
            "params_local_fraction": n_local / t.n_params, "store": str(t.store_dir),
        },
    )  # fmt: skip
    print(
        f"run {t.name}: {t.n_params / 1e6:.2f}M parameters, "
        f"{'+'.join(str(len(d)) for d in t.data.train_dss)} train / "
        f"{len(t.data.test_ds)} test samples, {t.n_tokens} tokens/sample, "
        f"{t.topo.describe()}",
        flush=True,
    )
