"""Generated PDE source: Poisson, advection–diffusion and Helmholtz on the unit square.

The three steady families of Subramanian et al. 2023, "Towards Foundation Models for Scientific
Machine Learning" (arXiv:2306.00258, §3), each with sampled coefficients and a source ``f`` that
is a sum of Gaussian bumps with sampled centres, widths, amplitudes and signs:

* ``poisson``:              −∇·(K∇u) = f,           K = diag(k_xx, k_yy) > 0
* ``advection_diffusion``:  −∇·(K∇u) + v·∇u = f,    v = (v_x, v_y) constant
* ``helmholtz``:            −Δu + ω u = f,           ω > 0

on Ω = [0, 1]² with either

* ``bc="dirichlet"``: u = 0 on ∂Ω. Unknowns at the n×n interior nodes ``x_i = i·h``,
  ``i = 1..n``, ``h = 1/(n+1)`` — the centres of the finite-volume (dual) cells of width h; the
  boundary nodes carry u = 0 and are not stored; or
* ``bc="periodic"``: u 1-periodic in x and y. Unknowns at the cell centres ``x_i = (i + ½)·h``,
  ``i = 0..n-1``, ``h = 1/n``. For Poisson and advection–diffusion the constants span the null
  space, so f is projected to zero mean (the compatibility condition ∫f = 0) and u is the
  zero-mean solution; the stored f is the projected one, so every (f, u) pair is consistent.

Discretisation: second-order central finite differences — the 5-point stencil for ∂²/∂x², ∂²/∂y²
and centred differences for ∂/∂x, ∂/∂y — with truncation error O(h²): the solution converges at
second order in the max norm for smooth data (tests/test_ingest_pde.py measures it). The discrete
systems are solved exactly (to rounding) with numpy only, so any machine, with or without scipy,
produces the same samples:

* periodic, all families: diagonal in Fourier space (the stencils are circulant) → 2-D FFT;
* Dirichlet without advection: diagonal in the sine basis → DST-I along both axes (via FFT);
* Dirichlet with advection (non-symmetric): block-tridiagonal LU ("block Thomas") over rows,
  O(n⁴) flops — 64² in milliseconds, 256² in seconds.

Each sample ``i`` draws from a generator seeded by ``(seed, family, i)`` only, so samples
``[a, b)`` are the same whether one process generates ``[0, N)`` or ranks each generate a slice
with ``start_index``: that is how parallel ingest splits the work. The sample axis is stored as
the time axis ``T`` of a :class:`GridArray` with synthetic timestamps
``2000-01-01T00:00 + i hours`` (pseudo-time; the problems are steady).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..variables import VariableInfo
from .base import GridArray

FAMILIES: tuple[str, ...] = ("poisson", "advection_diffusion", "helmholtz")
BOUNDARY_CONDITIONS: tuple[str, ...] = ("dirichlet", "periodic")
EQUATIONS: dict[str, str] = {
    "poisson": "-div(K grad u) = f, K = diag(k_xx, k_yy)",
    "advection_diffusion": "-div(K grad u) + v . grad u = f, K = diag(k_xx, k_yy)",
    "helmholtz": "-laplace(u) + omega u = f, omega > 0",
}
DISCRETISATION = (
    "second-order central finite differences (5-point Laplacian, centred first differences), "
    "order of accuracy 2; exact solve by FFT / DST-I / block-tridiagonal LU"
)
ORDER_OF_ACCURACY = 2
# Bump whenever the draws below change order or meaning: samples are only comparable within one.
GENERATOR_VERSION = 1
TIME_ORIGIN = np.datetime64("2000-01-01T00:00:00", "ns")
TIME_STEP = np.timedelta64(1, "h").astype("timedelta64[ns]")

# Fixed integers, not hash(family): Python salts str hashes per process, and every rank must
# derive the same per-sample seed.
_FAMILY_KEY = {"poisson": 1, "advection_diffusion": 2, "helmholtz": 3}

_VARIABLES: dict[str, VariableInfo] = {
    info.name: info
    for info in (
        VariableInfo("pde_f", "1", "grid", long_name="Source term f"),
        VariableInfo("pde_kxx", "1", "grid", long_name="Diffusion tensor component K_xx"),
        VariableInfo("pde_kyy", "1", "grid", long_name="Diffusion tensor component K_yy"),
        VariableInfo("pde_vx", "1", "grid", long_name="Advection velocity v_x"),
        VariableInfo("pde_vy", "1", "grid", long_name="Advection velocity v_y"),
        VariableInfo("pde_omega", "1", "grid", long_name="Helmholtz coefficient omega"),
        VariableInfo("pde_u", "1", "grid", long_name="Solution u"),
    )
}
# V axis per family: source, coefficients broadcast to fields, solution (paper §3: the network
# sees the source and coefficient fields and predicts u).
CHANNELS: dict[str, tuple[str, ...]] = {
    "poisson": ("pde_f", "pde_kxx", "pde_kyy", "pde_u"),
    "advection_diffusion": ("pde_f", "pde_kxx", "pde_kyy", "pde_vx", "pde_vy", "pde_u"),
    "helmholtz": ("pde_f", "pde_omega", "pde_u"),
}


# --- parameter ranges ----------------------------------------------------------------------------


def _range(
    name: str,
    value: Any,
    *,
    low: float,
    strict: bool = False,
    high: float = math.inf,
    example: tuple[float, float],
) -> tuple[float, float]:
    """``value`` as a ``(lo, hi)`` float pair inside [low, high] (``(low, high]`` if strict);
    errors name the option, the value and the fix (the default as an example)."""
    right = ")" if math.isinf(high) else "]"
    bound = f"{'(' if strict else '['}{low:g}, {high:g}{right}"
    fix = f"e.g. {name}: [{example[0]:g}, {example[1]:g}] (the default)"
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a pair [lo, hi] of numbers, got {value!r}. Fix: write {fix}."
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(
            f"{name} range ({lo:g}, {hi:g}) needs finite lo <= hi. Fix: swap them, or write {fix}."
        )
    if (lo <= low if strict else lo < low) or hi > high:
        raise ValueError(
            f"{name} range ({lo:g}, {hi:g}) must lie in {bound}. Fix: choose lo and hi in "
            f"{bound}, {fix}."
        )
    return lo, hi


class _Ranges:
    """Validation shared by the frozen range dataclasses below."""

    def _check(
        self, name: str, *, low: float, strict: bool = False, high: float = math.inf
    ) -> tuple[float, float]:
        default = self.__dataclass_fields__[name].default  # type: ignore[attr-defined]
        value = _range(
            name, getattr(self, name), low=low, strict=strict, high=high, example=default
        )
        # frozen: store the normalised tuple (configs from YAML give lists)
        object.__setattr__(self, name, value)
        return value


@dataclass(frozen=True)
class SourceRanges(_Ranges):
    """Gaussian-bump source f(x) = Σ_b s_b a_b exp(−|x − c_b|² / (2 w_b²)) (paper §3).

    Each sample draws the number of bumps from ``n_bumps`` (inclusive), then per bump the centre
    coordinates from ``bump_centre``, the width ``w`` from ``bump_width``, the amplitude ``a``
    from ``bump_amplitude`` (all uniform) and the sign ``s`` = ±1 with equal probability.
    """

    n_bumps: tuple[int, int] = (1, 4)
    bump_width: tuple[float, float] = (0.05, 0.15)
    bump_amplitude: tuple[float, float] = (0.5, 1.5)
    bump_centre: tuple[float, float] = (0.1, 0.9)

    def __post_init__(self) -> None:
        lo, hi = self._check("n_bumps", low=1)
        if lo != int(lo) or hi != int(hi):
            raise ValueError(f"n_bumps range {self.n_bumps!r} must be integers. Fix: e.g. [1, 4].")
        object.__setattr__(self, "n_bumps", (int(lo), int(hi)))
        self._check("bump_width", low=0, strict=True, high=1)
        self._check("bump_amplitude", low=0)
        self._check("bump_centre", low=0, high=1)


@dataclass(frozen=True)
class PoissonRanges(SourceRanges):
    """Poisson: K = diag(λ, λ/r) or diag(λ/r, λ) (axis chosen ±50 %), λ ~ U(diffusivity) the
    larger eigenvalue, r ~ U(eigen_ratio) ≥ 1 the eigenvalue ratio that sets the anisotropy and the
    conditioning (paper §3, SYS-1)."""

    diffusivity: tuple[float, float] = (0.5, 2.0)
    eigen_ratio: tuple[float, float] = (1.0, 5.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("diffusivity", low=0, strict=True)
        self._check("eigen_ratio", low=1)


@dataclass(frozen=True)
class AdvectionDiffusionRanges(PoissonRanges):
    """Advection–diffusion: K as for Poisson, v = |v| (cos θ, sin θ) with θ ~ U[0, 2π) and
    |v| = Pe · (k_xx + k_yy)/2 for a Péclet number Pe ~ U(peclet) (length scale 1, the domain).

    Pe is the advection-to-diffusion ratio we control; the paper's solution-based ratio
    ψ = ‖v·∇u‖ / ‖∇·(K∇u)‖ (SYS-2) is measured on each solution and stored in the attrs.
    """

    peclet: tuple[float, float] = (1.0, 20.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("peclet", low=0)

    def max_cell_peclet(self, grid: int, bc: str) -> float:
        """Worst-case cell Péclet number |v_x| h / (2 k_xx) over the ranges, on this grid.

        The worst case puts all of |v| = Pe·(λ + λ/r)/2 along the weak axis (k = λ/r).
        """
        h = _spacing(grid, bc)
        return self.peclet[1] * (self.eigen_ratio[1] + 1.0) * h / 4.0


@dataclass(frozen=True)
class HelmholtzRanges(SourceRanges):
    """Helmholtz −Δu + ω u = f with ω ~ U(omega), ω > 0 (paper §3, SYS-3): the sign makes the
    operator positive definite, so every sample has a unique solution (no resonances)."""

    omega: tuple[float, float] = (1.0, 10.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("omega", low=0, strict=True)


RANGES: dict[str, type[SourceRanges]] = {
    "poisson": PoissonRanges,
    "advection_diffusion": AdvectionDiffusionRanges,
    "helmholtz": HelmholtzRanges,
}


@dataclass(frozen=True)
class Coefficients:
    """Constant coefficients of L u = −(k_xx u_xx + k_yy u_yy) + v_x u_x + v_y u_y + ω u."""

    kxx: float = 1.0
    kyy: float = 1.0
    vx: float = 0.0
    vy: float = 0.0
    omega: float = 0.0


# --- grid, sources and the discrete operator -------------------------------------------------


def _spacing(grid: int, bc: str) -> float:
    return 1.0 / (grid + 1) if bc == "dirichlet" else 1.0 / grid


def grid_coords(grid: int, bc: str = "dirichlet") -> np.ndarray:
    """(grid,) node coordinates along x (and y): interior nodes (Dirichlet) or cell centres."""
    h = _spacing(grid, bc)
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
    h = _spacing(u.shape[0], bc)
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
    h = _spacing(n, "dirichlet")
    lam = 4.0 / h**2 * np.sin(np.pi * np.arange(1, n + 1) * h / 2.0) ** 2  # (n,)
    symbol = c.kyy * lam[:, None] + c.kxx * lam[None, :] + c.omega  # (n_y, n_x) > 0
    g = _dst1(_dst1(f, 0), 1) / symbol
    return _dst1(_dst1(g, 0), 1) * (2.0 / (n + 1)) ** 2


def _solve_fft(f: np.ndarray, c: Coefficients) -> np.ndarray:
    """Periodic: the stencils are circulant, e^{iθj} has δ²-symbol −(4/h²) sin²(θ/2) and
    δ-symbol i sin(θ)/h. The θ = 0 mode is dropped when ω = 0 (zero-mean solution)."""
    n = f.shape[0]
    h = _spacing(n, "periodic")
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
    h = _spacing(n, "dirichlet")
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
    _check_choice("bc", bc, BOUNDARY_CONDITIONS)
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


# --- sampling ----------------------------------------------------------------------------------


def sample_rng(seed: int, family: str, index: int) -> np.random.Generator:
    """The generator of sample ``index``: a function of (seed, family, index) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, _FAMILY_KEY[family], index]))


def _draw(family: str, r: SourceRanges, rng: np.random.Generator) -> tuple[Coefficients, dict]:
    """Coefficients and the JSON-ready record of one sample; draw order is GENERATOR_VERSION 1."""
    rec: dict[str, Any] = {}
    if isinstance(r, PoissonRanges):  # also advection–diffusion
        lam, ratio = rng.uniform(*r.diffusivity), rng.uniform(*r.eigen_ratio)
        strong_x = bool(rng.random() < 0.5)
        kxx, kyy = (lam, lam / ratio) if strong_x else (lam / ratio, lam)
        rec.update(kxx=kxx, kyy=kyy, eigen_ratio=ratio)
        coeffs = Coefficients(kxx=kxx, kyy=kyy)
        if isinstance(r, AdvectionDiffusionRanges):
            pe, theta = rng.uniform(*r.peclet), rng.uniform(0.0, 2 * np.pi)
            speed = pe * (kxx + kyy) / 2.0
            vx, vy = speed * math.cos(theta), speed * math.sin(theta)
            rec.update(vx=vx, vy=vy, peclet=pe)
            coeffs = Coefficients(kxx=kxx, kyy=kyy, vx=vx, vy=vy)
    elif isinstance(r, HelmholtzRanges):
        omega = rng.uniform(*r.omega)
        rec.update(omega=omega)
        coeffs = Coefficients(omega=omega)
    else:  # pragma: no cover - RANGES and _draw list the same families
        raise TypeError(f"no sampler for {type(r).__name__} ({family})")
    nb = int(rng.integers(r.n_bumps[0], r.n_bumps[1], endpoint=True))
    rec["source"] = {
        "x": rng.uniform(*r.bump_centre, nb).tolist(),
        "y": rng.uniform(*r.bump_centre, nb).tolist(),
        "width": rng.uniform(*r.bump_width, nb).tolist(),
        "amplitude": (rng.uniform(*r.bump_amplitude, nb) * rng.choice([-1.0, 1.0], nb)).tolist(),
    }
    return coeffs, rec


# --- public entry points -----------------------------------------------------------------------


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}. Fix: choose one of {list(choices)}.")
    return value


def _check_int(name: str, value: Any, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}. Fix: {hint}.")
    return int(value)


def generate(
    family: str,
    n_samples: int,
    *,
    grid: int,
    seed: int,
    start_index: int = 0,
    bc: str = "dirichlet",
    ranges: SourceRanges | None = None,
) -> GridArray:
    """Samples ``start_index .. start_index + n_samples − 1`` of a PDE family as a GridArray.

    values: (T = n_samples, V, grid, grid) float32, V = ``CHANNELS[family]`` (source f, the
    coefficients broadcast to fields, solution u; all dimensionless, units "1"). lat/lon hold the
    y/x node coordinates (``coords="cartesian"``); time is the pseudo-time
    ``2000-01-01 + index hours``. ``attrs["samples"]`` lists each sample's drawn parameters
    (JSON-ready); for advection–diffusion also the cell Péclet number and the paper's measured
    ratio ψ = ‖v·∇_h u‖₂ / ‖∇·(K∇_h u)‖₂.
    """
    _check_choice("family", family, FAMILIES)
    _check_choice("bc", bc, BOUNDARY_CONDITIONS)
    grid = _check_int("grid", grid, 3, "use grid >= 3 nodes per side (default 64)")
    n_samples = _check_int("n_samples", n_samples, 1, "ask for at least one sample")
    seed = _check_int("seed", seed, 0, "use a non-negative seed")
    start_index = _check_int("start_index", start_index, 0, "use a non-negative start_index")
    ranges = RANGES[family]() if ranges is None else ranges
    if type(ranges) is not RANGES[family]:
        raise ValueError(
            f"ranges for family {family!r} must be {RANGES[family].__name__}, got "
            f"{type(ranges).__name__}. Fix: pass {RANGES[family].__name__}(...) or None."
        )
    if isinstance(ranges, AdvectionDiffusionRanges):
        # Central differences lose the discrete maximum principle (and oscillate) once
        # |v| h / (2k) > 1 (the cell Péclet condition;
        # K. W. Morton, "Numerical Solution of Convection-Diffusion Problems", 1996).
        worst = ranges.max_cell_peclet(grid, bc)
        if worst > 1.0:
            need = math.ceil(ranges.peclet[1] * (ranges.eigen_ratio[1] + 1) / 4)
            need -= 1 if bc == "dirichlet" else 0
            raise ValueError(
                f"advection_diffusion: peclet up to {ranges.peclet[1]:g} with eigen_ratio up to "
                f"{ranges.eigen_ratio[1]:g} on grid {grid} gives cell Péclet numbers up to "
                f"{worst:.3g} > 1, where central differences oscillate. Fix: use grid >= {need}, "
                "or lower the upper end of peclet or eigen_ratio."
            )

    coords = grid_coords(grid, bc)
    names = CHANNELS[family]
    values = np.empty((n_samples, len(names), grid, grid), dtype=np.float32)  # (T, V, H, W)
    samples = []
    for t in range(n_samples):
        index = start_index + t
        coeffs, rec = _draw(family, ranges, sample_rng(seed, family, index))
        src = rec["source"]
        f = gaussian_source(
            np.array(src["x"]),
            np.array(src["y"]),
            np.array(src["amplitude"]),
            np.array(src["width"]),
            coords,
            periodic=bc == "periodic",
        )
        if bc == "periodic" and coeffs.omega == 0:
            f -= f.mean()  # compatibility ∫f = 0 of the singular periodic problem
        u = solve(f, coeffs, bc)
        if family == "advection_diffusion":
            h = _spacing(grid, bc)
            adv = apply_operator(u, Coefficients(kxx=0, kyy=0, vx=coeffs.vx, vy=coeffs.vy), bc)
            dif = apply_operator(u, Coefficients(kxx=coeffs.kxx, kyy=coeffs.kyy), bc)
            rec["cell_peclet"] = max(
                abs(coeffs.vx) * h / (2 * coeffs.kxx), abs(coeffs.vy) * h / (2 * coeffs.kyy)
            )
            rec["adv_diff_ratio"] = float(np.linalg.norm(adv) / np.linalg.norm(dif))
        fields_ = {
            "pde_f": f,
            "pde_u": u,
            "pde_kxx": coeffs.kxx,
            "pde_kyy": coeffs.kyy,
            "pde_vx": coeffs.vx,
            "pde_vy": coeffs.vy,
            "pde_omega": coeffs.omega,
        }
        for v, name in enumerate(names):
            values[t, v] = fields_[name]  # scalars broadcast to (H, W)
        samples.append({"index": index, **rec})

    return GridArray(
        values=values,
        variables=[_VARIABLES[name] for name in names],
        lat=coords.copy(),
        lon=coords.copy(),
        time=TIME_ORIGIN + (start_index + np.arange(n_samples)) * TIME_STEP,
        source=f"pde:{family}",
        coords="cartesian",
        attrs={
            "family": family,
            "equation": EQUATIONS[family],
            "bc": bc,
            "grid": grid,
            "spacing": _spacing(grid, bc),
            "discretisation": DISCRETISATION,
            "order_of_accuracy": ORDER_OF_ACCURACY,
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "start_index": start_index,
            "time_axis": "pseudo-time: sample index i at 2000-01-01T00:00 + i hours",
            "ranges": {k: list(v) for k, v in asdict(ranges).items()},
            "samples": samples,
        },
    )


def read_pde(
    paths: Sequence[str | Path],
    *,
    family: str,
    n_samples: int,
    grid: int = 64,
    seed: int = 0,
    start_index: int = 0,
    bc: str = "dirichlet",
    diffusivity: tuple[float, float] | None = None,
    eigen_ratio: tuple[float, float] | None = None,
    peclet: tuple[float, float] | None = None,
    omega: tuple[float, float] | None = None,
    n_bumps: tuple[int, int] | None = None,
    bump_width: tuple[float, float] | None = None,
    bump_amplitude: tuple[float, float] | None = None,
    bump_centre: tuple[float, float] | None = None,
) -> list[GridArray]:
    """Reader-registry entry ``"pde"``: one :class:`GridArray` of generated samples.

    The data are generated, not read: ``paths`` is accepted for the common reader signature and
    ignored (configs leave it empty; any paths given are recorded in ``attrs["ignored_paths"]``).
    Range options left at ``None`` take the family's defaults (:data:`RANGES`); giving one that
    the family does not use (``omega`` for ``poisson``) is an error, not silently dropped.
    """
    _check_choice("family", family, FAMILIES)
    cls = RANGES[family]
    given = {
        "diffusivity": diffusivity,
        "eigen_ratio": eigen_ratio,
        "peclet": peclet,
        "omega": omega,
        "n_bumps": n_bumps,
        "bump_width": bump_width,
        "bump_amplitude": bump_amplitude,
        "bump_centre": bump_centre,
    }
    given = {k: v for k, v in given.items() if v is not None}
    accepted = {f.name for f in fields(cls)}
    unused = sorted(set(given) - accepted)
    if unused:
        raise ValueError(
            f"option(s) {unused} do not apply to family {family!r}, whose range options are "
            f"{sorted(accepted)}. Fix: remove them from the source config."
        )
    out = generate(
        family,
        n_samples,
        grid=grid,
        seed=seed,
        start_index=start_index,
        bc=bc,
        ranges=cls(**given),
    )
    if paths:
        out.attrs["ignored_paths"] = [str(p) for p in paths]
    return [out]
