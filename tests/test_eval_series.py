"""Series scores against hand computations (NSE, KGE, MAE, RMSE)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scigpt.eval.series import kge, mae, nse, rmse

OBS = [1.0, 2.0, 3.0, 6.0]
SIM = [1.5, 2.0, 2.0, 5.0]


def test_nse_by_hand():
    # mean(obs) = 3; Σ(sim−obs)² = 0.25 + 0 + 1 + 1 = 2.25; Σ(obs−3)² = 4 + 1 + 0 + 9 = 14
    assert nse(SIM, OBS) == pytest.approx(1 - 2.25 / 14, rel=1e-15)
    assert nse(OBS, OBS) == 1.0
    assert nse([3.0] * 4, OBS) == pytest.approx(0.0, abs=1e-15)  # the observed mean scores 0
    assert math.isnan(nse(SIM, [2.0] * 4))  # constant observations: undefined


def test_kge_by_hand():
    s, o = np.array(SIM), np.array(OBS)
    r = np.sum((s - s.mean()) * (o - o.mean())) / math.sqrt(
        np.sum((s - s.mean()) ** 2) * np.sum((o - o.mean()) ** 2)
    )
    alpha = math.sqrt(np.mean((s - s.mean()) ** 2) / np.mean((o - o.mean()) ** 2))
    beta = s.mean() / o.mean()
    want = 1 - math.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2)
    got = kge(SIM, OBS)
    assert got["kge"] == pytest.approx(want, rel=1e-14)
    assert (got["r"], got["alpha"], got["beta"]) == pytest.approx((r, alpha, beta), rel=1e-14)
    assert kge(OBS, OBS)["kge"] == pytest.approx(1.0, rel=1e-15)


def test_mae_rmse_skip_missing_and_masked_values():
    sim, obs = [1.0, np.nan, 4.0, 0.0], [2.0, 5.0, 2.0, 100.0]
    mask = [True, True, True, False]
    assert mae(sim, obs, mask) == pytest.approx(1.5, rel=1e-15)  # |−1|, |2|
    assert rmse(sim, obs, mask) == pytest.approx(math.sqrt(2.5), rel=1e-15)
