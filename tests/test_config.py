"""Strict configs: bad configs name the key, the value and the fix; overrides; interpolation."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scigpt.cli import main
from scigpt.config_loader import ConfigError, load_config, shipped_config

DEMO = shipped_config("runs/demo.yaml")


@pytest.fixture
def demo_raw() -> dict:
    return yaml.safe_load(DEMO.read_text())


def _write(tmp_path: Path, raw: dict, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def _set(raw: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is _DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return raw


_DELETE = object()

# (key, value, fragments that must all appear in the error message)
BAD_CONFIGS = [
    ("parallel.tp", 3, ["parallel.tp=3 does not divide model.heads=4", "choose tp from [1, 2, 4]"]),
    ("model.depht", 4, ["unknown key 'model.depht'", "did you mean 'depth'"]),
    ("colour", "red", ["unknown key 'colour'", "valid keys here"]),
    ("schedule.steps", "many", ["schedule.steps='many'", "valid integer"]),
    ("schedule.steps", 0, ["schedule.steps=0", "greater than 0"]),
    ("optim.lr", -1.0, ["optim.lr=-1.0", "greater than 0"]),
    ("model.embed_dim", 98, ["model.embed_dim=98 is not divisible by model.heads=4"]),
    ("parallel.pp", 5, ["parallel.pp=5 is larger than model.depth=3", "pp <= 3"]),
    (
        "schedule.warmup_steps",
        400,
        ["schedule.warmup_steps=400", "smaller than schedule.steps=300"],
    ),
    ("parallel.zero_stage", 4, ["parallel.zero_stage=4", "0, 1, 2 or 3"]),
    ("precision", "fp8", ["precision='fp8'", "'fp32' or 'bf16'"]),
    ("model.preset", "vit-huge", ["model.preset='vit-huge' not found", "vit-tiny"]),
    ("data.sources", _DELETE, ["missing required key 'data.sources'"]),
    ("data.sources", [], ["data.sources=[]", "at least 1 item"]),
    (
        "data.splits.train.end",
        "2020-01-01T21:00",
        ["splits.train.end=2020-01-01T21:00:00 is after splits.val.start=2020-01-01T15:00:00"],
    ),
    ("data.splits.test.end", "2019-12-31T00:00", ["is before start=", "swap them"]),
    ("data.history", 0, ["data.history=0", "greater than 0"]),
    ("data.sources.0.variables", ["u10", "u10"], ["variables listed twice: ['u10']"]),
    ("data.sources.0.format", "xls", ["sources.0.format='xls'", "unknown format 'xls'", "netcdf"]),
    ("model.mlp_ratio", 3.2, ["does not divide the MLP width"]),  # with tp=2 below
    ("name", "my run!", ["name='my run!'", "should match pattern"]),
    ("logging.tensorboard", "yes", ["logging.tensorboard='yes'", "valid boolean"]),
    ("data.store", "${SCIGPT_TEST_UNSET_VAR}", ["SCIGPT_TEST_UNSET_VAR is not set", "export"]),
    ("optim.betas", [0.9, 1.5], ["optim.betas.1=1.5", "less than 1"]),
    ("parallel.pp", 2, ["parallel.pp=2 needs parallel.zero_stage <= 1"]),  # with zero_stage=3
]


@pytest.mark.parametrize(
    ("key", "value", "fragments"), BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS]
)
def test_bad_config_is_named(tmp_path, demo_raw, monkeypatch, key, value, fragments):
    monkeypatch.delenv("SCIGPT_TEST_UNSET_VAR", raising=False)
    raw = _set(demo_raw, key, value)
    if key == "model.mlp_ratio":
        raw = _set(raw, "parallel.tp", 2)
    if key == "parallel.pp" and value == 2:
        raw = _set(raw, "parallel.zero_stage", 3)
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in:\n{msg}"


# Layout constraints that involve several keys: (settings, fragments of the error).
BAD_LAYOUTS = [
    ({"parallel.pp": 2, "objectives.masked": 0.5}, ["trains the forecast objective only"]),
    (
        {"parallel.pp": 2, "precision": "bf16", "parallel.zero_stage": 0},
        ["precision=bf16 needs parallel.zero_stage=1"],
    ),
    ({"parallel.pp_partition": "profile"}, ["parallel.pp_partition='profile'", "'blocks'"]),
    ({"parallel.tp": 2, "parallel.zero_stage": 2}, ["runs with parallel.zero_stage <= 1"]),
    ({"model.attention": "triton"}, ["supports head dims 32, 64 and 128", "= 24"]),
]


@pytest.mark.parametrize(
    ("settings", "fragments"), BAD_LAYOUTS, ids=[str(b[0]) for b in BAD_LAYOUTS]
)
def test_bad_layout_is_named(tmp_path, demo_raw, settings, fragments):
    raw = demo_raw
    for key, value in settings.items():
        raw = _set(raw, key, value)
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, raw))
    for frag in fragments:
        assert frag in str(exc.value), f"{frag!r} not in:\n{exc.value}"


def test_world_size_must_fit_the_layout():
    from scigpt.config import ParallelConfig
    from scigpt.parallel.topology import Topology

    with pytest.raises(ValueError, match=r"world size 6 is not divisible by .* 2 x 2 = 4"):
        Topology.from_config(ParallelConfig(tp=2, pp=2), 6)
    assert Topology.from_config(ParallelConfig(tp=2, pp=2), 8).dp == 2


def test_bad_configs_are_many():
    assert len(BAD_CONFIGS) >= 15


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: demo\nmodel:\n  depth: [1, 2\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+"):
        load_config(p)


def test_yaml12_floats(tmp_path, demo_raw):
    p = tmp_path / "f.yaml"
    text = yaml.safe_dump({**demo_raw, "optim": {**demo_raw["optim"], "lr": 0.002}})
    assert "  lr: 0.002\n" in text
    p.write_text(text.replace("  lr: 0.002\n", "  lr: 2e-3\n"))  # PyYAML alone reads a string
    assert load_config(p).config.optim.lr == pytest.approx(2e-3)


def test_top_level_must_be_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_demo_config_is_valid_and_uses_preset():
    cfg = load_config(DEMO).config
    assert cfg.model.preset == "vit-tiny"
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.heads) == (96, 3, 4)


def test_overrides_apply_before_preset_merge_and_parse_types():
    loaded = load_config(
        DEMO,
        [
            "model.depth=5",
            "optim.lr=3e-4",
            "schedule.steps=50",
            "data.sources.0.variables=[u10,v10]",
            "model.preset=vit-small",
            "logging.peak_tflops=989",
        ],
    )
    c = loaded.config
    assert c.model.depth == 5  # the run's key beats the preset's 12
    assert c.model.embed_dim == 384  # from vit-small
    assert c.optim.lr == pytest.approx(3e-4)
    assert c.schedule.steps == 50
    assert c.data.sources[0].variables == ["u10", "v10"]
    assert c.logging.peak_tflops == 989


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("nonsense", "must look like key.path=value"),
        ("data.sources.7.path=x", "not an index"),
        ("seed.x=1", "cannot set a key inside a value"),
        ("model.depht=4", "did you mean 'depth'"),
    ],
)
def test_bad_overrides(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(DEMO, [item])


def test_env_interpolation(tmp_path, demo_raw):
    raw = _set(demo_raw, "data.store", "${SCIGPT_TEST_STORE:-default_store}")
    raw = _set(raw, "schedule.steps", "${SCIGPT_TEST_STEPS}")
    raw = _set(raw, "name", "run-${SCIGPT_TEST_SUFFIX:-x}")
    p = _write(tmp_path, raw)
    env = {"SCIGPT_TEST_STEPS": "42", "SCIGPT_TEST_SUFFIX": "abc"}
    c = load_config(p, env=env).config
    assert c.data.store == "default_store"
    assert c.schedule.steps == 42  # a whole-string substitution keeps its YAML type
    assert c.name == "run-abc"
    c2 = load_config(p, env={**env, "SCIGPT_TEST_STORE": "/scratch/store"}).config
    assert c2.data.store == "/scratch/store"


def test_relative_paths_resolve_against_config_folder(tmp_path, demo_raw):
    raw = _set(demo_raw, "data.sources.0.path", "data/era5")
    sub = tmp_path / "cfgs"
    sub.mkdir()
    loaded = load_config(_write(sub, raw))
    resolved = loaded.resolved_dict()
    assert resolved["data"]["sources"][0]["path"] == str(sub / "data" / "era5")
    # pkg: paths stay portable in the resolved config
    assert load_config(DEMO).resolved_dict()["data"]["sources"][0]["path"].startswith("pkg:")


def test_shipped_configs_have_no_absolute_paths():
    root = Path(__file__).resolve().parents[1] / "configs"
    for f in root.rglob("*.yaml"):
        for line in f.read_text().splitlines():
            value = line.split(":", 1)[-1].strip()
            assert not value.startswith(("/", "~")), f"absolute path in {f}: {line}"


def test_cli_validate_exit_codes(tmp_path, demo_raw, capsys):
    assert main(["validate", str(DEMO), "-q"]) == 0
    assert main(["validate", str(DEMO), "--set", "parallel.tp=3"]) == 2
    err = capsys.readouterr().err
    assert "parallel.tp=3 does not divide model.heads=4" in err
    assert "Traceback" not in err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the file" in capsys.readouterr().err


def test_cli_process_exit_code_and_no_traceback(tmp_path):
    """The installed entry point: usage errors exit 2 with one message and no traceback."""
    bad = subprocess.run(
        [sys.executable, "-m", "scigpt", "validate", str(DEMO), "--set", "model.heads=5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "model.embed_dim=96 is not divisible by model.heads=5" in bad.stderr
    assert "Traceback" not in bad.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "scigpt", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == 2
    ok = subprocess.run(
        [sys.executable, "-m", "scigpt", "validate", str(DEMO), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert '"preset": "vit-tiny"' in ok.stdout


# ---- hostile YAML: refused fast, with one line, never a hang, a RecursionError or a silent pick --
def _laughs(levels: int = 10) -> str:
    lines = ['lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"  # 9**10 values once expanded (the original ran past 120 s)


HOSTILE = {
    "billion_laughs": (lambda base: base + _laughs(), "expands to more than 100000 values"),
    "self_reference": (
        lambda base: base.replace("name: demo", "name: &n [demo, *n]"),
        "alias *n refers to its own anchor &n",
    ),
    "deep_nesting": (
        lambda base: base + "deep: " + "[" * 20000 + "]" * 20000 + "\n",
        "nesting deeper than 64 levels",
    ),
    "duplicate_key": (
        lambda base: base + "seed: 1\nseed: 2\n",
        "duplicate key 'seed' (first at line",
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_is_refused_with_one_line(tmp_path, capsys, case):
    make, fragment = HOSTILE[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(make(DEMO.read_text()))
    assert main(["validate", str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err, err
    assert err.splitlines()[0] == f"scigpt: invalid config {path}:" and len(err.splitlines()) == 2
    with pytest.raises(ConfigError, match=re.escape(fragment)):  # the API, as the CLI
        load_config(path)


def test_merge_keys_still_override():
    """YAML merge keys (<<: *base, then a key of base) are not duplicate keys."""
    from scigpt.config_loader import safe_load

    assert safe_load("b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n")["c"] == {"x": 1, "y": 3}
    with pytest.raises(ConfigError, match="duplicate key 'steps'"):  # --set values too
        load_config(DEMO, ["schedule={steps: 5, steps: 6}"])


# ---- everything train would refuse, validate refuses first (exit 2, the key, the fix) ----------
LONG_NAME = "n" * 300
MISMATCHES = {
    "lr_inf": (["optim.lr=.inf"], ["optim.lr=inf", "finite"]),
    "seed_huge": (["seed=100000000000000000000000"], ["seed=100000000000000000000000", "less"]),
    "attention": (["model.attention=flash3"], ["unknown attention 'flash3'", "'sdpa'"]),
    "reader_option": (
        ["data.sources.0.options={chunks: 4}"],
        [
            "data.sources.0.options.chunks: unknown option of format 'netcdf'",
            "['time_slice', 'variables']",
        ],
    ),
    "name_300": ([f"name={LONG_NAME}"], ["300 characters, at most 184 allowed: shorten it"]),
    "memory": (
        ["model.embed_dim=262144"],
        ["model: this model needs", "GiB per rank", "the target has", "model.embed_dim"],
    ),
    "variable": (
        ["data.sources.0.variables=[d2m, t850]"],
        ["data.sources.0.variables: ['t850'] are not in", "list only variables the files hold"],
    ),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_validate_refuses_what_train_refuses(capsys, case):
    sets, fragments = MISMATCHES[case]
    args = ["validate", str(DEMO), "-q", *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for frag in fragments:
        assert frag in err, f"{frag!r} not in:\n{err}"


def test_memory_is_judged_against_the_target_not_this_machine(capsys, tmp_path):
    """A 6.5B-parameter model fits 8 ZeRO-3 ranks of 80 GiB, not one 40 GiB GPU nor a node of
    4 such GPUs with ZeRO-1 (the perlmutter profile); the target is the flags or a cluster
    profile, never the login node validate runs on."""
    # the micro-batch is pinned: the figures below must not move when the demo's own changes
    big = ["--set", "model.embed_dim=4096", "--set", "model.heads=32", "--set", "model.depth=32",
           "--set", "schedule.micro_batch_size=9"]  # fmt: skip
    assert main(["validate", str(DEMO), "-q", *big, "--gpu-mem", "40"]) == 2
    assert "needs 154.9 GiB per rank" in (err := capsys.readouterr().err)
    assert "of 40 GiB per rank (--gpu-mem), 1 rank(s)" in err
    zero3 = [*big, "--set", "parallel.zero_stage=3", "--set", "schedule.micro_batch_size=1"]
    assert main(["validate", str(DEMO), "-q", *zero3, "--gpus", "8", "--gpu-mem", "80"]) == 0
    assert main(["validate", str(DEMO), "-q", *big, "--cluster", "perlmutter"]) == 2
    assert "40 GiB per GPU, 1 node(s) x 4 ranks (profile perlmutter)" in (capsys.readouterr().err)
    from scigpt.slurm.submit import load_profile, prepare_job

    job = ["train", str(DEMO), *big]
    with pytest.raises(ConfigError, match=r"needs 78\.0 GiB per rank.*the job's profile"):
        prepare_job(job, load_profile("perlmutter"), nodes=None, time=None, runs_dir=tmp_path)
    assert (
        prepare_job(
            job, load_profile("generic-gpu"), nodes=None, time=None, runs_dir=tmp_path
        ).nodes
        == 1
    )  # 8 x 80 GiB: fits


_TRAIN_CASES = """
import contextlib, io, json, sys
from scigpt.cli import main
out = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    out.append({"code": code, "err": err.getvalue()})
print("RESULTS " + json.dumps(out))
"""


@pytest.mark.slow
def test_train_refuses_the_same_before_writing(tmp_path, torch_extensions_dir):
    """`scigpt train` refuses each mismatch with exit 2 and the same message, before it writes
    anything (one process runs every case: each refusal comes before training starts)."""
    import json

    from tests.conftest import job_env

    runs = tmp_path / "runs"
    cases = [
        ["train", str(DEMO), "--runs-dir", str(runs), "--run-name", f"r-{case}",
         *[a for s in MISMATCHES[case][0] for a in ("--set", s)]]
        for case in sorted(MISMATCHES)
    ]  # fmt: skip
    cases.append(["train", str(DEMO), "--runs-dir", str(runs), "--run-name", LONG_NAME])
    proc = subprocess.run(
        [sys.executable, "-c", _TRAIN_CASES, json.dumps(cases)], capture_output=True, text=True,
        timeout=600, env=job_env(torch_extensions_dir), cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    for case, res in zip([*sorted(MISMATCHES), "run_name_300"], results, strict=True):
        assert res["code"] == 2 and "Traceback" not in res["err"], (case, res)
        frags = MISMATCHES[case][1] if case in MISMATCHES else ["300 characters: use at most"]
        for frag in frags:
            assert frag in res["err"], (case, frag, res["err"])
    assert not runs.exists() or not any(runs.iterdir())  # nothing written


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_in_sweep_transfer_profile_and_run_files_is_refused(tmp_path, capsys, case):
    """Every YAML a user hands SciGPT goes through the bounded loader, not only run configs:
    sweep and transfer files (CLI, exit 2, one line), cluster profiles and a run directory's
    config.yaml (API: a ValueError naming the file)."""
    from scigpt.rundir import RunDir
    from scigpt.slurm.submit import load_profile
    from scigpt.sweep.transfer import Transfer

    make, fragment = HOSTILE[case]
    base = "name: hostile\nbase: runs/demo.yaml\n"
    path = tmp_path / f"{case}.yaml"
    path.write_text(make(base) if case != "self_reference" else base + "x: &n [a, *n]\n")
    want = fragment if case != "self_reference" else "alias *n refers to its own anchor &n"
    assert main(["sweep", str(path), "--list"]) == 2
    err = capsys.readouterr().err
    assert want in err and str(path) in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for load in (Transfer.load, load_profile):
        with pytest.raises(ValueError, match=re.escape(want)):
            load(str(path))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(path.read_text())
    with pytest.raises(ValueError, match=re.escape(want)):
        RunDir(run).read_config()
