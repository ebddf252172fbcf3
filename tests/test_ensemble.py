"""Issue 24: ``scigpt ensemble`` (members as a seed sweep), ensemble packages, predict's CF
``realization`` output, and the easy-to-hard experiment at toy size (GPME diffusion + porous
medium → Stefan), with and without ProbConserve.

One trained ensemble (3 members, 30 steps, ~35 s on 2 cores) is shared by the module; the
predict tests reuse the session's demo package (a second member is its weights perturbed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scoringrules
import torch
import xarray as xr
from safetensors.torch import load_file, save_file

from scigpt.atomic import sha256_file
from scigpt.config import ConstraintConfig
from scigpt.config_loader import load_config
from scigpt.data_pipeline.loader import ForecastDataset
from scigpt.data_pipeline.store import GridStore
from scigpt.eval import conserve
from scigpt.eval.ensemble import VAR_FLOOR, apply_constraints, score_forecasts
from scigpt.eval.predict import predict
from scigpt.export.ensemble import ENSEMBLE, load_ensemble, member_paths, write_ensemble
from scigpt.export.errors import PackageError
from scigpt.export.loader import load_pretrained
from scigpt.export.verify import CHECKSUMS, CONFIG, REQUIRED, WEIGHTS
from scigpt.sweep import ensemble
from scigpt.sweep.spec import Sweep
from tests.conftest import job_env

MEMBERS = 3


@pytest.fixture(scope="module")
def e2h(tmp_path_factory, torch_extensions_dir) -> Path:
    """The easy-to-hard experiment through the CLI, at toy size (fixed seeds 0..2)."""
    out = tmp_path_factory.mktemp("e2h") / "ens"
    cmd = [sys.executable, "-m", "scigpt", "ensemble", "runs/gpme-easy.yaml",
           "--members", str(MEMBERS), "--out", str(out), "--set", "schedule.steps=30",
           "--evaluate", "runs/gpme-hard.yaml"]  # fmt: skip
    proc = subprocess.run(cmd, env=job_env(torch_extensions_dir), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "probconserve" in proc.stdout
    return out


def test_easy_to_hard_scores_equal_an_independent_recomputation(e2h):
    """The table's scores, recomputed from each member package loaded on its own
    (load_pretrained + PretrainedModel.forecast) with numpy and scoringrules; tolerance 1e-6
    relative (float32 forecasts, float64 sums in another order)."""
    summary = json.loads((e2h / "evaluate" / "eval.json").read_text())
    assert summary["kind"] == "ensemble" and summary["n_members"] == MEMBERS
    rows = {r["constraint"]: r for r in summary["ensemble"]}
    assert set(rows) == {"none", "probconserve"}
    loaded = load_config("runs/gpme-hard.yaml", [])
    store = GridStore(e2h / "evaluate" / "store", source="gpme-stefan")
    splits = loaded.config.data.splits
    ds = ForecastDataset(store, time_range=splits.test.bounds(), history=1, lead=0,
                         normalise=False, outputs=["pde_u"], gap=splits.gap_ns())  # fmt: skip
    names = store.names
    j, j0 = names.index("pde_u"), names.index("pde_u0")
    items = [ds.raw_item(i) for i in range(len(ds))]
    frames = np.stack([it[0] for it in items])  # (N, 1, V, H, W)
    obs = np.stack([it[1][j] for it in items]).astype(np.float64)
    hidden = frames.copy()
    hidden[:, :, j] = np.nan
    times = np.array([it[2] for it in items])
    ens = []
    for _, pkg in member_paths(e2h / "ensemble"):
        pm = load_pretrained(pkg)
        x = torch.from_numpy(hidden.transpose(0, 2, 1, 3, 4))
        ens.append(pm.forecast(x, names, store.lat, store.lon, times)[:, j].double().numpy())
    ens = np.stack(ens)
    mean = ens.mean(0)
    assert rows["none"]["rmse"] == pytest.approx(np.sqrt(np.mean((mean - obs) ** 2)), rel=1e-6)
    fair = scoringrules.crps_ensemble(obs, np.moveaxis(ens, 0, -1), estimator="fair")
    assert rows["none"]["crps"] == pytest.approx(float(np.mean(fair)), rel=1e-6)
    mass0 = frames[:, 0, j0].astype(np.float64).sum(axis=(-2, -1))
    rel = np.mean(np.abs(mean.sum(axis=(-2, -1)) - mass0) / np.abs(mass0))
    assert rows["none"]["conservation_error"] == pytest.approx(rel, rel=1e-6)
    # ProbConserve: the constraint holds to 1e-6 relative (the criterion); the raw
    # ensemble is far from it (it was never trained on Stefan)
    assert rows["probconserve"]["conservation_error"] < 1e-6 < rows["none"]["conservation_error"]
    member_rmse = np.sqrt(np.mean((ens - obs) ** 2, axis=(1, 2, 3)))
    assert rows["none"]["member_rmse_min"] == pytest.approx(member_rmse.min(), rel=1e-6)
    assert rows["none"]["member_rmse_max"] == pytest.approx(member_rmse.max(), rel=1e-6)
    assert member_rmse.max() > member_rmse.min()  # the seeds differ
    for name in ("ensemble_scores.png", "ensemble_metrics.md", "rank_histogram_pde_u_none.png",
                 "rank_histogram_pde_u_probconserve.png"):  # fmt: skip
        assert (e2h / "evaluate" / name).stat().st_size > 0


def test_rerun_trains_nothing_and_keeps_the_members(e2h):
    before = (e2h / "ensemble" / ENSEMBLE).read_text()
    sweep = Sweep.load(e2h / "sweep.yaml")
    assert sweep.spec.axes == {"seed": [0, 1, 2]}
    res = ensemble.run(sweep, e2h)
    assert res["todo"] == [] and res["failed"] == []
    assert (e2h / "ensemble" / ENSEMBLE).read_text() == before


def test_ensemble_package_checksums_and_same_model(e2h, tmp_path):
    pkg = tmp_path / "ens"
    shutil.copytree(e2h / "ensemble", pkg)
    assert len(load_ensemble(pkg)) == MEMBERS
    # a member's weights changed: its own checksum list no longer matches
    name, member = member_paths(pkg)[1]
    weights = member / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"checksum|does not match"):
        load_ensemble(pkg)
    # the checksum list rewritten to match: the ensemble's recorded sha256 catches it
    lines = [f"{sha256_file(member / n)}  {n}\n" for n in sorted(REQUIRED)]
    (member / CHECKSUMS).write_text("".join(lines))
    with pytest.raises(PackageError, match=f"member {name!r}"):
        load_ensemble(pkg)
    # members must be the same model
    other = tmp_path / "other"
    shutil.copytree(member_paths(e2h / "ensemble")[0][1], other)
    cfg = json.loads((other / CONFIG).read_text())
    cfg["model"]["embed_dim"] = 2 * cfg["model"]["embed_dim"]
    (other / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(PackageError, match="not the same model"):
        write_ensemble([member_paths(e2h / "ensemble")[0][1], other], tmp_path / "bad")


def test_ensemble_loader_imports_no_deepspeed():
    code = ("import sys, scigpt.export.ensemble; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'deepspeed']; "
            "assert not bad, bad")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_probconserve_on_members_hand_case():
    """Two members on a 2×2 grid: the projected members each hold the constraint, their mean is
    ProbConserve's μ̃ of the member mean with the members' variance (the map is affine)."""
    ens = np.array([[[[[1.0, 2.0], [3.0, 2.0]]]], [[[[3.0, 2.0], [1.0, 2.0]]]]])  # (2,1,1,2,2)
    obs = np.array([[[[2.5, 2.0], [2.0, 2.0]]]])
    u0 = np.ones((1, 1, 2, 2))  # the input frame, total 4
    fc = {"ens": ens, "obs": obs, "inputs": np.concatenate([u0, obs], 1), "names": ["u"],
          "input_names": ["u0", "u"], "task": "operator", "lat": np.zeros(2),
          "lon": np.zeros(2)}  # fmt: skip
    c = ConstraintConfig(variable="u", initial="u0")
    out, totals = apply_constraints(fc, [c])
    np.testing.assert_allclose(totals["u"], [4.0])
    np.testing.assert_allclose(out.sum(axis=(-2, -1)), 4.0, rtol=1e-12)
    # hand-solved: var = (2, 0, 2, 0) (+ the floor 1e-9 · mean 1); the mean (2, 2, 2, 2) has
    # total 8, the two uncertain cells take −4 between them, the certain ones (nearly) nothing
    var = np.array([2.0, 0.0, 2.0, 0.0]) + VAR_FLOOR
    mu_t, _ = conserve.probconserve(np.full(4, 2.0), var, np.ones((1, 4)), [4.0])
    np.testing.assert_allclose(out.mean(axis=0)[0, 0].ravel(), mu_t, rtol=1e-12)
    np.testing.assert_allclose(mu_t, [0.0, 2.0, 0.0, 2.0], atol=1e-8)
    res = score_forecasts(fc, [c])
    rows = {r["constraint"]: r for r in res["rows"]}
    assert rows["none"]["rmse"] == pytest.approx(0.25)  # sqrt(0.5² / 4): one cell is off
    assert rows["none"]["conservation_error"] == pytest.approx(1.0)  # total 8 vs 4
    assert rows["probconserve"]["conservation_error"] < 1e-12
    with pytest.raises(ValueError, match="output of this operator"):
        apply_constraints(fc, [ConstraintConfig(variable="u", initial="u")])
    with pytest.raises(ValueError, match="not forecast by this model"):
        apply_constraints(fc, [ConstraintConfig(variable="v", initial="u0")])


def test_constraint_schema_errors():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="type"):
        ConstraintConfig.model_validate({"type": "momentum", "variable": "u"})
    with pytest.raises(ValidationError, match="variable"):
        ConstraintConfig.model_validate({"initial": "u0"})


def _perturbed_copy(pkg: Path, dest: Path, scale: float) -> Path:
    """A second member: the package with every float weight nudged, its checksums rewritten."""
    shutil.copytree(pkg, dest)
    gen = torch.Generator().manual_seed(1)
    tensors = {k: v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype)
               for k, v in load_file(str(dest / WEIGHTS)).items()}  # fmt: skip
    save_file(tensors, str(dest / WEIGHTS), metadata={"format": "pt"})
    lines = [f"{sha256_file(dest / n)}  {n}\n" for n in sorted(REQUIRED)]
    (dest / CHECKSUMS).write_text("".join(lines))
    return dest


def test_predict_writes_a_cf_realization_dimension(demo_package, sample_era5_dir, tmp_path):
    inputs = sorted(sample_era5_dir.glob("*.nc"))
    second = _perturbed_copy(demo_package, tmp_path / "b", 1e-2)
    ens = write_ensemble([demo_package, second], tmp_path / "ens", names=["a", "b"])
    out = predict(ens, inputs, tmp_path / "ens.nc", leads=["1h", "2h"], init="2020-01-01T12:00")
    refs = [predict(p, inputs, tmp_path / f"{p.name}.nc", leads=["1h", "2h"],
                    init="2020-01-01T12:00") for p in (demo_package, second)]  # fmt: skip
    with xr.open_dataset(out) as ds:
        assert ds.realization.values.tolist() == [0, 1]
        assert ds.realization.attrs["standard_name"] == "realization"
        assert ds.member_name.values.tolist() == ["a", "b"]
        assert ds.attrs["Conventions"] == "CF-1.8"
        assert ds.attrs["scigpt_package_sha256"] == sha256_file(ens / ENSEMBLE)
        for k, ref_path in enumerate(refs):
            with xr.open_dataset(ref_path) as ref:
                for v in ref.data_vars:
                    assert ds[v].dims == ("realization", *ref[v].dims)
                    np.testing.assert_array_equal(ds[v].values[k], ref[v].values)
        v = "t2m" if "t2m" in ds else next(iter(k for k in ds.data_vars if "_" not in k))
        members = ds[v].values.astype(np.float64)
        np.testing.assert_allclose(ds[f"{v}_mean"].values, members.mean(0), rtol=1e-6)
        np.testing.assert_allclose(ds[f"{v}_spread"].values, members.std(0, ddof=1), rtol=1e-5,
                                   atol=1e-6 * float(np.abs(members).max()))  # fmt: skip
        assert ds[f"{v}_spread"].attrs["cell_methods"] == "realization: standard_deviation"
        assert float(ds[f"{v}_spread"].max()) > 0  # the members differ
    _check_conserved_predict(ens, demo_package, inputs, out, v, tmp_path)


def _check_conserved_predict(ens, single, inputs, raw_path, v, tmp_path) -> None:
    """``--conserve v``: every member's cos(latitude)-weighted total of v equals the initial
    frame's at every lead (relative 1e-5: float32 output), moved by a correction small against
    the field; refused for a single model."""
    from scigpt.eval.predict import _read_grid

    out = predict(ens, inputs, tmp_path / "ens-conserved.nc", leads=["1h", "2h"],
                  init="2020-01-01T12:00", conserve=[v])  # fmt: skip
    grid = _read_grid(list(inputs), "netcdf", {})
    t = int(np.flatnonzero(grid.time == np.datetime64("2020-01-01T12:00"))[-1])
    area = np.cos(np.deg2rad(np.asarray(grid.lat, dtype=np.float64)))[:, None]
    b = float((grid.values[t, grid.names.index(v)].astype(np.float64) * area).sum())
    with xr.open_dataset(out) as ds, xr.open_dataset(raw_path) as raw:
        assert ds.attrs["scigpt_constraints"] == f"mass of {v}"
        fixed = ds[v].values.astype(np.float64)  # (realization, lead, lat, lon)
        totals = (fixed * area).sum(axis=(-2, -1))
        np.testing.assert_allclose(totals, b, rtol=1e-5)
        before = (raw[v].values.astype(np.float64) * area).sum(axis=(-2, -1))
        assert np.abs(before - b).max() > 10 * np.abs(totals - b).max()  # it did move them
        shift = np.abs(fixed - raw[v].values).max()
        assert 0 < shift < 0.1 * float(np.abs(raw[v].values).max())
    with pytest.raises(ValueError, match="single model"):
        predict(single, inputs, tmp_path / "one.nc", leads=["1h"], conserve=[v])


def test_cli_refuses_one_member(tmp_path, capsys):
    from scigpt.cli import main

    rc = main(["ensemble", "runs/gpme-easy.yaml", "--members", "1", "--out", str(tmp_path)])
    assert rc == 2 and "2 or more members" in capsys.readouterr().err


def test_from_package_fine_tunes_every_member(e2h, tmp_path):
    """--from PACKAGE: every member's config fine-tunes that package (a manual 2-member run of
    8 steps ends ~8 weight-norm units from the package vs ~165 for a scratch member); a folder
    that is not a package is refused."""
    pkg = member_paths(e2h / "ensemble")[0][1]
    sweep = ensemble.ensemble_sweep("runs/gpme-easy.yaml", 2, tmp_path / "ft", from_package=pkg)
    assert sweep.spec.set["finetune.package"] == str(pkg.resolve())
    sets = sweep.overrides(sweep.points()[1])
    assert f"finetune.package={json.dumps(str(pkg.resolve()))}" in sets and "seed=1" in sets
    loaded = load_config(sweep.base_config, sets)
    assert loaded.config.finetune.package == str(pkg.resolve()) and loaded.config.seed == 1
    with pytest.raises(FileNotFoundError, match="not a model package"):
        ensemble.ensemble_sweep("runs/gpme-easy.yaml", 2, tmp_path / "x", from_package=tmp_path)
    with pytest.raises(ValueError, match="do not --set seed"):
        ensemble.ensemble_sweep("runs/gpme-easy.yaml", 2, tmp_path / "y", overrides={"seed": 3})


def test_evaluate_command_scores_an_ensemble_package(e2h, tmp_path):
    """``scigpt evaluate ENSEMBLE CONFIG`` takes the ensemble path: the same rows as the
    experiment's (same members, same data; exact equality)."""
    from scigpt.commands.evaluate import evaluate

    store = json.dumps(str(e2h / "evaluate" / "store"))
    loaded = load_config("runs/gpme-hard.yaml", [f"data.store={store}"])
    res = evaluate(e2h / "ensemble", loaded, out=tmp_path / "ev", progress=False)
    assert res["summary"]["kind"] == "ensemble"
    want = json.loads((e2h / "evaluate" / "eval.json").read_text())["ensemble"]
    assert res["summary"]["ensemble"] == want
    assert (tmp_path / "ev" / "ensemble_scores.png").is_file()


@pytest.mark.slow
def test_ensemble_as_a_slurm_job_array(slurm, tmp_path, torch_extensions_dir):
    """The members as one job array on the test suite's real Slurm, then packaged by a rerun
    without --slurm that trains nothing."""
    from tests.test_sweep import _wait_for_points

    out = tmp_path / "arrays"
    short = {"schedule.steps": 8, "schedule.warmup_steps": 2}
    sweep = ensemble.ensemble_sweep("runs/gpme-easy.yaml", 2, out, overrides=short)
    env = {**job_env(torch_extensions_dir), "SLURM_CONF": slurm.env["SLURM_CONF"]}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    res = ensemble.run(sweep, out, slurm=True, env=env)
    assert len(res["job_ids"]) == 1 and res["package"] is None
    assert "#SBATCH --array=0-1%" in (out / "slurm" / "array0.sbatch").read_text()
    states = _wait_for_points(out, res["points"])
    assert states == ["done", "done"], (states, slurm.logs())
    again = ensemble.run(sweep, out)
    assert again["todo"] == [] and len(load_ensemble(again["package"])) == 2
