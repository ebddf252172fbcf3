"""ProbConserve: make a probabilistic prediction satisfy linear conservation laws exactly.

Hansen et al. 2023, "Learning Physical Models that Can Respect Conservation Laws" (ICML;
arXiv:2302.11002), post-hoc step: given a prediction with mean μ ∈ ℝⁿ and covariance Σ (the
ensemble's variance, or a model's predicted variance) and k linear constraints G u = b (G: k×n,
e.g. the total mass h²·Σᵢ uᵢ of a conserved field equal to its initial total plus the boundary
fluxes), return

    μ̃ = μ − ΣGᵀ (GΣGᵀ)⁻¹ (Gμ − b)
    Σ̃ = Σ − ΣGᵀ (GΣGᵀ)⁻¹ GΣ

— the mean and covariance of u | G u = b when u ~ N(μ, Σ), i.e. the Σ⁻¹-weighted (oblique)
projection of μ onto the constraint set: the correction goes where the variance is, which is
where the model is unsure (at sharp fronts), and G μ̃ = b holds exactly. Properties (tested):
Σ̃ Gᵀ = 0 (no variance left along the constraint), Σ̃ v = Σ v whenever G Σ v = 0 (directions
the constraint does not see are untouched), and Σ − Σ̃ is positive semi-definite.

Variance forms, chosen by the shape of ``var_or_cov`` against ``mu`` (…, n):

* diagonal, shape (…, n): Σ = diag(var). Σ̃ is *not* diagonal; the diagonal of Σ̃ (the updated
  pointwise variance, shape (…, n), clipped at 0 against round-off) is returned — or the full
  Σ̃ (…, n, n) with ``full_cov=True``;
* full, shape (…, n, n): Σ̃ is returned in full (symmetrised).

Leading axes batch (one constraint solve per sample); G (k, n) or (…, k, n), b (k,) or (…, k).
Everything is computed and returned in float64; the k×k systems are solved (never inverted).

The config-facing layer (``eval.constraints``, :class:`scigpt.config.ConstraintConfig`) lives
with the ensemble scores in ``scigpt/eval/ensemble.py``; this module is the math only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _solve(s: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve S x = rhs for the (…, k, k) constraint matrices S = GΣGᵀ, with a clear error."""
    diag = np.diagonal(s, axis1=-2, axis2=-1)
    if np.any(~np.isfinite(s)) or np.any(diag <= 0):
        raise ValueError(
            "GΣGᵀ has a zero or non-finite diagonal: a constraint acts only where the predicted "
            "variance is 0 (or NaN), so ProbConserve cannot move the mean there. Fix: give a "
            "positive variance on the constraint's support (e.g. an ensemble with >= 2 members)."
        )
    try:
        return np.linalg.solve(s, rhs)
    except np.linalg.LinAlgError:
        raise ValueError(
            "GΣGᵀ is singular: the constraints are linearly dependent on the predicted variance's "
            "support. Fix: drop the redundant rows of G."
        ) from None


def probconserve(
    mu: np.ndarray,
    var_or_cov: np.ndarray,
    G: np.ndarray,
    b: np.ndarray | float,
    *,
    full_cov: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(μ̃, Σ̃) of the module docstring. ``mu`` (…, n); ``var_or_cov`` (…, n) diagonal or
    (…, n, n) full; ``G`` (n,), (k, n) or (…, k, n); ``b`` scalar, (k,) or (…, k).

    Returns μ̃ (…, n) and, for a diagonal input, the diagonal of Σ̃ (…, n) — the full Σ̃
    (…, n, n) with ``full_cov=True`` — or, for a full input, Σ̃ (…, n, n).
    """
    mu = np.asarray(mu, dtype=np.float64)
    var = np.asarray(var_or_cov, dtype=np.float64)
    n = mu.shape[-1]
    g = np.asarray(G, dtype=np.float64)
    g = g[None] if g.ndim == 1 else g  # one constraint row
    b_ = np.asarray(b, dtype=np.float64)
    b_ = b_[None] if b_.ndim == 0 else b_  # one constraint's value
    if g.shape[-1] != n:
        raise ValueError(f"G has {g.shape[-1]} columns but mu has n = {n} entries per sample.")
    if g.shape[-2] > n:
        raise ValueError(f"{g.shape[-2]} constraints on {n} unknowns: at most n are independent.")
    residual = np.einsum("...kn,...n->...k", g, mu) - b_  # Gμ − b, (…, k)
    if var.shape == mu.shape:  # diagonal Σ
        if np.any(var < 0):
            raise ValueError("the variance has negative entries. Fix: pass variances, not stds.")
        gs = g * var[..., None, :]  # GΣ, (…, k, n)
        s = np.einsum("...kn,...ln->...kl", gs, g)  # GΣGᵀ, (…, k, k)
        z = _solve(s, residual[..., None])[..., 0]
        mu_t = mu - np.einsum("...kn,...k->...n", gs, z)
        w = _solve(s, gs)  # (GΣGᵀ)⁻¹GΣ, (…, k, n)
        if full_cov:
            cov = np.einsum("...n,nm->...nm", var, np.eye(n)) - np.einsum(
                "...kn,...km->...nm", gs, w
            )
            return mu_t, 0.5 * (cov + np.swapaxes(cov, -1, -2))
        return mu_t, np.maximum(var - np.sum(gs * w, axis=-2), 0.0)
    if var.shape == (*mu.shape, n):  # full Σ
        sgt = np.einsum("...nm,...km->...nk", var, g)  # ΣGᵀ, (…, n, k)
        s = np.einsum("...kn,...nl->...kl", g, sgt)  # GΣGᵀ
        z = _solve(s, residual[..., None])[..., 0]
        mu_t = mu - np.einsum("...nk,...k->...n", sgt, z)
        cov = var - sgt @ _solve(s, np.swapaxes(sgt, -1, -2))
        return mu_t, 0.5 * (cov + np.swapaxes(cov, -1, -2))
    raise ValueError(
        f"var_or_cov has shape {var.shape}; with mu of shape {mu.shape} it must be {mu.shape} "
        f"(diagonal variances) or {(*mu.shape, n)} (full covariances)."
    )


def mass_constraint(
    shape: Sequence[int], cell_area: float | np.ndarray, total: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(G, b) of "the total mass Σᵢ aᵢ uᵢ equals ``total``" on a grid of ``shape`` (flattened
    C-order): G (1, n) the cell areas a (a scalar or an array of ``shape``), b (1,) — or
    (B, 1) for B per-sample totals."""
    shape = tuple(int(s) for s in shape)
    area = np.broadcast_to(np.asarray(cell_area, dtype=np.float64), shape).reshape(1, -1)
    total = np.asarray(total, dtype=np.float64)
    return area.copy(), total[..., None]
