"""Mutation tests: the suite's checks fail when what they check is broken.

Each kernel, head, objective and metric is replaced in turn by a version whose outputs are
zeros or noise (same shapes, dtypes and autograd graph; the mutant calls the real function and
replaces what it returns), and the tests that guard it are run in this process on their node
ids with ``pytest.main``, the mutation applied around each test's call (after its fixtures:
the attention fixture imports the kernel module afresh). Every guard must then fail. A
mutation no guard catches is a gap in the suite: the reconstruction head, the pooled head and
the pooled loss were such gaps (tests/test_model_multimodal.py now checks them by hand).

Functions are patched wherever the loaded modules hold them (``from x import f`` copies the
name), methods on their class. Also here: hypothesis tests never pass by returning early.
"""

from __future__ import annotations

import ast
import functools
import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

TESTS = Path(__file__).parent
ATTN = "test_kernels_attention.py"
PATCH = "test_kernels_patch_embed.py"
MODELS = "test_models.py"
MULTI = "test_model_multimodal.py"
GRIDDED = "test_eval_gridded.py"
SERIES = "test_eval_series.py"
PROB = "test_probabilistic.py"
CONSERVE = "test_conserve.py"
GPME = "test_gpme.py"

FA_FWD = f"{ATTN}::test_forward_backward_match_reference[torch.float32-1x2x37x64-full]"
SWITCH = f"{ATTN}::test_config_switches_route_the_model_through_the_kernels"
REGISTRY = f"{ATTN}::test_registry_entry_runs_the_kernel"
PE_FWD = f"{PATCH}::test_fused_matches_module[padded-13x10-torch.float32]"
PE_MODEL = f"{PATCH}::test_model_forward_and_gradients_match_with_fused_embedding"
HEADS = f"{MULTI}::test_heads_against_hand_computations"

# target "module:attribute" (or "module:Class.method") -> (guards for zeros, guards for noise)
MUTATIONS: dict[str, tuple[list[str], list[str]]] = {
    # kernels (the Triton forward and backward launches)
    "scigpt.kernels.flash_attention:_flash_fwd": ([FA_FWD, SWITCH, REGISTRY],) * 2,
    "scigpt.kernels.flash_attention:_flash_bwd": ([FA_FWD, REGISTRY],) * 2,
    "scigpt.kernels.patch_embed:_fwd": ([PE_FWD, PE_MODEL, SWITCH],) * 2,
    "scigpt.kernels.patch_embed:_bwd_dx": ([PE_FWD],) * 2,
    "scigpt.kernels.patch_embed:_bwd_dw": ([PE_FWD, PE_MODEL],) * 2,
    # heads
    "scigpt.models.heads:ForecastHead.forward": (
        [HEADS, f"{MODELS}::test_gradients_reach_every_parameter"],
        [HEADS, f"{MODELS}::test_residual_model_starts_as_persistence"],
    ),
    "scigpt.models.heads:ReconstructionHead.forward": ([HEADS],) * 2,
    "scigpt.models.heads:PooledHead.forward": ([HEADS],) * 2,
    # objectives
    "scigpt.models.objectives:forecast_loss": (
        [f"{MULTI}::test_forecast_loss_latitude_weighting_by_hand"],
    )
    * 2,
    "scigpt.models.objectives:masked_loss": (
        [f"{MULTI}::test_masked_loss_only_counts_masked_patches"],
    )
    * 2,
    "scigpt.models.objectives:pooled_loss": (
        [f"{MULTI}::test_pooled_regression_ignores_missing_targets"],
    )
    * 2,
    # metrics: training and test scores (torch), WeatherBench-2 scores, series scores
    "scigpt.models.losses:weighted_mse": ([f"{MODELS}::test_lat_weighted_metrics_against_numpy"],)
    * 2,
    "scigpt.eval.metrics:weighted_rmse_per_channel": (
        [f"{MODELS}::test_lat_weighted_metrics_against_numpy"],
    )
    * 2,
    "scigpt.models.losses:lat_weights": ([f"{MODELS}::test_lat_weighted_metrics_against_numpy"],)
    * 2,
    "scigpt.eval.gridded:rmse": (
        [f"{GRIDDED}::test_rmse_is_mean_then_sqrt_and_differs_from_sqrt_then_mean"],
    )
    * 2,
    "scigpt.eval.gridded:bias": ([f"{GRIDDED}::test_bias_and_missing_truth"],) * 2,
    "scigpt.eval.gridded:acc": ([f"{GRIDDED}::test_acc_cases"],) * 2,
    "scigpt.eval.series:nse": ([f"{SERIES}::test_nse_by_hand"],) * 2,
    "scigpt.eval.series:kge": ([f"{SERIES}::test_kge_by_hand"],) * 2,
    "scigpt.eval.series:mae": ([f"{SERIES}::test_mae_rmse_skip_missing_and_masked_values"],) * 2,
    "scigpt.eval.series:rmse": ([f"{SERIES}::test_mae_rmse_skip_missing_and_masked_values"],) * 2,
    # issue 24: probabilistic scores, ProbConserve, the GPME solver
    "scigpt.eval.probabilistic:crps_ensemble": ([f"{PROB}::test_crps_hand_solved_pair"],) * 2,
    "scigpt.eval.probabilistic:spread_skill_ratio": ([f"{PROB}::test_spread_skill_hand_solved"],)
    * 2,
    "scigpt.eval.probabilistic:ensemble_diagnostics": (
        [f"{PROB}::test_ensemble_diagnostics_hand_solved"],
    )
    * 2,
    "scigpt.eval.conserve:probconserve": ([f"{CONSERVE}::test_hand_solved_two_cells"],) * 2,
    "scigpt.data_pipeline.ingest.pde_gpme:solve_gpme": (
        [f"{GPME}::test_diffusion_converges_at_order_two"],
    )
    * 2,
}


# ---- the mutants ---------------------------------------------------------------------------------


def _replace(out: Any, kind: str, rng: np.random.Generator) -> Any:
    """``out`` with every floating value replaced by zeros or standard-normal noise. Tensors
    keep their autograd graph (``out·0 + noise``: training still runs, gradients are zero)."""
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        noise = torch.from_numpy(rng.standard_normal(tuple(out.shape))).to(out)
        return out * 0 + (noise if kind == "noise" else 0)
    if isinstance(out, np.ndarray) and out.dtype.kind == "f":
        return np.zeros_like(out) if kind == "zeros" else rng.standard_normal(out.shape)
    if isinstance(out, (float, np.floating)):
        return 0.0 if kind == "zeros" else float(rng.standard_normal())
    if isinstance(out, tuple):
        return tuple(_replace(o, kind, rng) for o in out)
    if isinstance(out, list):
        return [_replace(o, kind, rng) for o in out]
    if isinstance(out, dict):
        return {k: _replace(v, kind, rng) for k, v in out.items()}
    return out


def _mutant(fn: Callable, kind: str) -> Callable:
    rng = np.random.default_rng(0)

    @functools.wraps(fn)
    def mutant(*args, **kwargs):
        return _replace(fn(*args, **kwargs), kind, rng)

    return mutant


@contextmanager
def _mutated(target: str, kind: str) -> Iterator[int]:
    """Apply the mutation of ``target`` ("module:attr" or "module:Class.method"); yields how
    many places now hold the mutant."""
    mod_name, attr = target.split(":")
    mod = importlib.import_module(mod_name)  # the module as loaded now (fixtures may reload)
    undo: list[tuple[Any, str, Any]] = []
    if "." in attr:
        cls_name, meth = attr.split(".")
        cls = getattr(mod, cls_name)
        undo.append((cls, meth, cls.__dict__[meth]))
        setattr(cls, meth, _mutant(getattr(cls, meth), kind))
    else:
        original = getattr(mod, attr)
        fake = _mutant(original, kind)
        for m in list(sys.modules.values()):
            namespace = getattr(m, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for name, value in list(namespace.items()):
                if value is original:
                    undo.append((m, name, value))
                    setattr(m, name, fake)
    try:
        yield len(undo)
    finally:
        for owner, name, value in reversed(undo):
            setattr(owner, name, value)


class _Record:
    """pytest plugin: each test's outcome (and whether its call was wrapped)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}
        self.patched: list[int] = []

    def pytest_runtest_logreport(self, report) -> None:
        key = report.nodeid.split("/")[-1]
        if report.when == "call":
            self.outcomes[key] = report.outcome
        elif report.failed:
            self.outcomes[key] = f"{report.when} error"


class _Mutation(_Record):
    """The mutation around each test's call (after its fixtures, before their teardown)."""

    def __init__(self, target: str, kind: str) -> None:
        super().__init__()
        self.target, self.kind = target, kind

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        with _mutated(self.target, self.kind) as n:
            self.patched.append(n)
            return (yield)


def _run(guards: list[str], plugin: _Record) -> pytest.ExitCode | int:
    args = [str(TESTS / g) for g in guards]
    # no cache, no per-test alarm (it would cancel this test's own), no warnings summary
    opts = ["-p", "no:cacheprovider", "-p", "no:timeout", "-p", "no:warnings", "-o", "addopts="]
    return pytest.main([*args, *opts, "-q", "-s", "--no-header"], plugins=[plugin])


@pytest.mark.parametrize("kind", ["zeros", "noise"])
@pytest.mark.parametrize("target", list(MUTATIONS))
def test_guards_fail_on_a_mutant(target: str, kind: str) -> None:
    guards = MUTATIONS[target][kind == "noise"]
    result = _Mutation(target, kind)
    code = _run(guards, result)
    assert code in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), (target, kind, code)
    assert sorted(result.outcomes) == sorted(guards), result.outcomes  # every guard ran
    assert all(result.patched), f"{target} was found nowhere to patch"
    survived = [g for g in guards if result.outcomes[g] == "passed"]
    assert not survived, f"{target} replaced by {kind}: these tests still pass: {survived}"
    errors = {g: o for g, o in result.outcomes.items() if o.endswith("error")}
    assert not errors, f"setup/teardown failed, not the test: {errors}"


def test_every_guard_passes_unmutated() -> None:
    """The control: the same tests pass when nothing is replaced (so the failures above come
    from the mutants)."""
    guards = sorted({g for pair in MUTATIONS.values() for gs in pair for g in gs})
    plain = _Record()
    assert _run(guards, plain) == pytest.ExitCode.OK, plain.outcomes
    assert sorted(plain.outcomes) == guards
    assert set(plain.outcomes.values()) == {"passed"}


# ---- hypothesis tests never pass by returning --------------------------------------------------


def _given_functions(tree: ast.Module) -> Iterator[ast.FunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Call)
            and getattr(d.func, "id", getattr(d.func, "attr", "")) == "given"
            for d in node.decorator_list
        ):
            yield node


def _own_returns(fn: ast.FunctionDef) -> list[int]:
    """Line numbers of ``return`` statements in ``fn`` itself (not in nested functions)."""
    lines, stack = [], list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Return):
            lines.append(node.lineno)
        stack.extend(ast.iter_child_nodes(node))
    return lines


def test_hypothesis_tests_reject_draws_with_assume_not_return() -> None:
    """A ``@given`` test that returns early on an unwanted draw counts the draw as a pass;
    ``assume()`` rejects it (and hypothesis reports how many it rejected)."""
    found, bad = 0, []
    for path in sorted(TESTS.glob("test_*.py")):
        for fn in _given_functions(ast.parse(path.read_text(), str(path))):
            found += 1
            bad += [f"{path.name}:{line} ({fn.name})" for line in _own_returns(fn)]
    assert found >= 6, "no @given tests found: is the scan broken?"
    assert not bad, f"hypothesis tests that return early (use assume()): {bad}"

    early = ast.parse("@given(x=st.integers())\ndef test_x(x):\n    if x < 0:\n        return\n")
    assert [_own_returns(f) for f in _given_functions(early)] == [[4]]  # the scan sees one
