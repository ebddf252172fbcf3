"""Model size and FLOPs of every preset; with ``--gpu``, the training step time and MFU.

CPU part (no GPU needed), per preset at a reference spec (``--vars`` variables, ``--history``
frames): parameters, training FLOPs per token from ``scigpt.models.sizing`` at a 64x64 grid and at
ERA5's 721x1440 grid (patch 4: 16 x 16 = 256 and 181 x 360 = 65,160 tokens), the attention and
variable-aggregation shares, and the competitor measured in the same run: FlopCounterMode on the
real model's forward and forward+backward on the meta device (shapes only, so even 30B at 65k
tokens costs no memory; SDPA decomposes into its two bmms there), as counted / formula.

GPU part (``--gpu``, needs CUDA): for each preset whose fp32 weights + gradients + AdamW states
(16 bytes/parameter) fit the device, one training step — bf16 autocast, fused AdamW, synthetic
batch — timed eager (plain PyTorch: the model is plain PyTorch, there is no other library to
compare against) and with torch.compile (per block, as torchtitan does); step time, TFLOP/s and
MFU against ``scigpt.train.metrics.detect_peak_tflops``. ``--cpu-step`` runs the same path on the
CPU for a quick check of the code (no MFU).

    python benchmarks/model_flops.py
    python benchmarks/model_flops.py --gpu --gpu-presets vit-tiny vit-100m vit-300m vit-1b vit-3b
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _report import report
from _timing import halving_on_oom, time_steps

PRESETS = ["vit-tiny", "vit-100m", "vit-300m", "vit-1b", "vit-3b", "vit-10b", "vit-30b"]
GRIDS = {"64x64": (64, 64), "era5": (721, 1440)}
BYTES_PER_PARAM = 16  # fp32 weights + fp32 gradients + AdamW exp_avg + exp_avg_sq


def _run_config(preset: str, batch: int = 1):
    from scigpt.config_loader import load_config, shipped_config

    return load_config(
        shipped_config("runs/demo.yaml"),
        [f"model.preset={preset}", f"schedule.micro_batch_size={batch}", "precision=bf16"],
    ).config


def _grid_batch(b: int, v: int, t: int, h: int, w: int, device) -> dict[str, torch.Tensor]:
    """A synthetic grid batch (DESIGN.md §7); on ``meta`` it holds shapes only."""
    g = torch.Generator().manual_seed(0)
    rand = (
        (lambda *s: torch.empty(*s, device=device))
        if torch.device(device).type == "meta"
        else (lambda *s: torch.randn(*s, generator=g).to(device))
    )
    return {
        "fields": rand(b, v, t, h, w),
        "target": rand(b, v, h, w),
        "var_ids": torch.arange(v, device=device),
        "lat": torch.linspace(90, -90, h, device=device),
        "lon": torch.linspace(0, 360 - 360 / w, w, device=device),
        "times": torch.zeros(b, dtype=torch.int64, device=device),
    }


def _counted(model, batch) -> tuple[int, int]:
    """FlopCounterMode totals of a forward and of a forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fwd:
        model(batch)
    with FlopCounterMode(display=False) as both:
        model(batch).float().square().mean().backward()
    return fwd.get_total_flops(), both.get_total_flops()


def size_rows(presets: list[str], num_vars: int, history: int, check: bool) -> list[dict]:
    from scigpt.models.build import build_model
    from scigpt.models.sizing import flops_breakdown, grid_tokens, param_count
    from scigpt.models.vit import ModelSpec

    spec = ModelSpec(num_vars=num_vars, history=history)
    rows = []
    for name in presets:
        cfg = _run_config(name).model
        pc = param_count(cfg, spec)
        row = {
            "preset": name,
            "embed_dim": cfg.embed_dim,
            "depth": cfg.depth,
            "heads": cfg.heads,
            "params": pc["total"],
            "params_blocks": pc["blocks"],
            "params_per_variable": pc["per_variable"],
            "params_m": pc["total"] / 1e6,
            "params_blocks_m": pc["blocks"] / 1e6,
        }
        model = build_model(cfg, spec) if check else None  # meta device
        for key, (h, w) in GRIDS.items():
            n = grid_tokens(cfg, h, w)
            parts = flops_breakdown(cfg, spec, n)
            row[f"tokens_{key}"] = n
            row[f"train_gflop_per_token_{key}"] = 3 * parts["forward"] / 1e9
            row[f"train_tflop_per_sample_{key}"] = 3 * parts["forward"] * n / 1e12
            row[f"attention_share_{key}"] = parts["attention"] / parts["forward"]
            row[f"aggregate_share_{key}"] = parts["aggregate"] / parts["forward"]
            if model is not None:
                fwd, both = _counted(model, _grid_batch(1, num_vars, history, h, w, "meta"))
                row[f"counter_vs_formula_fwd_{key}"] = fwd / (parts["forward"] * n)
                row[f"counter_vs_formula_train_{key}"] = both / (3 * parts["forward"] * n)
        del model
        rows.append(row)
    return rows


SIZE_COLUMNS = [
    ("preset", "preset", "9s"),
    ("params_m", "params M", ".1f"),
    ("params_blocks_m", "blocks M", ".1f"),
    ("train_gflop_per_token_64x64", "GF/tok 64x64", ".4g"),
    ("train_gflop_per_token_era5", "GF/tok ERA5", ".4g"),
    ("train_tflop_per_sample_era5", "TF/sample ERA5", ".1f"),
    ("aggregate_share_64x64", "agg 64x64", ".2f"),
    ("attention_share_era5", "attn ERA5", ".2f"),
]
# FlopCounterMode (the real model on the meta device) / formula; train: / (3 x forward).
CHECK_COLUMNS = [
    ("counter_vs_formula_fwd_64x64", "ctr/f fwd 64x64", ".5f"),
    ("counter_vs_formula_train_64x64", "ctr/f train 64x64", ".5f"),
    ("counter_vs_formula_fwd_era5", "ctr/f fwd ERA5", ".5f"),
    ("counter_vs_formula_train_era5", "ctr/f train ERA5", ".5f"),
]


# ---- training step on one device ----------------------------------------------------------------


def _one_variant(name: str, compiled: bool, batch: int, args, device: torch.device) -> dict:
    from scigpt.models.build import build_model, materialise
    from scigpt.models.sizing import flops_per_token, grid_tokens
    from scigpt.models.vit import ModelSpec
    from scigpt.parallel.engine import build_optimizer

    cfg = _run_config(name, batch)
    spec = ModelSpec(num_vars=args.gpu_vars, history=args.history)
    h, w = args.gpu_grid
    model = materialise(build_model(cfg.model, spec), device, seed=0)
    # The forecast head starts at zero (persistence); open it so gradients flow everywhere.
    torch.nn.init.normal_(model.head.weight, std=0.02)
    if compiled:
        # One compiled graph per block class, reused by every block (torchtitan's choice):
        # compile time does not grow with depth. Tokenizer and heads compile as wholes.
        dyn = torch._dynamo.config
        limit = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
        setattr(dyn, limit, max(getattr(dyn, limit), 2 * len(model.blocks)))
        for blk in model.blocks:
            blk.compile()
        model.tokenizer.compile()
        model.head.compile()
    opt = build_optimizer(model, cfg)  # fused AdamW, decay on matrices only
    data = _grid_batch(batch, args.gpu_vars, args.history, h, w, device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(data)
        loss = (out.float() - data["target"]).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step()  # first step: compilation (when compiled) and allocator warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first = time.perf_counter() - t0
    times = time_steps(step, args.steps, args.warmup, device)
    n = grid_tokens(cfg.model, h, w)
    med = statistics.median(times)
    flops = batch * n * flops_per_token(cfg.model, spec, n, num_vars=args.gpu_vars)
    return {
        "preset": name,
        "variant": "torch.compile" if compiled else "eager",
        "batch": batch,
        "tokens_per_step": batch * n,
        "first_step_s": first,
        "median_step_ms": 1e3 * med,
        "tflops": flops / med / 1e12,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9
        if device.type == "cuda"
        else float("nan"),
    }


def _batch_that_fits(name: str, args, device: torch.device) -> tuple[int, str]:
    """The largest power-of-two batch <= --gpu-batch whose estimated memory fits the device
    (0 and the reason when even the weights and optimizer states do not)."""
    from scigpt.models.sizing import grid_tokens, param_count
    from scigpt.models.vit import ModelSpec

    cfg = _run_config(name).model
    total = param_count(cfg, ModelSpec(args.gpu_vars, args.history))["total"]
    if device.type != "cuda":
        return args.gpu_batch, ""
    have = 0.85 * torch.cuda.get_device_properties(device).total_memory
    states = BYTES_PER_PARAM * total
    # Rough activations kept for backward under bf16 autocast, per sample: ~12 bytes per
    # variable-token element in the tokenizer (fp32 tokens, bf16 copy, keys, values) and
    # ~40 bytes per token element per block (Korthikanti et al. 2022's 34, plus fp32 residuals).
    n, d = grid_tokens(cfg, *args.gpu_grid), cfg.embed_dim
    per_sample = 12 * args.gpu_vars * n * d + 40 * cfg.depth * n * d
    if states + per_sample > have:
        return 0, (
            f"{name}: {total / 1e9:.2f}B parameters need {states / 1e9:.0f} GB for weights, "
            f"gradients and AdamW states plus ~{per_sample / 1e9:.0f} GB of activations per "
            f"sample; {have / 1e9:.0f} GB usable: skipped (it needs tp/pp or ZeRO-3)"
        )
    batch = args.gpu_batch
    while batch > 1 and states + batch * per_sample > have:
        batch //= 2
    return batch, ""


def step_rows(presets: list[str], args, device: torch.device) -> tuple[list[dict], list[str]]:
    """Timed rows, and the variants that failed (printed with their traceback, then skipped,
    so one failure does not cost the other presets' device time)."""
    from scigpt.train.metrics import detect_peak_tflops

    peak = detect_peak_tflops("bf16") if device.type == "cuda" else None
    variants = [c for c in (False, True) if (c and args.compile) or (not c and args.eager)]
    rows, failed = [], []
    for name in presets:
        first_batch, why = _batch_that_fits(name, args, device)
        if not first_batch:
            print(why, flush=True)
            continue
        eager_tokens_per_s = None
        for compiled in variants:
            label = f"{name} {'torch.compile' if compiled else 'eager'}"
            row = halving_on_oom(
                label, first_batch,
                lambda b, n=name, c=compiled: _one_variant(n, c, b, args, device),
                device, failed,
            )  # fmt: skip
            if row is None:
                continue
            tokens_per_s = row["tokens_per_step"] / (row["median_step_ms"] / 1e3)
            if not compiled:
                eager_tokens_per_s = tokens_per_s
            row["tokens_per_s"] = tokens_per_s
            row["speed_vs_eager"] = (
                tokens_per_s / eager_tokens_per_s if eager_tokens_per_s else float("nan")
            )
            row["mfu"] = row["tflops"] / peak if peak else float("nan")
            row["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            print(
                f"{label}: batch {row['batch']}, {row['median_step_ms']:.1f} ms/step, "
                f"{row['tflops']:.1f} TFLOP/s, MFU {row['mfu']:.3f}",
                flush=True,
            )
            rows.append(row)
    return rows, failed


STEP_COLUMNS = [
    ("preset", "preset", "9s"),
    ("variant", "variant", "13s"),
    ("batch", "batch", "d"),
    ("tokens_per_step", "tokens", "d"),
    ("first_step_s", "1st step s", ".1f"),
    ("median_step_ms", "step ms", ".1f"),
    ("tflops", "TFLOP/s", ".4g"),
    ("mfu", "MFU", ".3f"),
    ("speed_vs_eager", "x eager", ".2f"),
    ("peak_mem_gb", "peak GB", ".1f"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--vars", type=int, default=100, help="variables (registry and per sample)")
    ap.add_argument("--history", type=int, default=2)
    ap.add_argument("--no-check", dest="check", action="store_false", help="no FlopCounterMode")
    ap.add_argument("--gpu", action="store_true", help="time a training step on CUDA")
    ap.add_argument("--cpu-step", action="store_true", help="time the same step on the CPU")
    ap.add_argument("--gpu-presets", nargs="+", default=PRESETS[:5])
    ap.add_argument("--gpu-vars", type=int, default=100)
    ap.add_argument("--gpu-grid", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    ap.add_argument("--gpu-batch", type=int, default=8, help="largest batch; halved on OOM")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--no-eager", dest="eager", action="store_false")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/model_flops"))
    args = ap.parse_args()
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit(
            "--gpu: torch.cuda.is_available() is False (no CUDA device or a CPU build of "
            f"torch {torch.__version__}): run on a GPU node, or use --cpu-step to check the "
            "code path on the CPU"
        )

    print(
        f"reference spec: {args.vars} variables, history {args.history}, patch from the preset; "
        f"64x64 and ERA5 721x1440 grids",
        flush=True,
    )
    rows = size_rows(args.presets, args.vars, args.history, args.check)
    report(rows, SIZE_COLUMNS + (CHECK_COLUMNS if args.check else []), args.out)

    if args.gpu or args.cpu_step:
        device = torch.device("cuda", 0) if args.gpu else torch.device("cpu")
        if args.gpu:
            torch.cuda.set_device(device)
        print(
            f"\ntraining step on {device}: bf16 autocast, fused AdamW, "
            f"{args.gpu_vars} variables x {args.history} frames on {args.gpu_grid[0]}x"
            f"{args.gpu_grid[1]}; median of {args.steps} steps after {args.warmup}",
            flush=True,
        )
        steps, failed = step_rows(args.gpu_presets, args, device)
        if steps:
            out = args.out.with_name(args.out.name + ("_gpu" if args.gpu else "_cpu_step"))
            report(steps, STEP_COLUMNS, out)
        if failed:
            raise SystemExit(f"failed: {', '.join(failed)} (tracebacks above)")


if __name__ == "__main__":
    main()
