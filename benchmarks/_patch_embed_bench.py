"""Patch-embedding timings: the fused Triton kernel against ``torch.compile`` of the PyTorch
reference and the eager reference, forward and forward + backward, in one run (ratio columns).

Called by the GPU benchmark script: ``run("cuda", torch.bfloat16, DEFAULT_SHAPES)`` returns one
row per shape. On a machine without a GPU, ``run("cpu", torch.float32, SMOKE_SHAPES)`` checks
the plumbing: Triton has no CPU backend (its interpreter is for tests, far too slow to time), so
the "fused" column there runs ``fused_patch_embed(impl="reference")`` and the rows say so.

    python benchmarks/_patch_embed_bench.py            # CPU smoke check, prints the rows
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from _report import save
from _timing import halving_on_oom, per_call_ms

from scigpt.kernels.patch_embed import fused_patch_embed, patch_embed_reference


@dataclass(frozen=True)
class Shape:
    """One benchmark problem: x is (batch, vars, history, h, w), patch (history, patch, patch)."""

    batch: int
    vars: int
    history: int
    h: int
    w: int
    patch: int
    dim: int
    embeddings: bool = False  # also add var_embed and pos in the same pass

    @property
    def label(self) -> str:
        emb = "+emb" if self.embeddings else ""
        return (
            f"B{self.batch} V{self.vars} T{self.history} {self.h}x{self.w} "
            f"p{self.patch} D{self.dim}{emb}"
        )


DEFAULT_SHAPES: tuple[Shape, ...] = (
    Shape(8, 4, 1, 64, 64, 4, 768),  # K = 16, few tokens
    Shape(4, 8, 2, 128, 256, 4, 1024),
    Shape(4, 16, 2, 121, 240, 4, 1024, embeddings=True),  # padded H and W
    Shape(2, 32, 2, 360, 720, 4, 1024),  # ERA5 at 0.5°
)
SMOKE_SHAPES: tuple[Shape, ...] = (Shape(2, 3, 2, 13, 10, 4, 32, embeddings=True),)


def _problem(s: Shape, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The float inputs by name (pos and var_embed only with embeddings) and var_ids."""
    g = torch.Generator().manual_seed(0)
    num_vars = s.vars + 2  # a registry larger than the batch's variables, like the model's
    n = -(-s.h // s.patch) * -(-s.w // s.patch)
    shapes = {
        "x": (batch, s.vars, s.history, s.h, s.w),
        "weight": (num_vars, s.dim, s.history, s.patch, s.patch),
        "bias": (num_vars, s.dim),
    }
    if s.embeddings:
        shapes |= {"pos": (n, s.dim), "var_embed": (num_vars, s.dim)}
    scale = {"weight": 0.05}
    inputs = {
        k: (torch.randn(shape, generator=g) * scale.get(k, 1.0)).to(device=device, dtype=dtype)
        for k, shape in shapes.items()
    }
    inputs["var_ids"] = torch.randperm(num_vars, generator=g)[: s.vars].to(device)
    return inputs


def _measure(
    s: Shape, batch: int, device: torch.device, dtype: torch.dtype, timing: dict | None
) -> dict[str, Any]:
    inputs = _problem(s, batch, device, dtype)
    patch = (s.history, s.patch, s.patch)
    fused_impl = "triton" if device.type == "cuda" else "reference"
    fns = {
        "fused": lambda **kw: fused_patch_embed(**kw, impl=fused_impl),
        "compiled": torch.compile(patch_embed_reference),
        "eager": patch_embed_reference,
    }
    leaves = {k: t.requires_grad_() for k, t in inputs.items() if t.is_floating_point()}
    with torch.no_grad():
        out = patch_embed_reference(patch=patch, **inputs)
    dout = torch.randn_like(out)
    row: dict[str, Any] = {
        "shape": s.label,
        "batch": batch,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device.type,
        "fused_impl": fused_impl,
        "tokens": out.shape[0] * out.shape[1] * out.shape[2],
    }
    for name, fn in fns.items():
        with torch.no_grad():
            row[f"{name}_fwd_ms"] = per_call_ms(
                lambda fn=fn: fn(patch=patch, **inputs), device, timing
            )

        def fwd_bwd(fn=fn):
            torch.autograd.grad(fn(patch=patch, **inputs), list(leaves.values()), dout)

        row[f"{name}_fwdbwd_ms"] = per_call_ms(fwd_bwd, device, timing)
    for kind in ("fwd", "fwdbwd"):
        for other in ("compiled", "eager"):
            row[f"{other}_over_fused_{kind}"] = row[f"{other}_{kind}_ms"] / row[f"fused_{kind}_ms"]
    # the forward's compulsory traffic: read x and the used weight rows, write the tokens
    x, weight = inputs["x"], inputs["weight"]
    moved = x.numel() * x.element_size() + out.numel() * out.element_size()
    moved += s.vars * weight[0].numel() * weight.element_size()
    row["fused_fwd_gbps"] = moved / (row["fused_fwd_ms"] * 1e-3) / 1e9
    return row


def run(
    device: str,
    dtype: torch.dtype,
    shapes: Iterable[Shape] = DEFAULT_SHAPES,
    *,
    timing: dict | None = None,
    out: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per shape: ms per call of each implementation (``_timing.per_call_ms``), forward
    and forward + backward, and the ratios compiled/fused and eager/fused (> 1: the fused kernel
    is faster); saved to ``out`` after each shape. A shape that runs out of memory is retried at
    half the batch; one that fails otherwise is skipped."""
    dev = torch.device(device)
    rows, failed = [], []
    for s in shapes:
        row = halving_on_oom(
            s.label,
            s.batch,
            lambda batch, s=s: _measure(s, batch, dev, dtype, timing),
            dev,
            failed,
        )
        if row is not None:
            rows.append(
                {**asdict(s), **row, **{f"timing_{k}": v for k, v in (timing or {}).items()}}
            )
            if out is not None:
                save(rows, out)
    return rows


COLUMNS = [
    ("shape", "shape", "s"),
    ("dtype", "dtype", "s"),
    ("fused_fwd_ms", "fused fwd ms", ".3f"),
    ("compiled_fwd_ms", "compiled fwd ms", ".3f"),
    ("eager_fwd_ms", "eager fwd ms", ".3f"),
    ("compiled_over_fused_fwd", "compiled/fused", ".2f"),
    ("eager_over_fused_fwd", "eager/fused", ".2f"),
    ("fused_fwdbwd_ms", "fused f+b ms", ".3f"),
    ("compiled_fwdbwd_ms", "compiled f+b ms", ".3f"),
    ("eager_fwdbwd_ms", "eager f+b ms", ".3f"),
    ("compiled_over_fused_fwdbwd", "compiled/fused f+b", ".2f"),
    ("eager_over_fused_fwdbwd", "eager/fused f+b", ".2f"),
    ("fused_fwd_gbps", "fused fwd GB/s", ".1f"),
]


if __name__ == "__main__":
    for r in run("cpu", torch.float32, SMOKE_SHAPES):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
