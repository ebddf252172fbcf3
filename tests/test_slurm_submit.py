"""`scigpt submit`: sbatch scripts from cluster profiles — rendering, quoting, and real Slurm
runs (2-task training, USR1 → checkpoint → requeue → resume, mpirun equivalence)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from scigpt.slurm.submit import load_profile, prepare_job, render, shipped_profiles, write_script
from scigpt.train.metrics import read_metrics
from tests.conftest import job_env

VENV_BIN = str(Path(sys.executable).parent)


def _render(tmp_path: Path, profile: str, command: list[str]) -> Path:
    prof = load_profile(profile)
    job = prepare_job(command, prof, nodes=None, time=None, runs_dir=tmp_path / "runs")
    return write_script(job, render(prof, job, cwd=tmp_path))


@pytest.mark.parametrize("profile", ["local", "generic-gpu", "perlmutter", "frontier"])
def test_every_shipped_profile_renders_valid_bash(tmp_path, profile):
    assert profile in shipped_profiles()
    path = _render(tmp_path, profile, ["demo", "--steps", "5"])
    text = path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)
    prof = load_profile(profile)
    assert f"#SBATCH --ntasks-per-node={prof.tasks}" in text
    assert "#SBATCH --requeue" in text and f"--signal=B:USR1@{prof.signal_grace_s}" in text
    assert ("#SBATCH --gpus-per-task=1" in text) == (prof.gpus_per_node > 0)
    # training always resumes its own run directory, where the script is saved
    assert "--resume" in text and path.parent.parent.name in text
    if profile == "frontier":  # no DALI on ROCm: the loaders fall back to PyTorch
        assert "data.loader.backend=torch" in text


def test_bad_profile_and_command_are_named(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("gpus_per_node: 4\npartion: gpu\n")
    with pytest.raises(ValueError, match=r"invalid cluster profile .*site.yaml: partion"):
        load_profile(str(bad))
    with pytest.raises(ValueError, match="no such profile; shipped: frontier, generic-gpu"):
        load_profile("summit")
    with pytest.raises(ValueError, match="nothing to submit"):
        prepare_job([], load_profile("local"), nodes=1, time=None, runs_dir=tmp_path)


def test_values_cannot_inject_commands(tmp_path):
    """Hostile values from the command line, the config and the profile end up as literal
    arguments: the script is run with a recording srun, and nothing else executes."""
    pwned = tmp_path / "PWNED"  # relative in the strings below: the script runs in tmp_path
    evil = "x$(touch PWNED)';touch PWNED;'`touch PWNED`\"; touch PWNED; \""
    site = tmp_path / "site.yaml"
    prof = yaml.safe_load((resources.files("scigpt.slurm.profiles") / "local.yaml").read_text())
    prof["env"] = {"SITE_VAR": evil}
    prof["srun_args"] = [f"--comment={evil}"]
    site.write_text(yaml.safe_dump(prof))
    command = ["demo", "--steps", "5", "--set", f"eval.plot_variable={evil}"]
    path = _render(tmp_path, str(site), command)
    with pytest.raises(ValueError, match="use letters, digits"):  # a run name is a directory
        _render(tmp_path, str(site), ["demo", "--run-name", evil])
    prof_obj = load_profile(str(site))
    job = prepare_job(["demo"], prof_obj, nodes=None, time="1:00\n#SBATCH --x=1",
                      runs_dir=tmp_path / "runs")  # fmt: skip
    with pytest.raises(ValueError, match="newline"):  # would start a new #SBATCH line
        render(prof_obj, job, cwd=tmp_path)

    fake = tmp_path / "bin"
    fake.mkdir()
    record = tmp_path / "argv.json"
    (fake / "srun").write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "out = {'argv': sys.argv[1:], 'env': os.environ['SITE_VAR']}\n"
        f"json.dump(out, open({str(record)!r}, 'w'))\n"
    )
    (fake / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_ID": "1"}
    subprocess.run(["bash", str(path)], check=True, env=env, cwd=tmp_path, timeout=60)
    got = json.loads(record.read_text())
    assert not pwned.exists()
    assert got["env"] == evil
    assert f"--comment={evil}" in got["argv"]
    assert f"eval.plot_variable={evil}" in got["argv"]


# ---- against the test suite's real Slurm ------------------------------------------------------

STEPS = 40
DEMO = ["demo", "--steps", str(STEPS), "--set", "logging.progress=false",
        "--set", "logging.every=1", "--set", "schedule.warmup_steps=5",
        "--set", "runtime.threads=1"]  # fmt: skip


def _submit(slurm, tmp_path: Path, name: str, tex: str) -> tuple[int, Path]:
    profile = load_profile("local")
    profile = profile.model_copy(update={"python": sys.executable})
    job = prepare_job([*DEMO, "--run-name", name], profile, nodes=None, time=None,
                      runs_dir=tmp_path)  # fmt: skip
    script = write_script(job, render(profile, job, cwd=tmp_path))
    env = {**job_env(tex), "SLURM_CONF": slurm.env["SLURM_CONF"]}
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    job_id = slurm.submit(script, cwd=tmp_path, env=env)
    return job_id, job.job_dir


def _train_losses(run: Path) -> dict[int, float]:
    return {
        r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"
    }


@pytest.fixture(scope="module")
def reference_run(slurm, tmp_path_factory, torch_extensions_dir) -> Path:
    """The rendered local-profile script: a 2-task (gloo) training run to completion."""
    root = tmp_path_factory.mktemp("slurm_runs")
    job_id, run = _submit(slurm, root, "ref", torch_extensions_dir)
    slurm.wait(job_id, timeout=300)
    return run


@pytest.mark.slow
def test_rendered_script_trains_two_tasks_to_completion(reference_run):
    prov = json.loads((reference_run / "provenance.json").read_text())
    assert prov["world_size"] == 2 and prov["launcher"] == "slurm", prov
    assert sorted(_train_losses(reference_run)) == list(range(1, STEPS + 1))
    assert (reference_run / "eval" / "test_rmse.csv").is_file()
    assert (reference_run / "slurm" / "job.sbatch").is_file()


@pytest.mark.slow
def test_usr1_checkpoints_requeues_and_resumes_exactly(
    slurm, reference_run, tmp_path, torch_extensions_dir
):
    import time

    job_id, run = _submit(slurm, tmp_path, "pre", torch_extensions_dir)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # let it train a few steps, then signal the batch shell
        if (run / "metrics.jsonl").is_file() and len(_train_losses(run)) >= 8:
            break
        time.sleep(0.5)
    slurm.signal_batch(job_id, "USR1")
    info = slurm.wait(job_id, timeout=300)
    assert int(info["Restarts"]) == 1, info
    recs = read_metrics(run / "metrics.jsonl")
    stopped = [r for r in recs if r["kind"] == "preempted"]
    assert len(stopped) == 1 and 8 <= stopped[0]["step"] < STEPS, stopped
    prov = json.loads((run / "provenance.json").read_text())
    assert [r["slurm_restart_count"] for r in prov["restarts"]] == ["1"]
    log = (run / "slurm" / f"slurm-{job_id}.out").read_text()
    assert "scigpt: USR1, checkpointing" in log and "requeueing job" in log
    # the resumed run continues the uninterrupted one bit for bit (same layout)
    assert _train_losses(run) == _train_losses(reference_run)


@pytest.mark.slow
def test_mpirun_launches_the_same_training(reference_run, tmp_path, torch_extensions_dir):
    cmd = ["mpirun", "-n", "2", "--oversubscribe", sys.executable, "-m", "scigpt", *DEMO,
           "--runs-dir", str(tmp_path), "--run-name", "mpi"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=job_env(torch_extensions_dir))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    prov = json.loads((tmp_path / "mpi" / "provenance.json").read_text())
    assert prov["launcher"] == "openmpi" and prov["world_size"] == 2
    assert _train_losses(tmp_path / "mpi") == _train_losses(reference_run)
