"""The run's final test: the first source's test block (and each series source's test
windows) scored at the tested checkpoint, and the variables that beat persistence."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scigpt.eval.forecast import evaluate_forecast
from scigpt.eval.series import evaluate_series
from scigpt.train.checkpoint import step_of
from scigpt.train.series_run import test_series

if TYPE_CHECKING:
    from scigpt.train.trainer import Trainer


def run_test(t: Trainer) -> dict:
    """Test scores (``evaluate_forecast``; a series-forecasting run's: ``series_run``), with
    ``series``: each (other) series source's scores."""
    forecaster, data, device = t.forecaster, t.data, t.device
    test = (
        test_series(t) if data.series_first
        else evaluate_forecast(forecaster, data.test_ds, t.weights, device, batch_size=8)
    )  # fmt: skip
    oc = data.cfg.objectives
    if data.series_test:
        test["series"] = {
            name: evaluate_series(
                forecaster, ds, device, pooled_kind=oc.pooled_kind if oc.pooled else None,
                mask_ratio=oc.mask_ratio if oc.masked else None,
            )
            for name, ds in data.series_test.items()
            if len(ds) and (oc.pooled or oc.masked)
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


def build_test_record(t: Trainer, test: dict[str, Any], tested: str) -> dict[str, Any]:
    """The run's one test record: scores at the tested checkpoint, wins and losses against
    persistence, series scores, and the run's scale for scaling sweeps."""
    cfg, data, run = t.cfg, t.data, t.run
    samples = t.steps * t.accum * cfg.schedule.micro_batch_size * t.topo.dp
    return {
        "kind": "test",
        **test["summary"],
        "checkpoint_step": step_of(tested),
        **({} if data.series_first else wins_and_losses(test, data.store.names)),
        **{
            f"{name}/{k}": v
            for name, res in test.get("series", {}).items()
            for k, v in res["summary"].items()
        },
        # the run's scale, for scaling sweeps: parameters, unique training data, compute
        "n_params": t.n_params,
        "train_samples": sum(len(d) for d in data.train_dss),
        "tokens_per_sample": t.n_tokens,
        "samples_seen": samples,
        "train_flops": samples * t.flops_per_sample,
        # every segment's training time (killed and resumed ones too) x its ranks
        "device_hours": run.device_hours(),
        "segments": len(run.segments()),
    }
