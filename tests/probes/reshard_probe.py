"""Load checkpoints of any layout into this launch's layout and forecast a fixed batch.

Run as ``torchrun --nproc_per_node N tests/probes/reshard_probe.py OUT CKPT [CKPT …]``: every
rank builds the checkpoint's model for tensor parallelism over the whole world (tp = N), loads
the consolidated weights through ``reshard.load_full_state`` (the path a resharding resume takes),
and rank 0 saves the forecast increments (forecast − last input frame) to
``OUT/forecasts_tpN.pt`` (a dict of plain tensors).
tests/test_engine.py compares the forecasts of one process and of two.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from scigpt.config_loader import validate
from scigpt.launch.distributed import destroy_distributed, init_distributed
from scigpt.models.build import build_model, materialise
from scigpt.models.vit import ModelSpec
from scigpt.parallel import reshard
from scigpt.parallel.tensor_parallel import apply_tensor_parallel


def _batch(num_vars: int, history: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, v, h, w = 3, min(num_vars, 5), 17, 13
    return {
        "fields": torch.randn(b, v, history, h, w, generator=g),
        "var_ids": torch.randperm(num_vars, generator=g)[:v],
        "lat": torch.linspace(55, 45, h),
        "lon": torch.linspace(0, 12, w),
        "times": torch.arange(b, dtype=torch.int64) * 3_600_000_000_000,
    }


def main(argv: list[str]) -> None:
    out_dir, ckpts = Path(argv[0]), [Path(a) for a in argv[1:]]
    info = init_distributed()
    tp = info.world_size
    group = None
    if tp > 1:
        group = dist.new_group(list(range(tp)))
    results: dict[str, torch.Tensor] = {}
    for ckpt in ckpts:
        state = reshard.client_state(ckpt)
        cfg = validate(state["config"], str(ckpt))
        spec = ModelSpec(num_vars=len(state["variables"]), history=cfg.data.history)
        model = materialise(build_model(cfg.model, spec), "cpu", seed=12345)  # then overwritten
        if group is not None:
            apply_tensor_parallel(model, group)
        full = reshard.consolidate(ckpt)
        reshard.load_full_state(model, full, heads=cfg.model.heads, tp=tp, tp_rank=info.rank)
        model.eval()
        batch = _batch(spec.num_vars, spec.history)
        with torch.no_grad():
            # the learned increment over persistence (the residual forecast's input frame)
            results[ckpt.parent.parent.name] = model(batch) - batch["fields"][:, :, -1]
    if info.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(results, out_dir / f"forecasts_tp{tp}.pt")
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
