"""The run's final test: the first source's test block (and each series source's test
windows) scored at the tested checkpoint, and the variables that beat persistence."""

from __future__ import annotations

from typing import Any

import torch

from scigpt.eval.forecast import evaluate_forecast
from scigpt.eval.series import evaluate_series
from scigpt.train.data import RunData


def run_test(forecaster, data: RunData, weights: torch.Tensor, device: torch.device) -> dict:
    """Test scores (``evaluate_forecast``), with ``series``: each series source's scores."""
    test = evaluate_forecast(forecaster, data.test_ds, weights, device, batch_size=8)
    oc = data.cfg.objectives
    if data.series_test:
        test["series"] = {
            name: evaluate_series(
                forecaster, ds, device, pooled_kind=oc.pooled_kind if oc.pooled else None,
                mask_ratio=oc.mask_ratio if oc.masked else None,
            )
            for name, ds in data.series_test.items()
            if len(ds)
        }  # fmt: skip
    return test


def wins_and_losses(test: dict[str, Any], names: list[str]) -> dict[str, list[str]]:
    """The scored variables whose test RMSE is below persistence's, and those above it."""
    scored = test.get("scored") or [True] * len(names)
    pairs = [
        (n, float(m), float(p))
        for n, m, p, ok in zip(
            names, test["rmse_model"], test["rmse_persistence"], scored, strict=True
        )
        if ok
    ]
    return {
        "better_than_persistence": [n for n, m, p in pairs if m < p],
        "worse_than_persistence": [n for n, m, p in pairs if m >= p],
    }
