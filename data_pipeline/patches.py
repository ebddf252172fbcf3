"""Cut arrays into token patches, and put them back together.

Grids: ``(T, V, H, W)`` → samples of ``pt`` consecutive frames, each variable cut into
``(pt, ph, pw)`` tubelets: ``(N, V, G, K)`` with ``N = T // pt``, ``G = gh·gw`` tokens in row-major
order and ``K = pt·ph·pw`` values per token (time, then row, then column). Grids whose size is not
a patch multiple are padded with NaN at the bottom/right (masked, never mistaken for data).

Series: ``(N, C, L)`` records → windows of ``window`` samples (stride ``stride``), each cut into
``P = window // patch`` tokens of ``patch`` samples: ``(M, C, P, patch)``. A trailing partial
window is padded with NaN (``partial="pad"``) or dropped (``"drop"``).

The layout (t, h, w within a token) is the one the model's patch embedding flattens its weights
in, so a token row multiplies a weight row directly.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np


def grid_tokens(h: int, w: int, ph: int, pw: int) -> tuple[int, int]:
    return -(-h // ph), -(-w // pw)


def patchify_grid(values: np.ndarray, patch: tuple[int, int, int]) -> np.ndarray:
    """(T, V, H, W) → (N, V, G, K); trailing frames that do not fill ``pt`` are dropped."""
    pt, ph, pw = patch
    t, v, h, w = values.shape
    n = t // pt
    gh, gw = grid_tokens(h, w, ph, pw)
    x = values[: n * pt]
    pad_h, pad_w = gh * ph - h, gw * pw - w
    if pad_h or pad_w:
        x = np.pad(x, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), constant_values=np.nan)
    # (n, pt, V, gh, ph, gw, pw) -> (n, V, gh, gw, pt, ph, pw)
    x = x.reshape(n, pt, v, gh, ph, gw, pw).transpose(0, 2, 3, 5, 1, 4, 6)
    return np.ascontiguousarray(x.reshape(n, v, gh * gw, pt * ph * pw))


def unpatchify_grid(patches: np.ndarray, patch: tuple[int, int, int], h: int, w: int) -> np.ndarray:
    """(N, V, G, K) → (N·pt, V, H, W): the exact inverse of :func:`patchify_grid`."""
    pt, ph, pw = patch
    n, v, g, k = patches.shape
    gh, gw = grid_tokens(h, w, ph, pw)
    if g != gh * gw or k != pt * ph * pw:
        raise ValueError(
            f"patches of shape {patches.shape} do not match a {h}x{w} grid with patch {patch}"
        )
    x = patches.reshape(n, v, gh, gw, pt, ph, pw).transpose(0, 4, 1, 2, 5, 3, 6)
    return x.reshape(n * pt, v, gh * ph, gw * pw)[:, :, :h, :w]


def token_centres(coord: np.ndarray, axis: int, patch: int) -> np.ndarray:
    """Mean coordinate of each patch along ``axis`` (1-D coordinate arrays), extrapolating the
    grid spacing over padded cells so edge tokens get a sensible position."""
    coord = np.asarray(coord, dtype=np.float64)
    n = coord.shape[axis]
    n_pad = -(-n // patch) * patch
    if n_pad != n:
        step = (np.take(coord, [-1], axis) - np.take(coord, [0], axis)) / max(n - 1, 1)
        extra = np.take(coord, [-1], axis) + step * np.arange(1, n_pad - n + 1).reshape(
            [-1 if i == axis else 1 for i in range(coord.ndim)]
        )
        coord = np.concatenate([coord, extra], axis=axis)
    shape = list(coord.shape)
    shape[axis : axis + 1] = [n_pad // patch, patch]
    blocks = coord.reshape(shape)
    if np.isfinite(blocks).all():
        return blocks.mean(axis=axis + 1)
    # Off-map cells (NaN coordinates) do not pull a token's centre; all-NaN tokens stay NaN.
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(blocks, axis=axis + 1)


def grid_token_coords(
    lat: np.ndarray, lon: np.ndarray, ph: int, pw: int
) -> tuple[np.ndarray, np.ndarray]:
    """Latitude/longitude of each token centre, (G,) each, row-major like the tokens.

    Longitudes are averaged on the unit circle so a patch across the dateline is not put at 0°.
    """
    if lat.ndim == 1:
        lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    else:
        lat2, lon2 = lat, lon
    tlat = token_centres(token_centres(lat2, 0, ph), 1, pw)
    rad = np.deg2rad(lon2)
    c = token_centres(token_centres(np.cos(rad), 0, ph), 1, pw)
    s = token_centres(token_centres(np.sin(rad), 0, ph), 1, pw)
    tlon = np.rad2deg(np.arctan2(s, c))
    if np.all(lon2 >= 0):  # keep a 0..360 convention when the source uses one
        tlon = np.mod(tlon, 360.0)
    return tlat.reshape(-1), tlon.reshape(-1)


def window_starts(
    length: int, window: int, stride: int, partial: Literal["pad", "drop"]
) -> list[int]:
    """Start offsets of the windows cut from a record of ``length`` samples."""
    if length <= 0:
        return []
    starts = list(range(0, max(length - window, 0) + 1, stride))
    last_end = starts[-1] + window if starts else 0
    if partial == "pad" and last_end < length:
        starts.append(starts[-1] + stride if starts else 0)
    if partial == "drop" and length < window:
        return []
    return starts


def patchify_series(
    values: np.ndarray,
    *,
    window: int,
    patch: int,
    stride: int | None = None,
    partial: Literal["pad", "drop"] = "pad",
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, L) → patches (M, C, P, patch) and, per window, (record index, start offset)."""
    if window % patch:
        raise ValueError(f"window={window} is not a multiple of patch={patch}")
    stride = stride or window
    n, c, length = values.shape
    starts = window_starts(length, window, stride, partial)
    p = window // patch
    out = np.full((n * len(starts), c, window), np.nan, dtype=values.dtype)
    origin = np.zeros((n * len(starts), 2), dtype=np.int64)
    for i in range(n):
        for j, s in enumerate(starts):
            seg = values[i, :, s : s + window]
            out[i * len(starts) + j, :, : seg.shape[-1]] = seg
            origin[i * len(starts) + j] = (i, s)
    return out.reshape(-1, c, p, patch), origin
