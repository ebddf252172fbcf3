"""The resolution-convergence test (scigpt.eval.convergence): the known cases of issue 25 — a
model that is a consistent second-order discretisation converges at its order (fitted p within
±0.2 of 2), a model that memorised one grid plateaus — the verdict rules on synthetic
sequences, the fit against closed-form least squares (1e-12), a time-step study (forward Euler:
p within ±0.1 of 1) and a coarsening study. About 3 s without the command test."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline.coarsen import coarsen
from data_pipeline.ingest.pde_solvers import Coefficients, grid_coords, solve
from scigpt.eval import convergence as cv
from scigpt.eval.convergence_cases import (
    PDECase,
    cases_from_config,
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
    """(b) Reanalysis by conservative coarsening (data_pipeline.coarsen): a 3-point smoothing
    'model' applied at each coarsening factor f has an error ∝ (f·h)² against the coarsened
    truth: order 2 ± 0.2 in f."""
    n = 256
    x = (np.arange(n) + 0.5) / n
    y, xx = np.meshgrid(x, x, indexing="ij")
    truth = np.sin(2 * np.pi * xx) * np.cos(2 * np.pi * y) + 0.5 * np.sin(4 * np.pi * y)

    def smooth(a: np.ndarray) -> np.ndarray:
        return (np.roll(a, 1, 1) + a + np.roll(a, -1, 1)) / 3

    res = coarsening_study(smooth, [truth], [truth], [2, 4, 8, 16], coarsen)
    assert res["verdict"] == "converges" and abs(res["fit"]["p"] - 2.0) < 0.2, res


def test_cases_from_config_needs_an_operator_pde_source():
    """The test samples of the run's PDE source (pseudo-hour indices), and clear refusals."""
    test = {"start": "2000-01-01T20:00:00", "end": "2000-01-02T03:00:00"}
    cfg = {"data": {"task": "operator", "operator_outputs": ["pde_u"], "splits": {"test": test},
                    "sources": [{"name": "h", "format": "pde",
                                 "options": {"family": "helmholtz", "n_samples": 24, "grid": 16,
                                             "seed": 3, "omega": [1.0, 5.0]}}]}}  # fmt: skip
    cases, src = cases_from_config(cfg, n_cases=8)
    assert [c.index for c in cases] == [20, 21, 22, 23] and src["name"] == "h"
    assert cases[0].options == (("omega", (1.0, 5.0)),) and cases[0].seed == 3
    with pytest.raises(ValueError, match="operator"):
        cases_from_config({"data": {"task": "forecast"}})
    with pytest.raises(ValueError, match="--source"):
        cases_from_config(cfg, source="nope")


TINY_OPERATOR = """\
name: tiny-helmholtz
seed: 0
data:
  sources:
    - name: helmholtz
      format: pde
      options: {family: helmholtz, n_samples: 24, grid: 16, seed: 3}
      samples_per_unit: 24
  splits:
    train: {start: "2000-01-01T00:00", end: "2000-01-01T19:00"}
    test: {start: "2000-01-01T20:00", end: "2000-01-01T23:00"}
  task: operator
  operator_outputs: [pde_u]
  history: 1
model: {preset: vit-tiny, residual: true}
parallel: {zero_stage: 1}
optim: {lr: 1.0e-3}
schedule: {steps: 4, warmup_steps: 1, micro_batch_size: 8}
logging: {every: 2, tensorboard: false, progress: false}
runtime: {threads: 1}
"""


def test_evaluate_convergence_command_on_a_tiny_operator_model(tmp_path, torch_extensions_dir):
    """`scigpt evaluate RUN --convergence --levels 16,32,64` on a 4-step Helmholtz operator run
    (about 7 s of training once DeepSpeed's CPU op is built, 5 s of evaluation): a table, a
    verdict and convergence.json/.csv/.png in RUN/eval/evaluate. A 4-step model is far from
    the solution: its error does not converge."""
    import json
    import subprocess
    import sys

    from tests.conftest import job_env

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_OPERATOR)
    env = job_env(torch_extensions_dir)
    for args in (["train", str(cfg), "--runs-dir", str(tmp_path), "--run-name", "op"],
                 ["evaluate", str(tmp_path / "op"), "--convergence", "--levels", "16,32,64",
                  "--cases", "2"]):  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "scigpt", *args], env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "verdict:" in out.stdout and "observed order" in out.stdout
    ev = tmp_path / "op" / "eval" / "evaluate"
    res = json.loads((ev / "convergence.json").read_text())
    assert [r["level"] for r in res["rows"]] == [16, 32, 64] and res["cases"] == [20, 21]
    assert res["verdict"] in ("plateaus", "diverges", "inconclusive")
    assert res["reference_grids"] == [129, 64] and res["train_grid"] == 16
    assert (ev / "convergence.png").stat().st_size > 1000
    assert (ev / "convergence.csv").read_text().count("\n") == 4
