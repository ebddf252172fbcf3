"""Model packages: ``scigpt export`` and ``scigpt.load_pretrained`` (scigpt/export/)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from scigpt.export.package import (
    CHECKSUMS,
    PackageError,
    export_run,
    export_tensors_equal,
    load_pretrained,
)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
ENV.setdefault("TORCH_EXTENSIONS_DIR", "/tmp/tex")

# A batch in physical units on the demo's grid (41 x 41, lat 55..45N, lon 0..10E).
LAT = np.linspace(55.0, 45.0, 41, dtype=np.float32)
LON = np.linspace(0.0, 10.0, 41, dtype=np.float32)
TIMES = np.array(["2020-01-01T20:00", "2020-01-01T21:00"], dtype="datetime64[ns]")


@pytest.fixture(scope="module")
def run_dir(demo_package) -> Path:
    """The session's 6-step demo run (conftest.demo_package exported it)."""
    return demo_package.parent / "r"


@pytest.fixture(scope="module")
def pkg(run_dir, tmp_path_factory) -> Path:
    return export_run(run_dir, tmp_path_factory.mktemp("pkgs") / "fp32")


def _ckpt(run_dir: Path) -> Path:
    ckpts = run_dir / "checkpoints"
    return ckpts / (ckpts / "latest").read_text().strip()


def _reference(run_dir: Path):
    """The training model with the checkpoint's consolidated weights, its stats and names."""
    from scigpt.config import ModelConfig
    from scigpt.models.build import build_model, materialise
    from scigpt.models.vit import ModelSpec
    from scigpt.parallel.reshard import client_state, consolidate

    state = client_state(_ckpt(run_dir))
    cfg = state["config"]
    names = [v["name"] for v in state["variables"]]
    spec = ModelSpec(len(names), cfg["data"]["history"])
    model = materialise(build_model(ModelConfig(**cfg["model"]), spec), "cpu", seed=123)
    model.load_state_dict(consolidate(_ckpt(run_dir)), strict=True)
    mean = np.asarray(state["stats"]["mean"]).astype(np.float32)
    std = np.asarray(state["stats"]["std"]).astype(np.float32)
    return model.eval(), names, mean, std


def _physical_fields(mean: np.ndarray, std: np.ndarray, v: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, v, 2, 41, 41)).astype(np.float32)
    return (x * std[None, :, None, None, None] + mean[None, :, None, None, None]).astype(np.float32)


def _ref_forecast(model, names, mean, std, phys):
    """Normalise as the training loader does, run the model, denormalise."""
    from scigpt.data_pipeline.loader import normalise

    norm, _ = normalise(phys, mean[:, None, None, None], std[:, None, None, None])
    batch = {
        "fields": torch.from_numpy(norm),
        "var_ids": torch.arange(len(names)),
        "modality_id": 0,
        "lat": torch.from_numpy(LAT),
        "lon": torch.from_numpy(LON),
        "times": torch.from_numpy(TIMES.astype(np.int64)),
    }
    with torch.no_grad():
        pred = model(batch)
    phys_pred = pred * torch.from_numpy(std)[:, None, None] + torch.from_numpy(mean)[:, None, None]
    return batch, pred, phys_pred


_LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["deepspeed"] = None  # unimportable: the load path must not need it
    sys.modules["triton"] = None
    import numpy as np, torch, scigpt
    pkg, inp, out = sys.argv[1:4]
    m = scigpt.load_pretrained(pkg)
    phys = np.load(inp + "/phys.npy", allow_pickle=False)
    lat = np.load(inp + "/lat.npy"); lon = np.load(inp + "/lon.npy")
    times = np.load(inp + "/times.npy").astype("datetime64[ns]")
    names = m.var_names
    np.save(out + "/forecast.npy", m.forecast(phys, names, lat, lon, times).numpy())
    norm = m.normalise(phys, names)
    with torch.no_grad():
        pred = m(m.batch(norm, names, lat, lon, times))
    np.save(out + "/norm_forecast.npy", pred.numpy())
    bad = sorted(k for k in sys.modules if k.startswith(("scigpt.parallel", "deepspeed"))
                 and sys.modules[k] is not None)
    assert not bad, bad
    print("OK", type(m).__name__, len(m.variables))
    """
)


def test_package_files_and_fresh_process_forecast(run_dir, pkg, tmp_path):
    names = {p.name for p in pkg.iterdir()}
    assert names == {
        "model.safetensors", "config.json", "variables.json", "provenance.json",
        "MODEL_CARD.md", "format.json", "checksums.sha256",
    }  # fmt: skip
    assert not list(pkg.parent.glob("*.tmp-*"))
    assert json.loads((pkg / "format.json").read_text()) == {"format": "scigpt-model", "version": 1}
    listed = (pkg / CHECKSUMS).read_text().split()
    assert set(listed[1::2]) == names - {CHECKSUMS}
    for digest, name in zip(listed[0::2], listed[1::2], strict=True):
        assert hashlib.sha256((pkg / name).read_bytes()).hexdigest() == digest
    prov = json.loads((pkg / "provenance.json").read_text())
    run_prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["git_sha"] == run_prov["git"]["sha"]
    assert prov["data_manifest_sha256"] == run_prov["data_manifest_sha256"]
    assert prov["step"] == 6 and prov["source_run"] == "r"
    assert prov["samples_seen"] > 0 and prov["train_flops"] > 0 and prov["device_hours"] > 0
    assert prov["layout"] == {"dp": 1, "tp": 1, "pp": 1, "zero_stage": 1}
    cfg = json.loads((pkg / "config.json").read_text())
    assert cfg["spec"] == {"num_vars": 14, "history": 2, "num_targets": 0,
                           "leads": {"head": 1}, "forecast_head": None}  # fmt: skip
    assert cfg["data"] == {"history": 2, "lead": 1, "patch_size": cfg["model"]["patch_size"],
                           "time_step_ns": 3600 * 10**9}  # fmt: skip
    variables = json.loads((pkg / "variables.json").read_text())["variables"]
    assert [v["units"] for v in variables[:2]] == ["K", "Pa"]
    assert all(v["std"] > 0 for v in variables)

    model, vnames, mean, std = _reference(run_dir)
    phys = _physical_fields(mean, std, len(vnames))
    np.save(tmp_path / "phys.npy", phys)
    np.save(tmp_path / "lat.npy", LAT)
    np.save(tmp_path / "lon.npy", LON)
    np.save(tmp_path / "times.npy", TIMES.astype(np.int64))
    out = subprocess.run(
        [sys.executable, "-c", _LOADER, str(pkg), str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK PretrainedModel 14" in out.stdout
    _, ref_norm, ref_phys = _ref_forecast(model, vnames, mean, std, phys)
    got_norm = torch.from_numpy(np.load(tmp_path / "norm_forecast.npy"))
    got_phys = torch.from_numpy(np.load(tmp_path / "forecast.npy"))
    torch.testing.assert_close(got_norm, ref_norm, rtol=0, atol=0)  # bitwise
    torch.testing.assert_close(got_phys, ref_phys, rtol=0, atol=0)


def test_bf16_package_close(run_dir, tmp_path):
    out = export_run(run_dir, tmp_path / "bf16", dtype="bf16")
    m = load_pretrained(out, dtype=torch.float32)
    model, vnames, mean, std = _reference(run_dir)
    for name, p in model.state_dict().items():
        assert torch.equal(m.model.state_dict()[name], p.to(torch.bfloat16).float()), name
    batch, ref_norm, _ = _ref_forecast(model, vnames, mean, std, _physical_fields(mean, std, 14))
    with torch.no_grad():
        got = m(batch)
    torch.testing.assert_close(got, ref_norm, rtol=2e-2, atol=2e-2)
    m16 = load_pretrained(out)  # as stored
    assert next(m16.model.parameters()).dtype == torch.bfloat16
    assert m16.forecast(_physical_fields(mean, std, 14), vnames, LAT, LON, TIMES).dtype == (
        torch.float32
    )


def _copy(pkg: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(pkg, dst)
    return dst


def _rewrite_checksum(pkg: Path, name: str) -> None:
    lines = []
    for line in (pkg / CHECKSUMS).read_text().splitlines():
        digest, fname = line.split("  ")
        if fname == name:
            digest = hashlib.sha256((pkg / name).read_bytes()).hexdigest()
        lines.append(f"{digest}  {fname}\n")
    (pkg / CHECKSUMS).write_text("".join(lines))


def test_flipped_byte_fails_checksum(pkg, tmp_path):
    p = _copy(pkg, tmp_path)
    data = bytearray((p / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (p / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"model\.safetensors: checksum mismatch"):
        load_pretrained(p)


def test_missing_variables_json(pkg, tmp_path):
    p = _copy(pkg, tmp_path)
    (p / "variables.json").unlink()
    with pytest.raises(PackageError, match=r"no variables\.json"):
        load_pretrained(p)


def test_unknown_format_version(pkg, tmp_path):
    p = _copy(pkg, tmp_path)
    (p / "format.json").write_text(json.dumps({"format": "scigpt-model", "version": 99}))
    with pytest.raises(PackageError, match=r"version 99 is not supported.*reads version 1"):
        load_pretrained(p)


def test_pickle_as_weights_refused(pkg, tmp_path):
    p = _copy(pkg, tmp_path)
    torch.save({"w": torch.zeros(3)}, p / "model.safetensors")  # a pickle (zip) file
    _rewrite_checksum(p, "model.safetensors")  # as an attacker would
    with pytest.raises(PackageError, match=r"not a valid safetensors file.*never unpickle"):
        load_pretrained(p)


def test_model_card(pkg, run_dir):
    card = (pkg / "MODEL_CARD.md").read_text()
    test = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if '"test"' in line
    ][-1]
    assert f"| model | {test['rmse_model']:.6f} |" in card
    assert f"| persistence | {test['rmse_persistence']:.6f} |" in card
    assert "Licence to Use Copernicus Products" in card
    assert "Hersbach" in card  # attribution from sample_data/PROVENANCE.md
    assert "| d2m |" in card and "Intended use" in card


def test_cli_errors_best_and_existing(run_dir, pkg, tmp_path):
    from scigpt.cli import main

    assert main(["export", str(run_dir), str(pkg)]) == 1  # exists
    assert main(["export", str(run_dir), str(tmp_path / "b"), "--best"]) == 1
    assert not (tmp_path / "b").exists()
    with pytest.raises(FileExistsError, match="already exists"):
        export_run(run_dir, pkg)
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        export_run(run_dir, tmp_path / "b", best=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 3"):
        export_run(run_dir, tmp_path / "b", step=3)
    assert main(["export", str(run_dir), str(tmp_path / "s"), "--step", "6"]) == 0
    export_tensors_equal(pkg, tmp_path / "s")  # same checkpoint: identical tensors
    assert main(["export", str(run_dir), str(tmp_path / "s"), "--force", "--dtype", "bf16"]) == 0
    with pytest.raises(AssertionError, match="float32"):
        export_tensors_equal(pkg, tmp_path / "s")
    assert not list(tmp_path.glob("s.*"))  # no temp or old folders left


def test_import_scigpt_stays_light():
    code = "import sys, scigpt; assert 'torch' not in sys.modules; print(scigpt.load_pretrained)"
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_loader_imports_no_deepspeed():
    """The load path (loader, the package namespace, predict) imports no DeepSpeed, no
    checkpoint reader or engine (scigpt.parallel.reshard/engine), no trainer and not the
    writer; ``scigpt.export.package`` (the old module, kept for its importers) still has the
    writer's names. ~4 s (a fresh interpreter)."""
    code = textwrap.dedent(
        """
        import sys
        import scigpt.export, scigpt.export.loader, scigpt.eval.predict
        heavy = ("scigpt.parallel.reshard", "scigpt.parallel.engine", "scigpt.train",
                 "scigpt.export.writer")
        bad = sorted(m for m in sys.modules
                     if m.split(".")[0] == "deepspeed" or m.startswith(heavy))
        assert not bad, bad
        from scigpt.export.package import export_run, load_pretrained
        assert load_pretrained is scigpt.export.loader.load_pretrained
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_lora_merge_matches_hand_computed():
    """The writer folds adapters with finetune.lora's merge: W + alpha/rank · B·A, checked
    against the formula in float64 (tolerance: one fp32 rounding of the sum, atol 1e-6 on
    weights of size ~1)."""
    from scigpt.export.writer import merge_lora_state

    g = torch.Generator().manual_seed(0)
    w, a, b = (torch.randn(s, generator=g) for s in ((6, 5), (4, 5), (6, 4)))
    full = {"x.weight": w, "x.lora_A": a, "x.lora_B": b, "y.bias": torch.ones(3)}
    out = merge_lora_state(full, {"lora_rank": 4, "lora_alpha": 8.0})
    assert sorted(out) == ["x.weight", "y.bias"]
    want = w.double() + 2.0 * (b.double() @ a.double())
    torch.testing.assert_close(out["x.weight"].double(), want, rtol=0, atol=1e-6)
    assert not torch.equal(out["x.weight"], w)
    with pytest.raises(ValueError, match="lora_rank=8"):
        merge_lora_state(full, {"lora_rank": 8})


@pytest.mark.slow
def test_evaluated_run_exports_its_scores_into_the_card(run_dir, tmp_path):
    """`scigpt evaluate RUN` writes RUN/eval/evaluate/eval.json; a later export puts those rows
    in the card (export reads the file; it imports nothing from scigpt.eval). The card's RMSE
    cells are eval.json's values at 4 significant digits."""
    from scigpt.cli import main
    from scigpt.config_loader import shipped_config

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("store", "tb", "plots"))
    code = main(["evaluate", str(run), str(shipped_config("runs/demo.yaml")), "--set",
                 "eval.acc=false", "--set", "eval.horizon=1", "--set",
                 f"data.store={tmp_path / 'store'}"])  # fmt: skip
    assert code == 0
    rows = json.loads((run / "eval" / "evaluate" / "eval.json").read_text())["gridded"]
    card = (export_run(run, tmp_path / "pkg") / "MODEL_CARD.md").read_text()
    assert "<!-- scigpt-evaluate:begin -->" in card and "WeatherBench-2 scores" in card
    for r in rows:
        assert f"| {r['variable']} | {r['units']} | 1 | {r['rmse']:.4g} |" in card, r
