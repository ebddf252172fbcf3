"""Malformed packages are PackageErrors naming the file and field (through load_pretrained,
`scigpt predict` and `scigpt finetune`), and Ed25519-signed packages fail verification after a
one-byte change anywhere. Uses the session's demo package (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from scigpt.cli import main
from scigpt.config_loader import shipped_config
from scigpt.export.package import CHECKSUMS, PackageError, load_pretrained

DEMO = shipped_config("runs/demo.yaml")


def _rewrite_checksums(pkg: Path) -> None:
    """What someone editing a package does to get past the checksums."""
    lines = []
    for line in (pkg / CHECKSUMS).read_text().splitlines():
        _, _, name = line.partition("  ")
        lines.append(f"{hashlib.sha256((pkg / name).read_bytes()).hexdigest()}  {name}\n")
    (pkg / CHECKSUMS).write_text("".join(lines))


def _edit(pkg: Path, name: str, change) -> None:
    data = json.loads((pkg / name).read_text())
    data = change(data) or data
    (pkg / name).write_text(json.dumps(data, indent=2))
    _rewrite_checksums(pkg)


def _del(d: dict, *path):
    for k in path[:-1]:
        d = d[k]
    del d[path[-1]]


def _put(d: dict, value, *path):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


# (file, edit, fragment of the PackageError after "<pkg>/<file>: ")
EDITS = {
    "spec_history_missing": ("config.json", lambda c: _del(c, "spec", "history"),
                             "field spec.history: Field required"),
    "spec_history_text": ("config.json", lambda c: _put(c, "two", "spec", "history"),
                          "field spec.history: Input should be a valid integer"),
    "num_vars_zero": ("config.json", lambda c: _put(c, 0, "spec", "num_vars"),
                      "field spec.num_vars: Input should be greater than 0"),
    "heads_5": ("config.json", lambda c: _put(c, 5, "model", "heads"),
                "field model: model.embed_dim=96 is not divisible by model.heads=5"),
    "unknown_model_key": ("config.json", lambda c: _put(c, 3, "model", "depht"),
                          "field model.depht: Extra inputs are not permitted"),
    "data_missing": ("config.json", lambda c: _del(c, "data"), "field data: Field required"),
    "top_level_list": ("config.json", lambda c: [c], "field (top level): Input should be"),
    "lead_text": ("config.json", lambda c: _put(c, {"head": "one"}, "spec", "leads"),
                  "field spec.leads.head: Input should be a valid integer"),
    "unknown_head": ("config.json", lambda c: _put(c, "nope", "spec", "forecast_head"),
                     "field spec: forecast_head 'nope' is not one of the heads"),
    "time_step": ("config.json", lambda c: _put(c, -5, "data", "time_step_ns"),
                  "field data.time_step_ns: Input should be greater than 0"),
    "history_differs": ("config.json", lambda c: _put(c, 3, "spec", "history"),
                        "spec.history=3 differs from data.history=2"),
    "embed_dim_weights": ("config.json", lambda c: _put(c, 128, "model", "embed_dim"),
                          "does not fit config.json's model"),
    "mean_missing": ("variables.json", lambda v: _del(v, "variables", 0, "mean"),
                     "field variables.0.mean: Field required"),
    "std_zero": ("variables.json", lambda v: _put(v, 0.0, "variables", 3, "std"),
                 "field variables.3.std: Input should be greater than 0"),
    "std_text": ("variables.json", lambda v: _put(v, "x", "variables", 1, "std"),
                 "field variables.1.std: Input should be a valid number"),
    "mean_nan": ("variables.json", lambda v: _put(v, float("nan"), "variables", 2, "mean"),
                 "field variables.2.mean: Input should be a finite number"),
    "not_a_list": ("variables.json", lambda v: _put(v, {"d2m": 1}, "variables"),
                   "field variables: Input should be a valid list"),
    "one_fewer": ("variables.json", lambda v: v["variables"].pop() and None,
                  "field variables: 13 entries, but config.json's spec.num_vars is 14"),
    "duplicate": ("variables.json", lambda v: _put(v, "d2m", "variables", 1, "name"),
                  "variables ['d2m'] are listed twice"),
    "ids_shuffled": ("variables.json", lambda v: _put(v, 5, "variables", 0, "id"),
                     "variable ids must be 0..13 in order"),
    "provenance_list": ("provenance.json", lambda p: [p],
                        "field (top level): must be a JSON object"),
}  # fmt: skip


@pytest.fixture
def edited(demo_package, tmp_path):
    def make(case: str) -> tuple[Path, str, str]:
        name, change, fragment = EDITS[case]
        pkg = tmp_path / case
        shutil.copytree(demo_package, pkg)
        _edit(pkg, name, change)
        return pkg, name, fragment

    return make


@pytest.mark.parametrize("case", sorted(EDITS))
def test_edited_package_is_a_package_error_naming_file_and_field(
    edited, case, capsys, sample_era5_dir, tmp_path
):
    pkg, name, fragment = edited(case)
    with pytest.raises(PackageError) as exc:
        load_pretrained(pkg)
    assert f"{pkg / name}: " in str(exc.value) or f"{pkg / 'model.safetensors'}" in str(exc.value)
    assert fragment in str(exc.value), str(exc.value)
    inputs = [str(p) for p in sorted(sample_era5_dir.glob("*.nc"))]
    code = main(["predict", str(pkg), *inputs, "--lead", "1h", "--out", str(tmp_path / "f.nc")])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err, err


def test_finetune_refuses_an_edited_package(edited, capsys, tmp_path):
    pkg, _, fragment = edited("spec_history_text")
    code = main(["finetune", str(pkg), str(DEMO), "--runs-dir", str(tmp_path / "runs"),
                 "--run-name", "ft"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


# ---- signatures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signed(demo_package, tmp_path_factory):
    """A key pair (scigpt keygen) and the demo run exported again, signed with it."""
    root = tmp_path_factory.mktemp("signed")
    assert main(["keygen", str(root / "site.key")]) == 0
    assert main(["keygen", str(root / "other.key")]) == 0
    run = demo_package.parent / "r"
    assert main(["export", str(run), str(root / "pkg"), "--sign", str(root / "site.key")]) == 0
    return root


def test_keygen_and_signed_export(signed, demo_package, capsys):
    assert (signed / "site.key").stat().st_mode & 0o777 == 0o600  # the private key stays private
    assert (signed / "site.key.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert main(["keygen", str(signed / "site.key")]) == 1  # a key is never overwritten
    assert "already exists" in capsys.readouterr().err
    pm = load_pretrained(signed / "pkg", trusted_keys=[signed / "site.key.pub"])
    assert pm.var_names == load_pretrained(demo_package).var_names
    with pytest.raises(PackageError, match="which is not one of the trusted keys"):
        load_pretrained(signed / "pkg", trusted_keys=[signed / "other.key.pub"])
    with pytest.raises(PackageError, match="is not signed"):
        load_pretrained(demo_package, trusted_keys=[signed / "site.key.pub"])


def test_one_byte_changed_anywhere_fails_verification(signed, tmp_path):
    """Every file of the signed package, its first, middle and last byte flipped, with the
    checksum left as it is or rewritten to match (what a forger does): each load fails."""
    pkg = tmp_path / "pkg"
    shutil.copytree(signed / "pkg", pkg)
    trusted = [signed / "site.key.pub"]
    files = sorted(p.name for p in pkg.iterdir())
    assert "signature.json" in files and len(files) == 8
    tried = 0
    for name in files:
        original = (pkg / name).read_bytes()
        for pos in (0, len(original) // 2, len(original) - 1):
            for forge in (False, True):
                if forge and name in ("checksums.sha256", "signature.json"):
                    continue  # not covered by a checksum: the flip alone is the case
                data = bytearray(original)
                data[pos] ^= 0x01
                (pkg / name).write_bytes(bytes(data))
                saved = (pkg / CHECKSUMS).read_bytes()
                if forge:
                    _rewrite_checksums(pkg)
                with pytest.raises(PackageError):
                    load_pretrained(pkg, trusted_keys=trusted)
                (pkg / CHECKSUMS).write_bytes(saved)
                tried += 1
        (pkg / name).write_bytes(original)
    assert tried == 6 * 6 + 2 * 3
    load_pretrained(pkg, trusted_keys=trusted)  # restored: verifies again
    (pkg / "extra.bin").write_bytes(b"\x00")
    with pytest.raises(PackageError, match=r"\['extra.bin'\] are not covered by the signature"):
        load_pretrained(pkg, trusted_keys=trusted)
    os.remove(pkg / "extra.bin")


def test_predict_takes_trusted_keys(signed, sample_era5_dir, tmp_path, capsys):
    inputs = [str(p) for p in sorted(sample_era5_dir.glob("*.nc"))]
    base = ["predict", str(signed / "pkg"), *inputs, "--lead", "1h", "--out"]
    assert main([*base, str(tmp_path / "a.nc"), "--trusted-key",
                 str(signed / "site.key.pub")]) == 0  # fmt: skip
    assert main([*base, str(tmp_path / "b.nc"), "--trusted-key",
                 str(signed / "other.key.pub")]) == 2  # fmt: skip
    assert "not one of the trusted keys" in capsys.readouterr().err
    assert not (tmp_path / "b.nc").exists()


@pytest.mark.slow
def test_evaluate_scores_a_signed_package_and_leaves_it_signed(signed, tmp_path, capsys):
    """`scigpt evaluate` would rewrite the card and its checksum, breaking the signature: for a
    signed package it writes its tables beside it and leaves the package as it is."""
    pkg = tmp_path / "pkg"
    shutil.copytree(signed / "pkg", pkg)
    before = {p.name: p.read_bytes() for p in pkg.iterdir()}
    key = str(signed / "site.key.pub")
    code = main(["evaluate", str(pkg), str(DEMO), "--set", "eval.acc=false", "--trusted-key", key,
                 "--set", "logging.progress=false"])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-3000:]
    assert "is signed: its MODEL_CARD.md is left as it is" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in pkg.iterdir()} == before
    assert (tmp_path / "pkg-eval" / "metrics.csv").is_file()
    load_pretrained(pkg, trusted_keys=[key])
