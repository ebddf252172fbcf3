"""Score one-step forecasts against truth and against persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from scigpt.atomic import atomic_write_text
from scigpt.data_pipeline.loader import collate_forecast
from scigpt.eval.metrics import weighted_mse, weighted_rmse_per_channel
from scigpt.tables import Table, fmt


@torch.no_grad()
def evaluate_forecast(
    model: torch.nn.Module,
    dataset,
    weights: torch.Tensor,
    device: torch.device,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Forecast every sample of ``dataset``; RMSE per channel in normalised units.

    Persistence (tomorrow = today: the last input frame) is the baseline every learned model must
    beat. Returns per-channel scores, a summary, and the stacked tensors for plots.
    """
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_forecast
    )
    preds, truths, currents, masks, times = [], [], [], [], []
    dtype = next(model.parameters()).dtype  # bf16 models take bf16 inputs
    for batch in loader:
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        current = batch["fields"][:, :, -1].cpu()
        batch["fields"] = batch["fields"].to(dtype)
        preds.append(model(batch).float().cpu())
        truths.append(batch["target"].cpu())
        currents.append(current)
        masks.append(batch["mask"].cpu())
        times.append(batch["times"].cpu())
    model.train(was_training)
    pred, truth, cur = torch.cat(preds), torch.cat(truths), torch.cat(currents)
    mask = torch.cat(masks)
    w = weights.cpu()
    rmse_model = weighted_rmse_per_channel(pred, truth, w, mask)
    rmse_pers = weighted_rmse_per_channel(cur, truth, w, mask)
    # channels with no valid truth (an operator task's inputs) are not scored
    scored = mask.flatten(2).any(-1).any(0) if mask is not None else torch.ones_like(rmse_model)
    scored = scored.bool()
    m, p = float(rmse_model[scored].mean()), float(rmse_pers[scored].mean())
    anchor = torch.cat(times).numpy().astype("datetime64[ns]")
    step = np.timedelta64(dataset.lead * dataset.time_step_ns, "ns")
    return {
        "rmse_model": rmse_model,
        "rmse_persistence": rmse_pers,
        "summary": {
            "n_forecasts": int(pred.shape[0]),
            "rmse_model": m,
            "rmse_persistence": p,
            "improvement_vs_persistence": 1.0 - m / p,
            "model_mse": float(weighted_mse(pred, truth, w, mask)),
            "persistence_mse": float(weighted_mse(cur, truth, w, mask)),
        },
        "scored": scored.tolist(),  # per channel: had valid truth (operator inputs do not)
        "pred": pred,
        "truth": truth,
        "current": cur,
        "valid_times": [str(t) for t in (anchor + step).astype("datetime64[m]")],
    }


def write_tables(out_dir: Path, result: dict[str, Any], names: list[str]) -> dict[str, Path]:
    """Per-variable RMSE of model and persistence as CSV (6 decimals: the figures the model
    card quotes) and Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    scored = result.get("scored") or [True] * len(names)
    for i, name in enumerate(names):
        if not scored[i]:
            continue
        m, p = float(result["rmse_model"][i]), float(result["rmse_persistence"][i])
        rows.append((name, m, p, 1 - m / p))
    s = result["summary"]
    rows.append(("mean", s["rmse_model"], s["rmse_persistence"], s["improvement_vs_persistence"]))
    table = Table(["variable", "rmse_model", "rmse_persistence", "improvement"])
    shown = Table(["variable", "model", "persistence", "improvement"],
                  specs={"model": ".4f", "persistence": ".4f"},
                  right=("model", "persistence", "improvement"))  # fmt: skip
    for name, m, p, gain in rows:
        table.add([name, fmt(m, ".6f"), fmt(p, ".6f"), fmt(gain, ".4f")])
        shown.add([name, m, p, fmt(100 * gain, "+.1f") + "%"])
    csv_path = out_dir / "test_rmse.csv"
    atomic_write_text(csv_path, table.csv())
    md_path = out_dir / "test_rmse.md"
    text = (
        "Latitude-weighted RMSE on normalised channels (WeatherBench 2 convention: mean over "
        f"space and {s['n_forecasts']} forecasts, then square root).\n\n"
    )
    atomic_write_text(md_path, text + shown.markdown() + "\n")
    return {"rmse_csv": csv_path, "rmse_md": md_path}
