"""Sweep files: a base run config, axes over any config key, an objective and a budget.

```yaml
name: tiny-scaling
base: ../configs/runs/demo.yaml      # relative to this file, or a shipped config (runs/demo.yaml)
set: {schedule.steps: 30}            # overrides shared by every point
design: grid                         # or compute_matched
axes:                                # grid: the cross product of every axis
  model.embed_dim: [32, 64, 96]
  data.train_fraction: [0.5, 1.0]
objective: test                      # test | best_val | final_val
metric: model_mse                    # model_mse | rmse_model
max_points: 24                       # the budget: refuse larger designs
max_retries: 1                       # a failed point is retried this many times
slurm: {cluster: local, throttle: 2} # for --slurm: one job array per resource shape
```

``design: compute_matched`` takes ``budgets`` (training FLOPs) × ``models`` (each a dict of
config settings) × ``data_fractions``: for every budget, each model/data split trains for the
number of steps that spends the budget (``runner`` computes steps from the model's FLOPs per
sample, ``scigpt.models.sizing``). Points get stable names from their settings
(``point_name``), so a sweep resumed or extended later finds its finished points again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scigpt.config_loader import find_config
from scigpt.rundir import check_run_name
from scigpt.safe_yaml import load_yaml_file


class SlurmSweep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cluster: str = "local"
    throttle: Annotated[int, Field(ge=1)] = 4  # array tasks running at once (%k)
    nodes: Annotated[int, Field(ge=1)] | None = None
    time: str | None = None


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base: str
    set: dict[str, Any] = {}
    design: Literal["grid", "compute_matched"] = "grid"
    axes: dict[str, list[Any]] = {}
    budgets: list[Annotated[float, Field(gt=0)]] = []
    models: list[dict[str, Any]] = []
    data_fractions: list[Annotated[float, Field(gt=0, le=1)]] = [1.0]
    objective: Literal["test", "best_val", "final_val"] = "test"
    metric: Literal["model_mse", "rmse_model"] = "model_mse"
    max_points: Annotated[int, Field(ge=1)] = 64
    max_retries: Annotated[int, Field(ge=0)] = 1
    slurm: SlurmSweep = SlurmSweep()


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its stable name and its config overrides (axis settings first)."""

    name: str
    settings: dict[str, Any]  # the axis values that define the point
    overrides: dict[str, Any] = field(default_factory=dict)  # settings + derived (steps)
    budget: float | None = None  # compute-matched: the FLOPs this point spends


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def point_name(settings: dict[str, Any]) -> str:
    """Readable and stable: ``embed_dim32-train_fraction0.5-1a2b3c`` (the hash keeps two
    settings that print alike apart)."""
    text = "-".join(f"{_short(k)}{v}" for k, v in settings.items())
    text = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80] or "point"
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return check_run_name(f"{text}-{digest[:6]}")


def load_spec(path: str | Path, model: type[BaseModel], what: str) -> tuple[Any, Path]:
    """Read and validate an experiment file (a path, or a shipped one such as
    ``sweeps/tiny-scaling.yaml``) with the bounded YAML loader (``scigpt.safe_yaml``); every
    problem in one message."""
    path = find_config(path).resolve()
    raw = load_yaml_file(path, what) or {}
    try:
        return model.model_validate(raw), path
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(f"invalid {what} file {path}: {problems}") from None


def config_beside(spec_path: Path, rel: str) -> Path:
    """A run config named in an experiment file: relative to that file if it exists there,
    else a shipped one (``runs/demo.yaml``)."""
    candidate = (spec_path.parent / rel).resolve()
    if candidate.is_file():
        return candidate
    found = Path(find_config(rel))
    if not found.is_file():
        raise FileNotFoundError(f"{spec_path}: config {rel!r} not found beside it or shipped")
    return found


@dataclass
class Sweep:
    spec: SweepSpec
    path: Path  # the sweep file

    @classmethod
    def load(cls, path: str | Path) -> Sweep:
        """A sweep file by path, or a shipped one (``sweeps/tiny-scaling.yaml``)."""
        spec, path = load_spec(path, SweepSpec, "sweep")
        sweep = cls(spec, path)
        sweep.check()
        return sweep

    @property
    def base_config(self) -> Path:
        """The base run config: relative to the sweep file if it exists there, else shipped."""
        return config_beside(self.path, self.spec.base)

    def check(self) -> None:
        s = self.spec
        if s.design == "grid":
            if not s.axes:
                raise ValueError(f"{self.path}: design grid needs axes (config key: [values])")
            empty = [k for k, v in s.axes.items() if not v]
            if empty:
                raise ValueError(f"{self.path}: axes {empty} have no values")
        else:
            if not s.budgets or not s.models:
                raise ValueError(
                    f"{self.path}: design compute_matched needs budgets (training FLOPs) and "
                    "models (a list of config settings per model size)"
                )
        n = self.size()
        if n > s.max_points:
            raise ValueError(
                f"{self.path}: the design has {n} points, more than max_points={s.max_points}: "
                "trim the axes or raise max_points"
            )

    def size(self) -> int:
        s = self.spec
        if s.design == "grid":
            return len(list(itertools.product(*s.axes.values())))
        return len(s.budgets) * len(s.models) * len(s.data_fractions)

    def points(self, steps_for=None) -> list[Point]:
        """The design's points. ``steps_for(settings, budget) -> steps`` (compute-matched only)
        converts a budget into training steps for one model/data setting."""
        s = self.spec
        out: list[Point] = []
        if s.design == "grid":
            for values in itertools.product(*s.axes.values()):
                settings = dict(zip(s.axes, values, strict=True))
                out.append(Point(point_name(settings), settings, dict(settings)))
        else:
            for budget, model, frac in itertools.product(s.budgets, s.models, s.data_fractions):
                settings = {**model, "data.train_fraction": frac, "budget": budget}
                overrides = {k: v for k, v in settings.items() if k != "budget"}
                if steps_for is not None:
                    overrides["schedule.steps"] = steps_for(overrides, budget)
                out.append(Point(point_name(settings), settings, overrides, budget))
        names = [p.name for p in out]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.path}: two points share a name: {names}")
        return out

    def overrides(self, point: Point) -> list[str]:
        """``--set`` strings for a point: the shared ``set``, then the point's settings (JSON
        values, which the config loader reads as YAML)."""
        merged = {**self.spec.set, **point.overrides}
        return [f"{k}={json.dumps(v)}" for k, v in merged.items()]
