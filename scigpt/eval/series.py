"""Scores for series and waveforms, and for per-sample (pooled) heads.

* ``mae``, ``rmse`` — per channel over every valid value (RMSE: mean of squares first, root
  last, as for grids).
* ``nse`` — Nash–Sutcliffe efficiency, 1 − Σ(sim − obs)² / Σ(obs − mean(obs))² (1 is perfect,
  0 is no better than the observed mean; Nash & Sutcliffe 1970).
* ``kge`` — Kling–Gupta efficiency, 1 − √((r − 1)² + (α − 1)² + (β − 1)²) with r the Pearson
  correlation, α = σ_sim/σ_obs and β = μ_sim/μ_obs (Gupta et al. 2009).
* ``evaluate_series`` — a series test split: the pooled head's per-target MAE/RMSE/bias
  (regression, e.g. magnitude MAE) or accuracy (classification), and the masked
  reconstruction's per-channel RMSE/MAE/NSE/KGE in physical units (for discharge, NSE and KGE
  of the gap-filled values: how well the model infills a masked stretch of the hydrograph).

Every function takes numpy arrays or tensors and works in float64; NaN marks missing values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from scigpt.data_pipeline.loader import collate_series
from scigpt.models.objectives import patch_targets, random_token_mask


def _pair(sim: Any, obs: Any, mask: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(torch.as_tensor(sim).double().cpu().numpy() if torch.is_tensor(sim) else sim,
                   dtype=np.float64)  # fmt: skip
    o = np.asarray(torch.as_tensor(obs).double().cpu().numpy() if torch.is_tensor(obs) else obs,
                   dtype=np.float64)  # fmt: skip
    if s.shape != o.shape:
        raise ValueError(f"simulated {s.shape} and observed {o.shape} differ in shape")
    ok = np.isfinite(s) & np.isfinite(o)
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool)
    return s[ok], o[ok]


def mae(sim: Any, obs: Any, mask: Any | None = None) -> float:
    s, o = _pair(sim, obs, mask)
    return float(np.mean(np.abs(s - o))) if s.size else float("nan")


def rmse(sim: Any, obs: Any, mask: Any | None = None) -> float:
    s, o = _pair(sim, obs, mask)
    return float(np.sqrt(np.mean((s - o) ** 2))) if s.size else float("nan")


def nse(sim: Any, obs: Any, mask: Any | None = None) -> float:
    """Nash–Sutcliffe efficiency of one series (NaN when the observations are constant)."""
    s, o = _pair(sim, obs, mask)
    denom = np.sum((o - o.mean()) ** 2) if o.size else 0.0
    return float(1.0 - np.sum((s - o) ** 2) / denom) if denom > 0 else float("nan")


def kge(sim: Any, obs: Any, mask: Any | None = None) -> dict[str, float]:
    """Kling–Gupta efficiency and its parts ``r``, ``alpha``, ``beta`` of one series."""
    s, o = _pair(sim, obs, mask)
    nan = {"kge": float("nan"), "r": float("nan"), "alpha": float("nan"), "beta": float("nan")}
    if s.size < 2 or o.std() == 0 or s.std() == 0 or o.mean() == 0:
        return nan
    r = float(np.corrcoef(s, o)[0, 1])
    alpha = float(s.std() / o.std())
    beta = float(s.mean() / o.mean())
    value = 1.0 - np.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2)
    return {"kge": float(value), "r": r, "alpha": alpha, "beta": beta}


@torch.no_grad()
def evaluate_series(
    model: torch.nn.Module,
    dataset,
    device: torch.device,
    *,
    pooled_kind: str | None = None,
    mask_ratio: float | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a ``SeriesWindowDataset`` (its ``targets`` attributes for the pooled head).

    ``pooled_kind`` ("regression"/"classification"): score ``model.pooled`` on every window
    whose target is known. ``mask_ratio``: mask that fraction of tokens (a fixed ``seed``, the
    same windows masked on every call) and score the reconstruction of the masked values per
    channel, denormalised with the dataset's statistics. Returns ``{"summary": {...},
    "per_target": [...], "per_channel": [...]}``.
    """
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_series
    )
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    outs, tgts, recs, truths, valids = [], [], [], [], []
    for batch in loader:
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        batch["fields"] = batch["fields"].to(dtype)
        if pooled_kind:
            outs.append(model.pooled(model.encode(batch)).double().cpu())
            tgts.append(batch["targets"].double().cpu())
        if mask_ratio:
            token_mask = random_token_mask(model, batch, mask_ratio, gen)
            pred = model.reconstruct(model.encode(batch, token_mask), batch["var_ids"], False)
            target, valid = patch_targets(model, batch)
            recs.append(pred.double().cpu())
            truths.append(target.double().cpu())
            valids.append((valid & token_mask[:, None, :, None]).cpu())
    model.train(was_training)
    summary: dict[str, Any] = {"n_windows": len(dataset)}
    per_target: list[dict[str, Any]] = []
    per_channel: list[dict[str, Any]] = []
    names = list(getattr(dataset, "targets", []))
    if pooled_kind and outs:
        out, y = torch.cat(outs).numpy(), torch.cat(tgts).numpy()
        if pooled_kind == "classification":
            ok = np.isfinite(y[:, 0])
            acc = float((out[ok].argmax(1) == y[ok, 0]).mean()) if ok.any() else float("nan")
            per_target.append({"target": names[0], "n": int(ok.sum()), "accuracy": acc})
            summary[f"{names[0]}_accuracy"] = acc
        else:
            for j, name in enumerate(names):
                ok = np.isfinite(y[:, j])
                row = {
                    "target": name,
                    "n": int(ok.sum()),
                    "mae": mae(out[:, j], y[:, j]),
                    "rmse": rmse(out[:, j], y[:, j]),
                    "bias": float(np.mean(out[ok, j] - y[ok, j])) if ok.any() else float("nan"),
                }
                per_target.append(row)
                summary[f"{name}_mae"], summary[f"{name}_rmse"] = row["mae"], row["rmse"]
    if mask_ratio and recs:
        rec, tru, val = torch.cat(recs), torch.cat(truths), torch.cat(valids)
        std = np.asarray(dataset.std32, np.float64).reshape(-1)
        mean = np.asarray(dataset.mean32, np.float64).reshape(-1)
        for c, v in enumerate(dataset.variables):
            sim = rec[:, c].numpy() * std[c] + mean[c]
            obs = tru[:, c].numpy() * std[c] + mean[c]
            m = val[:, c].numpy()
            k = kge(sim, obs, m)
            per_channel.append({"channel": v.name, "units": v.units,
                                "masked_rmse": rmse(sim, obs, m),
                                "masked_mae": mae(sim, obs, m),
                                "masked_nse": nse(sim, obs, m),
                                "masked_kge": k["kge"]})  # fmt: skip
        summary["masked_rmse_normalised"] = rmse(rec.numpy(), tru.numpy(), val.numpy())
    return {"summary": summary, "per_target": per_target, "per_channel": per_channel}
