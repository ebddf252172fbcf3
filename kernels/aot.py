"""Ahead-of-time compilation of Triton kernels for Hopper (sm_90a) on a machine without a GPU.

``triton.compile`` runs the whole pipeline (TTIR → TTGIR → LLVM IR → PTX → ``ptxas`` → cubin)
offline when it is given an explicit ``GPUTarget``; only loading the cubin needs a driver. That is
enough to check, in CPU-only CI, that every shipped autotune config compiles for the GPU image's
Triton (3.6.0), that the fp16/bf16 dots lower to Hopper warpgroup MMA (``wgmma``), and how many
registers each config needs and whether it spills.

Register and spill counts are read from the cubin with the bundled ``cuobjdump -res-usage``: the
numbers the driver reports at load time, which Triton's runtime exposes as ``n_regs`` and
``n_spills`` (stack bytes per thread / 4). Compiled kernels land in Triton's cache as usual, so a
second report is fast.

Kernels decorated while ``TRITON_INTERPRET=1`` are interpreter objects and cannot be compiled; run
AOT in a process without that variable, e.g. the report entry point::

    env -u TRITON_INTERPRET python -m scigpt.kernels.aot --report [--json] [--module M ...]

A kernel module takes part in the report by defining ``aot_cases() -> list[AotCase]`` (and may
accept ``full=True`` for a wider sweep, ``--full``); the modules are listed in ``AOT_MODULES``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

# Kernel modules whose ``aot_cases()`` the report compiles; adding a kernel is one entry here.
AOT_MODULES: tuple[str, ...] = ("scigpt.kernels.flash_attention", "scigpt.kernels.patch_embed")


@dataclass(frozen=True)
class AotResult:
    """One compiled kernel: the artefacts and its resource use as the driver will see it."""

    name: str
    ptx: str
    cubin: bytes
    n_regs: int  # registers per thread
    n_spills: int  # stack (local memory) bytes per thread / 4: Triton runtime's definition
    spill_store_bytes: int | None  # from the ptxas log; None when the cubin came from the cache
    spill_load_bytes: int | None
    shared_bytes: int  # shared memory per block that Triton allocates
    uses_wgmma: bool  # PTX contains Hopper warpgroup MMA instructions
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class AotCase:
    """A kernel + one specialisation (signature and constexprs) to compile under each config.

    ``configs`` are the autotune configs shipped for the kernel (their ``kwargs`` are merged into
    ``constexprs``). ``expect_wgmma`` states whether the PTX must contain Hopper ``wgmma``: a
    bool, a function of the config, or None (not checked).
    """

    name: str
    kernel: Any  # a @triton.jit function, optionally wrapped by @triton.autotune/heuristics
    signature: dict[str, str]
    constexprs: dict[str, Any]
    configs: Sequence[Any] = ()
    expect_wgmma: bool | Callable[[Any], bool] | None = None
    divisible_by_16: tuple[str, ...] | None = None  # None: every pointer argument
    max_spills: int = 0  # the most spilled words per thread tolerated for a shipped config
    meta: dict[str, Any] = field(default_factory=dict)


def unwrap(kernel: Any) -> Any:
    """The ``JITFunction`` under ``@triton.autotune`` / ``@triton.heuristics`` wrappers."""
    from triton.runtime.jit import JITFunction

    fn = kernel
    while not isinstance(fn, JITFunction) and type(fn).__name__ != "InterpretedFunction":
        inner = getattr(fn, "fn", None)
        if inner is None or inner is fn:
            break
        fn = inner
    if not isinstance(fn, JITFunction):
        raise RuntimeError(
            f"{getattr(kernel, '__name__', kernel)!r} is not a compilable Triton kernel "
            f"(got {type(fn).__name__}); kernels defined while TRITON_INTERPRET=1 are interpreter "
            "objects — run AOT compilation in a process without TRITON_INTERPRET "
            "(python -m scigpt.kernels.aot --report)"
        )
    return fn


def autotune_configs(kernel: Any) -> list[Any]:
    """The ``triton.Config`` list of an ``@triton.autotune`` kernel (``[]`` when not autotuned)."""
    fn = kernel
    while fn is not None:
        configs = getattr(fn, "configs", None)
        if configs is not None:
            return list(configs)
        inner = getattr(fn, "fn", None)
        fn = inner if inner is not fn else None
    return []


_RE_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_RE_REG = re.compile(r"REG:(\d+)")
_RE_STACK = re.compile(r"STACK:(\d+)")


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack bytes per thread) from ``cuobjdump -res-usage``: the numbers
    the driver reports as NUM_REGS and LOCAL_SIZE_BYTES (where spilled registers live)."""
    from triton import knobs

    tool = os.path.join(os.path.dirname(knobs.nvidia.ptxas.path), "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [tool, "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    regs, stack = _RE_REG.search(out), _RE_STACK.search(out)
    if regs is None or stack is None:
        raise RuntimeError(f"cannot read register use from cuobjdump -res-usage:\n{out}")
    return int(regs.group(1)), int(stack.group(1))


def compile_for(
    fn: Any,
    signature: dict[str, str],
    constexprs: dict[str, Any],
    *,
    arch: int = 90,
    num_warps: int = 4,
    num_stages: int = 3,
    maxnreg: int | None = None,
    divisible_by_16: Iterable[str] | None = None,
) -> AotResult:
    """Compile ``fn`` for ``sm_<arch>`` without a GPU.

    ``signature`` maps argument names to Triton types (``"*fp16"``, ``"i32"``, ``"fp32"``);
    constexpr arguments may be left out of it (they are filled in from ``constexprs``).
    ``divisible_by_16`` names the arguments the runtime would specialise as 16-divisible (aligned
    pointers, strides that are multiples of 16); ``None`` means every pointer argument, which is
    what a launch on freshly allocated torch tensors gets.
    """
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit_fn = unwrap(fn)
    sig = dict(signature)
    for name in constexprs:
        sig.setdefault(name, "constexpr")
    missing = [a for a in jit_fn.arg_names if a not in sig]
    unknown = [a for a in sig if a not in jit_fn.arg_names]
    if missing or unknown:
        raise ValueError(
            f"signature for {jit_fn.__name__} does not match its arguments: missing {missing}, "
            f"unknown {unknown}; give a type for every non-constexpr argument"
        )
    sig = {a: sig[a] for a in jit_fn.arg_names}  # argument order, as the compiler indexes it
    if divisible_by_16 is None:
        divisible_by_16 = [a for a, t in sig.items() if t.startswith("*")]
    attrs = {(jit_fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in divisible_by_16}
    src = ASTSource(jit_fn, signature=sig, constexprs=dict(constexprs), attrs=attrs)
    options: dict[str, Any] = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg

    log = io.StringIO()
    # Triton prints the ptxas -v log (spill store/load bytes) when asked; a cache hit skips ptxas
    # and prints nothing, so registers and stack come from the cubin itself.
    with knobs.nvidia.scope():
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)

    ptx: str = compiled.asm["ptx"]
    cubin: bytes = compiled.asm["cubin"]
    n_regs, stack = _resource_usage(cubin)
    spills = _RE_SPILL.findall(log.getvalue())
    stores, loads = (int(spills[-1][0]), int(spills[-1][1])) if spills else (None, None)
    return AotResult(
        name=jit_fn.__name__,
        ptx=ptx,
        cubin=cubin,
        n_regs=n_regs,
        n_spills=stack // 4,
        spill_store_bytes=stores,
        spill_load_bytes=loads,
        shared_bytes=int(compiled.metadata.shared),
        uses_wgmma="wgmma" in ptx,
        num_warps=num_warps,
        num_stages=num_stages,
    )


def compile_case(case: AotCase, *, arch: int = 90) -> list[dict[str, Any]]:
    """Compile ``case`` once per autotune config; one JSON-able row per config (no binaries)."""
    return [_compile_config(case, i, arch) for i in range(max(1, len(case.configs)))]


def _compile_config(case: AotCase, index: int, arch: int) -> dict[str, Any]:
    cfg = case.configs[index] if case.configs else None
    constexprs = dict(case.constexprs)
    num_warps, num_stages, maxnreg = 4, 3, None
    if cfg is not None:
        constexprs.update(cfg.kwargs)
        num_warps, num_stages, maxnreg = cfg.num_warps, cfg.num_stages, cfg.maxnreg
    row: dict[str, Any] = {
        "case": case.name,
        "config": {
            **(dict(cfg.kwargs) if cfg is not None else {}),
            "num_warps": num_warps,
            "num_stages": num_stages,
        },
        "expect_wgmma": case.expect_wgmma(cfg)
        if callable(case.expect_wgmma)
        else case.expect_wgmma,
        "max_spills": case.max_spills,
        **case.meta,
    }
    try:
        res = compile_for(
            case.kernel,
            case.signature,
            constexprs,
            arch=arch,
            num_warps=num_warps,
            num_stages=num_stages,
            maxnreg=maxnreg,
            divisible_by_16=case.divisible_by_16,
        )
    except Exception as exc:  # reported, not raised: the table shows every failing config
        row.update(error=f"{type(exc).__name__}: {str(exc)[:2000]}")
        return row
    res_row = asdict(res)
    del res_row["cubin"], res_row["ptx"]
    row.update(
        res_row,
        ptx_chars=len(res.ptx),
        cubin_bytes=len(res.cubin),
        ptx_target=_ptx_target(res.ptx),
        error=None,
    )
    return row


def _ptx_target(ptx: str) -> str | None:
    m = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE)
    return m.group(1) if m else None


def collect_cases(modules: Sequence[str] = AOT_MODULES, *, full: bool = False) -> list[AotCase]:
    """The cases of ``modules`` (``aot_cases()``; ``aot_cases(full=True)`` when ``full``)."""
    cases: list[AotCase] = []
    for mod_name in modules:
        mod = importlib.import_module(mod_name)
        if not hasattr(mod, "aot_cases"):
            raise RuntimeError(f"{mod_name} defines no aot_cases(); it cannot take part in AOT")
        takes_full = "full" in inspect.signature(mod.aot_cases).parameters
        cases.extend(mod.aot_cases(full=True) if full and takes_full else mod.aot_cases())
    return cases


def _compile_by_index(args: tuple[tuple[str, ...], bool, int, int, int]) -> dict[str, Any]:
    modules, full, case_index, config_index, arch = args
    return _compile_config(collect_cases(modules, full=full)[case_index], config_index, arch)


def report(
    modules: Sequence[str] = AOT_MODULES,
    *,
    full: bool = False,
    arch: int = 90,
    jobs: int | None = None,
) -> list[dict[str, Any]]:
    """Compile every case of ``modules`` under every config; one row per (case, config), in order.

    The configs are spread over ``jobs`` spawned processes (default: one per CPU)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError(
            "TRITON_INTERPRET is set: kernels are interpreter objects and cannot be compiled; "
            "run without it (env -u TRITON_INTERPRET python -m scigpt.kernels.aot --report)"
        )
    cases = collect_cases(modules, full=full)
    work = [
        (tuple(modules), full, ci, k, arch)
        for ci, case in enumerate(cases)
        for k in range(max(1, len(case.configs)))
    ]
    jobs = max(1, min(jobs or (os.cpu_count() or 1), len(work)))
    if jobs == 1:
        return [_compile_by_index(w) for w in work]
    # spawn, not fork: a forked copy of a process holding MLIR/LLVM state is not safe
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_compile_by_index, work))


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'case':<42} {'config':<30} {'regs':>4} {'spill':>5} {'smem':>7} {'wgmma':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cfg = " ".join(f"{k}={v}" for k, v in r["config"].items())
        cfg = cfg.replace("num_warps", "w").replace("num_stages", "s").replace("BLOCK_", "")
        if r.get("error"):
            lines.append(f"{r['case']:<42} {cfg:<30} ERROR {r['error'][:60]}")
            continue
        lines.append(
            f"{r['case']:<42} {cfg:<30} {r['n_regs']:>4} {r['n_spills']:>5} "
            f"{r['shared_bytes']:>7} {'yes' if r['uses_wgmma'] else 'no':>5}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="compile every case and report")
    parser.add_argument("--json", action="store_true", help="print rows as JSON, not a table")
    parser.add_argument("--module", action="append", help="kernel module (default: AOT_MODULES)")
    parser.add_argument("--full", action="store_true", help="aot_cases(full=True): all candidates")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.report:
        parser.print_help()
        return 2
    rows = report(args.module or AOT_MODULES, full=args.full, arch=args.arch, jobs=args.jobs)
    if args.json:
        json.dump(rows, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
