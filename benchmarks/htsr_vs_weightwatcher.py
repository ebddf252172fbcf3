"""HTSR weight diagnostics: SciGPT (``scigpt.diagnostics``) vs weightwatcher 0.7.x, side by side.

Both tools analyse the same weight matrices of one SciGPT model (a package given with
``--package``, else a model of ``--width``/``--depth`` after ``--train-steps`` Adam steps on a
fixed synthetic forecast task); per layer: α, α-weighted, log spectral norm from each, and the
largest differences; and each tool's wall time (best of ``--repeat``) and their ratio for:

  * fit      — weightwatcher ``analyze(randomize=False, mp_fit=False)`` vs ours with
               ``traps=False`` (one SVD per matrix, the power-law fit and the norms; ours adds
               the MP bulk fit);
  * full     — weightwatcher ``analyze(randomize=True, mp_fit=True)`` vs ours with traps (a
               second SVD of the entry-shuffled matrix), each doing its MP fit and traps;
  * ours with ``--workers`` threads, and on the GPU (float64) where there is one.

Prints tables, writes ``htsr_vs_weightwatcher_layers.csv``/``.json`` (per layer) and
``htsr_vs_weightwatcher.csv``/``.json`` (times) next to ``--out``. Run:

    OMP_NUM_THREADS=1 python benchmarks/htsr_vs_weightwatcher.py \\
        --out benchmarks/results/htsr_vs_weightwatcher
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch
from _report import report

from scigpt.config import ModelConfig
from scigpt.diagnostics.htsr import analyze_state
from scigpt.export.loader import load_pretrained
from scigpt.models.build import build_model, materialise
from scigpt.models.vit import ModelSpec


def trained_model(width: int, depth: int, heads: int, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(patch_size=4, embed_dim=width, depth=depth, heads=heads)
    model = materialise(build_model(cfg, ModelSpec(5, 2)), "cpu", seed=0)
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "fields": torch.randn(4, 5, 2, 32, 32, generator=g),
            "var_ids": torch.arange(5),
            "lat": torch.linspace(60, 30, 32),
            "lon": torch.linspace(-5, 20, 32),
            "times": torch.arange(4) * 3_600_000_000_000,
        }
        for _ in range(8)
    ]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        b = batches[step % 8]
        f = b["fields"]
        target = 0.5 * f[:, :, -1].roll(1, -1) + 0.3 * f[:, :, 0].roll(-2, -2)
        loss = ((model(b) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--package", type=Path, default=None)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/htsr_vs_weightwatcher"))
    args = ap.parse_args()

    import weightwatcher as ww  # the reference (the `dev` extra)

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    if args.package is not None:
        model = load_pretrained(args.package).model
        what = f"package {args.package}"
    else:
        model = trained_model(args.width, args.depth, args.heads, args.train_steps)
        what = f"width {args.width}, depth {args.depth}, {args.train_steps} Adam steps"
    state = dict(model.state_dict())
    watcher = ww.WeightWatcher(model=model)

    def theirs(full: bool):
        return watcher.analyze(min_evals=50, randomize=full, mp_fit=full, plot=False)

    def ours(full: bool, workers: int = 1, device: str = "cpu"):
        rows = analyze_state(state, traps=full, workers=workers, device=device)
        return [d for d in rows if d.status == "ok"]

    t_ww_fit, df = best_of(lambda: theirs(False), args.repeat)
    t_ours_fit, rows = best_of(lambda: ours(False), args.repeat)
    t_ww_full, df_full = best_of(lambda: theirs(True), args.repeat)
    t_ours_full, rows_full = best_of(lambda: ours(True), args.repeat)
    t_ours_par, _ = best_of(lambda: ours(True, args.workers), args.repeat)
    if len(rows) != len(df):
        raise SystemExit(f"{len(rows)} fitted matrices here, {len(df)} in weightwatcher")

    layers = []
    for d, (_, t) in zip(rows, df.iterrows(), strict=True):
        layers.append({
            "layer": d.name, "N": d.rows, "M": d.cols,
            "alpha": d.alpha, "alpha_ww": float(t["alpha"]),
            "alpha_weighted": d.alpha_weighted, "alpha_weighted_ww": float(t["alpha_weighted"]),
            "log_spectral_norm": d.log_spectral_norm,
            "log_spectral_norm_ww": float(t["log_spectral_norm"]),
            "num_tail": d.num_tail, "num_tail_ww": int(t["num_pl_spikes"]),
        })  # fmt: skip
    traps_ours = sum(d.traps for d in rows_full)
    traps_ww = int(df_full["rand_num_spikes"].sum()) if "rand_num_spikes" in df_full else -1
    report(
        layers,
        [
            ("layer", "layer", "s"),
            ("N", "N", "d"),
            ("M", "M", "d"),
            ("alpha", "α", ".4f"),
            ("alpha_ww", "α ww", ".4f"),
            ("alpha_weighted", "α-w", ".4f"),
            ("alpha_weighted_ww", "α-w ww", ".4f"),
            ("log_spectral_norm", "log‖W‖₂²", ".4f"),
            ("log_spectral_norm_ww", "ww", ".4f"),
        ],
        args.out.with_name(args.out.name + "_layers"),
    )
    diff = {
        k: max(abs(r[k] - r[f"{k}_ww"]) for r in layers)
        for k in ("alpha", "alpha_weighted", "log_spectral_norm")
    }
    times = [
        {
            "what": "fit",
            "ours_s": t_ours_fit,
            "ww_s": t_ww_fit,
            "ratio_ww_over_ours": t_ww_fit / t_ours_fit,
        },
        {
            "what": "full",
            "ours_s": t_ours_full,
            "ww_s": t_ww_full,
            "ratio_ww_over_ours": t_ww_full / t_ours_full,
        },
        {
            "what": f"full, ours {args.workers} threads",
            "ours_s": t_ours_par,
            "ww_s": t_ww_full,
            "ratio_ww_over_ours": t_ww_full / t_ours_par,
        },
    ]
    if torch.cuda.is_available():
        ours(True, 1, "cuda")  # warm-up
        t_gpu, _ = best_of(lambda: ours(True, 1, "cuda"), args.repeat)
        times.append({"what": "full, ours on the GPU (float64)", "ours_s": t_gpu,
                      "ww_s": t_ww_full, "ratio_ww_over_ours": t_ww_full / t_gpu})  # fmt: skip
    for r in times:
        r.update(model=what, layers=len(layers), max_abs_diff_alpha=diff["alpha"],
                 max_abs_diff_alpha_weighted=diff["alpha_weighted"],
                 max_abs_diff_log_spectral_norm=diff["log_spectral_norm"],
                 traps_ours=traps_ours, traps_ww=traps_ww,
                 torch=torch.__version__, weightwatcher=ww.__version__,
                 threads=torch.get_num_threads())  # fmt: skip
    print()
    report(
        times,
        [
            ("what", "what", "s"),
            ("ours_s", "ours s", ".3f"),
            ("ww_s", "weightwatcher s", ".3f"),
            ("ratio_ww_over_ours", "ww / ours", ".2f"),
        ],
        args.out,
    )
    print(f"\n{what}: {len(layers)} matrices; max |Δ| α {diff['alpha']:.2e}, α-weighted "
          f"{diff['alpha_weighted']:.2e}, log spectral norm {diff['log_spectral_norm']:.2e}; "
          f"traps ours {traps_ours}, weightwatcher {traps_ww}")  # fmt: skip


if __name__ == "__main__":
    main()
