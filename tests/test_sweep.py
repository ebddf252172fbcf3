"""`scigpt sweep`: expansion, stable names, resume and retries, and a real CPU sweep (3 model
widths × 2 data fractions on the shipped sample) run locally and as Slurm job arrays."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from scigpt.rundir import RunDir
from scigpt.sweep import runner
from scigpt.sweep.spec import Sweep, point_name
from tests.conftest import job_env

SHIPPED = "sweeps/tiny-scaling.yaml"
REPORT_FILES = ("points.csv", "report.md", "fits.json", "loss_vs_compute.png",
                "loss_vs_params.png", "loss_vs_data.png", "diagnostics.csv", "diagnostics.json",
                "diagnostics_vs_loss.png")  # fmt: skip


def _write(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(Path(Sweep.load(SHIPPED).path).read_text())
    raw.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_grid_expansion_and_stable_names(tmp_path):
    sweep = Sweep.load(SHIPPED)
    points = sweep.points()
    assert len(points) == sweep.size() == 6
    assert [p.settings for p in points[:2]] == [
        {"model.embed_dim": 32, "data.train_fraction": 0.5},
        {"model.embed_dim": 32, "data.train_fraction": 1.0},
    ]
    # names are a function of the settings only: the same in another process, another order
    assert [p.name for p in points] == [p.name for p in Sweep.load(SHIPPED).points()]
    assert point_name({"model.embed_dim": 32, "data.train_fraction": 0.5}) == points[0].name
    assert points[0].name.startswith("embed_dim32-train_fraction0.5-")
    assert len({p.name for p in points}) == 6
    assert sweep.overrides(points[0])[-2:] == ["model.embed_dim=32", "data.train_fraction=0.5"]


def test_compute_matched_expansion(tmp_path):
    path = _write(
        tmp_path, design="compute_matched", axes={}, budgets=[1e11, 4e11],
        models=[{"model.embed_dim": 32}, {"model.embed_dim": 64}], data_fractions=[0.5, 1.0],
    )  # fmt: skip
    sweep = Sweep.load(path)
    points = sweep.points(lambda over, budget: int(budget / (over["model.embed_dim"] * 1e9)))
    assert len(points) == 8
    by = {(p.budget, p.settings["model.embed_dim"], p.settings["data.train_fraction"]): p
          for p in points}  # fmt: skip
    # for each budget, several model/data splits; the smaller model trains longer
    assert by[(1e11, 32, 0.5)].overrides["schedule.steps"] == 3
    assert by[(1e11, 64, 0.5)].overrides["schedule.steps"] == 1
    assert by[(4e11, 32, 1.0)].overrides["schedule.steps"] == 12
    assert "budget" not in by[(1e11, 32, 0.5)].overrides


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"axes": {}}, "design grid needs axes"),
        ({"max_points": 4}, "6 points, more than max_points=4"),
        ({"axes": {"model.embed_dim": []}}, "have no values"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"design": "compute_matched"}, "needs budgets"),
    ],
)
def test_bad_sweep_files_are_named(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        Sweep.load(_write(tmp_path, **changes))


# ---- real sweeps ---------------------------------------------------------------------------------


def _sweep_cli(args: list[str], tex: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scigpt", "sweep", *args], capture_output=True,
                          text=True, timeout=900, env=job_env(tex), **kw)  # fmt: skip


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, torch_extensions_dir) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "local"
    proc = _sweep_cli([SHIPPED, "--out", str(out)], torch_extensions_dir)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


@pytest.mark.slow
def test_local_sweep_runs_every_point_and_reports(local_sweep):
    statuses = [json.loads(p.read_text()) for p in (local_sweep / "status").glob("*.json")]
    assert len(statuses) == 6 and all(s["state"] == "done" for s in statuses)
    for name in REPORT_FILES:
        assert (local_sweep / name).is_file(), name
    rows = runner.collect(local_sweep)
    assert len(rows) == 6
    params = sorted({r["params"] for r in rows})
    assert len(params) == 3 and len({r["data"] for r in rows}) == 2
    assert all(r["compute"] > 0 and r["loss"] > 0 for r in rows)
    # more data never hurts here: the full-data point beats the half-data one at every width
    for p in params:
        half, full = sorted((r for r in rows if r["params"] == p), key=lambda r: r["data"])
        assert full["loss"] < half["loss"], (half, full)
    _check_weight_diagnostics(local_sweep, rows)


def _check_weight_diagnostics(out: Path, rows: list[dict]) -> None:
    """The HTSR hook logged its summary and cost in every run (diagnostics.every: 10); the
    report correlates each point's mean α (of the checkpoint its test scored, equal to
    ``scigpt diagnose`` on it) with the test loss: ρ as scipy computes it on the table."""
    from scipy import stats

    from scigpt.diagnostics.htsr import analyze_state, summarize
    from scigpt.export.writer import checkpoint_weights
    from scigpt.sweep.diagnostics import tested_checkpoint

    for r in rows:
        recs = [m for m in RunDir(out / "runs" / r["name"]).metrics() if m["kind"] == "diagnostics"]
        assert [m["step"] for m in recs] == [10, 20, 30], r["name"]
        assert all(0 < m["share_of_training"] < 1 and m["seconds"] > 0 for m in recs)
    diag = json.loads((out / "diagnostics.json").read_text())
    points = {p["name"]: p for p in diag["points"]}
    assert points.keys() == {r["name"] for r in rows}
    widest = max(rows, key=lambda r: r["params"])["name"]  # embed 96: matrices with >= 50 evals
    direct = summarize(analyze_state(checkpoint_weights(tested_checkpoint(out / "runs" / widest))))
    assert points[widest]["mean_alpha"] == pytest.approx(direct["mean_alpha"], rel=1e-12)
    fitted = [p for p in diag["points"] if p["mean_alpha"] is not None]
    corr = diag["correlation"]["mean_alpha"]
    assert corr["n"] == len(fitted) >= 4  # the two widths of 64 and 96, two data sizes each
    ref = stats.spearmanr([p["mean_alpha"] for p in fitted], [p["loss"] for p in fitted])
    assert corr["rho"] == pytest.approx(ref.statistic, abs=1e-12)
    assert 0 < corr["p_value"] <= 1
    assert "Weight diagnostics (HTSR) against the loss" in (out / "report.md").read_text()


@pytest.mark.slow
def test_resumed_sweep_reruns_nothing_and_report_rebuilds(local_sweep, torch_extensions_dir):
    before = {p.name: p.stat().st_mtime_ns for p in (local_sweep / "status").glob("*.json")}
    t0 = time.monotonic()
    proc = _sweep_cli([str(local_sweep / "sweep.yaml"), "--out", str(local_sweep)],
                      torch_extensions_dir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "6 points, 0 to run" in proc.stdout
    assert before == {p.name: p.stat().st_mtime_ns for p in (local_sweep / "status").glob("*.json")}
    assert time.monotonic() - t0 < 60  # no training ran
    (local_sweep / "report.md").unlink()
    proc = _sweep_cli(["--report", str(local_sweep)], torch_extensions_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (local_sweep / "report.md").is_file()


@pytest.mark.slow
def test_failed_points_are_retried_then_reported(tmp_path, torch_extensions_dir):
    """embed_dim 30 is not divisible by 4 heads: that point fails at once (config error); it is
    retried max_retries times across reruns, then left alone and named with its reason."""
    path = _write(tmp_path, axes={"model.embed_dim": [30]}, max_retries=1)
    out = tmp_path / "out"
    for attempt in (1, 2, 3):
        proc = _sweep_cli([str(path), "--out", str(out)], torch_extensions_dir)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "failed: embed_dim30-" in proc.stdout
        assert "not divisible by model.heads=4" in proc.stdout
        status = json.loads(next((out / "status").glob("*.json")).read_text())
        assert status["attempts"] == min(attempt, 2)  # 1 + max_retries attempts, no more
    assert "1 points, 0 to run" in proc.stdout


def _wait_for_points(out: Path, points, *, stall: float = 300, cap: float = 3600) -> list[str]:
    """The points' states once every one is done or failed. A busy machine runs them slowly
    (the array took over 10 minutes under stress-ng): give up only when no status or metrics
    file has changed for ``stall`` seconds, or after ``cap``."""
    start = last = time.monotonic()
    seen = None
    while True:
        states = [runner.read_status(out, p.name)["state"] for p in points]
        if all(s in ("done", "failed") for s in states):
            return states
        files = [*out.glob("status/*.json"), *out.glob("runs/*/metrics.jsonl")]
        stamp = max((f.stat().st_mtime_ns for f in files), default=0)
        now = time.monotonic()
        if stamp != seen:
            seen, last = stamp, now
        if now - last > stall or now - start > cap:
            return states
        time.sleep(2)


@pytest.mark.slow
def test_sweep_as_slurm_job_arrays(slurm, local_sweep, tmp_path, torch_extensions_dir):
    """The same sweep as one throttled job array on the test suite's real Slurm."""
    sweep = Sweep.load(SHIPPED)
    out = tmp_path / "arrays"
    points = runner.plan(sweep, out, progress=False)
    env = {**job_env(torch_extensions_dir), "SLURM_CONF": slurm.env["SLURM_CONF"]}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    assert len(runner.submit_arrays(sweep, out, points, env=env)) == 1  # one resource shape
    script = (out / "slurm" / "array0.sbatch").read_text()
    assert "#SBATCH --array=0-5%2" in script
    states = _wait_for_points(out, points)
    assert states == ["done"] * 6, (states, slurm.logs())
    files = runner.report(out, sweep.spec.objective, sweep.spec.metric)
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    assert files
    rows = {r["name"]: r for r in runner.collect(out)}
    assert len(rows) == 6
    # two tasks per point (local profile): each point saw twice the samples of its local twin
    local = {r["name"]: r for r in runner.collect(local_sweep)}
    for name, r in rows.items():
        assert r["params"] == local[name]["params"] and r["data"] == local[name]["data"]
        assert r["tokens"] == 2 * local[name]["tokens"]
    shutil.rmtree(out / "store", ignore_errors=True)
