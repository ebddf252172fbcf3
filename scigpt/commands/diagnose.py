"""``scigpt diagnose RUN_DIR_OR_PACKAGE``: HTSR weight diagnostics (``scigpt.diagnostics``) of a
model package or of a run's checkpoint, written as a per-layer table, a summary and plots.

A package loads through ``scigpt.export.loader`` (checksums verified); a run's checkpoint of any
layout (tensor-parallel shards, pipeline layers, ZeRO-3 partitions) is merged one matrix at a time
as the export writer merges it (``scigpt.parallel.reshard.iter_consolidated``: files memory-mapped,
ZeRO-3 partitions gathered lazily; LoRA adapters folded in per module), so the whole model is never
held in memory. With several checkpoints in the run, α of every layer at each of them
gives ``alpha_over_steps``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scigpt.commands import EXIT_OK
from scigpt.diagnostics.htsr import analyze_state, summarize
from scigpt.diagnostics.report import write_report
from scigpt.export.loader import load_pretrained
from scigpt.export.verify import FORMAT
from scigpt.export.writer import checkpoint_weights, resolve_checkpoint
from scigpt.rundir import RunDir
from scigpt.train.checkpoint import CheckpointManager, step_of


def run(args: argparse.Namespace) -> int:
    src = Path(args.path)
    opts = {"min_evals": args.min_evals, "seed": args.seed, "workers": args.workers}
    history: dict[int, dict[str, float]] = {}
    t0 = time.perf_counter()
    if (src / FORMAT).is_file():
        if args.step is not None:
            raise ValueError(f"--step is for a run directory; {src} is a package (one model)")
        state = dict(load_pretrained(src, device="cpu").model.state_dict())
        layers = analyze_state(state, keep_evals=True, **opts)
        source = {"package": str(src.resolve())}
        out = args.out or src.parent / f"{src.name}-diagnostics"
    elif RunDir(src).checkpoints.is_dir():
        ckpt = resolve_checkpoint(src, step=args.step)
        layers = analyze_state(checkpoint_weights(ckpt), keep_evals=True, **opts)
        source = {"run_dir": str(src.resolve()), "step": step_of(ckpt.name)}
        out = args.out or RunDir(src).path / "diagnostics" / ckpt.name
        tags = CheckpointManager(ckpt.parent, rank=0, world_size=1, keep_last=0).tags()
        if len(tags) > 1 and not args.no_history:
            for tag in tags:  # the chosen checkpoint's rows are already there
                rows = layers if tag == ckpt.name else analyze_state(
                    checkpoint_weights(ckpt.parent / tag), **opts)  # fmt: skip
                history[step_of(tag)] = {d.name: d.alpha for d in rows if d.status == "ok"}
    else:
        raise FileNotFoundError(
            f"{src} is neither a model package (no {FORMAT}) nor a run directory (no "
            "checkpoints/): give the folder `scigpt export` wrote or a run directory"
        )
    summary = {**summarize(layers), "source": source, "seconds": time.perf_counter() - t0}
    written = write_report(Path(out), layers, summary, history=history, chosen=args.layer or ())
    print(json.dumps({k: summary[k] for k in ("layers", "fitted_layers", "mean_alpha",
                                              "mean_alpha_weighted", "share_alpha_outside",
                                              "traps")}))  # fmt: skip
    print(f"diagnostics: {out}")
    for f in written:
        print(f"  {f.name}")
    return EXIT_OK
