"""SuperBench's metrics (scigpt.eval.superres) against independent references: scikit-image's
SSIM and PSNR (1e-6), hand cases for RFNE / MSE / MAE / infinity norm, Parseval for the energy
spectrum (1e-12 relative), the divergence of fields with a known divergence, and the bicubic
baseline against an independent numpy cubic convolution (1e-12). About 2 s in all."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from scigpt.eval import superres as sr


def _images(seed: int = 0, shape=(3, 40, 36)):
    rng = np.random.default_rng(seed)
    truth = np.cumsum(np.cumsum(rng.normal(size=shape), axis=-1), axis=-2)  # smooth-ish
    pred = truth + rng.normal(scale=2.0, size=shape)
    return pred, truth


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"gaussian_weights": True},
        {"gaussian_weights": True, "use_sample_covariance": False},
        {"win_size": 5, "use_sample_covariance": False},
        {"win_size": 9},
    ],
)
def test_ssim_matches_skimage(kw):
    """Per 2-D sample and mean over samples equal skimage's structural_similarity to 1e-6."""
    pred, truth = _images()
    rng = float(truth.max() - truth.min())
    ours = sr.ssim(pred, truth, rng, **kw)
    ref = np.mean(
        [
            structural_similarity(p, t, data_range=rng, **kw)
            for p, t in zip(pred, truth, strict=True)
        ]
    )
    assert abs(ours - ref) < 1e-6
    assert 0.0 < ours < 1.0
    assert sr.ssim(truth, truth, rng, **kw) == pytest.approx(1.0, abs=1e-12)


def test_psnr_matches_skimage():
    """Per sample and mean equal skimage's peak_signal_noise_ratio to 1e-6."""
    pred, truth = _images(1)
    pairs = zip(pred, truth, strict=True)
    ref = np.mean([peak_signal_noise_ratio(t, p, data_range=50.0) for p, t in pairs])
    assert abs(sr.psnr(pred, truth, 50.0) - ref) < 1e-6
    with pytest.raises(ValueError, match="data_range"):
        sr.psnr(pred, truth, 0.0)


def test_pixel_errors_hand_cases():
    """Two 2 × 2 samples with hand-computed scores (exact to 1e-12)."""
    truth = np.array([[[3.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]])
    pred = truth + np.array([[[0.5, 0.0], [0.0, 0.0]], [[0.0, -2.0], [0.0, 0.0]]])
    # sample 1: ‖e‖ = 0.5, ‖t‖ = 5 → 0.1; sample 2: ‖e‖ = 2, ‖t‖ = 2 → 1.0
    assert sr.rfne(pred, truth) == pytest.approx(0.55, abs=1e-12)
    assert sr.mse(pred, truth) == pytest.approx((0.25 + 4.0) / 8, abs=1e-12)
    assert sr.mae(pred, truth) == pytest.approx(2.5 / 8, abs=1e-12)
    assert sr.inf_norm(pred, truth) == pytest.approx((0.5 + 2.0) / 2, abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        sr.rfne(pred[:1], truth)


def test_energy_spectrum_parseval_and_single_mode():
    """Σ_k E(k) = mean ½(u² + v²) per sample (1e-12 relative); a single Fourier mode of
    wavenumber (3, 4) puts all its energy in shell 5."""
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=(2, 4, 32, 24))
    k, e = sr.energy_spectrum(u, v)
    assert e.shape == (4, len(k))
    np.testing.assert_allclose(e.sum(axis=-1), 0.5 * (u**2 + v**2).mean(axis=(-2, -1)), rtol=1e-12)
    y, x = np.meshgrid(np.arange(32) / 32, np.arange(32) / 32, indexing="ij")
    u1 = np.cos(2 * np.pi * (3 * x + 4 * y))
    k, e = sr.energy_spectrum(u1, np.zeros_like(u1))
    assert e[5] == pytest.approx(0.25, abs=1e-12)  # ½ mean(cos²) = ¼
    assert np.abs(np.delete(e, 5)).max() < 1e-20


def test_spectrum_band_errors():
    """Equal fields: zero in every band; a field with its high band removed: error 1 there and
    0 in the low band."""
    n = 48
    y, x = np.meshgrid(np.arange(n) / n, np.arange(n) / n, indexing="ij")
    low = np.sin(2 * np.pi * 2 * x)
    high = 0.3 * np.sin(2 * np.pi * 20 * y)
    truth = (low + high, np.cos(2 * np.pi * 3 * y))
    assert sr.spectrum_band_errors(truth, truth) == {"low": 0.0, "mid": 0.0, "high": 0.0}
    err = sr.spectrum_band_errors((low, truth[1]), truth)
    assert err["low"] == pytest.approx(0.0, abs=1e-12)
    assert err["high"] == pytest.approx(1.0, abs=1e-12)
    custom = sr.spectrum_band_errors((low, truth[1]), truth, edges=[1, 10, 25])
    assert set(custom) == {"band0", "band1"}


def test_divergence_known_fields():
    """Streamfunction velocity: divergence 0 (spectral 1e-12, centred differences to O(dx²),
    1e-2); u = sin x: divergence cos x, RMS 1/√2 spectrally (1e-12), centred 1e-2."""
    n = 64
    dx = 2 * np.pi / n
    y, x = np.meshgrid(np.arange(n) * dx, np.arange(n) * dx, indexing="ij")
    # ψ = sin(x) cos(2y): u = ∂ψ/∂y, v = −∂ψ/∂x
    u = -2 * np.sin(x) * np.sin(2 * y)
    v = -np.cos(x) * np.cos(2 * y)
    assert sr.divergence_rms(u, v, dx=dx, dy=dx) < 1e-12
    assert sr.divergence_rms(u, v, dx=dx, dy=dx, periodic=False) < 1e-2  # O(dx²) truncation
    s = np.sin(x)
    assert sr.divergence_rms(s, np.zeros_like(s), dx=dx, dy=dx) == pytest.approx(2**-0.5, abs=1e-12)
    fd = sr.divergence(s, np.zeros_like(s), dx=dx, dy=dx, periodic=False)
    assert fd.shape == (n - 2, n - 2)
    assert np.abs(fd - np.cos(x[1:-1, 1:-1])).max() < 1e-2


def _keys_bicubic(c: np.ndarray, f: int, a: float = -0.75) -> np.ndarray:
    """Independent cubic convolution: half-pixel centres, clamped borders, separable."""

    def kernel(t):
        t = np.abs(t)
        return np.where(
            t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
            np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0),
        )  # fmt: skip

    def along(arr, axis):
        n = arr.shape[axis]
        src = (np.arange(n * f) + 0.5) / f - 0.5
        base = np.floor(src).astype(int)
        out = 0.0
        for off in (-1, 0, 1, 2):
            idx = np.clip(base + off, 0, n - 1)
            wgt = kernel(src - (base + off))
            shape = [1] * arr.ndim
            shape[axis] = -1
            out = out + np.take(arr, idx, axis=axis) * wgt.reshape(shape)
        return out

    return along(along(c, -1), -2)


def test_bicubic_is_torch_keys_and_exact_on_linear_fields():
    rng = np.random.default_rng(3)
    c = rng.normal(size=(2, 3, 6, 5))
    up = sr.bicubic_upsample(c, 4)
    assert up.shape == (2, 3, 24, 20)
    np.testing.assert_allclose(up, _keys_bicubic(c, 4), atol=1e-12)
    t = torch.from_numpy(c.reshape(6, 1, 6, 5))
    ref = torch.nn.functional.interpolate(t, scale_factor=4, mode="bicubic", align_corners=False)
    np.testing.assert_allclose(up.reshape(6, 1, 24, 20), ref.numpy(), atol=1e-12)
    # a = -0.75 reproduces constants (not linear fields: that needs a = -0.5), borders included
    np.testing.assert_allclose(sr.bicubic_upsample(np.full((5, 7), 2.5), 8), 2.5, atol=1e-12)


def test_superres_report_and_plots(tmp_path):
    """The report scores the model and bicubic; a perfect model has RFNE 0 and gain 1."""
    n = 32
    y, x = np.meshgrid(np.arange(n) / n, np.arange(n) / n, indexing="ij")
    u = np.sin(2 * np.pi * (x + 3 * y))[None]
    v = np.cos(2 * np.pi * (5 * x - y))[None]
    truth = np.stack([u, v], axis=1)  # (1, 2, 32, 32)
    coarse = truth.reshape(1, 2, 8, 4, 8, 4).mean(axis=(3, 5))
    res = sr.superres_report(truth, truth, coarse, 4, velocity=(0, 1), names=["u", "v"])
    model = [r for r in res["rows"] if r["method"] == "model"]
    assert all(r["rfne"] == 0.0 for r in model) and res["rfne_gain"] == 1.0
    assert {p["method"] for p in res["physics"]} == {"model", "bicubic"}
    bic = next(p for p in res["physics"] if p["method"] == "bicubic")
    assert bic["high"] > 0.0
    p1 = sr.plot_panels(coarse[0, 0], truth[0, 0], res["bicubic"][0, 0], tmp_path / "p.png")
    p2 = sr.plot_spectra({"truth": (u, v), "bicubic": (res["bicubic"][:, 0], res["bicubic"][:, 1])},
                         tmp_path / "s.png")  # fmt: skip
    assert p1.stat().st_size > 1000 and p2.stat().st_size > 1000
