"""Resumable, rank-elastic data order: which sample indices each data-parallel rank reads next.

The model is one **global stream** per epoch, cut into lock-step **global steps**:

* Epoch ``e`` has a global order ``perm = epoch_order(e)``: a permutation of
  ``range(num_samples)`` drawn from ``np.random.default_rng([seed, e])`` (or the identity when
  ``shuffle=False``). No global RNG state is read or changed.
* Every rank calls ``next_indices(n)`` once per step with the same ``n``, as data-parallel
  training does. One call consumes one global step of ``n * world_size`` samples of the stream;
  the ``j``-th sample of a step goes to rank ``j % world_size``, so rank ``r`` receives
  ``step[r::world_size]`` (exactly ``n`` indices). ``position`` counts the global samples of the
  current epoch consumed so far. All ranks hold the same ``(epoch, position)``: no communication
  is needed and any rank's :meth:`DistributedSampler.state_dict` is *the* checkpoint state.
* When fewer than ``n * world_size`` samples remain in the epoch, the ``policy`` decides. Either
  way every rank gets exactly ``n`` indices per call (no rank runs out early, so no collective
  hangs), and samples are only ever left out of an epoch when the caller chose ``"drop"``:

  - ``"pad"`` (default): the last step of the epoch is filled up with repeats taken from the
    start of the same epoch's order (``perm[0], perm[1], ...``, cycling if the step is longer
    than the epoch). Every sample appears at least once per epoch; the padding repeats are the
    only duplicates. An epoch lasts ``ceil(num_samples / (n * world_size))`` steps.
  - ``"drop"``: the epoch ends as soon as a step leaves fewer than ``n * world_size`` samples;
    that tail ``perm[position:]`` (fewer than one step) is skipped and the next step starts the
    next epoch. The skipped samples are not lost for good: each epoch draws a fresh order, so
    they sit elsewhere in other epochs' orders. An epoch lasts
    ``floor(num_samples / (n * world_size))`` steps; ``num_samples < n * world_size`` is an
    error (every step would be dropped), use ``"pad"``.

* ``n`` may change between calls (e.g. a new micro-batch size after resume): the rules above are
  applied per step, so each step is still disjoint from the rest of its epoch. The epoch lengths
  quoted above assume a constant ``n``; a "drop" tail is judged by the ``n`` of the step before
  it and again by the ``n`` of the step after it.
* **Resume**: :meth:`DistributedSampler.load_state_dict` restores ``(epoch, position)``; with the
  same world size the per-rank streams continue exactly as an uninterrupted run.
* **World-size change at resume**: ``load_state_dict(state, world_size=w2, rank=r2)`` deals the
  rest of the current epoch, ``perm[position:]``, over the ``w2`` ranks by the same rule (steps
  of ``n * w2``, counted from the resume point). Samples consumed before the resume are not
  seen again in that epoch (except as ``"pad"`` repeats) and none are skipped (except a
  ``"drop"`` tail shorter than one new step); later epochs are plain ``w2``-rank epochs.

Ranks are plain integers here, as everywhere in the data layer; nothing imports ``torch``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from typing import Any, Literal, get_args

import numpy as np

Policy = Literal["pad", "drop"]
_POLICIES: tuple[str, ...] = get_args(Policy)
STATE_KEYS = ("epoch", "position", "num_samples", "seed", "shuffle", "policy", "world_size")


def _as_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` (numpy integers accepted); bools and floats are refused."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__})"
        ) from None


def _check_layout(rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size ({world_size}) must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"rank ({rank}) must be in [0, world_size) = [0, {world_size}); pass this process's "
            "data-parallel rank, not its global rank"
        )


class DistributedSampler:
    """Disjoint, balanced, deterministic partition of range(num_samples) over ranks, resumable
    mid-epoch, and re-partitionable at resume with a different world size.

    Policy for an epoch whose remaining samples cannot fill a whole step of ``n * world_size``:
    ``"pad"`` fills the step with repeats from the start of the epoch's order (every sample at
    least once per epoch, ``ceil(N / (n * W))`` steps); ``"drop"`` skips that tail (it is seen in
    other epochs' orders, ``floor(N / (n * W))`` steps, needs ``N >= n * W``). See the module
    docstring for the full stream model.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        rank: int,
        world_size: int,
        seed: int = 0,
        shuffle: bool = True,
        policy: Policy = "pad",
    ) -> None:
        self.num_samples = _as_int("num_samples", num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples ({self.num_samples}) must be >= 1: the dataset is empty")
        self.seed = _as_int("seed", seed)
        if self.seed < 0:
            # SeedSequence refuses negative entropy; say so here rather than deep in numpy.
            raise ValueError(f"seed ({self.seed}) must be >= 0")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise ValueError(f"shuffle must be True or False, got {shuffle!r}")
        self.shuffle = bool(shuffle)
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {list(_POLICIES)}, got {policy!r}")
        self.policy: Policy = policy
        self.rank = _as_int("rank", rank)
        self.world_size = _as_int("world_size", world_size)
        _check_layout(self.rank, self.world_size)
        self._epoch = 0
        self._position = 0
        # One epoch's order is kept: every step of an epoch reads from it, and a permutation of
        # a large dataset costs far more than the slice each step takes.
        self._cached: tuple[int, np.ndarray] | None = None

    # --- order -------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The current epoch (the one the next step comes from, for a constant ``n``)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Global samples of the current epoch consumed so far (all ranks together)."""
        return self._position

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global order of ``epoch``: a permutation of ``range(num_samples)`` (int64, (N,)).

        Seeded by ``np.random.default_rng([seed, epoch])``, so it depends on nothing but
        ``(seed, epoch, num_samples)`` — not on the world size, the rank or the global RNG.
        """
        epoch = _as_int("epoch", epoch)
        if epoch < 0:
            raise ValueError(f"epoch ({epoch}) must be >= 0")
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1].copy()
        # Not cached: a caller peeking at other epochs must not evict the one being stepped.
        return self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return np.arange(self.num_samples, dtype=np.int64)

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            perm = self._permutation(epoch)
            perm.flags.writeable = False
            self._cached = (epoch, perm)
        return self._cached[1]

    # --- stepping ----------------------------------------------------------------------------

    def _step_size(self, n: int) -> int:
        n = _as_int("n", n)
        if n < 1:
            raise ValueError(f"n ({n}) must be >= 1 sample per rank per step")
        step = n * self.world_size
        if self.policy == "drop" and step > self.num_samples:
            raise ValueError(
                f"policy 'drop' needs num_samples ({self.num_samples}) >= n * world_size "
                f"({n} * {self.world_size} = {step}): every step would be dropped; use "
                "policy='pad' or a smaller n"
            )
        return step

    def _roll_over(self, step: int) -> None:
        """Start the next epoch once this one is used up: fully for "pad", or down to a tail
        shorter than ``step`` for "drop"."""
        remaining = self.num_samples - self._position
        if remaining == 0 or (self.policy == "drop" and remaining < step):
            self._epoch += 1
            self._position = 0

    def next_indices(self, n: int) -> np.ndarray:
        """This rank's next ``n`` sample indices (int64, (n,)); advances the global stream by
        ``n * world_size``. Every rank must call it in lock-step with the same ``n``."""
        step = self._step_size(n)
        # Again before the step: a larger n than last time, or a state saved under another
        # world size, may leave a "drop" tail too short for this step.
        self._roll_over(step)
        perm = self._order(self._epoch)
        start, stop = self._position, self._position + step
        if stop <= self.num_samples:
            global_step = perm[start:stop]
            self._position = stop
        else:
            # "pad": repeats from the start of this epoch's order; np.resize cycles perm when
            # the step is longer than the whole epoch (tiny datasets, large world sizes).
            pad = np.resize(perm, stop - self.num_samples)
            global_step = np.concatenate([perm[start:], pad])
            self._position = self.num_samples
        # Eagerly, so that with a constant n state_dict()["epoch"] counts finished epochs and
        # an old world size's "drop" tail is not re-dealt to a new one at resume.
        self._roll_over(step)
        return global_step[self.rank :: self.world_size].copy()  # (n,)

    def steps_per_epoch(self, n: int) -> int:
        """Steps in a whole epoch at this world size: ceil(N / (n·W)) for "pad",
        floor(N / (n·W)) for "drop"."""
        step = self._step_size(n)
        if self.policy == "pad":
            return -(-self.num_samples // step)
        return self.num_samples // step

    def steps_left_in_epoch(self, n: int) -> int:
        """Steps of ``n`` per rank left before the current epoch ends (0 only for a "drop"
        tail left too short by a call with a smaller n: the next call starts a new epoch)."""
        step = self._step_size(n)
        remaining = self.num_samples - self._position
        if self.policy == "pad":
            return -(-remaining // step)
        return remaining // step

    def epoch_batches(self, n: int) -> Iterator[np.ndarray]:
        """This rank's batches of ``n`` for the rest of the current epoch (a whole epoch when
        called at an epoch start), e.g. ``for epoch in ...: for idx in s.epoch_batches(n)``."""
        step = self._step_size(n)
        # A tail left pending by a smaller n must go first, or a loop over epochs would yield
        # nothing forever.
        self._roll_over(step)
        for _ in range(self.steps_left_in_epoch(n)):
            yield self.next_indices(n)

    # --- checkpoint --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The global stream position, identical on every rank (JSON-able; no rank inside)."""
        return {
            "epoch": self._epoch,
            "position": self._position,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "policy": self.policy,
            "world_size": self.world_size,
        }

    def load_state_dict(
        self,
        state: Mapping[str, Any],
        *,
        world_size: int | None = None,
        rank: int | None = None,
    ) -> None:
        """Continue from ``state``. Same world size: the exact per-rank streams of an uninterrupted
        run. ``world_size=w2, rank=r2``: the rest of the current epoch is re-dealt over ``w2``
        ranks (see the module docstring); a world-size change must be asked for explicitly."""
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(
                f"sampler state is missing {missing}; pass the dict from state_dict() "
                f"(keys {list(STATE_KEYS)})"
            )
        # The same (num_samples, seed, shuffle, policy) is what makes perm[position:] the same
        # samples as before; any change would silently re-show or skip part of the epoch.
        for key in ("num_samples", "seed", "shuffle", "policy"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]!r} but this sampler has "
                    f"{key}={getattr(self, key)!r}; build the sampler with {key}={state[key]!r} "
                    "to resume, or start a fresh sampler instead of loading this state"
                )
        epoch = _as_int("state['epoch']", state["epoch"])
        position = _as_int("state['position']", state["position"])
        saved_world = _as_int("state['world_size']", state["world_size"])
        if epoch < 0:
            raise ValueError(f"state['epoch'] ({epoch}) must be >= 0")
        if not 0 <= position < self.num_samples:
            raise ValueError(
                f"state['position'] ({position}) must be in [0, num_samples) = "
                f"[0, {self.num_samples}); the state is corrupt or from another dataset"
            )
        new_world = self.world_size if world_size is None else _as_int("world_size", world_size)
        new_rank = self.rank if rank is None else _as_int("rank", rank)
        if world_size is None and saved_world != self.world_size:
            raise ValueError(
                f"sampler state has world_size={saved_world} but this sampler has "
                f"world_size={self.world_size}; pass load_state_dict(state, "
                f"world_size={self.world_size}, rank=<this rank>) to re-deal the rest of the "
                f"epoch over {self.world_size} ranks"
            )
        _check_layout(new_rank, new_world)
        self.world_size, self.rank = new_world, new_rank
        self._epoch, self._position = epoch, position
