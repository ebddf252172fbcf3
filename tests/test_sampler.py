"""DistributedSampler: partition, policies, determinism, exact resume, world-size change.

The checks do not trust the sampler's own bookkeeping: each rank group's output is re-assembled
into the global stream (sample j of a step from rank j % W), and compared against the epoch
order drawn directly with ``np.random.default_rng([seed, epoch])``, an epoch-level reference
stream written from the policy text, and an uninterrupted run (for resume).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scigpt.data_pipeline.sampler import DistributedSampler

# Derandomized and without an example database: the same examples on every run and machine
# (no flaky reruns, no .hypothesis/ folder in the checkout); budgets keep the file to seconds.
FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None)

sizes = st.integers(1, 64)
worlds = st.integers(1, 8)
batches = st.integers(1, 4)
policies = st.sampled_from(["pad", "drop"])
seeds = st.integers(0, 2**32 - 1)


def _perm(n_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch order as the spec defines it, drawn here independently of the sampler."""
    return np.random.default_rng([seed, epoch]).permutation(n_samples)


def _group(n_samples: int, world: int, **kw) -> list[DistributedSampler]:
    return [DistributedSampler(n_samples, rank=r, world_size=world, **kw) for r in range(world)]


def _step(group: list[DistributedSampler], n: int) -> list[int]:
    """One lock-step call on every rank, re-assembled into the global step."""
    parts = [s.next_indices(n) for s in group]
    for p in parts:
        assert p.shape == (n,) and p.dtype == np.int64  # balance: every rank gets exactly n
    world = len(group)
    return [int(parts[j % world][j // world]) for j in range(n * world)]


def _steps_per_epoch(n_samples: int, step: int, policy: str) -> int:
    return math.ceil(n_samples / step) if policy == "pad" else n_samples // step


def _check_epoch(stream: list[int], perm: np.ndarray, policy: str, step: int) -> None:
    """One epoch's global stream against the policy text."""
    n_samples = len(perm)
    if policy == "pad":
        # Every sample once, in the epoch's order, then repeats from the start of that order.
        assert stream[:n_samples] == perm.tolist()
        pad = stream[n_samples:]
        assert pad == np.resize(perm, len(pad)).tolist()
        assert len(pad) < step  # at most one partial step is padded
    else:
        # All distinct, a prefix of the order; only a tail shorter than one step is skipped.
        assert stream == perm[: len(stream)].tolist()
        assert len(set(stream)) == len(stream)
        assert 0 <= n_samples - len(stream) < step


def _reference_streams(
    n_samples: int, world: int, n: int, steps: int, *, seed: int, policy: str, epoch: int = 0
) -> list[list[list[int]]]:
    """Per-rank batches [rank][step] built epoch by epoch from the policy text (constant n)."""
    step = n * world
    out: list[list[list[int]]] = [[] for _ in range(world)]
    while len(out[0]) < steps:
        perm = _perm(n_samples, seed, epoch).tolist()
        k = _steps_per_epoch(n_samples, step, policy)
        stream = (perm + list(itertools.islice(itertools.cycle(perm), k * step)))[: k * step]
        for s in range(k):
            chunk = stream[s * step : (s + 1) * step]
            for r in range(world):
                out[r].append(chunk[r::world])
        epoch += 1
    return [rank[:steps] for rank in out]


# --- partition, coverage, balance, policies -----------------------------------------------------


@FAST
@given(n_samples=sizes, world=worlds, n=batches, policy=policies, seed=seeds)
def test_epochs_partition_and_cover(n_samples, world, n, policy, seed):
    assume(policy == "pad" or n_samples >= n * world)  # else refused: see the drop test below
    group = _group(n_samples, world, seed=seed, policy=policy)
    k = _steps_per_epoch(n_samples, n * world, policy)
    for epoch in range(2):
        stream = [i for _ in range(k) for i in _step(group, n)]
        perm = _perm(n_samples, seed, epoch)
        assert group[0].epoch_order(epoch).tolist() == perm.tolist()
        _check_epoch(stream, perm, policy, n * world)
        if policy == "pad":
            assert set(stream) == set(range(n_samples))  # coverage
            assert all(s.state_dict()["epoch"] == epoch + 1 for s in group)
        assert group[0].steps_per_epoch(n) == k


@FAST
@given(n_samples=sizes, world=worlds, n=batches, policy=policies, seed=seeds,
       steps=st.integers(1, 40))  # fmt: skip
def test_matches_epoch_level_reference(n_samples, world, n, policy, seed, steps):
    assume(policy == "pad" or n_samples >= n * world)
    group = _group(n_samples, world, seed=seed, policy=policy)
    got = [[s.next_indices(n).tolist() for _ in range(steps)] for s in group]
    want = _reference_streams(n_samples, world, n, steps, seed=seed, policy=policy)
    assert got == want


@FAST
@given(
    n_samples=sizes,
    world=worlds,
    ns=st.lists(batches, min_size=1, max_size=40),
    policy=policies,
    seed=seeds,
)
def test_varying_n_keeps_each_epoch_disjoint(n_samples, world, ns, policy, seed):
    if policy == "drop":
        ns = [n for n in ns if n * world <= n_samples]
        assume(ns)  # every step size of the draw is refused: nothing to check
    group = _group(n_samples, world, seed=seed, policy=policy)
    by_epoch: dict[int, list[int]] = {}
    for n in ns:
        stream = _step(group, n)
        state = group[0].state_dict()
        assert all(s.state_dict() == state for s in group)  # ranks agree without talking
        epoch = state["epoch"] - (state["position"] == 0)  # a finished epoch rolls over
        assert epoch >= max(by_epoch, default=0)
        by_epoch.setdefault(epoch, []).extend(stream)
    for epoch, stream in by_epoch.items():
        perm = _perm(n_samples, seed, epoch)
        if policy == "pad":
            head = stream[:n_samples]
            assert head == perm[: len(head)].tolist()
            pad = stream[n_samples:]
            assert pad == np.resize(perm, len(pad)).tolist()
        else:
            assert stream == perm[: len(stream)].tolist()


def test_pad_when_step_exceeds_epoch():
    """3 samples over 4 ranks x 2: one step pads 5 repeats, cycling the epoch order."""
    group = _group(3, 4, seed=7, policy="pad")
    stream = _step(group, 2)
    perm = _perm(3, 7, 0).tolist()
    assert stream == perm + perm + perm[:2]
    assert group[0].state_dict()["epoch"] == 1


def test_drop_refuses_epoch_shorter_than_a_step():
    s = DistributedSampler(5, rank=0, world_size=4, policy="drop")
    with pytest.raises(ValueError, match=r"num_samples \(5\).*2 \* 4 = 8.*policy='pad'"):
        s.next_indices(2)
    assert s.next_indices(1).shape == (1,)  # a step that fits is still fine


def test_epoch_batches_cover_whole_epochs():
    for policy, k in (("pad", 4), ("drop", 3)):  # 10 samples, steps of 3
        s = DistributedSampler(10, rank=1, world_size=3, policy=policy, seed=3)
        for epoch in range(3):
            got = list(s.epoch_batches(1))
            assert len(got) == k == s.steps_per_epoch(1)
            assert [int(b[0]) for b in got] == np.resize(_perm(10, 3, epoch), 3 * k)[1::3].tolist()


# --- determinism --------------------------------------------------------------------------------


@FAST
@given(n_samples=st.integers(20, 200), world=worlds, n=batches, seed=st.integers(0, 1000))
def test_deterministic_and_seed_epoch_dependent(n_samples, world, n, seed):
    a, b = (
        DistributedSampler(n_samples, rank=world - 1, world_size=world, seed=seed) for _ in "ab"
    )
    assert [a.next_indices(n).tolist() for _ in range(5)] == [
        b.next_indices(n).tolist() for _ in range(5)
    ]
    # 20! orders: a collision between these seeds or epochs would be astronomically unlikely.
    other = DistributedSampler(n_samples, rank=0, world_size=world, seed=seed + 1)
    assert a.epoch_order(0).tolist() != other.epoch_order(0).tolist()
    assert a.epoch_order(0).tolist() != a.epoch_order(1).tolist()


@pytest.mark.parametrize("n_samples", [3, 4, 5])
def test_small_datasets_still_reshuffle(n_samples):
    s = DistributedSampler(n_samples, rank=0, world_size=1, seed=0)
    assert len({tuple(s.epoch_order(e)) for e in range(10)}) > 1
    seeded = [DistributedSampler(n_samples, rank=0, world_size=1, seed=k) for k in range(10)]
    assert len({tuple(t.epoch_order(0)) for t in seeded}) > 1


def test_no_shuffle_and_no_global_rng():
    s = DistributedSampler(7, rank=0, world_size=1, shuffle=False)
    assert s.epoch_order(5).tolist() == list(range(7))
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    t = DistributedSampler(50, rank=0, world_size=2, seed=1)
    first = [t.next_indices(3).tolist() for _ in range(20)]
    assert (np.random.get_state()[1] == before).all()  # global RNG untouched
    np.random.seed(123)
    t2 = DistributedSampler(50, rank=0, world_size=2, seed=1)
    assert [t2.next_indices(3).tolist() for _ in range(20)] == first


# --- exact resume -------------------------------------------------------------------------------


@FAST
@given(
    n_samples=sizes,
    world=worlds,
    n=batches,
    policy=policies,
    seed=seeds,
    stop=st.integers(0, 30),
    more=st.integers(1, 30),
)
def test_resume_continues_uninterrupted_stream(n_samples, world, n, policy, seed, stop, more):
    assume(policy == "pad" or n_samples >= n * world)  # drop refuses an epoch shorter than a step
    whole = _group(n_samples, world, seed=seed, policy=policy)
    want = [[s.next_indices(n).tolist() for _ in range(stop + more)] for s in whole]
    first = _group(n_samples, world, seed=seed, policy=policy)
    for s in first:
        for _ in range(stop):
            s.next_indices(n)
    state = json.loads(json.dumps(first[0].state_dict()))  # as a checkpoint would store it
    resumed = _group(n_samples, world, seed=seed, policy=policy)
    for s in resumed:
        s.load_state_dict(state)
    got = [[s.next_indices(n).tolist() for _ in range(more)] for s in resumed]
    assert got == [w[stop:] for w in want]


@pytest.mark.parametrize("policy", ["pad", "drop"])
@pytest.mark.parametrize("stop", [2, 3, 4])  # 10 samples, 3 ranks x 1: epoch boundary at 3 or 4
def test_resume_around_epoch_boundary(policy, stop):
    whole = DistributedSampler(10, rank=2, world_size=3, seed=11, policy=policy)
    want = [whole.next_indices(1).tolist() for _ in range(12)]
    s = DistributedSampler(10, rank=2, world_size=3, seed=11, policy=policy)
    for _ in range(stop):
        s.next_indices(1)
    r = DistributedSampler(10, rank=2, world_size=3, seed=11, policy=policy)
    r.load_state_dict(s.state_dict())
    assert [r.next_indices(1).tolist() for _ in range(12 - stop)] == want[stop:]


# --- world-size change at resume ----------------------------------------------------------------


def _resize_run(n_samples, w1, w2, n, policy, seed, k, *, rebuild):
    """k steps on w1 ranks in epoch 1, resume on w2 ranks to the end of epoch 1; returns the
    epoch's global stream and the w2 group."""
    old = _group(n_samples, w1, seed=seed, policy=policy)
    for _ in range(_steps_per_epoch(n_samples, n * w1, policy)):
        _step(old, n)  # finish epoch 0 so the resized epoch is not the first
    before = [i for _ in range(k) for i in _step(old, n)]
    state = json.loads(json.dumps(old[0].state_dict()))
    assert state["epoch"] == 1 and state["world_size"] == w1
    if rebuild:  # the new job builds its own samplers
        new = _group(n_samples, w2, seed=seed, policy=policy)
    else:  # a sampler built with the old layout is moved to the new one
        new = [DistributedSampler(n_samples, rank=0, world_size=w1, seed=seed, policy=policy)
               for _ in range(w2)]  # fmt: skip
    for r, s in enumerate(new):
        s.load_state_dict(state, world_size=w2, rank=r)
    left = _steps_per_epoch(n_samples - k * n * w1, n * w2, policy)
    assert new[0].steps_left_in_epoch(n) == left
    after = [i for _ in range(left) for i in _step(new, n)]
    return before + after, new


@FAST
@given(
    n_samples=sizes,
    w1=worlds,
    w2=worlds,
    n=batches,
    policy=policies,
    seed=seeds,
    frac=st.floats(0, 1, exclude_max=True),
)
def test_world_size_change_sees_each_sample_once(n_samples, w1, w2, n, policy, seed, frac):
    assume(policy == "pad" or n_samples >= n * max(w1, w2))  # drop refuses a short epoch
    k = int(frac * _steps_per_epoch(n_samples, n * w1, policy))
    stream, new = _resize_run(n_samples, w1, w2, n, policy, seed, k, rebuild=True)
    # Nothing seen twice (pad repeats aside), nothing skipped (a short drop tail aside).
    _check_epoch(stream, _perm(n_samples, seed, 1), policy, n * w2)
    if policy == "pad":
        assert all(s.state_dict()["epoch"] == 2 for s in new)
    # Later epochs are plain w2-rank epochs (a pending drop tail is skipped by the next call).
    steps = _steps_per_epoch(n_samples, n * w2, policy)
    got = [[s.next_indices(n).tolist() for _ in range(steps)] for s in new]
    assert got == _reference_streams(n_samples, w2, n, steps, seed=seed, policy=policy, epoch=2)
    # Deterministic: rerun from scratch, moving old-layout samplers instead of building new ones.
    assert _resize_run(n_samples, w1, w2, n, policy, seed, k, rebuild=False)[0] == stream


@pytest.mark.parametrize("policy", ["pad", "drop"])
@pytest.mark.parametrize(("w1", "w2"), [(4, 3), (2, 5), (5, 2), (3, 1)])
def test_world_size_change_cases(w1, w2, policy):
    n_samples, n, seed = 47, 2, 5
    for k in range(_steps_per_epoch(n_samples, n * w1, policy)):
        for rebuild in (True, False):
            stream = _resize_run(n_samples, w1, w2, n, policy, seed, k, rebuild=rebuild)[0]
            _check_epoch(stream, _perm(n_samples, seed, 1), policy, n * w2)
            if policy == "pad":
                assert set(stream) == set(range(n_samples))


def test_resize_must_be_explicit():
    old = DistributedSampler(20, rank=0, world_size=4)
    old.next_indices(2)
    new = DistributedSampler(20, rank=1, world_size=3)
    with pytest.raises(ValueError, match=r"world_size=4.*world_size=3.*world_size=3, rank="):
        new.load_state_dict(old.state_dict())
    new.load_state_dict(old.state_dict(), world_size=3, rank=1)
    assert new.state_dict()["world_size"] == 3 and new.state_dict()["position"] == 8


# --- state and validation -----------------------------------------------------------------------


def test_state_dict_is_json():
    s = DistributedSampler(np.int64(30), rank=np.int32(1), world_size=2, seed=9, policy="drop")
    for _ in range(4):
        s.next_indices(np.int64(3))
    state = s.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert state == {
        "epoch": 0,
        "position": 24,
        "num_samples": 30,
        "seed": 9,
        "shuffle": True,
        "policy": "drop",
        "world_size": 2,
    }
    assert all(type(v) in (int, bool, str) for v in state.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, r"num_samples \(0\) must be >= 1"),
        ({"num_samples": 2.5}, r"num_samples must be an integer"),
        ({"world_size": 0, "rank": 0}, r"world_size \(0\) must be >= 1"),
        ({"rank": 4}, r"rank \(4\) must be in \[0, world_size\) = \[0, 4\)"),
        ({"rank": -1}, r"rank \(-1\)"),
        ({"rank": True}, r"rank must be an integer"),
        ({"seed": -3}, r"seed \(-3\) must be >= 0"),
        ({"policy": "wrap"}, r"policy must be one of \['pad', 'drop'\], got 'wrap'"),
        ({"shuffle": "yes"}, r"shuffle must be True or False"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, match):
    args = {"num_samples": 10, "rank": 0, "world_size": 4} | kwargs
    n_samples = args.pop("num_samples")
    with pytest.raises(ValueError, match=match):
        DistributedSampler(n_samples, **args)


def test_bad_calls_and_states_name_the_field():
    s = DistributedSampler(10, rank=0, world_size=2, seed=1)
    with pytest.raises(ValueError, match=r"n \(0\) must be >= 1"):
        s.next_indices(0)
    with pytest.raises(ValueError, match=r"epoch \(-1\) must be >= 0"):
        s.epoch_order(-1)
    good = s.state_dict()
    cases = [
        (
            {"num_samples": 11},
            r"num_samples=11 but this sampler has num_samples=10.*num_samples=11",
        ),
        ({"seed": 2}, r"seed=2 but this sampler has seed=1"),
        ({"shuffle": False}, r"shuffle=False but this sampler has shuffle=True"),
        ({"policy": "drop"}, r"policy='drop' but this sampler has policy='pad'"),
        ({"position": 10}, r"state\['position'\] \(10\) must be in \[0, num_samples\)"),
        ({"epoch": -2}, r"state\['epoch'\] \(-2\) must be >= 0"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            s.load_state_dict(good | change)
    with pytest.raises(ValueError, match=r"missing \['seed'\]"):
        s.load_state_dict({k: v for k, v in good.items() if k != "seed"})
    with pytest.raises(ValueError, match=r"rank \(3\) must be in \[0, world_size\) = \[0, 3\)"):
        s.load_state_dict(good, world_size=3, rank=3)
    assert s.state_dict() == good  # a refused state leaves the sampler as it was
