"""Triton kernels against their competitors, in one run (needs a CUDA GPU; ≤ 5 minutes).

Attention: forward and forward + backward TFLOP/s of ``scigpt.kernels.flash_attention`` against
PyTorch SDPA's flash and cuDNN backends at (B, H, N, D) = (16,16,1024,64), (8,16,4096,64),
(4,16,4096,128), (1,16,16384,128) in bf16, non-causal. FLOPs follow the FlashAttention papers'
convention: forward 4·B·H·N²·D (QKᵀ and PV), backward 2.5× forward, so forward + backward is
3.5 × 4·B·H·N²·D. Bars (issue "Triton kernels"): forward ≥ 0.95× cuDNN and forward + backward
≥ 1.0× SDPA flash on every shape.

Patch embedding: the fused kernel against ``torch.compile`` of the PyTorch reference
(``benchmarks/_patch_embed_bench.py``); bar ≥ 1.2×.

    python benchmarks/kernels.py                      # on a GPU
    python benchmarks/kernels.py --cpu-smoke          # plumbing only: references, tiny shapes

Results: ``benchmarks/results/kernels_attention.{csv,json}`` and ``kernels_patch_embed.*``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import report
from _timing import free, time_steps

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


def _time_variant(fn, q, k, v, dout, n: int, warmup: int, device) -> tuple[float, float]:
    """Median seconds of a forward, and of a forward + backward, of ``fn``."""
    with torch.no_grad():
        t_f = statistics.median(time_steps(lambda: fn(q, k, v), n, warmup, device))

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        fn(q, k, v).backward(dout)

    return t_f, statistics.median(time_steps(fwd_bwd, n, warmup, device))


def bench_attention(device: torch.device, dtype: torch.dtype, shapes, n: int, warmup: int):
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
                t_f, t_fb = _time_variant(fn, q, k, v, dout, n, warmup, device)
                row[f"{name}_fwd"] = fwd_flops / t_f / 1e12
                row[f"{name}_fwdbwd"] = 3.5 * fwd_flops / t_fb / 1e12
            except Exception as e:  # a backend missing on this GPU/build: say so, go on
                print(f"  {name} at {row['shape']}: {type(e).__name__}: {e}", flush=True)
                row[f"{name}_fwd"] = row[f"{name}_fwdbwd"] = float("nan")
        rows.append(row)
        free(device)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="references on tiny CPU shapes")
    ap.add_argument("--steps", type=int, default=20, help="timed calls per variant (median)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls (autotuning) first")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        device, dtype, shapes, tag = torch.device("cpu"), torch.float32, SMOKE_SHAPES, "_smoke"
    elif torch.cuda.is_available():
        device, dtype, shapes, tag = torch.device("cuda"), torch.bfloat16, SHAPES, ""
    else:
        print("benchmarks/kernels.py needs a CUDA GPU (or --cpu-smoke for the plumbing)")
        return 2
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")

    rows = bench_attention(device, dtype, shapes, args.steps, args.warmup)
    names = list(_variants(device))
    ours, flash, cudnn = names[0], names[1], names[-1]
    for r in rows:
        r["fwd_vs_cudnn"] = r[f"{ours}_fwd"] / r[f"{cudnn}_fwd"]
        r["fwdbwd_vs_flash"] = r[f"{ours}_fwdbwd"] / r[f"{flash}_fwdbwd"]
        r["fwdbwd_vs_cudnn"] = r[f"{ours}_fwdbwd"] / r[f"{cudnn}_fwdbwd"]
    cols = [("shape", "shape", "s")]
    cols += [(f"{n}_{p}", f"{n} {p} TF/s", ".0f") for p in ("fwd", "fwdbwd") for n in names]
    cols += [("fwd_vs_cudnn", "fwd/cuDNN", ".2f"), ("fwdbwd_vs_flash", "f+b/flash", ".2f"),
             ("fwdbwd_vs_cudnn", "f+b/cuDNN", ".2f")]  # fmt: skip
    report(rows, cols, RESULTS / f"kernels_attention{tag}")
    if device.type == "cuda":
        ok_f = all(r["fwd_vs_cudnn"] >= 0.95 for r in rows)
        ok_b = all(r["fwdbwd_vs_flash"] >= 1.0 for r in rows)
        print(f"bar forward >= 0.95x cuDNN: {'met' if ok_f else 'NOT met'}; "
              f"forward+backward >= 1.0x SDPA flash: {'met' if ok_b else 'NOT met'}")  # fmt: skip

    import _patch_embed_bench as pe

    if device.type == "cuda":
        pe_rows = pe.run("cuda", torch.bfloat16, pe.DEFAULT_SHAPES)
    else:  # "fused" is the reference here: Triton has no CPU backend
        pe_rows = pe.run("cpu", torch.float32, pe.SMOKE_SHAPES, steps=3, warmup=1)
    report(pe_rows, pe.COLUMNS, RESULTS / f"kernels_patch_embed{tag}")
    if device.type == "cuda":
        ok = all(r["compiled_over_fused_fwdbwd"] >= 1.2 for r in pe_rows)
        print(f"bar patch embedding >= 1.2x torch.compile(reference): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
