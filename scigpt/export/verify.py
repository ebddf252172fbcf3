"""Verifying a model package before anything is built from it: format, files, checksums, the
signature (``scigpt.export.signing``), and the fields of ``config.json`` and ``variables.json``.

A package edited by hand or by a tool, with its checksums rewritten to match, passes the checksum
check; it must still fail *here*, with a ``PackageError`` naming the file and the field, and not
later as a ``KeyError`` in model building or a ``TypeError`` in ``scigpt predict``. The models
below state what ``scigpt export`` writes (format version 1, earlier exports included: fields
added later are optional).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scigpt.atomic import sha256_file
from scigpt.config import ModelConfig
from scigpt.export import signing
from scigpt.export.errors import PackageError

FORMAT_NAME = "scigpt-model"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
VARIABLES = "variables.json"
PROVENANCE = "provenance.json"
CARD = "MODEL_CARD.md"
FORMAT = "format.json"
CHECKSUMS = "checksums.sha256"
# Every file a package must hold, besides checksums.sha256 itself.
REQUIRED = (FORMAT, CONFIG, VARIABLES, PROVENANCE, CARD, WEIGHTS)


def read_json(pkg: Path, name: str) -> Any:
    try:
        return json.loads((pkg / name).read_text())
    except FileNotFoundError:
        raise PackageError(f"{pkg}: the package has no {name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{pkg / name}: not valid JSON ({e})") from None


class _Fields(BaseModel):
    # Strict: JSON gives real ints/floats/strings; "2" is not a history length. Unknown keys are
    # allowed (a newer exporter may add some); known ones must be right.
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


Pos = Annotated[int, Field(gt=0)]
NonNeg = Annotated[int, Field(ge=0)]


class PooledSpec(_Fields):
    kind: Literal["regression", "classification"]
    targets: list[str]


class BinsSpec(_Fields):
    n_tokens: Annotated[int, Field(ge=5)]
    low: float
    high: float
    pad_id: NonNeg = 0
    eos_id: NonNeg = 1
    n_special: NonNeg = 2


class Spec(_Fields):
    num_vars: Pos
    history: Pos
    num_targets: NonNeg = 0
    leads: dict[str, NonNeg] | None = None  # head key -> lead in time steps ("head": pretrained)
    forecast_head: str | None = None
    pooled: PooledSpec | None = None
    bins: BinsSpec | None = None  # the Chronos-style vocabulary of binned series sources
    quantiles: list[Annotated[float, Field(gt=0, lt=1)]] | None = None  # quantile head levels

    @model_validator(mode="after")
    def _active_head_known(self) -> Spec:
        if self.forecast_head is not None and self.forecast_head not in (self.leads or {}):
            raise ValueError(
                f"forecast_head {self.forecast_head!r} is not one of the heads in leads "
                f"{sorted(self.leads or {})}"
            )
        return self


class DataFacts(_Fields):
    history: Pos
    lead: NonNeg
    patch_size: Pos
    time_step_ns: Pos | None = None  # exports before it was recorded: None


class PackageConfig(_Fields):
    model: ModelConfig
    spec: Spec
    data: DataFacts
    run_config: dict[str, Any] = {}

    @model_validator(mode="after")
    def _consistent(self) -> PackageConfig:
        if self.spec.history != self.data.history:
            raise ValueError(
                f"spec.history={self.spec.history} differs from data.history={self.data.history}"
            )
        if self.model.patch_size != self.data.patch_size:
            raise ValueError(
                f"model.patch_size={self.model.patch_size} differs from "
                f"data.patch_size={self.data.patch_size}"
            )
        return self


class Variable(_Fields):
    id: NonNeg
    name: Annotated[str, Field(min_length=1)]
    units: str
    mean: float
    std: Annotated[float, Field(gt=0)]
    modality: str | None = None
    level: float | None = None
    level_type: str | None = None
    long_name: str | None = None
    source: str | None = None


class Variables(_Fields):
    variables: Annotated[list[Variable], Field(min_length=1)]

    @model_validator(mode="after")
    def _registry(self) -> Variables:
        ids = [v.id for v in self.variables]
        if ids != list(range(len(ids))):
            raise ValueError(f"variable ids must be 0..{len(ids) - 1} in order, got {ids[:10]}")
        names = [v.name for v in self.variables]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variables {dup} are listed twice")
        return self


def _problem(path: Path, err: ValidationError) -> PackageError:
    e = err.errors(include_url=False)[0]
    field = ".".join(str(p) for p in e["loc"]) or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    shown = repr(e.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return PackageError(
        f"{path}: field {field}: {msg} (found {shown}){more}; the file is not what `scigpt "
        "export` writes: restore it or re-export the package"
    )


def check_config(path: Path, data: Any) -> dict[str, Any]:
    """``config.json`` checked field by field; returns it unchanged."""
    try:
        PackageConfig.model_validate(data)
    except ValidationError as err:
        raise _problem(path, err) from None
    return data


def check_variables(path: Path, data: Any, num_vars: int) -> list[dict[str, Any]]:
    """``variables.json`` checked (one entry per registry id, statistics finite, std > 0, as
    many as config.json's ``spec.num_vars``); returns its ``variables`` list."""
    try:
        Variables.model_validate(data)
    except ValidationError as err:
        raise _problem(path, err) from None
    variables = data["variables"]
    if len(variables) != num_vars:
        raise PackageError(
            f"{path}: field variables: {len(variables)} entries, but config.json's "
            f"spec.num_vars is {num_vars}; restore the files or re-export the package"
        )
    return variables


def check_provenance(path: Path, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PackageError(
            f"{path}: field (top level): must be a JSON object, found {type(data).__name__}; "
            "restore it or re-export the package"
        )
    return data


def _read_checksums(pkg: Path) -> dict[str, str]:
    path = pkg / CHECKSUMS
    if not path.is_file():
        raise PackageError(f"{pkg}: the package has no {CHECKSUMS}")
    sums: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        name = name.strip()
        if len(digest) != 64 or not name or "/" in name or "\\" in name or name.startswith("."):
            raise PackageError(f"{path}: line {n} is not '<sha256>  <file name>'")
        sums[name] = digest.lower()
    return sums


def verify_package(path: str | Path, trusted_keys: Sequence[Any] | None = None) -> dict[str, Any]:
    """Check format name and version, that every file is there, and every checksum; returns
    format.json. A signed package's signature is checked too. With ``trusted_keys`` (public
    keys: ``.pub`` files, PEM, raw bytes) the package must be signed by one of them and hold no
    file the signature does not cover. Raises ``PackageError`` naming the file at fault."""
    pkg = Path(path)
    if not pkg.is_dir():
        raise PackageError(f"{pkg} is not a directory: a model package is a folder")
    fmt = read_json(pkg, FORMAT)
    if not isinstance(fmt, dict) or fmt.get("format") != FORMAT_NAME:
        got = fmt.get("format") if isinstance(fmt, dict) else fmt
        raise PackageError(f"{pkg / FORMAT}: format {got!r} is not a {FORMAT_NAME!r} package")
    if fmt.get("version") not in SUPPORTED_VERSIONS:
        raise PackageError(
            f"{pkg / FORMAT}: {FORMAT_NAME} version {fmt.get('version')!r} is not supported; "
            f"this scigpt reads version {', '.join(map(str, SUPPORTED_VERSIONS))} "
            "(upgrade scigpt, or re-export the model with this one)"
        )
    sums = _read_checksums(pkg)
    for name in REQUIRED:
        if not (pkg / name).is_file():
            raise PackageError(f"{pkg}: the package has no {name} (missing file)")
        if name not in sums:
            raise PackageError(f"{pkg / CHECKSUMS} lists no checksum for {name}")
    for name, digest in sums.items():
        if not (pkg / name).is_file():
            raise PackageError(f"{pkg}: {name} is listed in {CHECKSUMS} but missing")
        if sha256_file(pkg / name) != digest:
            raise PackageError(
                f"{pkg / name}: checksum mismatch (the file is corrupt or was modified)"
            )
    if trusted_keys is not None:
        signing.verify_signature(pkg, trusted_keys)
        covered = {*sums, CHECKSUMS, signing.SIGNATURE}
        extra = sorted(p.name for p in pkg.iterdir() if p.name not in covered)
        if extra:
            raise PackageError(
                f"{pkg}: {extra} are not covered by the signature: a signed package holds only "
                "the files it lists"
            )
    elif signing.is_signed(pkg):
        signing.verify_signature(pkg, None)  # finds damage; forgery needs trusted keys
    return fmt


def read_package(
    path: str | Path, *, trusted_keys: Sequence[Any] | None = None, verify: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A package's config.json and variables.json, verified (format, checksums, signature)
    and checked field by field (the models above)."""
    pkg = Path(path)
    if verify:
        verify_package(pkg, trusted_keys)
    elif trusted_keys is not None:
        raise ValueError("trusted_keys needs verify=True: the signature is part of verifying")
    config = check_config(pkg / CONFIG, read_json(pkg, CONFIG))
    variables = check_variables(
        pkg / VARIABLES, read_json(pkg, VARIABLES), config["spec"]["num_vars"]
    )
    return config, variables
