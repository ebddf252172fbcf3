"""One training step on one GPU: plain PyTorch against SciGPT's DeepSpeed engine.

Same model, same synthetic grid batch, same loss (the forecast objective, called as the trainer
calls it: ``model(batch, objectives=...)``), same fused AdamW and gradient clipping, and the same
per-block torch.compile in every configuration (one graph shared by all blocks, torchtitan's
choice). Variants:

  plain     plain PyTorch: fp32 weights, bf16 autocast, loss.backward(), clip, opt.step()
  plain-bf16  plain PyTorch in the engine's precision scheme: bf16 weights and gradients, fp32
            master weights in the optimizer (copied back to bf16 after each step)
  zero1     scigpt.parallel.engine.build_engine at ZeRO-1 with ``precision: bf16`` (DeepSpeed's
            bf16 weights and gradients, fp32 master weights inside the optimizer)
  zero3     the same engine at ZeRO-3 (parameters gathered per module by DeepSpeed's hooks; on
            one device that saves no memory, so this measures what the hooks cost)
  zero1-ac  zero1 with full activation checkpointing (scigpt.parallel.checkpointing), applied
            before compile as torchtitan orders it; skipped with a note where that module is absent

The engine bar (ZeRO-1 >= 0.95x plain) compares like with like: ZeRO-1 against ``plain-bf16``,
the same precision scheme; ``plain`` against ``plain-bf16`` is reported apart as the cost (or
gain) of the precision scheme itself.

At most eight ``preset:variant`` configurations a run; ``--budget-s`` starts none after that
many seconds, so the list is a priority order and the run fits its time box.
Per configuration: the first step (compilation) timed apart, then the median of ``--steps`` after
``--warmup``; tokens/s; model TFLOP/s from ``scigpt.models.sizing.flops_per_token`` (PaLM
appendix B: recomputation is not counted, so activation checkpointing shows as lower TFLOP/s);
MFU against ``scigpt.train.metrics.detect_peak_tflops``; peak memory above what was allocated
before the configuration; and throughput against plain PyTorch on the same preset (the bar:
ZeRO-1 >= 0.95x plain). The batch is the largest power of two <= ``--batch`` that the memory
estimate of benchmarks/model_flops.py admits, halved on out-of-memory; the engine variants start
at the batch plain PyTorch ran.

    python benchmarks/train_step.py
    python benchmarks/train_step.py --cpu-smoke   # same code path on the CPU: vit-tiny, fp32,
                                                  # gloo, no compile, 2 steps
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _report import report, save
from _timing import halving_on_oom, time_steps
from model_flops import _batch_that_fits, _grid_batch


@dataclass(frozen=True)
class Variant:
    engine: bool  # SciGPT's DeepSpeed engine (else a plain PyTorch loop)
    zero_stage: int = 1
    checkpointing: str = "none"  # activation checkpointing mode of scigpt.parallel.checkpointing
    bf16_weights: bool = False  # plain loop: bf16 weights + fp32 masters (the engine's scheme)


VARIANTS = {
    "plain": Variant(engine=False),
    "plain-bf16": Variant(engine=False, bf16_weights=True),
    "zero1": Variant(engine=True, zero_stage=1),
    "zero3": Variant(engine=True, zero_stage=3),
    "zero1-ac": Variant(engine=True, zero_stage=1, checkpointing="full"),
}
DEFAULT_CONFIGS = [
    "vit-300m:plain-bf16", "vit-300m:zero1", "vit-300m:plain",
    "vit-300m:zero3", "vit-300m:zero1-ac", "vit-1b:plain-bf16", "vit-1b:zero1",
]  # fmt: skip
MAX_CONFIGS = 8  # ~1 minute each on an H200 (compile included); --budget-s trims the list
BASELINE = "plain-bf16"  # the engine's precision scheme in plain PyTorch: the bar's reference


def parse_configs(items: list[str]) -> list[tuple[str, str]]:
    """``preset:variant`` strings → pairs, each preset's plain run first (the ratios need it)."""
    pairs = []
    for item in items:
        preset, _, variant = item.partition(":")
        if variant not in VARIANTS:
            raise ValueError(
                f"--configs {item!r}: write preset:variant with a variant from "
                f"{sorted(VARIANTS)}, e.g. vit-300m:zero1"
            )
        if (preset, variant) not in pairs:
            pairs.append((preset, variant))
    if len(pairs) > MAX_CONFIGS:
        raise ValueError(
            f"--configs names {len(pairs)} configurations; at most {MAX_CONFIGS} fit one "
            "10-minute run: split them over several runs"
        )
    # Each preset's baseline runs first: the ratios need it. Otherwise the order given is the
    # priority order under --budget-s.
    first = {p: i for i, (p, _) in reversed(list(enumerate(pairs)))}
    return sorted(pairs, key=lambda pv: (first[pv[0]], pv[1] != BASELINE))


def _run_config(preset: str, batch: int, precision: str, zero_stage: int):
    from scigpt.config_loader import load_config, shipped_config

    return load_config(
        shipped_config("runs/demo.yaml"),
        [
            f"model.preset={preset}",
            f"schedule.micro_batch_size={batch}",
            f"precision={precision}",
            f"parallel.zero_stage={zero_stage}",
        ],
    ).config


def _checkpointing():
    """``apply_activation_checkpointing`` and "", or None and why it cannot be used."""
    try:
        from scigpt.parallel.checkpointing import apply_activation_checkpointing
    except ImportError as e:
        return None, f"{type(e).__name__}: {e}"
    return apply_activation_checkpointing, ""


def _compile_blocks(model: torch.nn.Module) -> None:
    # One compiled graph per block class, reused by every block (torchtitan's choice): compile
    # time does not grow with depth. Lazy: compilation happens in the first step.
    dyn = torch._dynamo.config
    limit = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
    setattr(dyn, limit, max(getattr(dyn, limit), 2 * len(model.blocks)))
    for blk in model.blocks:
        blk.compile()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_config(preset: str, variant: str, batch: int, args, device: torch.device) -> dict:
    """Build, warm up and time one configuration; every reference to it is gone on return."""
    from scigpt.models.build import build_model, count_params, materialise
    from scigpt.models.objectives import Objectives
    from scigpt.models.sizing import flops_per_token, grid_tokens
    from scigpt.models.vit import ModelSpec
    from scigpt.parallel.engine import build_engine, build_optimizer
    from scigpt.parallel.topology import Topology

    var = VARIANTS[variant]
    cfg = _run_config(preset, batch, args.precision, var.zero_stage)
    spec = ModelSpec(num_vars=args.vars, history=args.history)
    h, w = args.grid
    bf16 = cfg.precision == "bf16"
    cuda = device.type == "cuda"
    base = torch.cuda.memory_allocated(device) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    model = materialise(build_model(cfg.model, spec), device, seed=0)
    # The forecast head starts at zero (persistence); open it so gradients flow everywhere.
    torch.nn.init.normal_(model.head.weight, std=0.02)
    n_params = count_params(model)
    if var.checkpointing != "none":
        apply_ac, _ = _checkpointing()
        apply_ac(model, var.checkpointing)  # before compile: torchtitan's order
    if args.compile and not var.bf16_weights:  # the bf16 copy is compiled below
        _compile_blocks(model)
    data = _grid_batch(batch, args.vars, args.history, h, w, device)
    objectives = Objectives()  # forecast only, area-weighted MSE
    engine = None
    if var.engine:
        engine, _ = build_engine(model, cfg, Topology.from_config(cfg.parallel, 1))
        # What the engine actually runs, read back from it rather than echoed from the request.
        stage = engine.zero_optimization_stage()
        numerics = "bf16 weights" if engine.bfloat16_enabled() else "fp32"
        if bf16:
            # The engine holds the module in bf16 but casts inputs only for fp16 (auto_cast): the
            # fields go in as bf16, as the trainer sends them; coordinates and targets stay fp32.
            data = {**data, "fields": data["fields"].bfloat16()}

        def step():
            loss, _ = engine(data, objectives=objectives)
            engine.backward(loss)
            engine.step()  # clips to optim.grad_clip, as the plain loop does
    elif var.bf16_weights:
        # DeepSpeed's bf16 scheme in plain PyTorch: the model computes in bf16 (weights and
        # gradients), the optimizer steps fp32 masters, which are copied back after each step.
        master = model
        model = copy.deepcopy(master).to(torch.bfloat16)
        if args.compile:
            _compile_blocks(model)
        data = {**data, "fields": data["fields"].bfloat16()}
        opt = build_optimizer(master, cfg)  # fused AdamW on the fp32 masters
        clip = cfg.optim.grad_clip
        stage, numerics = 0, "bf16 weights"
        work, masters = list(model.parameters()), list(master.parameters())

        def step():
            loss, _ = model(data, objectives=objectives)
            loss.backward()
            for pm, pw in zip(masters, work, strict=True):
                pm.grad = None if pw.grad is None else pw.grad.float()
            if clip:
                torch.nn.utils.clip_grad_norm_(masters, clip, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                torch._foreach_copy_(work, masters)
    else:
        opt = build_optimizer(model, cfg)  # fused AdamW, decay on matrices only
        clip = cfg.optim.grad_clip
        stage, numerics = 0, "bf16 autocast" if bf16 else "fp32"

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = model(data, objectives=objectives)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)

    from torch._dynamo.utils import counters

    counters.clear()  # dynamo's graph and graph-break counts, for this configuration alone
    try:
        t0 = time.perf_counter()
        step()  # compilation (when compiled), DeepSpeed's first-step set-up, allocator warm-up
        _sync(device)
        first = time.perf_counter() - t0
        times = time_steps(step, args.steps, args.warmup, device)
        peak = torch.cuda.max_memory_allocated(device) - base if cuda else float("nan")
    finally:
        if engine is not None and hasattr(engine, "destroy"):
            engine.destroy()  # removes DeepSpeed's hooks and frees its optimizer's buffers

    n = grid_tokens(cfg.model, h, w)
    med = statistics.median(times)
    flops = batch * n * flops_per_token(cfg.model, spec, n, num_vars=args.vars)
    return {
        "preset": preset,
        "variant": variant,
        "zero_stage": stage,
        "checkpointing": var.checkpointing,
        "compiled": args.compile,
        "numerics": numerics,
        "params": n_params,
        "batch": batch,
        "tokens_per_step": batch * n,
        "first_step_s": first,
        # Graphs dynamo compiled and graph breaks it hit (DeepSpeed's ZeRO-3 hooks add both).
        "graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "median_step_ms": 1e3 * med,
        "tokens_per_s": batch * n / med,
        "tflops": flops / med / 1e12,
        "peak_mem_gb": peak / 1e9,
    }


def run_all(configs: list[tuple[str, str]], args, device: torch.device):
    """Timed rows; notes on configurations not run; the labels of those that failed (printed
    with their traceback, then skipped, so one failure does not cost the others' device time)."""
    from scigpt.train.metrics import detect_peak_tflops

    peak_tflops = detect_peak_tflops(args.precision) if device.type == "cuda" else None
    fit = argparse.Namespace(
        gpu_vars=args.vars, history=args.history, gpu_grid=args.grid, gpu_batch=args.batch
    )
    rows, notes, failed = [], [], []
    plain_batch: dict[str, int] = {}
    start = time.monotonic()
    for preset, variant in configs:
        label = f"{preset} {variant}"
        spent = time.monotonic() - start
        if spent > args.budget_s:
            notes.append(f"{label}: not run: {spent:.0f} s spent, past --budget-s {args.budget_s}")
            print(notes[-1], flush=True)
            continue
        if VARIANTS[variant].checkpointing != "none":
            fn, why = _checkpointing()
            if fn is None:
                notes.append(
                    f"{label}: skipped: activation checkpointing needs "
                    f"scigpt.parallel.checkpointing.apply_activation_checkpointing ({why})"
                )
                print(notes[-1], flush=True)
                continue
        batch, why = plain_batch.get(preset, 0), ""
        if not batch:
            batch, why = _batch_that_fits(preset, fit, device)
        if not batch:
            notes.append(why)
            print(why, flush=True)
            continue
        row = halving_on_oom(
            label,
            batch,
            lambda b, p=preset, v=variant: one_config(p, v, b, args, device),
            device,
            failed,
        )
        if device.type == "cuda" and torch.cuda.memory_allocated(device) > 1e9:
            left = torch.cuda.memory_allocated(device) / 1e9
            print(f"{label}: {left:.1f} GB still allocated after clean-up", flush=True)
        if row is None:
            continue
        batch = row["batch"]  # after any out-of-memory halving
        if variant == BASELINE:
            plain_batch[preset] = batch
        row["mfu"] = row["tflops"] / peak_tflops if peak_tflops else float("nan")
        row["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(
            f"{label}: batch {batch}, {row['median_step_ms']:.1f} ms/step, "
            f"{row['tokens_per_s']:.0f} tokens/s, {row['tflops']:.1f} TFLOP/s, "
            f"MFU {row['mfu']:.3f}, peak {row['peak_mem_gb']:.1f} GB",
            flush=True,
        )
        rows.append(row)
        _compare(rows, notes)
        if args.out is not None:
            save(rows, args.out)
    return rows, notes, failed


def _compare(rows: list[dict], notes: list[str]) -> None:
    """``speed_vs_plain``: tokens/s against the preset's ``plain-bf16`` row (the same precision
    scheme as the engine); ``speed_vs_autocast``: against its ``plain`` (fp32 weights + bf16
    autocast) row, which prices the precision scheme itself."""
    for r in rows:
        for key, name in (("speed_vs_plain", BASELINE), ("speed_vs_autocast", "plain")):
            base = next(
                (p for p in rows if p["preset"] == r["preset"] and p["variant"] == name), None
            )
            r[key] = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
            note = (
                f"{r['preset']} {r['variant']}: batch {r['batch']} against {name}'s "
                f"{base['batch']} (out of memory): the ratio compares different batches"
                if base and r["batch"] != base["batch"]
                else None
            )
            if note and note not in notes:
                notes.append(note)


COLUMNS = [
    ("preset", "preset", "9s"),
    ("variant", "variant", "9s"),
    ("batch", "batch", "d"),
    ("tokens_per_step", "tokens", "d"),
    ("first_step_s", "1st step s", ".1f"),
    ("graphs", "graphs", "d"),
    ("median_step_ms", "step ms", ".1f"),
    ("tokens_per_s", "tokens/s", ".0f"),
    ("tflops", "TFLOP/s", ".4g"),
    ("mfu", "MFU", ".3f"),
    ("peak_mem_gb", "peak GB", ".2f"),
    ("speed_vs_plain", "x plain-bf16", ".3f"),
    ("speed_vs_autocast", "x plain", ".3f"),
]
BAR = 0.95  # ZeRO-1 throughput against plain PyTorch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, metavar="PRESET:VARIANT")
    ap.add_argument("--vars", type=int, default=64, help="variables (registry and per sample)")
    ap.add_argument("--history", type=int, default=2)
    ap.add_argument("--grid", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=8, help="largest batch; halved on OOM")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument(
        "--budget-s", type=float, default=400, help="start no configuration after this many s"
    )
    ap.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="the same path on the CPU: each variant on vit-tiny, fp32, gloo, no compile, "
        "2 steps, 8 variables on 32x64",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step"))
    args = ap.parse_args()
    try:
        configs = parse_configs(args.configs)
        for preset in dict.fromkeys(p for p, _ in configs):
            _run_config(preset, 1, args.precision, 1)  # an unknown preset fails here, not later
    except ValueError as e:
        ap.error(str(e))
    if args.cpu_smoke:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is first imported
        variants = list(dict.fromkeys(v for _, v in configs))
        configs = [("vit-tiny", v) for v in variants]
        args.precision, args.compile, args.steps, args.warmup = "fp32", False, 2, 0
        args.vars, args.grid, args.batch = 8, [32, 64], 2
        args.out = args.out.with_name(args.out.name + "_cpu_smoke")
    elif not torch.cuda.is_available():
        raise SystemExit(
            "torch.cuda.is_available() is False (no CUDA device or a CPU build of torch "
            f"{torch.__version__}): run on a GPU node, or use --cpu-smoke to check the code path"
        )

    from scigpt.launch.distributed import destroy_distributed, init_distributed

    info = init_distributed(backend="gloo" if args.cpu_smoke else "nccl")
    if info.world_size != 1:
        raise SystemExit(
            f"world size {info.world_size} (launcher {info.launcher}): this benchmark is one "
            "process on one device; run it with python, not torchrun/srun/mpirun"
        )
    device = (
        torch.device("cpu") if args.cpu_smoke else torch.device("cuda", torch.cuda.current_device())
    )
    import deepspeed

    h, w = args.grid
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"training step on {device} ({name}): torch {torch.__version__}, "
        f"deepspeed {deepspeed.__version__}, "
        f"{args.precision}, {'per-block torch.compile' if args.compile else 'eager'}; "
        f"{args.vars} variables x {args.history} frames on {h}x{w}; "
        f"median of {args.steps} steps after {args.warmup} (+ the first)",
        flush=True,
    )
    try:
        rows, notes, failed = run_all(configs, args, device)
    finally:
        destroy_distributed()
    if rows:
        for r in rows:
            r.update(torch=torch.__version__, deepspeed=deepspeed.__version__)
        print()
        report(rows, COLUMNS, args.out)
    if args.cpu_smoke:
        print("CPU smoke: this checks the code path; its timings are not a measurement")
    for r in rows:
        if r["variant"] == "zero1" and not args.cpu_smoke:
            ratio = r["speed_vs_plain"]
            if ratio != ratio:  # NaN: no baseline run of this preset
                verdict = f"no {BASELINE} run to compare with, the {BAR}x bar is not checked"
            else:
                verdict = f"{'meets' if ratio >= BAR else 'BELOW'} the {BAR}x bar"
            print(
                f"{r['preset']}: ZeRO-1 runs at {ratio:.3f}x plain PyTorch in the same precision "
                f"scheme ({BASELINE}): {verdict}",
                flush=True,
            )
        if r["variant"] == BASELINE and r["speed_vs_autocast"] == r["speed_vs_autocast"]:
            print(
                f"{r['preset']}: precision scheme: bf16 weights + fp32 masters run at "
                f"{r['speed_vs_autocast']:.3f}x fp32 weights + bf16 autocast (plain PyTorch)",
                flush=True,
            )
    for note in notes:
        print(f"note: {note}", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (tracebacks above)")


if __name__ == "__main__":
    main()
