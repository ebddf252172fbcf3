"""The resolution-convergence test (scigpt.eval.convergence): the known cases of issue 25 — a
model that is a consistent second-order discretisation converges at its order (fitted p within
±0.2 of 2), a model that memorised one grid plateaus — the verdict rules on synthetic
sequences, the fit against closed-form least squares (1e-12), a time-step study (forward Euler:
p within ±0.1 of 1) and a coarsening study. About 3 s without the command test."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline.ingest.pde_solvers import Coefficients, grid_coords, solve
from scigpt.eval import convergence as cv
from scigpt.eval.convergence_cases import (
    PDECase,
    coarsening_study,
    interpolate,
    level_reference,
    pde_study,
)


def _manufactured(n: int, kxx: float = 1.5, kyy: float = 0.5):
    """u = sin(πx) sin(2πy) on the unit square (zero on the boundary) and its source f for
    −∇·(K∇u) = f, at the interior nodes of an (n, n) Dirichlet grid."""
    x = grid_coords(n, "dirichlet")
    y, xx = np.meshgrid(x, x, indexing="ij")
    u = np.sin(np.pi * xx) * np.sin(2 * np.pi * y)
    return u, (kxx * np.pi**2 + kyy * 4 * np.pi**2) * u


def test_consistent_discretisation_converges_at_its_order(tmp_path):
    """The 5-point finite-difference solver as a 'model', scored against the exact solution
    (an independent reference): order 2 ± 0.2, verdict converges, R² > 0.99."""
    coeffs = Coefficients(kxx=1.5, kyy=0.5)
    res = cv.convergence_study(
        lambda _, n: solve(_manufactured(n)[1], coeffs, "dirichlet"),
        ["sin-sin"],
        [16, 32, 64, 128],
        lambda _, n: _manufactured(n)[0],
        spacing=lambda n: 1.0 / (n + 1),
    )
    assert res["verdict"] == "converges", res["reason"]
    assert abs(res["fit"]["p"] - 2.0) < 0.2
    assert res["fit"]["r2"] > 0.99 and res["fit"]["p_lo"] < res["fit"]["p"] < res["fit"]["p_hi"]
    assert all(abs(q - 2.0) < 0.2 for q in res["pairwise_orders"])
    files = cv.write_study(res, tmp_path)
    assert files["png"].stat().st_size > 1000
    assert files["csv"].read_text().splitlines()[0].startswith("level,h,error")


def test_generated_cases_converge_and_a_memorised_grid_plateaus():
    """The PDE generator's cases are resolution independent: its own solutions at 32…128
    converge to the Richardson fine reference at order 2 ± 0.2, for Dirichlet and periodic;
    the grid-32 solution interpolated to every level (a model that memorised one grid) plateaus."""
    for bc in ("dirichlet", "periodic"):
        cases = [PDECase("poisson", 1, i, bc) for i in range(2)]
        res = pde_study(level_reference, cases, [32, 64, 128])
        assert res["verdict"] == "converges" and abs(res["fit"]["p"] - 2.0) < 0.2, res
        memo = pde_study(lambda c, n: interpolate(level_reference(c, 32), c.bc, n), cases,
                         [32, 64, 128])  # fmt: skip
        assert memo["verdict"] == "plateaus", memo["reason"]
        assert memo["rows"][-1]["error"] > 0.5 * memo["rows"][0]["error"]


@pytest.mark.parametrize(
    "errors, expected",
    [
        ([1.0, 0.25, 0.0625, 0.015625], "converges"),
        ([1.0, 0.5, 0.45, 0.44], "plateaus"),
        ([1.0, 1.5, 3.0], "diverges"),
        ([1.0, 0.3, 0.5, 0.1], "inconclusive"),
        ([0.0, 0.0, 0.0], "exact"),
        ([1.0, 0.9], "plateaus"),
        ([1.0, 0.5], "converges"),
    ],
)
def test_verdict_on_synthetic_sequences(errors, expected):
    h = [2.0**-k for k in range(len(errors))]
    verdict, reason = cv.verdict(h, errors)
    assert verdict == expected, reason
    # the order of the pairs does not matter (sorted coarse → fine)
    assert cv.verdict(h[::-1], errors[::-1])[0] == expected


def test_fit_matches_closed_form_least_squares():
    """p, its standard error and R² equal the textbook formulas (1e-12)."""
    h = np.array([0.5, 0.25, 0.125, 0.0625, 0.03125])
    e = 3.0 * h**1.7 * np.array([1.1, 0.95, 1.02, 0.97, 1.01])
    x, y = np.log(h), np.log(e)
    sxx = ((x - x.mean()) ** 2).sum()
    p = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    resid = y - (y.mean() + p * (x - x.mean()))
    se = np.sqrt((resid**2).sum() / (len(h) - 2) / sxx)
    r2 = 1 - (resid**2).sum() / ((y - y.mean()) ** 2).sum()
    fit = cv.fit_order(h, e)
    assert fit["p"] == pytest.approx(p, abs=1e-12)
    assert fit["p_se"] == pytest.approx(se, abs=1e-12)
    assert fit["r2"] == pytest.approx(r2, abs=1e-12)
    with pytest.raises(ValueError, match="distinct positive"):
        cv.fit_order([0.1, 0.1], [1.0, 2.0])


def test_time_step_study_forward_euler():
    """(c) A forecast at several time steps: forward Euler on du/dt = −2u to t = 1 is first order
    (p within ±0.1 of 1)."""

    def euler(u0: float, dt: float) -> np.ndarray:
        u = u0
        for _ in range(round(1.0 / dt)):
            u = u + dt * (-2.0 * u)
        return np.array([[u]])

    res = cv.convergence_study(euler, [1.0, 0.5], [0.1, 0.05, 0.025, 0.0125],
                               lambda u0, _: np.array([[u0 * np.exp(-2.0)]]),
                               spacing=float)  # fmt: skip
    assert res["verdict"] == "converges" and abs(res["fit"]["p"] - 1.0) < 0.1, res


def test_coarsening_study():
    """(b) Reanalysis by conservative coarsening: a 3-point smoothing 'model' applied at each
    coarsening factor f has an error ∝ (f·h)² against the coarsened truth: order 2 ± 0.2 in f."""
    n = 256
    x = (np.arange(n) + 0.5) / n
    y, xx = np.meshgrid(x, x, indexing="ij")
    truth = np.sin(2 * np.pi * xx) * np.cos(2 * np.pi * y) + 0.5 * np.sin(4 * np.pi * y)

    def block_mean(a: np.ndarray, f: int) -> np.ndarray:
        return a.reshape(a.shape[0] // f, f, a.shape[1] // f, f).mean(axis=(1, 3))

    def smooth(a: np.ndarray) -> np.ndarray:
        return (np.roll(a, 1, 1) + a + np.roll(a, -1, 1)) / 3

    res = coarsening_study(smooth, [truth], [truth], [2, 4, 8, 16], block_mean)
    assert res["verdict"] == "converges" and abs(res["fit"]["p"] - 2.0) < 0.2, res
