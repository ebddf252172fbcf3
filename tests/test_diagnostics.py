"""HTSR weight diagnostics (scigpt.diagnostics): synthetic spectra with known answers, and
weightwatcher (an independent implementation) on the same matrices of a small trained model.

Durations (one core): the synthetic tests ~1 s together, the weightwatcher comparison ~3 s
(60 Adam steps of a 64-wide model in-process), the CLI tests a few seconds each.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scigpt.cli import main
from scigpt.config import ModelConfig
from scigpt.config_loader import ConfigError, load_config, shipped_config
from scigpt.diagnostics import htsr
from scigpt.export.writer import export_run
from scigpt.models.build import build_model, materialise
from scigpt.models.vit import ModelSpec
from scigpt.parallel.reshard import consolidate
from tests.conftest import job_env


def _orthonormal(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _pareto_spectrum(alpha: float, n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """W = U diag(√λ) Vᵀ with λ drawn from p(λ) ∝ λ^-alpha on [1, ∞): WᵀW's ESD is that law."""
    lam = rng.pareto(alpha - 1, m) + 1.0
    return _orthonormal(n, rng)[:, :m] @ np.diag(np.sqrt(lam)) @ _orthonormal(m, rng).T


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.0, 5.0])
def test_pareto_spectrum_recovers_alpha(alpha):
    """Tolerance: 3 standard errors of the MLE, (α−1)/√n_tail, and at most 15 % of α."""
    d = htsr.analyze_matrix("w", _pareto_spectrum(alpha, 600, 400, np.random.default_rng(1)))
    assert d.status == "ok" and d.num_evals == 400
    se = (alpha - 1) / math.sqrt(d.num_tail)
    assert abs(d.alpha - alpha) <= min(3 * se, 0.15 * alpha), (d.alpha, d.num_tail)
    assert d.ks_distance < 0.1
    # the norms follow from the eigenvalues directly
    lam = np.linalg.svd(_pareto_spectrum(alpha, 600, 400, np.random.default_rng(1)))[1] ** 2
    assert d.log_spectral_norm == pytest.approx(math.log10(lam.max()), abs=1e-10)
    assert d.log_frobenius_norm == pytest.approx(math.log10(lam.sum()), abs=1e-10)
    assert d.alpha_weighted == pytest.approx(d.alpha * d.log_spectral_norm, rel=1e-12)
    assert d.stable_rank == pytest.approx(lam.sum() / lam.max(), rel=1e-10)


@pytest.mark.parametrize("shape", [(500, 250), (300, 300), (1000, 100)])
def test_gaussian_matrix_fits_marchenko_pastur(shape):
    """A Gaussian matrix: σ² recovered within 2 %, bulk within KS 0.05 of the MP law, no spike,
    no trap, and no heavy tail (α above 5; HTSR's heavy-tailed layers have α of 2–4)."""
    g = np.random.default_rng(2).standard_normal(shape) * 0.02
    d = htsr.analyze_matrix("g", g)
    assert d.mp_sigma2 == pytest.approx(0.02**2, rel=0.02)
    assert d.mp_ks < 0.05
    assert d.mp_spikes == 0 and d.traps == 0
    assert d.alpha > 5.0
    # the fitted law is the right one: the MP CDF at the edge is 1, at the median ~1/2
    n, m = shape
    assert htsr._mp_cdf(np.array([d.mp_edge]), d.mp_sigma2, n, m)[0] == pytest.approx(1.0)
    med = np.median(np.linalg.svd(g)[1] ** 2)
    assert htsr._mp_cdf(np.array([med]), d.mp_sigma2, n, m)[0] == pytest.approx(0.5, abs=0.05)


def test_rank_one_spike_above_the_edge_and_a_large_entry_is_a_trap():
    rng = np.random.default_rng(3)
    n, m = 500, 250
    g = rng.standard_normal((n, m)) * 0.02
    u, v = rng.standard_normal(n), rng.standard_normal(m)
    spike = 1.5 * 0.02 * (math.sqrt(n) + math.sqrt(m)) * np.outer(u / np.linalg.norm(u), v)
    d = htsr.analyze_matrix("s", g + spike / np.linalg.norm(v))
    assert d.mp_spikes == 1  # the spike, found above the edge ...
    assert d.traps == 0  # ... is a correlation: shuffling the entries removes it
    trapped = g.copy()
    trapped[3, 5] = 2.0  # one entry 100 σ out: it survives any shuffle
    t = htsr.analyze_matrix("t", trapped)
    assert t.traps == 1 and t.mp_spikes == 1


def test_small_matrices_and_selection():
    state = {
        "a.weight": torch.randn(64, 49),  # 49 eigenvalues: too small
        "b.weight": torch.randn(80, 60),
        "b.bias": torch.randn(80),
        "embed.weight": torch.randn(5, 64, 4, 4),  # a stack, not a matrix
    }
    rows = htsr.analyze_state(state)
    assert [(d.name, d.status) for d in rows] == [("a.weight", "too small"), ("b.weight", "ok")]
    assert math.isnan(rows[0].alpha)
    both = htsr.analyze_state(state, workers=2)
    assert [d.row() for d in both][1]["alpha"] == rows[1].alpha
    s = htsr.summarize(rows)
    assert s["fitted_layers"] == 1 and s["too_small"] == 1
    assert s["mean_alpha"] == pytest.approx(rows[1].alpha)


def _trained_model() -> torch.nn.Module:
    """A 64-wide, 2-block SciGPT model after 60 Adam steps on a fixed synthetic forecast task
    (~0.5 s): its matrices are no longer the initialisation's."""
    torch.manual_seed(0)
    cfg = ModelConfig(patch_size=4, embed_dim=64, depth=2, heads=4)
    model = materialise(build_model(cfg, ModelSpec(5, 2)), "cpu", seed=0)
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "fields": torch.randn(4, 5, 2, 16, 16, generator=g),
            "var_ids": torch.arange(5),
            "lat": torch.linspace(60, 30, 16),
            "lon": torch.linspace(-5, 20, 16),
            "times": torch.arange(4) * 3_600_000_000_000,
        }
        for _ in range(8)
    ]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        b = batches[step % 8]
        f = b["fields"]
        target = 0.5 * f[:, :, -1].roll(1, -1) + 0.3 * f[:, :, 0].roll(-2, -2)
        loss = ((model(b) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_against_weightwatcher():
    """weightwatcher 0.7.x on the same model, layer by layer. Both fit the same estimator (MLE α,
    xmin by the smallest KS distance over every eigenvalue but the largest, empirical CDF at k/n,
    eigenvalues ≤ 1e-5 left out), so α, α-weighted and log spectral norm agree to 1e-6 — the
    SVDs' round-off. weightwatcher sees nn.Linear modules, we see the 2-D ``*.weight`` tensors:
    the same matrices here (the patch embedding and heads are 3-D stacks, skipped by both)."""
    ww = pytest.importorskip("weightwatcher", reason="weightwatcher is in the `dev` extra")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    model = _trained_model()
    theirs = ww.WeightWatcher(model=model).analyze(
        min_evals=50, randomize=False, mp_fit=False, plot=False
    )
    ours = [d for d in htsr.analyze_state(dict(model.state_dict())) if d.status == "ok"]
    assert len(ours) == len(theirs) == 11
    for d, (_, t) in zip(ours, theirs.iterrows(), strict=True):
        assert d.name.rsplit(".", 2)[-2] == t["name"]
        assert (d.rows, d.cols) == (t["N"], t["M"])
        assert d.alpha == pytest.approx(t["alpha"], abs=1e-6), d.name
        assert d.alpha_weighted == pytest.approx(t["alpha_weighted"], abs=1e-6), d.name
        assert d.log_spectral_norm == pytest.approx(t["log_spectral_norm"], abs=1e-6), d.name
        assert d.log_frobenius_norm == pytest.approx(t["log_norm"], abs=1e-6), d.name
        assert d.num_tail == t["num_pl_spikes"], d.name
        assert d.stable_rank == pytest.approx(t["stable_rank"], rel=1e-6), d.name


LEGACY = Path(__file__).parent / "data" / "legacy_7c1cec6"


@pytest.fixture(scope="module")
def legacy_copy(tmp_path_factory) -> Path:
    """The legacy fixture (16-wide matrices: fitted here with --min-evals 8), its run given a
    second checkpoint (a copy of step 2 as step 1) so that α over steps is written."""
    dest = tmp_path_factory.mktemp("legacy") / "legacy"
    shutil.copytree(LEGACY, dest)
    ckpts = dest / "run" / "checkpoints"
    shutil.copytree(ckpts / "step_00000002", ckpts / "step_00000001")
    return dest


def test_cli_on_a_run_and_its_package(legacy_copy, capsys):
    """`scigpt diagnose` on the legacy run and on the package exported from it: the same
    matrices, so the same table (fp32 weights both ways: to 1e-9); the values are those of
    analyze_state on the consolidated checkpoint; α over steps has both checkpoints."""
    run_out, pkg_out = legacy_copy / "run-diag", legacy_copy / "pkg-diag"
    for src, out in ((legacy_copy / "run", run_out), (legacy_copy / "package", pkg_out)):
        assert main(["diagnose", str(src), "--min-evals", "8", "--out", str(out)]) == 0
    assert "diagnostics:" in capsys.readouterr().out
    for out in (run_out, pkg_out):
        for name in ("layers.csv", "layers.md", "summary.json", "alpha_by_depth.png"):
            assert (out / name).stat().st_size > 0, name
        assert len(list(out.glob("esd_*.png"))) == 4
    read = lambda p: list(csv.DictReader(p.read_text().splitlines()))  # noqa: E731
    run_rows, pkg_rows = read(run_out / "layers.csv"), read(pkg_out / "layers.csv")
    assert [r["name"] for r in run_rows] == [r["name"] for r in pkg_rows]
    for a, b in zip(run_rows, pkg_rows, strict=True):
        for col in ("alpha", "alpha_weighted", "log_spectral_norm", "stable_rank", "mp_edge"):
            assert float(a[col] or "nan") == pytest.approx(
                float(b[col] or "nan"), abs=1e-9, nan_ok=True
            )
    direct = htsr.analyze_state(
        consolidate(legacy_copy / "run" / "checkpoints" / "step_00000002"), min_evals=8
    )
    summary = json.loads((run_out / "summary.json").read_text())
    assert summary == {**htsr.summarize(direct), "source": summary["source"],
                       "seconds": summary["seconds"]}  # fmt: skip
    assert summary["source"]["step"] == 2
    assert summary["too_small"] == 1 and summary["fitted_layers"] == 8  # pos: 16×7
    steps = read(run_out / "alpha_over_steps.csv")
    assert [int(r["step"]) for r in steps] == [1, 2]
    assert (run_out / "alpha_over_steps.png").is_file()


def test_cli_errors(legacy_copy, capsys):
    assert main(["diagnose", str(legacy_copy / "package"), "--step", "2"]) == 2
    assert main(["diagnose", str(legacy_copy)]) == 1  # neither a run nor a package
    assert main(["diagnose", str(legacy_copy / "run"), "--min-evals", "8", "--layer", "nope",
                 "--out", str(legacy_copy / "x")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "is a package" in err and "neither a model package" in err and "--layer nope" in err


def test_model_card_gets_the_summary(legacy_copy):
    """An export's card has the summary of analyze_state on the exported weights (the legacy
    run's 16-wide matrices are all below 50 eigenvalues: 9 matrices, none fitted); without
    diagnostics the section is left out."""
    run = legacy_copy / "run"
    card = (export_run(run, legacy_copy / "pkg-card") / "MODEL_CARD.md").read_text()
    section = card.split("## Weight diagnostics (HTSR)", 1)[1].split("## Intended use", 1)[0]
    full = consolidate(run / "checkpoints" / "step_00000002")
    assert htsr.summary_markdown(htsr.summarize(htsr.analyze_state(full))) in section
    assert "- weight matrices: 9 (0 fitted, 9 too small to fit)" in section
    plain = export_run(run, legacy_copy / "pkg-plain", diagnostics=False) / "MODEL_CARD.md"
    assert "Weight diagnostics" not in plain.read_text()


def test_training_hook_logs_diagnostics(tmp_path, torch_extensions_dir):
    """`diagnostics.every: 2` on a 4-step demo run (16-wide matrices, fitted with min_evals 8):
    metrics.jsonl gets a `kind: diagnostics` record at steps 2 and 4 with its cost, and the
    step-4 α of each layer equals analyze_state on the step-4 checkpoint (the same fp32 weights:
    to 1e-9). ~40 s (a DeepSpeed demo run in a subprocess)."""
    args = ["demo", "--steps", "4", "--runs-dir", str(tmp_path), "--run-name", "r",
            "--set", "logging.progress=false", "--set", "schedule.warmup_steps=1",
            "--set", "diagnostics.every=2", "--set", "diagnostics.min_evals=8",
            "--set", "checkpoint.every=2"]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "scigpt", *args], env=job_env(torch_extensions_dir),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run = tmp_path / "r"
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    diag = {r["step"]: r for r in recs if r.get("kind") == "diagnostics"}
    assert sorted(diag) == [2, 4]
    for r in diag.values():
        assert r["seconds"] > 0 and 0 < r["share_of_training"] < 1 and r["cost_in_steps"] > 0
    direct = htsr.analyze_state(consolidate(run / "checkpoints" / "step_00000004"), min_evals=8)
    alphas = {f"alpha.{d.name}": d.alpha for d in direct if d.status == "ok"}
    assert alphas and {k: v for k, v in diag[4].items() if k.startswith("alpha.")}.keys() == (
        alphas.keys()
    )
    for k, v in alphas.items():
        assert diag[4][k] == pytest.approx(v, abs=1e-9), k
    assert diag[4]["mean_alpha"] == pytest.approx(htsr.summarize(direct)["mean_alpha"], abs=1e-9)


def test_training_hook_is_off_by_default_and_refuses_sharded_matrices():
    demo = shipped_config("runs/demo.yaml")
    assert load_config(demo).config.diagnostics.every == 0
    with pytest.raises(ConfigError, match=r"diagnostics.every=5 runs with parallel.tp=1"):
        load_config(demo, ["diagnostics.every=5", "parallel.tp=2", "parallel.zero_stage=1"])


def test_sweep_rank_correlation_against_scipy_and_hand_counted_permutations():
    """Spearman's ρ equals scipy's; the exact permutation p-value equals the share of the n!
    pairings whose |ρ| reaches the observed one, counted here by hand."""
    import itertools

    from scipy import stats

    from scigpt.sweep.diagnostics import rank_correlation

    x = [3.1, 2.2, 4.8, 3.9, 2.0]
    y = [0.52, 0.47, 0.61, 0.49, 0.40]
    c = rank_correlation(x, y)
    assert c["n"] == 5
    assert c["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    ref = np.corrcoef(rx, ry)[0, 1]
    perms = list(itertools.permutations(ry))
    hits = sum(abs(np.corrcoef(rx, p)[0, 1]) >= abs(ref) - 1e-12 for p in perms)
    assert c["p_value"] == pytest.approx(hits / len(perms), abs=1e-12)
    lo, hi = c["ci95"]
    assert -1 <= lo <= c["rho"] <= hi <= 1
    # perfectly monotone, n = 4: rho = 1, exact two-sided p = 2 / 4! (the two extreme orders)
    mono = rank_correlation([1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3, 0.4])
    assert mono["rho"] == pytest.approx(1.0) and mono["p_value"] == pytest.approx(2 / 24)
    assert rank_correlation([1.0, 2.0], [1.0, 2.0])["rho"] is None  # too few points, said so
