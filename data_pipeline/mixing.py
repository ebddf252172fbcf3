"""Mix sources across micro-batches by weight: one source per micro-batch (DESIGN.md §7).

At step s every rank draws the same source from ``default_rng([seed, s])`` with the configured
weights (so all ranks agree without talking, at any world size), then takes its share of that
source's samples from the source's :class:`DistributedSampler`. Batches are lists of indices into
a :class:`MixedDataset` (the sources' datasets laid end to end), so a PyTorch ``DataLoader`` with
workers, pinned memory and prefetching consumes them as a ``batch_sampler``.

The batch sampler runs in the main process and remembers the loader state after each batch it
has handed out; ``state_dict(step)`` returns the state after ``step`` consumed batches, whatever
the DataLoader prefetched beyond it, so a checkpoint resumes the exact stream.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .sampler import DistributedSampler

_KEEP_STATES = 4096  # more than any prefetch depth


class MixingBatchSampler:
    """Deterministic, resumable stream of single-source micro-batches for one rank."""

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int = 0,
        shuffle: bool = True,
        policy: str = "pad",
        state: dict[str, Any] | None = None,
    ) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError(f"{len(sizes)} sources but {len(weights)} weights: give one each")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"mixing weights {list(weights)} must be >= 0 and not all 0")
        self.probs = w / w.sum()
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.samplers = [
            DistributedSampler(
                int(n), rank=rank, world_size=world_size, seed=seed + 1000003 * k,
                shuffle=shuffle, policy=policy,  # type: ignore[arg-type]
            )
            for k, n in enumerate(sizes)
        ]  # fmt: skip
        self.step = 0
        if state is not None:
            self._load(state, rank=rank, world_size=world_size)
        self._states: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._states[self.step] = self._snapshot()

    def source_at(self, step: int) -> int:
        """The source of micro-batch ``step``: the same on every rank and at any world size."""
        return int(np.random.default_rng([self.seed, step]).choice(len(self.probs), p=self.probs))

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            src = self.source_at(self.step)
            local = self.samplers[src].next_indices(self.batch_size)
            self.step += 1
            self._states[self.step] = self._snapshot()
            while len(self._states) > _KEEP_STATES:
                self._states.popitem(last=False)
            yield [int(i) for i in self.offsets[src] + local]

    def _snapshot(self) -> dict[str, Any]:
        return {"step": self.step, "samplers": [s.state_dict() for s in self.samplers]}

    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        """Loader state after ``step`` consumed batches (default: all handed out so far)."""
        step = self.step if step is None else step
        if step not in self._states:
            raise KeyError(
                f"no loader state for step {step}: kept steps {next(iter(self._states))}.."
                f"{self.step}; checkpoint within {_KEEP_STATES} batches of the prefetch"
            )
        return self._states[step]

    def _load(self, state: dict[str, Any], *, rank: int, world_size: int) -> None:
        if len(state["samplers"]) != len(self.samplers):
            raise ValueError(
                f"loader state has {len(state['samplers'])} sources, the config "
                f"{len(self.samplers)}: resume with the sources the run started with"
            )
        self.step = int(state["step"])
        for sampler, st in zip(self.samplers, state["samplers"], strict=True):
            sampler.load_state_dict(st, world_size=world_size, rank=rank)


class MixedDataset(torch.utils.data.Dataset):
    """Sources' datasets end to end; each item is tagged with its source index."""

    def __init__(self, datasets: Sequence[torch.utils.data.Dataset], collates: Sequence[Callable]):
        self.datasets = list(datasets)
        self.collates = list(collates)
        self.offsets = np.concatenate([[0], np.cumsum([len(d) for d in datasets])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> tuple[int, Any]:
        src = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return src, self.datasets[src][i - int(self.offsets[src])]

    def collate(self, items: Sequence[tuple[int, Any]]) -> dict[str, Any]:
        sources = {s for s, _ in items}
        if len(sources) != 1:
            raise ValueError(f"a micro-batch mixes sources {sorted(sources)}: one per batch")
        (src,) = sources
        batch = self.collates[src]([it for _, it in items])
        batch["source"] = src
        return batch
