"""YAML → ``RunConfig``: composition, ``--set`` overrides, ``${ENV}`` interpolation, clear errors.

Order of resolution (each later step sees the result of the earlier ones):
1. ``yaml.safe_load`` of the run file (never a Python-object loader: configs are untrusted input).
2. ``model.preset: NAME`` pulls ``configs/models/NAME.yaml`` (or a path) *under* the run's own
   model keys, so a run can say "vit-tiny but depth 4".
3. ``--set a.b=c`` overrides; values are parsed as YAML scalars/lists (``--set optim.lr=3e-4``).
4. ``${VAR}`` / ``${VAR:-default}`` interpolation in every string.
5. Validation into typed objects; every problem becomes one line that names the key, the value
   and the fix, collected into a single ``ConfigError``.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from scigpt.config import RunConfig
from scigpt.safe_yaml import (  # noqa: F401  (re-exported: the config loader's YAML rules)
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    YAMLRefused,
    safe_load,
)

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A user-facing configuration problem; the CLI prints it and exits with code 2."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid config {source}:\n{lines}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Sent from rank 0 to the other ranks (broadcast_object_list pickles it).
        return (ConfigError, (self.source, self.problems))


@dataclass
class LoadedConfig:
    config: RunConfig
    path: Path | None  # the run file; relative data paths resolve against its folder

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def resolve_path(self, p: str) -> Path:
        return resolve_path(p, self.base_dir)

    def resolved_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data, data paths made independent of the cwd."""
        d = self.config.model_dump(mode="json")
        for src in d["data"]["sources"]:
            if src["path"] is not None and not src["path"].startswith("pkg:"):
                src["path"] = str(self.resolve_path(src["path"]))
        return d


def resolve_path(p: str, base_dir: Path) -> Path:
    """``pkg:rel`` → inside the installed scigpt package; relative → against ``base_dir``."""
    if p.startswith("pkg:"):
        return Path(str(files("scigpt").joinpath(p[4:])))
    path = Path(p).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def shipped_config(rel: str) -> Path:
    """Path of a config shipped as package data, e.g. ``runs/demo.yaml``."""
    return Path(str(files("scigpt.configs").joinpath(rel)))


def find_config(path: str | Path) -> Path:
    """A config path as given, else the shipped config of that name (``runs/demo.yaml``)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    shipped = shipped_config(str(path))
    return shipped if shipped.is_file() else path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read the file: {e.strerror}"]) from None
    try:
        data = safe_load(text)
    except YAMLRefused as e:
        raise ConfigError(str(path), [str(e)]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(str(path), [f"YAML syntax error{where}: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), [f"the top level must be a mapping of keys, got {type(data).__name__}"]
        )
    return data


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def available_presets() -> list[str]:
    folder = files("scigpt.configs").joinpath("models")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _apply_preset(raw: dict[str, Any], source: str, base_dir: Path) -> dict[str, Any]:
    model = raw.get("model")
    if not isinstance(model, dict) or model.get("preset") is None:
        return raw
    name = model["preset"]
    if not isinstance(name, str):
        raise ConfigError(source, [f"model.preset={name!r} must be a preset name or a path"])
    if name.endswith((".yaml", ".yml")):
        path = resolve_path(name, base_dir)
    else:
        path = Path(str(files("scigpt.configs").joinpath("models", f"{name}.yaml")))
    if not path.is_file():
        raise ConfigError(
            source,
            [
                f"model.preset={name!r} not found: use one of {available_presets()} "
                "or a path to a .yaml file"
            ],
        )
    preset = _read_yaml(path)
    if "preset" in preset:
        raise ConfigError(str(path), ["a model preset cannot itself name a preset"])
    merged = dict(raw)
    merged["model"] = _deep_merge(preset, model)
    return merged


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` → (["a", "b", "0", "c"], parsed value)."""
    if "=" not in item:
        raise ConfigError("--set", [f"--set {item!r} must look like key.path=value"])
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError("--set", [f"--set {item!r}: empty key segment in {key!r}"])
    try:
        value = safe_load(text) if text.strip() else ""
    except YAMLRefused as e:
        raise ConfigError("--set", [f"--set {item!r}: {e}"]) from None
    except yaml.YAMLError:
        value = text
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        "--set", [f"--set {item!r}: {here} is not an index of a {len(node)}-list"]
                    )
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ConfigError("--set", [f"--set {item!r}: {here} is a value, not a section"])
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError("--set", [f"--set {item!r}: {last} is not a list index"])
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError("--set", [f"--set {item!r}: cannot set a key inside a value"])
    return out


def interpolate(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string, recursively."""
    if isinstance(value, dict):
        return {
            k: interpolate(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in env and env[var] != "":
            return env[var]
        if default is not None:
            return default
        raise ConfigError(
            "interpolation",
            [
                f"{where}={value!r}: environment variable {var} is not set: export {var}=... "
                f"or write ${{{var}:-default}}"
            ],
        )

    out = _ENV_RE.sub(sub, value)
    # A whole-string substitution of a number/bool keeps its YAML type ("${STEPS}" -> 300).
    if out != value and _ENV_RE.fullmatch(value):
        try:
            parsed = safe_load(out)
        except (yaml.YAMLError, YAMLRefused):
            return out
        if isinstance(parsed, (int, float, bool)):
            return parsed
    return out


def _fields_of(model: type[BaseModel], loc: Sequence[Any]) -> list[str] | None:
    """Field names of the sub-model at ``loc`` (for did-you-mean suggestions)."""
    cls: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        cls = _model_in(ann)
        if cls is None:
            return None
    return list(getattr(cls, "model_fields", {}))


def _model_in(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_validation_error(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors(include_url=False):
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        key = ".".join(str(p) for p in loc)
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        typ = e["type"]
        if typ == "extra_forbidden":
            valid = _fields_of(RunConfig, loc[:-1]) or []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(f"unknown key '{key}': {hint}valid keys here: {', '.join(valid)}")
        elif typ == "missing":
            problems.append(f"missing required key '{key}': add it to the config")
        elif e["type"] == "value_error" and not loc:
            problems.append(msg)
        elif e["type"] == "value_error":
            if msg.startswith(key.split(".")[0]):
                problems.append(msg)  # a cross-field check that already names its keys
            elif isinstance(e.get("input"), dict):
                problems.append(f"{key}: {msg}")
            else:
                problems.append(f"{key}={e.get('input')!r}: {msg}")
        else:
            hint = _HINTS.get(typ, "")
            if typ == "string_too_long":
                msg = f"{len(e['input'])} characters, at most {e['ctx']['max_length']} allowed"
            problems.append(f"{key}={_shown(e.get('input'))}: {msg}{hint}")
    return problems


# The fix for pydantic's generic messages (its message already says what is wrong).
_HINTS = {
    "finite_number": ": .inf and .nan are not allowed here, give a finite value",
    "less_than": ": use a smaller value",
    "less_than_equal": ": use a smaller value",
    "string_too_long": ": shorten it",
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...{text[-8:]}"


def _json_default(o: Any) -> str:
    # yaml.safe_load turns unquoted timestamps into date/datetime objects.
    if isinstance(o, (dt.date, dt.datetime)):
        return o.isoformat()
    raise TypeError(f"value {o!r} of type {type(o).__name__} is not valid in a config")


def validate(raw: Mapping[str, Any], source: str = "<config>") -> RunConfig:
    # Validate in JSON mode: strict types (no "3" -> 3), yet lists may fill tuples and ISO
    # strings may fill datetimes, exactly as they appear in YAML.
    try:
        text = json.dumps(raw, default=_json_default)
    except TypeError as e:
        raise ConfigError(source, [str(e)]) from None
    try:
        return RunConfig.model_validate_json(text)
    except ValidationError as err:
        raise ConfigError(source, format_validation_error(err)) from None


def load_config(
    path: str | Path,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Load, compose, override, interpolate and validate a run config file."""
    path = find_config(path)
    env = os.environ if env is None else env
    raw = _read_yaml(path)
    raw = apply_overrides(raw, overrides)
    raw = _apply_preset(raw, str(path), path.parent)
    try:
        raw = interpolate(raw, env)
    except ConfigError as e:
        raise ConfigError(str(path), e.problems) from None
    return LoadedConfig(config=validate(raw, str(path)), path=path.resolve())


def load_resolved(data: Mapping[str, Any], source: str) -> LoadedConfig:
    """Re-validate a resolved config (from a run directory or a checkpoint)."""
    return LoadedConfig(config=validate(data, source), path=None)
