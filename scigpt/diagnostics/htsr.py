"""Heavy-tailed self-regularization (HTSR) diagnostics of weight matrices (Martin & Mahoney).

For each weight matrix W (N × M after a transpose so that N ≥ M) the empirical spectral density
(ESD) is the M eigenvalues λ of WᵀW, computed as squared singular values in float64. Per matrix:

* **α**: the power-law tail exponent of the ESD, p(λ) ∝ λ^-α for λ ≥ xmin, by maximum likelihood
  (α = 1 + n / Σ log(λ/xmin)), with xmin the candidate (every eigenvalue but the largest) whose
  fit has the smallest Kolmogorov–Smirnov distance (Clauset, Shalizi & Newman 2009), with that
  distance and the number of tail eigenvalues. The KS distance compares the fitted CDF with the
  empirical CDF at k/n (k eigenvalues of the tail below), the convention of the ``powerlaw``
  package and of weightwatcher. Eigenvalues ≤ ``thresh`` (default 1e-5, weightwatcher's) are left
  out of the fit.
* **α-weighted** α·log₁₀ λmax, **log spectral norm** log₁₀ λmax (= log₁₀ ‖W‖₂²), **log Frobenius
  norm** log₁₀ Σλ (= log₁₀ ‖W‖_F², weightwatcher's ``log_norm``), **stable rank** Σλ / λmax.
* **Marchenko–Pastur bulk**: the entry variance σ² is fitted to the bulk (mean bulk eigenvalue =
  Nσ², iterated with the spikes left out); the bulk edge is λ+ = σ²(√N + √M)², and a *spike* is an
  eigenvalue above λ+ + 4·σ²·s_TW, s_TW = (√N + √M)(1/√N + 1/√M)^⅓ the Tracy–Widom scale of the
  largest eigenvalue of a random matrix (Johnstone 2001): 4 scales keeps a random matrix's own
  largest eigenvalue below the line (P ≈ 1e-4). ``mp_ks`` is the KS distance of the bulk from the
  MP law with that σ².
* **Correlation traps**: the spikes of the ESD of W with its entries shuffled (a fixed seed).
  Shuffling destroys correlations, so the shuffled ESD should be MP; a spike that survives comes
  from a few very large entries (Martin & Mahoney's "correlation traps").

Matrices with fewer than ``min_evals`` (50) eigenvalues are reported as too small to fit.
Nothing here imports training or parallel code: it reads weights (tensors or arrays).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from scigpt.tables import Table, fmt

MIN_EVALS = 50
EVALS_THRESH = 1e-5  # weightwatcher's EVALS_THRESH: eigenvalues at or below it are not fitted
TW_SCALES = 4.0  # spike line: λ+ plus this many Tracy–Widom scales
Weights = Mapping[str, torch.Tensor | np.ndarray] | Iterable[tuple[str, torch.Tensor | np.ndarray]]
ALPHA_RANGE = (2.0, 6.0)  # HTSR's well-trained range; outside it counts in the summary
_KS_BLOCK = 256  # xmin candidates evaluated at once (memory: block × number of eigenvalues)


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float
    xmin: float
    ks_distance: float
    num_tail: int


@dataclass(frozen=True)
class MPFit:
    sigma2: float  # fitted entry variance
    edge: float  # λ+ = σ²(√N + √M)²
    spike_line: float  # λ+ + TW_SCALES Tracy–Widom scales
    num_spikes: int
    ks_distance: float  # bulk ESD vs the MP law of σ²


@dataclass
class LayerDiagnostics:
    """One weight matrix's row of the table (NaN where ``status`` is not ``ok``)."""

    name: str
    rows: int  # N ≥ M after the transpose
    cols: int
    num_evals: int
    status: str  # "ok" or "too small"
    alpha: float = math.nan
    xmin: float = math.nan
    ks_distance: float = math.nan
    num_tail: int = 0
    alpha_weighted: float = math.nan
    log_spectral_norm: float = math.nan
    log_frobenius_norm: float = math.nan
    stable_rank: float = math.nan
    mp_sigma2: float = math.nan
    mp_edge: float = math.nan
    mp_spikes: int = 0
    mp_ks: float = math.nan
    traps: int = 0
    evals: np.ndarray | None = field(default=None, repr=False)  # ascending; kept for plots

    def row(self) -> dict[str, Any]:
        """The table row: every field but the eigenvalues."""
        out = asdict(self)
        out.pop("evals")
        return out


def eigenvalues(w: torch.Tensor | np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """Eigenvalues of WᵀW (N ≥ M), ascending, as float64 squared singular values."""
    t = torch.as_tensor(w).detach().to(device=device, dtype=torch.float64)
    if t.ndim != 2:
        raise ValueError(f"expected a matrix, got a tensor of shape {tuple(t.shape)}")
    sv = torch.linalg.svdvals(t).cpu().numpy()
    return np.sort(sv * sv)


def fit_power_law(evals: np.ndarray, *, thresh: float = EVALS_THRESH) -> PowerLawFit:
    """α of the ESD's tail by MLE, xmin by the smallest KS distance (Clauset–Shalizi–Newman)."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > thresh]
    n_all = len(x)
    if n_all < 2:
        return PowerLawFit(math.nan, math.nan, math.nan, 0)
    logx = np.log(x)
    suffix = np.cumsum(logx[::-1])[::-1]  # Σ_{j ≥ i} log x_j
    idx = np.arange(n_all - 1)  # candidates: every eigenvalue but the largest
    n = (n_all - idx).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + n / (suffix[idx] - n * logx[idx])
    ds = np.ones(n_all - 1)
    j = np.arange(n_all)
    for start in range(0, n_all - 1, _KS_BLOCK):
        i = idx[start : start + _KS_BLOCK]
        a = alphas[i][:, None]
        ok = np.isfinite(a) & (a > 1.0)
        k = j[None, :] - i[:, None]  # position in the tail; < 0 outside it
        with np.errstate(over="ignore", invalid="ignore"):
            fit_cdf = 1.0 - np.exp((1.0 - a) * (logx[None, :] - logx[i][:, None]))
            gap = np.abs(fit_cdf - k / n[i][:, None])
        gap = np.where((k >= 0) & ok, gap, 0.0)
        ds[start : start + len(i)] = np.where(ok[:, 0], gap.max(axis=1), 1.0)
    best = int(np.argmin(ds))
    return PowerLawFit(float(alphas[best]), float(x[best]), float(ds[best]), int(n_all - best))


def _mp_cdf(lam: np.ndarray, sigma2: float, n: int, m: int) -> np.ndarray:
    """CDF of the Marchenko–Pastur law of the eigenvalues of WᵀW (W: n × m, n ≥ m, entry
    variance σ²), by quadrature on x = a + (b−a)(1−cos θ)/2 (smooth at both edges)."""
    y = m / n
    a, b = (1 - math.sqrt(y)) ** 2, (1 + math.sqrt(y)) ** 2
    theta = np.linspace(0.0, math.pi, 4001)
    xg = a + (b - a) * (1 - np.cos(theta)) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        dens = ((b - a) / 2) ** 2 * np.sin(theta) ** 2 / (2 * math.pi * y * xg)
    dens[~np.isfinite(dens)] = 0.0
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(theta))])
    cdf /= cdf[-1]
    return np.interp(np.asarray(lam) / (n * sigma2), xg, cdf)


def fit_marchenko_pastur(evals: np.ndarray, n: int, m: int) -> MPFit:
    """σ² of the bulk (spikes left out, iterated), the bulk edge and the spikes above it."""
    lam = np.sort(np.asarray(evals, dtype=np.float64))
    if n < m:
        n, m = m, n
    s_tw = (math.sqrt(n) + math.sqrt(m)) * (1 / math.sqrt(n) + 1 / math.sqrt(m)) ** (1 / 3)
    bulk = lam
    line = math.inf
    for _ in range(50):
        sigma2 = float(bulk.mean()) / n
        line = sigma2 * ((math.sqrt(n) + math.sqrt(m)) ** 2 + TW_SCALES * s_tw)
        new = lam[lam <= line]
        if len(new) == len(bulk) or len(new) == 0:
            break
        bulk = new
    sigma2 = float(bulk.mean()) / n
    edge = sigma2 * (math.sqrt(n) + math.sqrt(m)) ** 2
    line = edge + sigma2 * TW_SCALES * s_tw
    bulk = lam[lam <= line]
    emp = np.arange(1, len(bulk) + 1) / len(bulk)
    theo = _mp_cdf(bulk, sigma2, n, m)
    ks = float(max(np.max(np.abs(emp - theo)), np.max(np.abs(emp - 1 / len(bulk) - theo))))
    return MPFit(sigma2, edge, line, int(np.sum(lam > line)), ks)


def correlation_traps(
    w: torch.Tensor | np.ndarray, *, seed: int = 0, device: str | torch.device = "cpu"
) -> int:
    """Spikes in the ESD of W with its entries shuffled (``seed``): large entries that no
    permutation spreads out."""
    arr = torch.as_tensor(w).detach().to(dtype=torch.float64).cpu().numpy()
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(arr.ravel()).reshape(arr.shape)
    return fit_marchenko_pastur(eigenvalues(shuffled, device), *arr.shape).num_spikes


def analyze_matrix(
    name: str,
    w: torch.Tensor | np.ndarray,
    *,
    min_evals: int = MIN_EVALS,
    thresh: float = EVALS_THRESH,
    seed: int = 0,
    device: str | torch.device = "cpu",
    keep_evals: bool = False,
    traps: bool = True,
) -> LayerDiagnostics:
    """Every diagnostic of one matrix (``status='too small'`` below ``min_evals`` eigenvalues).
    ``traps=False`` skips the shuffled matrix's SVD (``traps`` stays 0)."""
    if w.ndim != 2:
        raise ValueError(f"{name}: expected a matrix, got shape {tuple(w.shape)}")
    n, m = max(w.shape), min(w.shape)
    out = LayerDiagnostics(name, n, m, m, "too small" if m < min_evals else "ok")
    if out.status != "ok":
        return out
    lam = eigenvalues(w, device)
    pl = fit_power_law(lam, thresh=thresh)
    mp = fit_marchenko_pastur(lam, n, m)
    lmax, total = float(lam[-1]), float(lam.sum())
    out.alpha, out.xmin, out.ks_distance, out.num_tail = (
        pl.alpha,
        pl.xmin,
        pl.ks_distance,
        pl.num_tail,
    )
    out.log_spectral_norm = math.log10(lmax)
    out.alpha_weighted = pl.alpha * out.log_spectral_norm
    out.log_frobenius_norm = math.log10(total)
    out.stable_rank = total / lmax
    out.mp_sigma2, out.mp_edge, out.mp_spikes, out.mp_ks = (
        mp.sigma2,
        mp.edge,
        mp.num_spikes,
        mp.ks_distance,
    )
    if traps:
        out.traps = correlation_traps(w, seed=seed, device=device)
    if keep_evals:
        out.evals = lam
    return out


def weight_matrices(
    state: Weights,
) -> Iterator[tuple[str, torch.Tensor | np.ndarray]]:
    """The 2-D ``*.weight`` tensors of a state dict (linear layers, heads, aggregation), in order.
    Higher-dimensional stacks (the per-variable patch embedding) and vectors are not matrices.
    ``state`` may be a stream of ``(name, tensor)`` pairs (``reshard.iter_consolidated``)."""
    items = state.items() if isinstance(state, Mapping) else state
    for name, t in items:
        if name.endswith("weight") and t.ndim == 2:
            yield name, t


def analyze_state(
    state: Weights,
    *,
    min_evals: int = MIN_EVALS,
    thresh: float = EVALS_THRESH,
    seed: int = 0,
    device: str | torch.device = "cpu",
    workers: int = 1,
    keep_evals: bool = False,
    traps: bool = True,
) -> list[LayerDiagnostics]:
    """``analyze_matrix`` on every weight matrix of ``state`` (a state dict or a stream of
    ``(name, tensor)`` pairs); ``workers`` threads (the SVDs release the GIL), with at most
    ``workers`` matrices taken from the stream at once, so a streamed model is never held whole.
    Rows come back in the state's order."""

    def one(item: tuple[str, Any]) -> LayerDiagnostics:
        name, w = item
        return analyze_matrix(
            name,
            w,
            min_evals=min_evals,
            thresh=thresh,
            seed=seed,
            device=device,
            keep_evals=keep_evals,
            traps=traps,
        )

    items = weight_matrices(state)
    if workers <= 1:
        return [one(it) for it in items]
    out: list[LayerDiagnostics] = []
    window: deque[Future[LayerDiagnostics]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for it in items:
            if len(window) == workers:
                out.append(window.popleft().result())
            window.append(pool.submit(one, it))
        out.extend(f.result() for f in window)
    return out


def summarize(layers: Iterable[LayerDiagnostics]) -> dict[str, Any]:
    """Mean α and α-weighted over the fitted layers, the share outside ``ALPHA_RANGE``, traps."""
    layers = list(layers)
    ok = [d for d in layers if d.status == "ok" and math.isfinite(d.alpha)]
    lo, hi = ALPHA_RANGE
    outside = [d.name for d in ok if not lo <= d.alpha <= hi]
    return {
        "layers": len(layers),
        "fitted_layers": len(ok),
        "too_small": sum(d.status == "too small" for d in layers),
        "mean_alpha": float(np.mean([d.alpha for d in ok])) if ok else None,
        "mean_alpha_weighted": float(np.mean([d.alpha_weighted for d in ok])) if ok else None,
        "mean_log_spectral_norm": float(np.mean([d.log_spectral_norm for d in ok])) if ok else None,
        "alpha_range": list(ALPHA_RANGE),
        "share_alpha_outside": len(outside) / len(ok) if ok else None,
        "layers_alpha_outside": outside,
        "traps": int(sum(d.traps for d in ok)),
        "layers_with_traps": [d.name for d in ok if d.traps],
    }


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as a short Markdown list (the model card's "Weight diagnostics" section)."""
    lo, hi = summary.get("alpha_range", ALPHA_RANGE)
    share = summary.get("share_alpha_outside")
    lines = [
        f"- weight matrices: {summary['layers']} ({summary['fitted_layers']} fitted, "
        f"{summary['too_small']} too small to fit)",
        f"- mean α: {fmt(summary.get('mean_alpha'), '.3f', none='—')}; mean α-weighted: "
        f"{fmt(summary.get('mean_alpha_weighted'), '.3f', none='—')}",
        f"- share of layers with α outside {lo:g}–{hi:g}: "
        + ("—" if share is None else f"{100 * share:.0f} %"),
        f"- correlation traps: {summary['traps']}"
        + (f" ({', '.join(summary['layers_with_traps'])})" if summary["layers_with_traps"] else ""),
    ]
    return "\n".join(lines)


TABLE_SPECS = {
    "alpha": ".3f",
    "xmin": ".4g",
    "ks_distance": ".3f",
    "alpha_weighted": ".3f",
    "log_spectral_norm": ".3f",
    "log_frobenius_norm": ".3f",
    "stable_rank": ".2f",
    "mp_sigma2": ".3g",
    "mp_edge": ".4g",
    "mp_ks": ".3f",
}


def layer_table(layers: Iterable[LayerDiagnostics]) -> Table:
    """The per-layer table (CSV at full precision, Markdown through ``TABLE_SPECS``)."""
    rows = [d.row() for d in layers]
    cols = list(rows[0]) if rows else [f for f in LayerDiagnostics.__dataclass_fields__][:-1]
    right = [c for c in cols if c not in ("name", "status")]
    return Table(cols, rows, specs=TABLE_SPECS, right=right, none="")
