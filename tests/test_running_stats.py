"""Streaming statistics (``RunningStats``) against numpy's float64 nanmean/nanvar/nanstd over
random splits merged in any order (relative 1e-12)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scigpt.data_pipeline.stats import RunningStats

# --------------------------------------------------------------------------------------------
# statistics (tolerance: relative 1e-12 against numpy's float64 nanmean/nanvar)


def _random_fields(rng: np.random.Generator) -> np.ndarray:
    # (N, V, P): offsets and scales like ERA5 (sp ~ 1e5 Pa, q ~ 1e-3) stress cancellation.
    scale = np.array([1.0, 10.0, 1e3, 1e-4])[None, :, None]
    offset = np.array([0.0, 273.0, 1e5, 5e-3])[None, :, None]
    x = rng.normal(size=(60, 4, 9)) * scale + offset
    x[rng.random(x.shape) < 0.1] = np.nan
    x[:20, 3] = np.nan  # a whole block of one variable missing
    return x


@pytest.mark.parametrize("seed", range(5))
def test_running_stats_match_numpy_over_random_splits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _random_fields(rng)
    cuts = np.sort(rng.choice(np.arange(1, len(x)), size=rng.integers(1, 8), replace=False))
    parts = []
    for piece in np.split(x, cuts, axis=0):
        rs = RunningStats(4)
        # Feed some pieces with the variable axis last, to exercise ``axis``.
        if rng.random() < 0.5:
            rs.update(np.moveaxis(piece, 1, -1), axis=-1)
        else:
            rs.update(piece, axis=1)
        parts.append(rs)
    rng.shuffle(parts)  # merge order must not matter
    total = parts[0]
    for rs in parts[1:]:
        total.merge(rs)
    total = RunningStats.from_dict(json.loads(json.dumps(total.to_dict())))

    assert np.array_equal(total.count, (~np.isnan(x)).sum(axis=(0, 2)))
    np.testing.assert_allclose(total.mean, np.nanmean(x, axis=(0, 2)), rtol=1e-12, atol=0)
    np.testing.assert_allclose(total.var, np.nanvar(x, axis=(0, 2)), rtol=1e-12, atol=0)
    np.testing.assert_allclose(total.std, np.nanstd(x, axis=(0, 2)), rtol=1e-12, atol=0)


def test_running_stats_empty_variable_and_shape_error() -> None:
    rs = RunningStats(2)
    rs.update(np.array([[1.0, np.nan], [3.0, np.nan]]), axis=1)
    assert list(rs.count) == [2, 0]
    assert rs.mean[0] == 2.0 and np.isnan(rs.mean[1]) and np.isnan(rs.std[1])
    with pytest.raises(ValueError, match=r"num_vars \(2\)"):
        rs.update(np.zeros((3, 5)), axis=1)
