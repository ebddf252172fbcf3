"""Checkpoints: atomic DeepSpeed saves, exact-resume state, retention, best tracking.

A save writes everything to ``checkpoints/.tmp-step_N/`` (DeepSpeed's model and optimizer shards,
one RNG file per rank), then rank 0 renames it to ``step_N/`` and only then rewrites ``latest``
(and ``best``) atomically. A kill at any moment leaves ``latest`` pointing at a complete
checkpoint; leftovers of an interrupted save are removed on the next start.

Loading reads only from the run directory, which is trusted (DESIGN.md §9): DeepSpeed's own
pickled files and our per-rank RNG files are ``torch.load``-ed from there and nowhere else.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from scigpt.atomic import atomic_write_text
from scigpt.parallel.reshard import checkpoint_layout, client_state

TMP_PREFIX = ".tmp-"
INFO_FILE = "scigpt.json"


def read_info(ckpt: Path) -> dict[str, Any] | None:
    """The checkpoint's ``scigpt.json`` (layout, step), or None for checkpoints without it."""
    p = Path(ckpt) / INFO_FILE
    return json.loads(p.read_text()) if p.is_file() else None


def tag_of(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.rsplit("_", 1)[1])


def capture_rng() -> dict[str, Any]:
    """Every RNG a training step can touch, for this rank."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


class CheckpointManager:
    """Save, retain and load checkpoints of one run. Every rank calls every method."""

    def __init__(
        self, root: Path, *, rank: int, world_size: int, keep_last: int, keep_every: int = 0
    ):
        self.root, self.rank, self.world = Path(root), rank, world_size
        self.keep_last, self.keep_every = keep_last, keep_every
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- state of the folder ------------------------------------------------------------------
    def _pointer(self, name: str) -> str | None:
        p = self.root / name
        if not p.is_file():
            return None
        tag = p.read_text().strip()
        return tag if (self.root / tag).is_dir() else None

    def latest(self) -> str | None:
        return self._pointer("latest")

    def best(self) -> str | None:
        return self._pointer("best")

    def tags(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step_")
        )

    def clean_interrupted(self) -> list[str]:
        """Remove leftovers of saves that were killed (rank 0); returns what was removed."""
        removed = []
        if self.rank == 0:
            for p in self.root.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        barrier(self.world)
        return removed

    # ---- save / load ------------------------------------------------------------------------
    def save(
        self,
        engine,
        step: int,
        client_state: dict[str, Any],
        *,
        best: bool = False,
        info: dict[str, Any] | None = None,
    ) -> Path:
        """Save atomically. ``info``: small JSON facts (the layout) written as ``scigpt.json``,
        readable without loading the tensors."""
        tag = tag_of(step)
        tmp = TMP_PREFIX + tag
        engine.save_checkpoint(
            str(self.root), tag=tmp, client_state=client_state, save_latest=False
        )
        torch.save(capture_rng(), self.root / tmp / f"rng_rank{self.rank:05d}.pt")
        if info is not None and self.rank == 0:
            atomic_write_text(self.root / tmp / INFO_FILE, json.dumps(info, indent=1) + "\n")
        barrier(self.world)
        if self.rank == 0:
            final = self.root / tag
            if final.exists():
                shutil.rmtree(final)
            (self.root / tmp).rename(final)
            atomic_write_text(self.root / "latest", tag)
            if best:
                atomic_write_text(self.root / "best", tag)
            self._prune()
        barrier(self.world)
        return self.root / tag

    def _prune(self) -> None:
        """Keep the last ``keep_last``, every ``keep_every``-th step, and the best."""
        tags = self.tags()
        keep = set(tags[-self.keep_last :])
        if self.keep_every:
            keep |= {t for t in tags if step_of(t) % self.keep_every == 0}
        keep |= {t for t in (self.latest(), self.best()) if t}
        for t in tags:
            if t not in keep:
                shutil.rmtree(self.root / t, ignore_errors=True)

    def load(self, engine, tag: str | None = None, *, restore_rng_state: bool = True) -> dict:
        """Load ``tag`` (default: latest) into ``engine``; returns the client state."""
        tag = tag or self.latest()
        if tag is None:
            raise FileNotFoundError(f"no checkpoint in {self.root} to resume from")
        _, client = engine.load_checkpoint(str(self.root), tag=tag)
        if client is None:
            raise RuntimeError(f"checkpoint {self.root / tag} could not be loaded by DeepSpeed")
        rng_file = self.root / tag / f"rng_rank{self.rank:05d}.pt"
        if restore_rng_state:
            if rng_file.is_file():
                # Trusted: inside this run's own directory (DESIGN.md §9).
                restore_rng(torch.load(rng_file, weights_only=False))
            elif client.get("world_size") == self.world:
                raise RuntimeError(f"{rng_file} is missing: the checkpoint is incomplete")
        return client


@dataclass
class CheckpointState:
    """The training state SciGPT saves beside DeepSpeed's (the checkpoint's client state): what
    a resume continues from and what export reads. Written as a plain dict with the keys below
    (``to_dict``); ``from_dict`` also reads checkpoints of older versions, whose missing keys
    take the defaults those versions implied."""

    config: dict[str, Any]  # the resolved run config
    step: int
    world_size: int
    loader: dict[str, Any] | None = None  # the data stream after the last consumed micro-batch
    variables: list[dict[str, Any]] = field(default_factory=list)  # the registry, in id order
    variable_stats: dict[str, list[float]] = field(default_factory=dict)  # name -> [mean, std]
    stats: dict[str, Any] = field(default_factory=dict)  # the first store's {"mean", "std"}
    source_stats: dict[str, Any] = field(default_factory=dict)
    heads: dict[str, Any] | None = None  # {"leads", "forecast_head", "pooled"}
    time_step_ns: int | None = None  # one step of the first grid source
    data_manifest_sha256: str | None = None
    best_val: float = math.inf
    skipped: int = 0  # non-finite steps skipped so far
    layout: dict[str, Any] | None = None  # Topology.to_dict() at save time

    def to_dict(self) -> dict[str, Any]:
        """The client-state dict, keys in the order 7c1cec6 wrote them."""
        return {
            "config": self.config,
            "step": self.step,
            "world_size": self.world_size,
            "variables": self.variables,
            "variable_stats": self.variable_stats,
            "stats": self.stats,
            "source_stats": self.source_stats,
            "heads": self.heads,
            "time_step_ns": self.time_step_ns,
            "data_manifest_sha256": self.data_manifest_sha256,
            "loader": self.loader,
            "best_val": self.best_val,
            "skipped": self.skipped,
            "layout": self.layout,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any], *, where: str = "checkpoint") -> CheckpointState:
        """Read a client-state dict (DeepSpeed's own keys beside it are ignored). Older
        checkpoints lack some keys: no ``heads`` (one forecast head at ``data.lead``), no
        ``variable_stats`` (statistics by source), no ``layout`` (inferred from the files by
        ``read``), no ``best_val``/``skipped``."""
        if "config" not in state:
            raise ValueError(f"{where}: the checkpoint holds no run config; it predates packages")
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in state.items() if k in names and v is not None}
        known.setdefault("step", -1)
        known.setdefault("world_size", 1)
        return cls(**known)

    @classmethod
    def read(cls, ckpt: str | Path) -> CheckpointState:
        """The state of the checkpoint folder ``ckpt`` (any layout), without DeepSpeed."""
        raw = client_state(ckpt)
        state = cls.from_dict(raw, where=str(ckpt))
        if state.layout is None:
            state.layout = checkpoint_layout(ckpt, raw).to_dict()
        return state


RESHARD_NOTE = (
    "weights, step, learning-rate schedule and data position continue exactly; the optimizer "
    "state (AdamW moments) restarts, and the per-rank RNG streams are reseeded. Resume at the "
    "saved layout to keep them."
)


def load_schedule(engine, ckpt: Path) -> CheckpointState:
    """Resuming ``ckpt`` at another layout, after its weights were loaded resharded: its
    learning-rate schedule and step counters into ``engine``; returns its state."""
    raw = client_state(ckpt)
    engine.lr_scheduler.load_state_dict(raw["lr_scheduler"])
    engine.global_steps = raw["global_steps"]
    engine.global_samples = raw["global_samples"]
    return CheckpointState.from_dict(raw, where=str(ckpt))
