"""ProbConserve (scigpt/eval/conserve.py).

References: cases solved by hand below; the properties of the exact update (Gμ̃ = b, Σ̃Gᵀ = 0,
Σ̃v = Σv when GΣv = 0, Σ − Σ̃ ⪰ 0) on random problems (hypothesis); and a Monte-Carlo check that
(μ̃, Σ̃) is the Gaussian conditional of u given Gu = b (independent of the formula's algebra).
The whole file runs in about 3 s.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scigpt.eval.conserve import mass_constraint, probconserve


def test_hand_solved_two_cells() -> None:
    # μ = (1, 2), Σ = diag(1, 3), u1 + u2 = 5: Gμ − b = −2, GΣGᵀ = 4, ΣGᵀ = (1, 3)
    # μ̃ = μ + (1, 3)·2/4 = (1.5, 3.5); Σ̃ = Σ − (1, 3)(1, 3)ᵀ/4 = [[.75, −.75], [−.75, .75]]
    mu_t, var_t = probconserve([1.0, 2.0], [1.0, 3.0], [1.0, 1.0], 5.0)
    np.testing.assert_allclose(mu_t, [1.5, 3.5], rtol=1e-14)
    np.testing.assert_allclose(var_t, [0.75, 0.75], rtol=1e-14)
    _, cov = probconserve([1.0, 2.0], [1.0, 3.0], [1.0, 1.0], 5.0, full_cov=True)
    np.testing.assert_allclose(cov, [[0.75, -0.75], [-0.75, 0.75]], rtol=1e-14)
    # the same problem with the full covariance
    mu_f, cov_f = probconserve([1.0, 2.0], np.diag([1.0, 3.0]), [[1.0, 1.0]], [5.0])
    np.testing.assert_allclose(mu_f, [1.5, 3.5], rtol=1e-14)
    np.testing.assert_allclose(cov_f, cov, rtol=1e-14)


def test_hand_solved_three_cells_correlated() -> None:
    # Σ = [[2, 1, 0], [1, 2, 0], [0, 0, 1]], μ = (1, 1, 1), Σu = 0:
    # ΣGᵀ = (3, 3, 1), GΣGᵀ = 7, Gμ − b = 3 → μ̃ = μ − (3, 3, 1)·3/7 = (−2/7, −2/7, 4/7)
    # Σ̃ = Σ − (3, 3, 1)(3, 3, 1)ᵀ/7
    cov = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    mu_t, cov_t = probconserve(np.ones(3), cov, np.ones((1, 3)), np.zeros(1))
    np.testing.assert_allclose(mu_t, [-2 / 7, -2 / 7, 4 / 7], rtol=1e-14)
    c = np.array([3.0, 3.0, 1.0])
    np.testing.assert_allclose(cov_t, cov - np.outer(c, c) / 7, rtol=1e-14, atol=1e-15)
    # two constraints, diagonal Σ = diag(1, 2, 4): u1 = 0 and u2 + u3 = 3 from μ = (1, 1, 1)
    # row 1 touches only u1 → μ̃1 = 0; row 2: residual −1, GΣGᵀ = 6, ΣGᵀ = (0, 2, 4)
    # → μ̃2 = 1 + 2/6, μ̃3 = 1 + 4/6; variances 0, 2 − 4/6, 4 − 16/6
    mu_t, var_t = probconserve(
        np.ones(3), [1.0, 2.0, 4.0], [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [0.0, 3.0]
    )
    np.testing.assert_allclose(mu_t, [0.0, 4 / 3, 5 / 3], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(var_t, [0.0, 4 / 3, 4 / 3], rtol=1e-14, atol=1e-15)


@st.composite
def _problems(draw):
    n = draw(st.integers(2, 7))
    k = draw(st.integers(1, n - 1))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    cov = scale * (a @ a.T + 0.1 * np.eye(n))
    g = rng.normal(size=(k, n))
    return rng.normal(size=n), cov, g, rng.normal(size=k) * 10, rng


@settings(max_examples=60, deadline=None)
@given(_problems())
def test_probconserve_properties(problem) -> None:
    mu, cov, g, b, rng = problem
    assume(np.linalg.cond(g @ cov @ g.T) < 1e8)  # well-posed constraints only
    mu_t, cov_t = probconserve(mu, cov, g, b)
    # the constraint holds to 1e-6 relative
    scale = np.abs(g) @ np.abs(mu_t) + np.abs(b)
    assert np.all(np.abs(g @ mu_t - b) <= 1e-6 * scale)
    # no variance left along the constraint: Σ̃Gᵀ = 0
    norm = np.linalg.norm(cov) * np.linalg.norm(g)
    assert np.abs(cov_t @ g.T).max() <= 1e-9 * norm
    # Σ̃v = Σv for v with GΣv = 0 (v: a random vector projected onto the null space of GΣ)
    gs = g @ cov
    w = rng.normal(size=mu.size)
    v = w - gs.T @ np.linalg.solve(gs @ gs.T, gs @ w)
    assert np.abs(gs @ v).max() <= 1e-9 * np.linalg.norm(gs) * np.linalg.norm(v)
    np.testing.assert_allclose(cov_t @ v, cov @ v, atol=1e-9 * norm * np.linalg.norm(v))
    # Σ − Σ̃ is positive semi-definite
    eig = np.linalg.eigvalsh(cov - cov_t)
    assert eig.min() >= -1e-12 * max(1.0, np.linalg.norm(cov))
    # the diagonal path agrees with the full one on diagonal Σ
    d = np.diag(cov).copy()
    mu_d, var_d = probconserve(mu, d, g, b)
    mu_full, cov_full = probconserve(mu, np.diag(d), g, b)
    np.testing.assert_allclose(mu_d, mu_full, rtol=1e-9, atol=1e-9 * np.abs(mu_full).max())
    np.testing.assert_allclose(var_d, np.clip(np.diag(cov_full), 0, None), atol=1e-9 * d.max())


def test_is_the_gaussian_conditional() -> None:
    # Draw u ~ N(μ, Σ); conditioning on the observed constraint value Gu must leave residuals
    # u − μ̃(Gu) with covariance Σ̃ (and mean 0). Batched over the 40 000 draws.
    rng = np.random.default_rng(11)
    n, draws = 4, 40_000
    a = rng.normal(size=(n, n))
    cov = a @ a.T + 0.5 * np.eye(n)
    mu = rng.normal(size=n)
    g = np.array([[1.0, 1.0, 1.0, 1.0]])
    u = mu + rng.normal(size=(draws, n)) @ np.linalg.cholesky(cov).T
    batch_cov = np.broadcast_to(cov, (draws, n, n))
    mu_t, cov_t = probconserve(np.broadcast_to(mu, (draws, n)), batch_cov, g, u @ g.T)
    assert mu_t.shape == (draws, n) and cov_t.shape == (draws, n, n)
    resid = u - mu_t
    np.testing.assert_allclose(resid.mean(axis=0), 0.0, atol=0.05)
    np.testing.assert_allclose(np.cov(resid.T), cov_t[0], atol=0.05 * np.abs(cov).max())
    # the correction never increases the expected squared error: tr Σ̃ < tr Σ
    assert np.trace(cov_t[0]) < np.trace(cov)


def test_batched_equals_loop_and_errors() -> None:
    rng = np.random.default_rng(2)
    mu = rng.normal(size=(3, 5))
    var = rng.uniform(0.1, 2.0, size=(3, 5))
    g, b = mass_constraint((5,), 0.2, [1.0, 2.0, 3.0])
    assert g.shape == (1, 5) and b.shape == (3, 1)
    mu_t, var_t = probconserve(mu, var, g, b)
    for i in range(3):
        m_i, v_i = probconserve(mu[i], var[i], g, b[i])
        np.testing.assert_allclose(mu_t[i], m_i, rtol=1e-14)
        np.testing.assert_allclose(var_t[i], v_i, rtol=1e-14)
    np.testing.assert_allclose(0.2 * mu_t.sum(axis=1), [1.0, 2.0, 3.0], rtol=1e-12)
    with pytest.raises(ValueError, match="variance is 0"):
        probconserve(mu[0], np.zeros(5), g, 1.0)
    with pytest.raises(ValueError, match="full covariances"):
        probconserve(mu[0], np.ones(4), g, 1.0)
    with pytest.raises(ValueError, match="linearly dependent"):
        probconserve(mu[0], var[0], np.ones((2, 5)), [1.0, 1.0])
