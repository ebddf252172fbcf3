"""Ensemble packages: several model packages (``scigpt export``) that forecast together.

An ensemble package is a directory::

    ensemble.json        {"format": "scigpt-ensemble", "version": 1, "members": [
                            {"name": "seed0-…", "path": "members/seed0-…",
                             "sha256": sha256 of that member's checksums.sha256}, …]}
    members/<name>/      each a complete model package (its own checksums.sha256)
    checksums.sha256     sha256 of ensemble.json (written last)

A member's ``sha256`` pins its checksum list, which pins every file of the member, so the one
digest in ``ensemble.json`` covers the member's weights, config and card. Like a model package,
checksums catch accidents (a truncated copy), not tampering (sign the members for that).

Every member must be the same model (architecture, ``ModelSpec``, variables in the same order,
task): an ensemble differs in weights only. Loading goes through ``load_pretrained`` — safetensors
and JSON, no pickle — and this module imports no DeepSpeed (``scigpt.export.loader`` does not).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scigpt.atomic import atomic_dir, sha256_file
from scigpt.export.errors import PackageError
from scigpt.export.loader import PretrainedModel, load_pretrained
from scigpt.export.verify import CHECKSUMS, CONFIG, FORMAT, read_json

ENSEMBLE = "ensemble.json"
ENSEMBLE_FORMAT = "scigpt-ensemble"
ENSEMBLE_VERSION = 1

__all__ = [
    "ENSEMBLE",
    "is_ensemble",
    "load_ensemble",
    "member_paths",
    "write_ensemble",
]


def is_ensemble(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble package (it holds ``ensemble.json``)."""
    return (Path(path) / ENSEMBLE).is_file()


def _same_model(config: dict[str, Any]) -> dict[str, Any]:
    """What every member must share: model, spec, and the data facts that drive inference."""
    run = config.get("run_config") or {}
    return {
        "model": config.get("model"),
        "spec": config.get("spec"),
        "data": config.get("data"),
        "task": (run.get("data") or {}).get("task", "forecast"),
        "operator_outputs": (run.get("data") or {}).get("operator_outputs", []),
    }


def write_ensemble(
    members: Sequence[str | Path],
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    force: bool = False,
) -> Path:
    """Copy the model packages ``members`` into an ensemble package ``out`` (atomically: built
    beside it, then renamed). ``names`` (default the folders' names) name the members. Refused
    when the members are not the same model or a member's files do not match its checksums."""
    members = [Path(m).resolve() for m in members]
    out = Path(out).resolve()
    if len(members) < 2:
        raise ValueError(f"an ensemble needs 2 or more member packages, got {len(members)}")
    names = list(names) if names is not None else [m.name for m in members]
    if len(set(names)) != len(names) or len(names) != len(members):
        raise ValueError(f"member names must be unique, one per member: {names}")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists: choose another OUT or pass --force")
    first = None
    for m in members:
        if not (m / FORMAT).is_file():
            raise PackageError(f"{m}: not a model package (no {FORMAT}); export the run first")
        shared = _same_model(read_json(m, CONFIG))
        if first is None:
            first = (m, shared)
        elif shared != first[1]:
            diff = sorted(k for k in shared if shared[k] != first[1][k])
            raise PackageError(
                f"{m} is not the same model as {first[0]} (they differ in {diff}): the members "
                "of an ensemble differ in weights only"
            )

    def fill(tmp: Path) -> None:
        entries = []
        for m, name in zip(members, names, strict=True):
            dest = tmp / "members" / name
            shutil.copytree(m, dest)
            _verify_files(dest)
            entries.append({"name": name, "path": f"members/{name}",
                            "sha256": sha256_file(dest / CHECKSUMS)})  # fmt: skip
        doc = {"format": ENSEMBLE_FORMAT, "version": ENSEMBLE_VERSION, "members": entries}
        (tmp / ENSEMBLE).write_text(json.dumps(doc, indent=2) + "\n")
        (tmp / CHECKSUMS).write_text(f"{sha256_file(tmp / ENSEMBLE)}  {ENSEMBLE}\n")

    return atomic_dir(out, fill)


def _verify_files(pkg: Path) -> None:
    """Every file named in a package's checksums.sha256 matches it."""
    try:
        lines = (pkg / CHECKSUMS).read_text().splitlines()
    except FileNotFoundError:
        raise PackageError(f"{pkg}: the package has no {CHECKSUMS}") from None
    for line in lines:
        digest, _, name = line.partition("  ")
        if not (pkg / name).is_file() or sha256_file(pkg / name) != digest:
            raise PackageError(f"{pkg / name}: does not match {pkg / CHECKSUMS}")


def member_paths(path: str | Path, *, verify: bool = True) -> list[tuple[str, Path]]:
    """(name, package folder) of every member of the ensemble package ``path``; with ``verify``,
    ``ensemble.json`` must match ``checksums.sha256`` and each member's checksum list its
    recorded sha256. Problems are ``PackageError``s naming the file."""
    pkg = Path(path)
    doc = read_json(pkg, ENSEMBLE)
    if not isinstance(doc, dict) or doc.get("format") != ENSEMBLE_FORMAT:
        raise PackageError(f"{pkg / ENSEMBLE}: format is not {ENSEMBLE_FORMAT!r}")
    if doc.get("version") != ENSEMBLE_VERSION:
        raise PackageError(
            f"{pkg / ENSEMBLE}: version {doc.get('version')!r} is not supported "
            f"(this scigpt reads {ENSEMBLE_VERSION}); upgrade scigpt"
        )
    entries = doc.get("members")
    if not isinstance(entries, list) or len(entries) < 2:
        raise PackageError(f"{pkg / ENSEMBLE}: 'members' must list 2 or more members")
    if verify:
        _verify_files(pkg)
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not {"name", "path", "sha256"} <= set(e):
            raise PackageError(f"{pkg / ENSEMBLE}: members[{i}] needs name, path and sha256")
        rel = Path(str(e["path"]))
        if rel.is_absolute() or ".." in rel.parts:
            raise PackageError(f"{pkg / ENSEMBLE}: members[{i}].path {rel} leaves the package")
        member = pkg / rel
        if verify:
            if not (member / CHECKSUMS).is_file():
                raise PackageError(f"{member}: member {e['name']!r} has no {CHECKSUMS}")
            if sha256_file(member / CHECKSUMS) != e["sha256"]:
                raise PackageError(
                    f"{member / CHECKSUMS}: does not match the sha256 {pkg / ENSEMBLE} records "
                    f"for member {e['name']!r} (a changed or swapped member)"
                )
        out.append((str(e["name"]), member))
    return out


def load_ensemble(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    verify: bool = True,
    trusted_keys: Sequence[Any] | None = None,
) -> list[PretrainedModel]:
    """Every member of an ensemble package as a ``PretrainedModel`` (eval mode), in order."""
    models = []
    for _, member in member_paths(path, verify=verify):
        models.append(load_pretrained(member, device=device, verify=verify,
                                      trusted_keys=trusted_keys))  # fmt: skip
    return models
