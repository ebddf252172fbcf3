"""The layering of the code base, read from its imports (docs/DESIGN_NOTES.md, "Layers").

Every project module is parsed with ``ast`` (nothing is imported), and every import is collected,
including those inside functions. Each rule is its own test so that progress is visible; each
failure lists every violation as ``file:line  importer -> imported``. The whole module runs in well
under a second (it parses ~200 files once).
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Repository folder -> the package it installs as (pyproject.toml, tool.setuptools.package-dir).
PACKAGE_DIRS = {
    "scigpt": "scigpt",
    "data_pipeline": "scigpt.data_pipeline",
    "kernels": "scigpt.kernels",
    "launch": "scigpt.launch",
    "slurm": "scigpt.slurm",
    "configs": "scigpt.configs",
}

MAX_LINES = 600

# Third-party modules that may be imported inside a function: optional extras (pyproject's
# optional-dependencies) that a base install lacks, and core dependencies whose import is slow or
# has side effects and that only one output needs. Anything else is imported at module top.
OPTIONAL_HEAVY = {
    "deepspeed": "slow to import (seconds), probes CUDA and compilers; only the engine needs it",
    "triton": "extra `kernels`/`gpu`; the kernels' PyTorch references run without it",
    "mpi4py": "extra `mpi`; only OpenMPI rank discovery needs it",
    "nvidia.dali": "extra `dali`; only the DALI loader backend needs it",
    "mlflow": "optional metrics sink",
    "wandb": "optional metrics sink",
    "cfgrib": "extra `formats` (GRIB reader)",
    "eccodes": "extra `formats` (GRIB reader)",
    "pyhdf": "extra `formats` (MODIS HDF4 reader)",
    "rasterio": "extra `formats` (GeoTIFF reader, CRS transforms)",
    "obspy": "extra `formats` (miniSEED/SAC readers)",
    "segyio": "extra `formats` (SEG-Y reader)",
    "zarr": "extra `formats` (Zarr reader)",
    "matplotlib": "pyplot picks a backend on import; only plots need it",
    "torch.utils.tensorboard": "imports TensorBoard (slow); only the TensorBoard sink needs it",
}

# Imports of project modules that may stay inside a function, each with its reason.
LAZY_PROJECT = {
    ("scigpt", "scigpt.export"): "the package root stays import-free: every `import scigpt.x` runs "
    "it first, so `scigpt.load_pretrained` imports the loader when called",
    ("scigpt.train.data", "scigpt.data_pipeline.dali"): "the DALI loader imports nvidia.dali (an "
    "optional extra) at its top; only `data.loader.backend: dali` loads it",
    ("scigpt.kernels", "scigpt.kernels.flash_attention"): "the kernel modules import Triton at "
    "their top; `import scigpt.kernels` must not (a package loads where Triton is absent)",
    ("scigpt.kernels", "scigpt.kernels.patch_embed"): "as the attention kernel: Triton is loaded "
    "on the first fused patch embedding",
    ("scigpt.cli", "scigpt.commands"): "`scigpt --help` and argument errors answer without "
    "importing torch (about 2 s): the CLI imports the command dispatcher once arguments parse",
}

# Imports the layer and cycle rules let through, each with its reason. The imported module must
# import no project module itself (test_allowed_edges_are_leaves), so no cycle can hide behind one.
ALLOWED_EDGES: dict[tuple[str, str], str] = {}

# Modules that count as a node of their own in the cycle and order rules (not as part of their
# package), each with its reason.
OWN_UNITS: dict[str, str] = {
    "scigpt.export.writer": "reads the trainer's checkpoints (train.checkpoint, parallel.reshard) "
    "to write a package: it sits above train, while the rest of export (loader, verify, card) "
    "sits below it so the trainer can fine-tune from a package",
    "scigpt.export.package": "the old import path, re-exporting the writer and the loader",
    "scigpt.finetune.recipe": "the trainer's fine-tune steps load a package (export.loader), "
    "while the loader rebuilds a package's extra heads with finetune.adapt: the recipe sits "
    "above the loader, the building blocks below it",
}

# The general order, top to bottom: a unit may import units of its own rank or below, never above.
# Units not named here (data_pipeline, launch, slurm, and the top-level helper modules) stand
# beside the stack and are checked by FORBIDDEN below.
# train, finetune, eval and export share a rank (the trainer evaluates and fine-tunes from a
# package; export reads the trainer's checkpoints): the cycle test keeps them from importing each
# other both ways.
RANK = {
    "scigpt.cli": 6,
    "scigpt.__main__": 6,
    "scigpt.commands": 5,
    "scigpt.sweep": 4,
    "scigpt.export.writer": 4,
    "scigpt.export.package": 4,
    "scigpt.export": 3,
    "scigpt.eval": 3,
    "scigpt.diagnostics": 3,
    "scigpt.train": 3,
    "scigpt.finetune": 3,
    "scigpt.parallel": 2,
    "scigpt.models": 1,
    "scigpt.kernels": 0,
}

_ABOVE_FOUNDATION = {
    "scigpt.models",
    "scigpt.diagnostics",
    "scigpt.parallel",
    "scigpt.kernels",
    "scigpt.train",
    "scigpt.finetune",
    "scigpt.eval",
    "scigpt.export",
    "scigpt.sweep",
    "scigpt.preflight",
    "scigpt.prepare",
    "scigpt.commands",
    "scigpt.cli",
}

# Named breaks: importer unit (or module) -> imported units/modules it must never reach, each rule
# with its reason. A name matches itself and everything below it.
FORBIDDEN: dict[str, tuple[set[str], str]] = {
    "scigpt.models": (
        {
            "scigpt.parallel",
            "scigpt.kernels",
            "scigpt.train",
            "scigpt.finetune",
            "scigpt.data_pipeline",
            "scigpt.eval",
            "scigpt.export",
            "scigpt.sweep",
            "deepspeed",
            "triton",
            "torch.distributed",
        },
        "models are single-device PyTorch; the parallel layer wraps them from outside",
    ),
    "scigpt.kernels": (
        {"scigpt.models", "scigpt.parallel", "scigpt.train", "scigpt.data_pipeline"},
        "kernels take a module's parameters as they are; the swap is applied from outside",
    ),
    "scigpt.data_pipeline": (
        {
            "scigpt.models",
            "scigpt.parallel",
            "scigpt.train",
            "scigpt.finetune",
            "scigpt.eval",
            "scigpt.export",
            "scigpt.sweep",
            "scigpt.kernels",
            "scigpt.cli",
            "scigpt.commands",
        },
        "the data layer knows ranks only as integers and runs without models or GPUs",
    ),
    "scigpt.launch": (
        {
            "scigpt.models",
            "scigpt.parallel",
            "scigpt.train",
            "scigpt.finetune",
            "scigpt.eval",
            "scigpt.export",
            "scigpt.sweep",
            "scigpt.kernels",
            "scigpt.data_pipeline",
            "scigpt.cli",
            "scigpt.commands",
        },
        "rank discovery stands beside the stack and needs none of it",
    ),
    "scigpt.slurm": (
        {
            "scigpt.models",
            "scigpt.parallel",
            "scigpt.train",
            "scigpt.finetune",
            "scigpt.eval",
            "scigpt.export",
            "scigpt.sweep",
            "scigpt.kernels",
            "scigpt.cli",
            "scigpt.commands",
        },
        "job scripts are rendered from configs alone",
    ),
    "scigpt.diagnostics": (
        {"deepspeed", "scigpt.parallel", "scigpt.train", "scigpt.finetune", "scigpt.export"},
        "weight diagnostics read tensors; the trainer's hook and the command hand them over",
    ),
    "scigpt.export.loader": (
        {"deepspeed", "scigpt.parallel", "scigpt.train.trainer"},
        "a package loads where DeepSpeed is not installed",
    ),
    # The foundation every layer reads: atomic writes, run directories and locks, configs, tables.
    **{
        name: (_ABOVE_FOUNDATION, "the foundation is read by every layer and reads none of them")
        for name in (
            "scigpt.atomic",
            "scigpt.runlock",
            "scigpt.rundir",
            "scigpt.config",
            "scigpt.config_loader",
            "scigpt.safe_yaml",
            "scigpt.tables",
        )
    },
    "scigpt.commands": (
        {"scigpt.cli"},
        "commands are called by the CLI and by Python; they never reach back into argument parsing",
    ),
}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name of the importing file
    path: str  # file, relative to the repository
    line: int
    target: str  # dotted name imported (a project module when it resolves to one)
    lazy: bool  # inside a function (or a method)

    def __str__(self) -> str:
        kind = " (inside a function)" if self.lazy else ""
        return f"{self.path}:{self.line}  {self.importer} -> {self.target}{kind}"


def _module_name(folder: str, package: str, path: Path) -> str:
    parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


@functools.cache
def project_modules() -> dict[str, Path]:
    """Every project module by its installed dotted name."""
    modules: dict[str, Path] = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            modules[_module_name(folder, package, path)] = path
    return modules


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, importer: str, path: Path, modules: dict[str, Path]) -> None:
        self.importer = importer
        self.is_package = path.name == "__init__.py"
        self.rel = str(path.relative_to(ROOT))
        self.modules = modules
        self.depth = 0
        self.found: list[Import] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_Lambda = _function

    def _add(self, target: str, node: ast.AST) -> None:
        imp = Import(self.importer, self.rel, node.lineno, target, self.depth > 0)
        if imp not in self.found:  # `from m import a, b` is one import of m
            self.found.append(imp)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(self.importer, self.is_package, node)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            # `from scigpt.models import vit` imports the module scigpt.models.vit.
            self._add(sub if sub in self.modules else base, node)


@functools.cache
def all_imports() -> tuple[Import, ...]:
    modules = project_modules()
    found: list[Import] = []
    for name, path in modules.items():
        collector = _Collector(name, path, modules)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found.extend(collector.found)
    return tuple(found)


def allowed(imp: Import) -> bool:
    return any(under(imp.importer, a) and under(imp.target, b) for (a, b) in ALLOWED_EDGES)


def is_project(target: str) -> bool:
    return target == "scigpt" or target.startswith("scigpt.")


def unit(module: str) -> str:
    """The package a module belongs to for layering: scigpt.<first part> (scigpt.config, ...),
    or the module itself where OWN_UNITS names it."""
    for own in OWN_UNITS:
        if under(module, own):
            return own
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "scigpt" else parts[0]


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _report(what: str, violations: list) -> str:
    lines = "\n  ".join(str(v) for v in violations)
    return f"{len(violations)} {what}:\n  {lines}"


# ---------------------------------------------------------------------------------------------


def test_collector_sees_every_kind_of_import(tmp_path):
    """The parser itself: relative, lazy, `from pkg import module`, aliased and nested imports."""
    src = (
        "import os\n"
        "from . import heads\n"
        "from ..parallel import topology as t\n"
        "def f():\n"
        "    import deepspeed\n"
        "    class C:\n"
        "        def g(self):\n"
        "            from scigpt.kernels import flash_attention\n"
    )
    path = ROOT / "scigpt" / "models" / "vit.py"
    collector = _Collector("scigpt.models.vit", path, project_modules())
    collector.visit(ast.parse(src))
    got = [(i.target, i.lazy, i.line) for i in collector.found]
    assert got == [
        ("os", False, 1),
        ("scigpt.models.heads", False, 2),
        ("scigpt.parallel.topology", False, 3),
        ("deepspeed", True, 5),
        ("scigpt.kernels.flash_attention", True, 8),
    ]
    assert len(project_modules()) > 100, "the project's modules were not found"
    assert unit("scigpt.data_pipeline.ingest.grib") == "scigpt.data_pipeline"
    assert unit("scigpt.config") == "scigpt.config"


def test_no_cycle_between_packages():
    """No two packages (or top-level modules) import each other, directly or around a loop."""
    edges: dict[str, dict[str, list[Import]]] = {}
    for imp in all_imports():
        if not is_project(imp.target):
            continue
        a, b = unit(imp.importer), unit(imp.target)
        if a != b and b != "scigpt" and not allowed(imp):
            edges.setdefault(a, {}).setdefault(b, []).append(imp)
    # Tarjan's strongly connected components.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    problems = []
    for comp in components:
        inside = [
            f"{a} -> {b}: {imps[0]}" + (f" (+{len(imps) - 1} more)" if len(imps) > 1 else "")
            for a in comp
            for b, imps in sorted(edges.get(a, {}).items())
            if b in comp
        ]
        problems.append(f"cycle among {', '.join(comp)}:\n    " + "\n    ".join(inside))
    assert not problems, _report("import cycles between packages", problems)


def test_general_order():
    """CLI -> commands -> sweep/export/eval -> train, finetune -> parallel -> models -> kernels."""
    bad = []
    for imp in all_imports():
        a, b = unit(imp.importer), unit(imp.target)
        if a in RANK and b in RANK and RANK[b] > RANK[a] and not allowed(imp):
            bad.append(imp)
    assert not bad, _report("imports up the stack (CLI > commands > ... > kernels)", bad)


@pytest.mark.parametrize("importer", sorted(FORBIDDEN))
def test_layer_rules(importer):
    banned, why = FORBIDDEN[importer]
    bad = [
        imp
        for imp in all_imports()
        if under(imp.importer, importer)
        and any(under(imp.target, b) for b in banned)
        and not under(imp.target, importer)
        and not allowed(imp)
    ]
    assert not bad, _report(f"imports {importer} must not make ({why})", bad)


def test_allowed_edges_are_leaves():
    """Each module an ALLOWED_EDGES entry lets through imports no project module (when present)."""
    modules = project_modules()
    bad = [
        imp
        for (_, target) in ALLOWED_EDGES
        for imp in all_imports()
        if imp.importer == target and is_project(imp.target)
    ]
    missing = [t for (_, t) in ALLOWED_EDGES if t not in modules]
    assert not bad, _report("project imports in modules ALLOWED_EDGES lets through", bad)
    # An entry whose module does not exist (yet) lets nothing through; say so without failing.
    if missing:
        print(f"ALLOWED_EDGES names modules not in the tree: {missing}")


def _lazy_allowed(imp: Import) -> bool:
    if is_project(imp.target):
        return any(imp.importer == a and under(imp.target, b) for (a, b) in LAZY_PROJECT)
    return any(under(imp.target, name) for name in OPTIONAL_HEAVY)


def test_project_imports_at_module_top():
    """Project modules are imported at module top, so the dependency graph is readable."""
    bad = [
        imp
        for imp in all_imports()
        if imp.lazy and is_project(imp.target) and not _lazy_allowed(imp)
    ]
    assert not bad, _report("project imports inside functions", bad)


def test_third_party_imports_at_module_top():
    """Only the optional heavy dependencies (OPTIONAL_HEAVY) are imported inside functions."""
    bad = [
        imp
        for imp in all_imports()
        if imp.lazy and not is_project(imp.target) and not _lazy_allowed(imp)
    ]
    assert not bad, _report(
        f"standard-library or core-dependency imports inside functions "
        f"(lazy allowed only for {', '.join(sorted(OPTIONAL_HEAVY))})",
        bad,
    )


def test_files_of_one_concept():
    """No project file over MAX_LINES lines: split it by concept."""
    bad = []
    for name, path in project_modules().items():
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            bad.append(f"{path.relative_to(ROOT)}: {n} lines ({name})")
    assert not bad, _report(f"files over {MAX_LINES} lines", sorted(bad))
