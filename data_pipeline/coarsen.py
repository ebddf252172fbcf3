"""Conservative coarsening of gridded fields by an integer factor (block means by cell area).

A coarse cell is a ``factor`` × ``factor`` block of fine cells, and its value is the
area-weighted mean of the block: Σ a_i f_i / Σ a_i. The coarse cell's area is the sum of its
fine cells' areas, so the area integral Σ A_c F_c equals Σ a_i f_i exactly (to round-off).

Cell areas: uniform on Cartesian grids (``lat=None``); ∝ cos φ on latitude/longitude grids,
the convention of the losses and scores (``models.losses``). On a grid of evenly spaced
latitudes cos φ is *exactly* proportional to the spherical cell area (the band between φ ± Δ/2
has area ∝ sin(φ + Δ/2) − sin(φ − Δ/2) = 2 sin(Δ/2) cos φ), and the coarse grid of block-centre
latitudes (:func:`coarsen_lat`) is again evenly spaced, so the cos-weighted mean of the coarse
field on the coarse latitudes equals the cos-weighted mean of the fine field — the conservation
the downscaling task and the resolution-convergence test rely on (``tests/test_ns_solver.py``).
Weights are clipped at 0 (a latitude of ±90° has no area, as in ``models.losses``).
"""

from __future__ import annotations

import numpy as np


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"coarsening factor must be an integer >= 1, got {factor!r}.")
    return int(factor)


def _check_divisible(shape: tuple[int, ...], factor: int, what: str) -> None:
    bad = [n for n in shape if n % factor]
    if bad:
        crop = tuple(n - n % factor for n in shape)
        raise ValueError(
            f"{what} of shape {shape} is not divisible by the coarsening factor {factor} "
            f"(sizes {bad} are not multiples of {factor}). Fix: crop it to {crop} first, or "
            "choose a factor that divides both sizes."
        )


def area_weights(lat: np.ndarray) -> np.ndarray:
    """Relative cell areas of a latitude/longitude grid's rows: cos φ (degrees in), ≥ 0."""
    return np.clip(np.cos(np.deg2rad(np.asarray(lat, dtype=np.float64))), 0.0, None)


def coarsen_lat(lat: np.ndarray, factor: int) -> np.ndarray:
    """Block-centre latitudes (H // factor,) of evenly spaced latitudes (H,).

    Uneven spacing (a Gaussian grid) is an error: there the coarse cos φ would not be the sum
    of the fine cells' areas and the coarsened field would not conserve its integral.
    """
    factor = _check_factor(factor)
    lat = np.asarray(lat, dtype=np.float64)
    if lat.ndim != 1:
        raise ValueError(f"lat must be 1-D (H,), got shape {lat.shape}.")
    _check_divisible(lat.shape, factor, "lat")
    step = np.diff(lat)
    if step.size and not np.allclose(step, step[0], rtol=1e-9, atol=1e-9):
        raise ValueError(
            f"latitudes are not evenly spaced (steps from {step.min():g} to {step.max():g} "
            "degrees): cos-latitude block weights then do not add up to the coarse cells' "
            "areas. Fix: regrid to evenly spaced latitudes first."
        )
    return lat.reshape(-1, factor).mean(axis=1)


def coarsen(field: np.ndarray, factor: int, lat: np.ndarray | None = None) -> np.ndarray:
    """Conservative block means of ``field`` (…, H, W) over ``factor`` × ``factor`` blocks.

    ``lat`` (H,) in degrees weights rows by cos φ (a latitude/longitude grid); None weights
    all cells equally (a Cartesian grid). The result has shape (…, H // factor, W // factor)
    and the field's dtype if floating (float64 otherwise). NaNs propagate to their block.
    """
    factor = _check_factor(factor)
    f = np.asarray(field)
    if f.ndim < 2:
        raise ValueError(f"field must be (…, H, W), got shape {f.shape}.")
    h, w = f.shape[-2:]
    _check_divisible((h, w), factor, "field")
    dtype = f.dtype if np.issubdtype(f.dtype, np.floating) else np.dtype(np.float64)
    blocks = f.astype(np.float64).reshape(*f.shape[:-2], h // factor, factor, w // factor, factor)
    if lat is None:
        return blocks.mean(axis=(-3, -1)).astype(dtype)
    a = area_weights(lat)
    if a.shape != (h,):
        raise ValueError(f"lat has shape {np.shape(lat)}, expected ({h},) for a field {f.shape}.")
    a = a.reshape(h // factor, factor)
    total = a.sum(axis=1)
    if np.any(total == 0):
        raise ValueError(
            "a block of rows has zero area (all at ±90°): its mean is undefined. Fix: crop the "
            "pole rows first."
        )
    rows = (blocks * a[:, :, None, None]).sum(axis=-3)  # (…, H/f, W/f, f): Σ over block rows
    return (rows.sum(axis=-1) / (factor * total[:, None])).astype(dtype)
