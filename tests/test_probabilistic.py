"""Probabilistic scores (scigpt/eval/probabilistic.py) against independent references.

CRPS: scoringrules' fair estimator (an independent implementation) to 1e-10, plus a hand-solved
pair. Spread–skill, rank histogram and ensemble diagnostics: hand-solved cases written out below,
and a sampling check that a reliable ensemble scores SSR ≈ 1 only with WB2's sqrt((M+1)/M).
The whole file runs in about 2 s.
"""

from __future__ import annotations

import numpy as np
import pytest
import scoringrules
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scigpt.eval import probabilistic as P


@pytest.mark.parametrize("member_axis", [0, 1, -1])
@pytest.mark.parametrize("m", [2, 5, 16])
def test_crps_equals_scoringrules_fair(member_axis: int, m: int) -> None:
    rng = np.random.default_rng(m)
    shape = [3, 4, 6]  # (N, H, W)-like; the member axis is inserted where asked
    ens_shape = list(shape)
    ens_shape.insert(member_axis if member_axis >= 0 else len(shape), m)
    ens = rng.normal(size=ens_shape) * rng.uniform(0.1, 3.0)
    obs = rng.normal(size=shape)
    ours = P.crps_ensemble(obs, ens, member_axis=member_axis)
    ref = scoringrules.crps_ensemble(obs, ens, m_axis=member_axis, estimator="fair")
    assert ours.shape == obs.shape
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=0, atol=1e-10)
    # The biased estimator ('nrg', properscoring's) differs: the test can tell them apart.
    biased = scoringrules.crps_ensemble(obs, ens, m_axis=member_axis, estimator="nrg")
    assert np.max(np.abs(np.asarray(biased) - ours)) > 1e-3


def test_crps_hand_solved_pair() -> None:
    # members {0, 2}, truth 1: skill (1 + 1)/2 = 1, Σ|x_i − x_j| = 4, fair: 1 − 4/(2·2·1) = 0
    # (the biased estimator would give 1 − 4/8 = 0.5).
    assert P.crps_ensemble(np.array([1.0]), np.array([[0.0], [2.0]]))[0] == pytest.approx(0.0)
    # truth outside: members {0, 2}, truth 5: skill (5 + 3)/2 = 4, minus 1 → 3
    assert P.crps_ensemble(np.array([5.0]), np.array([[0.0], [2.0]]))[0] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="at least 2 members"):
        P.crps_ensemble(np.array([1.0]), np.array([[0.0]]))


def test_spread_skill_hand_solved() -> None:
    # truth [0, 0]; members [1, 3] and [3, 1]: mean [2, 2] → RMSE 2; s² (ddof 1) = 2 at both
    # points → spread √2; SSR = sqrt(3/2)·√2/2 = √3/2.
    obs = np.zeros(2)
    ens = np.array([[1.0, 3.0], [3.0, 1.0]])
    assert P.ensemble_mean_rmse(obs, ens) == pytest.approx(2.0)
    assert P.ensemble_spread(obs, ens) == pytest.approx(np.sqrt(2.0))
    assert P.spread_skill_ratio(obs, ens) == pytest.approx(np.sqrt(3.0) / 2.0, rel=1e-12)
    assert P.spread_skill_ratio(obs, ens, correction=False) == pytest.approx(np.sqrt(2.0) / 2)
    # Weighted: truth [0, 1], members [1, 1] and [3, 1], weights [1, 3]: squared error of the
    # mean [4, 0] → ⟨·⟩ = 4/4 = 1; s² = [2, 0] → ⟨·⟩ = 2/4; SSR = sqrt(3/2)·sqrt(1/2)/1.
    obs = np.array([0.0, 1.0])
    ens = np.array([[1.0, 1.0], [3.0, 1.0]])
    w = np.array([1.0, 3.0])
    assert P.spread_skill_ratio(obs, ens, weights=w) == pytest.approx(np.sqrt(0.75), rel=1e-12)
    # member axis last, NaN truth left out
    obs_nan = np.array([0.0, 1.0, np.nan])
    ens_nan = np.array([[1.0, 3.0], [1.0, 1.0], [7.0, 9.0]])  # (points, members)
    assert P.spread_skill_ratio(obs_nan, ens_nan, member_axis=1, weights=[1, 3, 1]) == (
        pytest.approx(np.sqrt(0.75), rel=1e-12)
    )


def test_reliable_ensemble_has_ssr_one_only_with_the_factor() -> None:
    # Truth and 3 members exchangeable draws around a random centre: perfectly reliable.
    rng = np.random.default_rng(7)
    n, m = 200_000, 3
    centre = rng.normal(size=n)
    obs = centre + rng.normal(size=n)
    ens = centre[None] + rng.normal(size=(m, n))
    assert P.spread_skill_ratio(obs, ens) == pytest.approx(1.0, abs=0.01)
    # without sqrt((M+1)/M) = sqrt(4/3) the same ensemble looks over-confident (√(3/4) ≈ 0.866)
    assert P.spread_skill_ratio(obs, ens, correction=False) == pytest.approx(0.866, abs=0.01)


def test_rank_histogram_hand_solved() -> None:
    ens = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])  # 3 members, 3 points
    obs = np.array([2.5, 0.0, 5.0])  # ranks 2, 0, 3
    np.testing.assert_array_equal(P.rank_histogram(obs, ens), [1, 0, 1, 1])
    # NaN truth is skipped
    np.testing.assert_array_equal(P.rank_histogram(np.array([2.5, np.nan, 5.0]), ens), [0, 0, 1, 1])


def test_rank_histogram_breaks_ties_at_random() -> None:
    n = 40_000
    # members {1, 1, 1}, truth 1: the rank is uniform on {0, 1, 2, 3}
    f = P.rank_histogram(np.ones(n), np.ones((3, n)), rng=1) / n
    np.testing.assert_allclose(f, 0.25, atol=0.01)  # σ ≈ 0.002 per bin
    # members {0, 1, 1}, truth 1: one member below, two tied → uniform on {1, 2, 3}
    ens = np.stack([np.zeros(n), np.ones(n), np.ones(n)])
    f = P.rank_histogram(np.ones(n), ens, rng=np.random.default_rng(2)) / n
    np.testing.assert_allclose(f, [0.0, 1 / 3, 1 / 3, 1 / 3], atol=0.01)
    # reproducible by default
    np.testing.assert_array_equal(
        P.rank_histogram(np.ones(50), np.ones((3, 50))),
        P.rank_histogram(np.ones(50), np.ones((3, 50))),
    )


def test_ensemble_diagnostics_hand_solved() -> None:
    # truth 0, members 1 and 3: member MSEs 1, 9 → 5; mean 2 → 4; ambiguity 1 = ((1−2)² + (3−2)²)/2;
    # EIR 1/5; pairs (1−3)² = 4 → DER 4/5.
    d = P.ensemble_diagnostics(np.zeros(1), np.array([[1.0], [3.0]]))
    assert d == pytest.approx(
        {
            "avg_member_error": 5.0,
            "ensemble_error": 4.0,
            "ambiguity": 1.0,
            "improvement_rate": 0.2,
            "disagreement_error_ratio": 0.8,
        }
    )


@settings(max_examples=40, deadline=None)
@given(
    ens=arrays(np.float64, (4, 6), elements=st.floats(-1e3, 1e3)),
    obs=arrays(np.float64, (6,), elements=st.floats(-1e3, 1e3)),
)
def test_diagnostics_identities(ens: np.ndarray, obs: np.ndarray) -> None:
    assume(np.mean((ens - obs) ** 2) > 1e-6)  # all members exact: the ratios are undefined
    d = P.ensemble_diagnostics(obs, ens)
    # Krogh–Vedelsby: avg member error − ensemble error = ambiguity, and DER = 2M/(M−1)·EIR
    scale = d["avg_member_error"]
    assert d["avg_member_error"] - d["ensemble_error"] == pytest.approx(
        d["ambiguity"], abs=1e-9 * scale
    )
    assert 0.0 <= d["improvement_rate"] <= 1.0 + 1e-12
    assert d["disagreement_error_ratio"] == pytest.approx(8 / 3 * d["improvement_rate"])
    # the pairwise definition of the disagreement, directly
    pairs = [np.mean((ens[i] - ens[j]) ** 2) for i in range(4) for j in range(4) if i != j]
    assert np.mean(pairs) / scale == pytest.approx(d["disagreement_error_ratio"], abs=1e-9)


def test_probabilistic_scores_and_plot(tmp_path) -> None:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2, 1, 8, 8))  # (N, V, H, W) grid
    ens = rng.normal(size=(5, 2, 1, 8, 8))
    s = P.probabilistic_scores(obs, ens, weights=np.linspace(0.5, 1.5, 8)[:, None])
    assert set(s) >= {"crps", "spread_skill_ratio", "ensemble_mean_rmse", "improvement_rate"}
    path = P.plot_rank_histogram(P.rank_histogram(obs, ens), tmp_path / "rank.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="member_axis"):
        P.crps_ensemble(obs, ens, member_axis=1)
