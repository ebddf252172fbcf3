"""What does the DeepSpeed engine cost per training step, against plain PyTorch?

Same model (the demo's ViT unless ``--preset`` is given), same batch, same fused AdamW:
  * plain   — model(batch); loss.backward(); opt.step(); opt.zero_grad()
  * zero1   — SciGPT's DeepSpeed ZeRO-1 engine (bucket capped at the parameter count)
  * zero1-default-bucket — the same engine with DeepSpeed's default 5e8-element buckets

Prints a table, writes ``engine_overhead.csv`` / ``.json`` next to ``--out``. Run:

    python benchmarks/engine_overhead.py --steps 30 --out benchmarks/results/engine_overhead
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
from _report import report
from _timing import time_steps


def _batch(b: int, v: int, t: int, h: int, w: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "fields": torch.randn(b, v, t, h, w, generator=g).to(device),
        "target": torch.randn(b, v, h, w, generator=g).to(device),
        "mask": torch.ones(b, v, h, w, dtype=torch.bool, device=device),
        "var_ids": torch.arange(v, device=device),
        "lat": torch.linspace(55, 45, h, device=device),
        "lon": torch.linspace(0, 10, w, device=device),
        "times": torch.zeros(b, dtype=torch.int64, device=device),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--preset", default="vit-tiny")
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/engine_overhead"))
    args = ap.parse_args()

    from scigpt.config_loader import load_config, shipped_config
    from scigpt.eval.metrics import lat_weights, weighted_mse
    from scigpt.launch.distributed import init_distributed
    from scigpt.models.build import build_model, count_params, materialise
    from scigpt.models.vit import ModelSpec
    from scigpt.parallel.engine import build_engine, build_optimizer
    from scigpt.parallel.topology import Topology

    cfg = load_config(
        shipped_config("runs/demo.yaml"),
        [f"model.preset={args.preset}", f"schedule.micro_batch_size={args.batch}"],
    ).config
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    info = init_distributed()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else (torch.device("cpu"))
    )
    spec = ModelSpec(num_vars=14, history=2)
    batch = _batch(args.batch, 14, 2, 41, 41, device)
    w = lat_weights(batch["lat"]).to(device)

    def fresh():
        return materialise(build_model(cfg.model, spec), device, seed=0)

    rows = []

    model = fresh()
    opt = build_optimizer(model, cfg)

    def plain_step():
        loss = weighted_mse(model(batch), batch["target"], w, batch["mask"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows.append(("plain", time_steps(plain_step, args.steps, args.warmup, device)))
    n_params = count_params(model)

    topo = Topology.from_config(cfg.parallel, info.world_size)
    for name, bucket in (("zero1", None), ("zero1-default-bucket", 500_000_000)):
        c = cfg.model_copy(deep=True)
        c.parallel.bucket_elements = bucket
        engine, _ = build_engine(fresh(), c, topo)

        def ds_step(engine=engine):
            loss = weighted_mse(engine(batch), batch["target"], w, batch["mask"])
            engine.backward(loss)
            engine.step()

        rows.append((name, time_steps(ds_step, args.steps, args.warmup, device)))

    base = statistics.median(rows[0][1])
    table = []
    for name, times in rows:
        med = statistics.median(times)
        table.append(
            {
                "variant": name,
                "median_step_ms": 1e3 * med,
                "steps_per_s": 1 / med,
                "time_vs_plain": med / base,
                "params": n_params,
                "device": str(device),
                "threads": torch.get_num_threads(),
            }
        )
    report(
        table,
        [("variant", "variant", "24s"), ("median_step_ms", "step ms", ".1f"),
         ("steps_per_s", "steps/s", ".2f"), ("time_vs_plain", "x plain", ".2f")],
        args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
