"""Triton kernels against their competitors, in one run (needs a CUDA GPU; ≤ 5 minutes).

Attention: forward and forward + backward TFLOP/s of ``scigpt.kernels.flash_attention`` against
PyTorch SDPA's flash and cuDNN backends at (B, H, N, D) = (16,16,1024,64), (8,16,4096,64),
(4,16,4096,128), (1,16,16384,128) in bf16, non-causal. FLOPs follow the FlashAttention papers'
convention: forward 4·B·H·N²·D (QKᵀ and PV), backward 2.5× forward, so forward + backward is
3.5 × 4·B·H·N²·D. Bars (issue "Triton kernels"): forward ≥ 0.95× cuDNN and forward + backward
≥ 1.0× SDPA flash on every shape.

Patch embedding: the fused kernel against ``torch.compile`` of the PyTorch reference
(``benchmarks/_patch_embed_bench.py``); bar ≥ 1.2×.

Timing (``benchmarks/_timing.py``, recorded in every row): CUDA events around back-to-back
calls, median over rounds — not wall clock around one synchronised call, which would charge the
host's launch and input checks to each sample and bias small shapes against Triton.

    python benchmarks/kernels.py                      # on a GPU
    python benchmarks/kernels.py --cpu-smoke          # plumbing only: references, tiny shapes

Results: ``kernels_attention.{csv,json}`` and ``kernels_patch_embed.*`` in ``--out-dir``
(default ``benchmarks/results``), rewritten after every shape, so a run stopped by a time box
keeps the shapes it finished.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import report, save
from _timing import KERNEL_TIMING, SMOKE_TIMING, free, per_call_ms

SHAPES = [(16, 16, 1024, 64), (8, 16, 4096, 64), (4, 16, 4096, 128), (1, 16, 16384, 128)]
SMOKE_SHAPES = [(1, 2, 64, 32)]
RESULTS = Path(__file__).parent / "results"


def _variants(device: torch.device):
    """name → attention function (q, k, v) → out, for the competitors available here."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from scigpt.kernels.flash_attention import flash_attention

    def sdpa(backend):
        def fn(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)

        return fn

    if device.type != "cuda":  # smoke: references only (Triton has no CPU backend)
        return {
            "triton(reference)": lambda q, k, v: flash_attention(q, k, v, impl="reference"),
            "sdpa-math": sdpa(SDPBackend.MATH),
        }
    return {
        "triton": lambda q, k, v: flash_attention(q, k, v),
        "sdpa-flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa-cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
    }


def _time_variant(fn, q, k, v, dout, timing: dict) -> tuple[float, float]:
    """Seconds per forward, and per forward + backward, of ``fn``."""
    with torch.no_grad():
        t_f = per_call_ms(lambda: fn(q, k, v), q.device, timing) / 1e3

    def fwd_bwd():
        torch.autograd.grad(fn(q, k, v), (q, k, v), dout)

    return t_f, per_call_ms(fwd_bwd, q.device, timing) / 1e3


def bench_attention(device: torch.device, dtype: torch.dtype, shapes, timing: dict, out: Path):
    """One row per shape (TFLOP/s per variant), saved to ``out`` after each shape."""
    rows = []
    for b, h, seq, d in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (
            torch.randn(b, h, seq, d, device=device, dtype=dtype, generator=g).requires_grad_()
            for _ in range(3)
        )
        dout = torch.randn_like(q)
        fwd_flops = 4.0 * b * h * seq * seq * d
        row = {"shape": f"B{b} H{h} N{seq} D{d}", "dtype": str(dtype).removeprefix("torch.")}
        for name, fn in _variants(device).items():
            try:
                t_f, t_fb = _time_variant(fn, q, k, v, dout, timing)
                row[f"{name}_fwd"] = fwd_flops / t_f / 1e12
                row[f"{name}_fwdbwd"] = 3.5 * fwd_flops / t_fb / 1e12
            except Exception as e:  # a backend missing on this GPU/build: say so, go on
                print(f"  {name} at {row['shape']}: {type(e).__name__}: {e}", flush=True)
                row[f"{name}_fwd"] = row[f"{name}_fwdbwd"] = float("nan")
        _ratios(row, list(_variants(device)))
        rows.append({**row, **{f"timing_{k}": v for k, v in timing.items()}})
        save(rows, out)
        free(device)
    return rows


def _ratios(row: dict, names: list[str]) -> None:
    ours, flash, cudnn = names[0], names[1], names[-1]
    row["fwd_vs_cudnn"] = row[f"{ours}_fwd"] / row[f"{cudnn}_fwd"]
    row["fwdbwd_vs_flash"] = row[f"{ours}_fwdbwd"] / row[f"{flash}_fwdbwd"]
    row["fwdbwd_vs_cudnn"] = row[f"{ours}_fwdbwd"] / row[f"{cudnn}_fwdbwd"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="references on tiny CPU shapes")
    ap.add_argument(
        "--rounds",
        type=int,
        default=KERNEL_TIMING["rounds"],
        help="timed rounds per variant (median)",
    )
    ap.add_argument(
        "--calls",
        type=int,
        default=KERNEL_TIMING["calls_per_round"],
        help="back-to-back calls per timed round",
    )
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)  # fmt: skip
    if args.cpu_smoke:
        device, dtype, shapes, tag = torch.device("cpu"), torch.float32, SMOKE_SHAPES, "_smoke"
        timing = dict(SMOKE_TIMING)
    elif torch.cuda.is_available():
        device, dtype, shapes, tag = torch.device("cuda"), torch.bfloat16, SHAPES, ""
        timing = {**KERNEL_TIMING, "rounds": args.rounds, "calls_per_round": args.calls}
    else:
        print("benchmarks/kernels.py needs a CUDA GPU (or --cpu-smoke for the plumbing)")
        return 2
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    print(f"timing: {timing['method']}; {timing['rounds']} rounds of {timing['calls_per_round']} "
          f"calls after {timing['warmup_calls']} warm-up calls", flush=True)  # fmt: skip

    out_attn = args.out_dir / f"kernels_attention{tag}"
    rows = bench_attention(device, dtype, shapes, timing, out_attn)
    names = list(_variants(device))
    cols = [("shape", "shape", "s")]
    cols += [(f"{n}_{p}", f"{n} {p} TF/s", ".0f") for p in ("fwd", "fwdbwd") for n in names]
    cols += [("fwd_vs_cudnn", "fwd/cuDNN", ".2f"), ("fwdbwd_vs_flash", "f+b/flash", ".2f"),
             ("fwdbwd_vs_cudnn", "f+b/cuDNN", ".2f")]  # fmt: skip
    report(rows, cols, out_attn)
    if device.type == "cuda":
        ok_f = all(r["fwd_vs_cudnn"] >= 0.95 for r in rows)
        ok_b = all(r["fwdbwd_vs_flash"] >= 1.0 for r in rows)
        print(f"bar forward >= 0.95x cuDNN: {'met' if ok_f else 'NOT met'}; "
              f"forward+backward >= 1.0x SDPA flash: {'met' if ok_b else 'NOT met'}")  # fmt: skip

    import _patch_embed_bench as pe

    out_pe = args.out_dir / f"kernels_patch_embed{tag}"
    if device.type == "cuda":
        pe_rows = pe.run("cuda", torch.bfloat16, pe.DEFAULT_SHAPES, timing=timing, out=out_pe)
    else:  # "fused" is the reference here: Triton has no CPU backend
        pe_rows = pe.run("cpu", torch.float32, pe.SMOKE_SHAPES, timing=timing, out=out_pe)
    report(pe_rows, pe.COLUMNS, out_pe)
    if device.type == "cuda":
        ok = all(r["compiled_over_fused_fwdbwd"] >= 1.2 for r in pe_rows)
        print(f"bar patch embedding >= 1.2x torch.compile(reference): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
