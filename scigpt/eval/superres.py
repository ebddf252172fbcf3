"""SuperBench's super-resolution scores (Ren et al. 2023) on ``(..., H, W)`` arrays.

Pixel scores, each computed per 2-D sample (every leading index) and then averaged over samples:

- ``rfne``: relative Frobenius-norm error ‖pred − truth‖_F / ‖truth‖_F;
- ``inf_norm``: the largest absolute error max |pred − truth|;
- ``psnr``: 10 log10(data_range² / MSE) with an explicit ``data_range``;
- ``ssim``: the structural similarity of Wang et al. (2004), equal to scikit-image's
  ``structural_similarity`` (to 1e-6, tested) for the same ``data_range``, ``win_size``,
  ``gaussian_weights`` (σ = 1.5, truncate 3.5, an 11-tap window) and ``use_sample_covariance``;
  implemented here with ``scipy.ndimage`` filters (reflected borders, a border of
  ``(win_size - 1) // 2`` cropped before the mean);
- ``mse``, ``mae``.

Physics scores on a velocity pair (u, v) (u along the last axis W = x, v along H = y):

- ``energy_spectrum``: the isotropic kinetic-energy spectrum E(k) on a periodic grid, shell-summed
  over integer wavenumber |k| rounded, normalised so that Σ_k E(k) = mean ½(u² + v²) (Parseval);
- ``spectrum_band_errors``: Σ_band |E_pred − E_truth| / Σ_band E_truth per wavenumber band
  (default: thirds of 1 … Nyquist, named low / mid / high) of the sample-mean spectra;
- ``divergence_rms``: RMS of ∂u/∂x + ∂v/∂y — spectral on a periodic grid, centred differences on
  the interior otherwise.

The baseline is ``bicubic_upsample``: torch's ``F.interpolate(mode="bicubic",
align_corners=False)`` (Keys' cubic convolution with a = −0.75, half-pixel centres, clamped
borders), the interpolation SuperBench degrades and compares with. ``superres_report`` scores a
model and that baseline on the same data; ``plot_panels`` and ``plot_spectra`` draw the figures.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from scipy import ndimage

from scigpt.atomic import atomic_write

BAND_NAMES = ("low", "mid", "high")


def _pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 ``(N, H, W)`` (every leading index one sample)."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != truth shape {t.shape}: pass equal shapes")
    if p.ndim < 2:
        raise ValueError(f"need arrays of shape (..., H, W); got shape {p.shape}")
    return p.reshape(-1, *p.shape[-2:]), t.reshape(-1, *t.shape[-2:])


def rfne(pred: Any, truth: Any) -> float:
    """Relative Frobenius-norm error ‖pred − truth‖_F / ‖truth‖_F per sample, then the mean."""
    p, t = _pair(pred, truth)
    num = np.sqrt(((p - t) ** 2).sum(axis=(1, 2)))
    den = np.sqrt((t**2).sum(axis=(1, 2)))
    if np.any(den == 0):
        raise ValueError("rfne: a truth sample is all zeros (‖truth‖_F = 0); use mse or mae")
    return float(np.mean(num / den))


def inf_norm(pred: Any, truth: Any) -> float:
    """max |pred − truth| per sample, then the mean over samples."""
    p, t = _pair(pred, truth)
    return float(np.mean(np.abs(p - t).max(axis=(1, 2))))


def mse(pred: Any, truth: Any) -> float:
    p, t = _pair(pred, truth)
    return float(np.mean((p - t) ** 2))


def mae(pred: Any, truth: Any) -> float:
    p, t = _pair(pred, truth)
    return float(np.mean(np.abs(p - t)))


def _check_range(data_range: float) -> float:
    if not np.isfinite(data_range) or data_range <= 0:
        raise ValueError(f"data_range must be a positive number, got {data_range}")
    return float(data_range)


def psnr(pred: Any, truth: Any, data_range: float) -> float:
    """10 log10(data_range² / MSE) per sample, then the mean (inf where a sample is exact)."""
    r = _check_range(data_range)
    p, t = _pair(pred, truth)
    m = ((p - t) ** 2).mean(axis=(1, 2))
    with np.errstate(divide="ignore"):
        return float(np.mean(10.0 * np.log10(r * r / m)))


def ssim(
    pred: Any,
    truth: Any,
    data_range: float,
    *,
    win_size: int | None = None,
    gaussian_weights: bool = False,
    use_sample_covariance: bool = True,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean structural similarity per 2-D sample, then the mean over samples.

    Same definition and defaults as ``skimage.metrics.structural_similarity(pred, truth,
    data_range=...)``: a 7 × 7 uniform window, or with ``gaussian_weights`` a Gaussian of σ
    truncated at 3.5 σ (win_size 11 for σ = 1.5); ``use_sample_covariance`` scales the
    (co)variances by NP / (NP − 1), NP = win_size²."""
    r = _check_range(data_range)
    p, t = _pair(pred, truth)
    truncate = 3.5
    if win_size is None:
        win_size = 2 * int(truncate * sigma + 0.5) + 1 if gaussian_weights else 7
    if win_size % 2 != 1 or win_size > min(p.shape[1:]):
        raise ValueError(
            f"win_size {win_size} must be odd and at most the image side {min(p.shape[1:])}"
        )
    if gaussian_weights:

        def filt(a: np.ndarray) -> np.ndarray:
            return ndimage.gaussian_filter(a, sigma, mode="reflect", truncate=truncate, axes=(1, 2))
    else:

        def filt(a: np.ndarray) -> np.ndarray:
            return ndimage.uniform_filter(a, size=win_size, mode="reflect", axes=(1, 2))

    n = win_size**2
    cov_norm = n / (n - 1) if use_sample_covariance else 1.0
    ux, uy = filt(p), filt(t)
    vx = cov_norm * (filt(p * p) - ux * ux)
    vy = cov_norm * (filt(t * t) - uy * uy)
    vxy = cov_norm * (filt(p * t) - ux * uy)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    h, w = s.shape[1:]
    return float(np.mean(s[:, pad : h - pad, pad : w - pad].mean(axis=(1, 2))))


# ----------------------------------------------------------------------------- physics


def _wavenumbers(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer wavenumbers (ky, kx) of an (h, w) periodic grid, as (h, w) arrays."""
    ky = np.fft.fftfreq(h, 1.0 / h)
    kx = np.fft.fftfreq(w, 1.0 / w)
    return np.meshgrid(ky, kx, indexing="ij")


def energy_spectrum(u: Any, v: Any) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic kinetic-energy spectrum of a periodic velocity pair → (k, E) with
    k = 0, 1, …, K and E of shape (..., K + 1): E(k) sums ½(|û|² + |v̂|²) over the modes whose
    |k| rounds to k, û = FFT(u) / (H W), so Σ_k E(k) = mean ½(u² + v²) for each sample."""
    uu = np.asarray(u, dtype=np.float64)
    vv = np.asarray(v, dtype=np.float64)
    if uu.shape != vv.shape or uu.ndim < 2:
        raise ValueError(f"u {uu.shape} and v {vv.shape} must be equal shapes (..., H, W)")
    h, w = uu.shape[-2:]
    uh = np.fft.fft2(uu) / (h * w)
    vh = np.fft.fft2(vv) / (h * w)
    dens = 0.5 * (np.abs(uh) ** 2 + np.abs(vh) ** 2)
    ky, kx = _wavenumbers(h, w)
    shell = np.rint(np.hypot(kx, ky)).astype(np.int64).ravel()
    nk = int(shell.max()) + 1
    flat = dens.reshape(-1, h * w)
    e = np.zeros((flat.shape[0], nk))
    for i in range(flat.shape[0]):
        e[i] = np.bincount(shell, weights=flat[i], minlength=nk)
    return np.arange(nk, dtype=np.float64), e.reshape(*uu.shape[:-2], nk)


def default_band_edges(h: int, w: int) -> list[float]:
    """Thirds of the wavenumbers 1 … Nyquist (min(H, W) // 2): [1, K/3, 2K/3, K + 1)."""
    k = min(h, w) // 2
    return [1.0, 1.0 + (k - 1) / 3.0, 1.0 + 2.0 * (k - 1) / 3.0, k + 1.0]


def spectrum_band_errors(
    pred_uv: tuple[Any, Any],
    truth_uv: tuple[Any, Any],
    edges: Sequence[float] | None = None,
) -> dict[str, float]:
    """Relative spectrum error per wavenumber band of the sample-mean spectra:
    Σ_{edges[i] ≤ k < edges[i+1]} |E_pred − E_truth| / Σ E_truth. Three bands are named
    low / mid / high, others band0, band1, …. Default edges: ``default_band_edges``."""
    k, ep = energy_spectrum(*pred_uv)
    _, et = energy_spectrum(*truth_uv)
    ep = ep.reshape(-1, len(k)).mean(axis=0)
    et = et.reshape(-1, len(k)).mean(axis=0)
    h, w = np.shape(truth_uv[0])[-2:]
    edges = list(edges) if edges is not None else default_band_edges(h, w)
    if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"band edges must be at least two increasing numbers, got {edges}")
    names = BAND_NAMES if len(edges) == 4 else tuple(f"band{i}" for i in range(len(edges) - 1))
    out = {}
    for name, lo, hi in zip(names, edges[:-1], edges[1:], strict=True):
        sel = (k >= lo) & (k < hi)
        den = et[sel].sum()
        out[name] = float(np.abs(ep[sel] - et[sel]).sum() / den) if den > 0 else float("nan")
    return out


def divergence(
    u: Any, v: Any, *, dx: float = 1.0, dy: float = 1.0, periodic: bool = True
) -> np.ndarray:
    """∂u/∂x + ∂v/∂y (x along the last axis): spectral on a periodic grid (Nyquist mode of an
    even side dropped), second-order centred differences on the interior otherwise (shape
    (..., H − 2, W − 2))."""
    uu = np.asarray(u, dtype=np.float64)
    vv = np.asarray(v, dtype=np.float64)
    if uu.shape != vv.shape or uu.ndim < 2:
        raise ValueError(f"u {uu.shape} and v {vv.shape} must be equal shapes (..., H, W)")
    h, w = uu.shape[-2:]
    if not periodic:
        dudx = (uu[..., 1:-1, 2:] - uu[..., 1:-1, :-2]) / (2 * dx)
        dvdy = (vv[..., 2:, 1:-1] - vv[..., :-2, 1:-1]) / (2 * dy)
        return dudx + dvdy
    kx = 2 * np.pi * np.fft.fftfreq(w, dx)
    ky = 2 * np.pi * np.fft.fftfreq(h, dy)
    if w % 2 == 0:
        kx[w // 2] = 0.0
    if h % 2 == 0:
        ky[h // 2] = 0.0
    dh = 1j * kx[None, :] * np.fft.fft2(uu) + 1j * ky[:, None] * np.fft.fft2(vv)
    return np.fft.ifft2(dh).real


def divergence_rms(
    u: Any, v: Any, *, dx: float = 1.0, dy: float = 1.0, periodic: bool = True
) -> float:
    """RMS of ``divergence`` over every sample and point."""
    return float(np.sqrt(np.mean(divergence(u, v, dx=dx, dy=dy, periodic=periodic) ** 2)))


# ----------------------------------------------------------------------------- baseline


def bicubic_upsample(coarse: Any, factor: int) -> np.ndarray:
    """(..., h, w) → (..., h·factor, w·factor) by torch ``F.interpolate(mode="bicubic",
    align_corners=False)`` in float64 (SuperBench's convention)."""
    c = np.asarray(coarse, dtype=np.float64)
    if c.ndim < 2 or int(factor) != factor or factor < 1:
        raise ValueError(f"need (..., h, w) and an integer factor ≥ 1; got {c.shape}, {factor}")
    h, w = c.shape[-2:]
    x = torch.from_numpy(np.ascontiguousarray(c.reshape(-1, 1, h, w)))
    y = F.interpolate(x, scale_factor=int(factor), mode="bicubic", align_corners=False)
    return y.numpy().reshape(*c.shape[:-2], h * int(factor), w * int(factor))


# ----------------------------------------------------------------------------- report


def pixel_scores(pred: Any, truth: Any, data_range: float) -> dict[str, float]:
    """Every pixel score of one field (``ssim`` with skimage's defaults: 7 × 7 uniform window,
    sample covariance)."""
    return {
        "rfne": rfne(pred, truth),
        "inf_norm": inf_norm(pred, truth),
        "psnr": psnr(pred, truth, data_range),
        "ssim": ssim(pred, truth, data_range),
        "mse": mse(pred, truth),
        "mae": mae(pred, truth),
    }


def superres_report(
    pred: Any,
    truth: Any,
    coarse: Any,
    factor: int,
    velocity: tuple[int, int] | None = None,
    *,
    names: Sequence[str] | None = None,
    band_edges: Sequence[float] | None = None,
    periodic: bool = True,
    dx: float = 1.0,
) -> dict[str, Any]:
    """Score ``pred`` and the bicubic baseline against ``truth``.

    pred, truth: (N, C, H, W); coarse: (N, C, H / factor, W / factor). ``data_range`` of each
    channel: truth max − min over the channel (all samples). ``velocity``: the channel indices
    (iu, iv) of a velocity pair for the spectrum band errors and the divergence RMS (grid
    spacing ``dx`` in both directions: 1 means per pixel of the fine grid).
    Returns ``{"rows": [{method, variable, rfne, …}], "physics": [{method, low, mid, high,
    divergence_rms}], "rfne_gain": 1 − RFNE_model / RFNE_bicubic (mean over channels),
    "bicubic": the baseline's (N, C, H, W) array (for plots; not JSON)}``."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    c = np.asarray(coarse, dtype=np.float64)
    if p.ndim != 4 or p.shape != t.shape or c.shape[:2] != t.shape[:2]:
        raise ValueError(
            f"pred {p.shape}, truth {t.shape} must be equal (N, C, H, W) and coarse {c.shape} "
            "(N, C, h, w)"
        )
    if c.shape[2] * factor != t.shape[2] or c.shape[3] * factor != t.shape[3]:
        raise ValueError(f"coarse {c.shape[2:]} × factor {factor} != truth {t.shape[2:]}")
    names = list(names) if names is not None else [f"ch{i}" for i in range(t.shape[1])]
    methods = {"model": p, "bicubic": bicubic_upsample(c, factor)}
    rows = []
    for method, arr in methods.items():
        for i, name in enumerate(names):
            rng = float(t[:, i].max() - t[:, i].min()) or 1.0
            rows.append({"method": method, "variable": name, "data_range": rng,
                         **pixel_scores(arr[:, i], t[:, i], rng)})  # fmt: skip
    physics = []
    if velocity is not None:
        iu, iv = velocity
        for method, arr in methods.items():
            bands = spectrum_band_errors((arr[:, iu], arr[:, iv]), (t[:, iu], t[:, iv]), band_edges)
            div = divergence_rms(arr[:, iu], arr[:, iv], dx=dx, dy=dx, periodic=periodic)
            physics.append({"method": method, **bands, "divergence_rms": div})
    mean = {m: np.mean([r["rfne"] for r in rows if r["method"] == m]) for m in methods}
    gain = 1.0 - mean["model"] / mean["bicubic"] if mean["bicubic"] > 0 else float("nan")
    return {"rows": rows, "physics": physics, "rfne_gain": float(gain),
            "bicubic": methods["bicubic"]}  # fmt: skip


# ----------------------------------------------------------------------------- plots


def plot_panels(
    coarse: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """Coarse / truth / prediction / error panels of one (h, w) / (H, W) field."""
    path = Path(path)
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 4)
    lo, hi = float(np.min(truth)), float(np.max(truth))
    err = np.asarray(pred) - np.asarray(truth)
    emax = float(np.abs(err).max()) or 1.0
    panels = [(coarse, "coarse", "viridis", lo, hi), (truth, "truth", "viridis", lo, hi),
              (pred, "prediction", "viridis", lo, hi),
              (err, "error", "RdBu_r", -emax, emax)]  # fmt: skip
    for ax, (a, label, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        im = ax.imshow(a, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def plot_spectra(spectra: dict[str, tuple[Any, Any]], path: str | Path, *, title: str = "") -> Path:
    """Sample-mean energy spectra, log-log, of labelled velocity pairs ``{label: (u, v)}``
    (e.g. truth, bicubic, model), for 1 ≤ k ≤ Nyquist."""
    path = Path(path)
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for label, (u, v) in spectra.items():
        k, e = energy_spectrum(u, v)
        e = e.reshape(-1, len(k)).mean(axis=0)
        top = min(np.shape(u)[-2:]) // 2 + 1  # up to Nyquist: the corner shells are partial
        ax.loglog(k[1:top], np.maximum(e[1:top], 1e-300), label=label)
    ax.set_xlabel("wavenumber k")
    ax.set_ylabel("E(k)")
    ax.legend(fontsize=8)
    ax.set_title(title or "kinetic-energy spectrum", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path
