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
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scigpt.atomic import atomic_write_text

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
        import torch.distributed as dist

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
