"""The discrete PDE problems of the generated source (``pde.py``): constant coefficients, the
grid, Gaussian-bump sources, the operator by stencil and its exact solvers.

Discretisation: second-order central finite differences — the 5-point stencil for ∂²/∂x², ∂²/∂y²
and centred differences for ∂/∂x, ∂/∂y — with truncation error O(h²): the solution converges at
second order in the max norm for smooth data (tests/test_ingest_pde.py measures it). The discrete
systems are solved exactly (to rounding) with numpy only, so any machine, with or without scipy,
produces the same samples:

* periodic, all families: diagonal in Fourier space (the stencils are circulant) → 2-D FFT;
* Dirichlet without advection: diagonal in the sine basis → DST-I along both axes (via FFT);
* Dirichlet with advection (non-symmetric): block-tridiagonal LU ("block Thomas") over rows,
  O(n⁴) flops — 64² in milliseconds, 256² in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BOUNDARY_CONDITIONS: tuple[str, ...] = ("dirichlet", "periodic")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}. Fix: choose one of {list(choices)}.")
    return value


@dataclass(frozen=True)
class Coefficients:
    """Constant coefficients of L u = −(k_xx u_xx + k_yy u_yy) + v_x u_x + v_y u_y + ω u."""

    kxx: float = 1.0
    kyy: float = 1.0
    vx: float = 0.0
    vy: float = 0.0
    omega: float = 0.0


# --- grid, sources and the discrete operator -------------------------------------------------


def spacing(grid: int, bc: str) -> float:
    """Node spacing h of a (grid, grid) problem under ``bc``."""
    return 1.0 / (grid + 1) if bc == "dirichlet" else 1.0 / grid


def grid_coords(grid: int, bc: str = "dirichlet") -> np.ndarray:
    """(grid,) node coordinates along x (and y): interior nodes (Dirichlet) or cell centres."""
    h = spacing(grid, bc)
    offset = 1.0 if bc == "dirichlet" else 0.5
    return (np.arange(grid, dtype=np.float64) + offset) * h


def gaussian_source(
    x: np.ndarray,
    y: np.ndarray,
    amplitude: np.ndarray,
    width: np.ndarray,
    coords: np.ndarray,
    *,
    periodic: bool = False,
) -> np.ndarray:
    """(n, n) f[j, i] at (coords[i], coords[j]) of bumps centred at (x, y), each (B,).

    ``amplitude`` carries the sign. Periodic sources sum the periodic images within 1 + 8w of
    each centre, so f is smooth on the torus; the images left out weigh below e^-32.
    """
    f = np.zeros((coords.size, coords.size))
    for b in range(len(x)):
        m = 1 + math.ceil(8 * width[b]) if periodic else 0
        shifts = np.arange(-m, m + 1, dtype=np.float64)[:, None]  # (S, 1)
        inv = 1.0 / (2.0 * width[b] ** 2)
        gx = np.exp(-((coords - x[b] - shifts) ** 2) * inv).sum(axis=0)  # (n,)
        gy = np.exp(-((coords - y[b] - shifts) ** 2) * inv).sum(axis=0)  # (n,)
        f += amplitude[b] * np.outer(gy, gx)  # separable Gaussian, (n_y, n_x)
    return f


def apply_operator(u: np.ndarray, coeffs: Coefficients, bc: str = "dirichlet") -> np.ndarray:
    """The discrete operator L_h u on the (n, n) grid, by stencil (reference for the solvers).

    L_h u = −k_xx δ²_x u − k_yy δ²_y u + v_x δ_x u + v_y δ_y u + ω u with
    δ²_x u = (u_{i+1} − 2u_i + u_{i−1}) / h², δ_x u = (u_{i+1} − u_{i−1}) / (2h); outside values
    are 0 (Dirichlet) or wrapped (periodic). Axis 0 is y, axis 1 is x.
    """
    h = spacing(u.shape[0], bc)
    p = np.pad(u, 1, mode="constant" if bc == "dirichlet" else "wrap")  # (n+2, n+2)
    c, e, w, n, s = p[1:-1, 1:-1], p[1:-1, 2:], p[1:-1, :-2], p[2:, 1:-1], p[:-2, 1:-1]
    return (
        -coeffs.kxx * (e - 2 * c + w) / h**2
        - coeffs.kyy * (n - 2 * c + s) / h**2
        + coeffs.vx * (e - w) / (2 * h)
        + coeffs.vy * (n - s) / (2 * h)
        + coeffs.omega * c
    )


# --- solvers -------------------------------------------------------------------------------------


def _dst1(a: np.ndarray, axis: int) -> np.ndarray:
    """Unnormalised DST-I along ``axis``: (S a)_k = Σ_j a_j sin(π (j+1)(k+1) / (n+1)).

    Through the FFT of the odd extension [0, a, 0, −a reversed] (length 2(n+1)); S² = (n+1)/2.
    """
    a = np.moveaxis(a, axis, -1)
    zero = np.zeros((*a.shape[:-1], 1))
    ext = np.concatenate([zero, a, zero, -a[..., ::-1]], axis=-1)  # (..., 2(n+1))
    out = -np.fft.rfft(ext, axis=-1).imag[..., 1 : a.shape[-1] + 1] / 2.0
    return np.moveaxis(out, -1, axis)


def _solve_dst(f: np.ndarray, c: Coefficients) -> np.ndarray:
    """Dirichlet, no advection: sin(kπx) is an eigenvector of −δ²_x with eigenvalue
    (4/h²) sin²(kπh/2), so L_h is diagonal after a DST-I along each axis."""
    n = f.shape[0]
    h = spacing(n, "dirichlet")
    lam = 4.0 / h**2 * np.sin(np.pi * np.arange(1, n + 1) * h / 2.0) ** 2  # (n,)
    symbol = c.kyy * lam[:, None] + c.kxx * lam[None, :] + c.omega  # (n_y, n_x) > 0
    g = _dst1(_dst1(f, 0), 1) / symbol
    return _dst1(_dst1(g, 0), 1) * (2.0 / (n + 1)) ** 2


def _solve_fft(f: np.ndarray, c: Coefficients) -> np.ndarray:
    """Periodic: the stencils are circulant, e^{iθj} has δ²-symbol −(4/h²) sin²(θ/2) and
    δ-symbol i sin(θ)/h. The θ = 0 mode is dropped when ω = 0 (zero-mean solution)."""
    n = f.shape[0]
    h = spacing(n, "periodic")
    tx = 2 * np.pi * np.fft.rfftfreq(n)  # (n//2+1,)
    ty = 2 * np.pi * np.fft.fftfreq(n)[:, None]  # (n, 1)
    symbol = (
        4.0 / h**2 * (c.kxx * np.sin(tx / 2) ** 2 + c.kyy * np.sin(ty / 2) ** 2)
        + 1j * (c.vx * np.sin(tx) + c.vy * np.sin(ty)) / h
        + c.omega
    )  # (n, n//2+1)
    fh = np.fft.rfft2(f)
    if c.omega == 0:
        symbol[0, 0], fh[0, 0] = 1.0, 0.0  # null space: constants; solvability: mean(f) = 0
    return np.fft.irfft2(fh / symbol, s=f.shape)


def _solve_block_tridiagonal(f: np.ndarray, c: Coefficients) -> np.ndarray:
    """Dirichlet with advection: rows j couple as a·U_{j−1} + (T_x + b)·U_j + d·U_{j+1} = F_j,
    T_x the (n, n) x-stencil. Block LU without pivoting is stable here because L_h is an
    M-matrix when the cell Péclet number is ≤ 1 (checked by :func:`generate`)."""
    n = f.shape[0]
    h = spacing(n, "dirichlet")
    lo_x, di_x, up_x = (
        -c.kxx / h**2 - c.vx / (2 * h),
        2 * c.kxx / h**2,
        -c.kxx / h**2 + c.vx / (2 * h),
    )
    a, b, d = -c.kyy / h**2 - c.vy / (2 * h), 2 * c.kyy / h**2, -c.kyy / h**2 + c.vy / (2 * h)
    tx = (
        np.diag(np.full(n, di_x + b + c.omega))
        + np.diag(np.full(n - 1, lo_x), -1)
        + np.diag(np.full(n - 1, up_x), 1)
    )  # (n, n)
    minv = np.empty((n, n, n))  # (rows, n, n): inverse of each row's Schur complement
    g = np.empty((n, n))
    minv[0] = np.linalg.inv(tx)
    g[0] = minv[0] @ f[0]
    for j in range(1, n):
        minv[j] = np.linalg.inv(tx - a * d * minv[j - 1])
        g[j] = minv[j] @ (f[j] - a * g[j - 1])
    u = np.empty((n, n))
    u[-1] = g[-1]
    for j in range(n - 2, -1, -1):
        u[j] = g[j] - d * (minv[j] @ u[j + 1])
    return u


def solve(f: np.ndarray, coeffs: Coefficients, bc: str = "dirichlet") -> np.ndarray:
    """Solve L_h u = f (see :func:`apply_operator`) on the (n, n) grid of ``f``, exactly.

    Periodic problems with ω = 0 return the zero-mean solution for the zero-mean part of f.
    """
    check_choice("bc", bc, BOUNDARY_CONDITIONS)
    if f.ndim != 2 or f.shape[0] != f.shape[1] or f.shape[0] < 3:
        raise ValueError(f"f must be a square (n, n) grid with n >= 3, got shape {f.shape}")
    if not (coeffs.kxx > 0 and coeffs.kyy > 0 and coeffs.omega >= 0):
        raise ValueError(f"{coeffs} is not elliptic: need kxx > 0, kyy > 0 and omega >= 0")
    f = np.asarray(f, dtype=np.float64)
    if bc == "periodic":
        return _solve_fft(f, coeffs)
    if coeffs.vx == 0 and coeffs.vy == 0:
        return _solve_dst(f, coeffs)
    return _solve_block_tridiagonal(f, coeffs)
