"""Cluster profiles (``slurm/profiles/*.yaml``, or a YAML file): how a site's cluster is used —
partition, account, GPUs and tasks per node, memory per GPU, binding, setup lines, environment,
config overrides. ``scigpt submit`` renders jobs from one; ``scigpt validate --cluster`` and sweeps
size runs against one. The shipped YAML files are package data of ``scigpt.slurm.profiles``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scigpt.safe_yaml import YAMLRefused, safe_load


class Profile(BaseModel):
    """A cluster profile (``slurm/profiles/*.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: Annotated[int, Field(ge=0)] = 0  # 0: CPU tasks
    # Memory of one GPU (for CPU tasks: what one task may use), GiB: the target `scigpt validate
    # --cluster` and `scigpt submit` judge a model's memory per rank against.
    gpu_mem_gib: Annotated[float, Field(gt=0)] | None = None
    tasks_per_node: Annotated[int, Field(ge=1)] | None = None  # default: gpus_per_node or 1
    cpus_per_task: Annotated[int, Field(ge=1)] = 1
    nodes: Annotated[int, Field(ge=1)] = 1
    time: str = "01:00:00"
    # Seconds before the time limit at which Slurm sends USR1 (it arrives 30-60 s early).
    signal_grace_s: Annotated[int, Field(ge=10)] = 180
    cpu_bind: str | None = None  # srun --cpu-bind
    gpu_bind: str | None = None  # srun --gpu-bind
    python: str = "python"  # the interpreter inside the job (after setup)
    setup: list[str] = []  # shell lines run first (module load, venv activation): trusted
    env: dict[str, str] = {}  # exported (quoted), e.g. NCCL_* / RCCL settings
    srun_args: list[str] = []  # extra srun arguments (quoted), e.g. container options
    sbatch_args: list[str] = []  # extra #SBATCH options, e.g. "--constraint=gpu"
    overrides: list[str] = []  # config --set overrides for train/demo (e.g. no DALI)

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)


def shipped_profiles() -> list[str]:
    """The names of the profiles shipped with the package."""
    root = resources.files("scigpt.slurm.profiles")
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name (``local``, ``generic-gpu``, …) or a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, where = path.read_text(), str(path)
    else:
        res = resources.files("scigpt.slurm.profiles") / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ValueError(
                f"--cluster {name_or_path!r}: no such profile; shipped: "
                f"{', '.join(shipped_profiles())} (or pass a profile .yaml)"
            )
        text, where = res.read_text(), f"profile {name_or_path}"
    try:
        raw = safe_load(text) or {}
    except YAMLRefused as e:
        raise ValueError(f"cluster profile {where} refused: {e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"cluster profile {where}: YAML syntax error: {e}") from None
    try:
        return Profile.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(f"invalid cluster profile {where}: {problems}") from None
