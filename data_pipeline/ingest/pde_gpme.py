"""Generalized porous medium equation (GPME) families of the generated PDE source.

``∂u/∂t = ∇·(k(u) ∇u)`` on Ω = [0, 1]² with no-flux boundaries (k(u) ∂u/∂n = 0), so the mass
∫u is conserved. The easy-to-hard families of Hansen et al. 2023, "Learning Physical Models that
Can Respect Conservation Laws" (ProbConserve, ICML; arXiv:2302.11002); the default ranges
follow our reading of the paper:

* ``gpme-diffusion`` (easy):  k(u) = k, a constant, k ~ U(conductivity), default [1, 5]
* ``gpme-porous`` (medium):   k(u) = u^m, m ~ U(exponent), default m = 3   (degenerate at u = 0:
  compactly supported data spread with finite speed and a sharp front)
* ``gpme-stefan`` (hard):     k(u) = 1 for u ≥ u*, k_low below, u* ~ U(threshold) (defaults
  u* ∈ [0.55, 0.7], k_low = 0): the region below u* does not diffuse; the front where u falls
  through u* is a moving discontinuity (one-phase Stefan problem with latent heat u*).

Discretisation (finite volumes, flux form). With the Kirchhoff potential Φ(u) = ∫₀ᵘ k(s) ds,
∇·(k(u)∇u) = ΔΦ(u). Unknowns are cell averages on the n×n cell-centred grid (h = 1/n); the flux
through the face between cells i and i+1 is −(Φ(u_{i+1}) − Φ(u_i))/h, boundary faces carry zero
flux, and forward Euler advances u_i += (dt/h) (F_{i−1/2} − F_{i+1/2}). Every face flux leaves
one cell and enters its neighbour, so Σ u_i h² is conserved to round-off, whatever k. The step
dt = cfl·h²/(d·k_max) with cfl ≤ 1/2 (k_max the largest k(u) between min u0 and max u0) keeps the
scheme monotone, hence the maximum principle: u stays in [min u0, max u0], and the Stefan
front is captured like the enthalpy method (a cell below u* fills up to u* before it conducts).

Observed order of accuracy (tests/test_gpme.py, 1-D, dt ∝ h², exact cell averages as initial
state; the L1 error of the cell averages, averaged over four snapshots to damp the front's
grid-phase noise, fitted over 6–7 grids):

* diffusion, Fourier mode 1 + a cos(πx) e^{−kπ²t}: **2.0** (smooth; band [1.9, 2.1]);
* porous medium m = 3, Barenblatt–Pattle source solution: **≈ 1.5** in 1-D and in 2-D (the
  front u ~ (x_f − x)^{1/3} limits the regularity; band [1.2, 1.8]);
* Stefan u* = 0.6, k_low = 0, Neumann's similarity solution with u(0, t) = 1: **≈ 1.7** (the
  discontinuous front is smeared over one cell, as in the enthalpy method; band [1.3, 2.1]).

Each sample draws from a generator seeded by ``(seed, family, index)`` only (as ``pde.py``). A
sample is one initial condition u0 — a sum of positive Gaussian bumps, clipped to ≤ 1 (bumps
that overlap make flat-topped plateaus with steep sides) — with its coefficients, and the
solution u at ``t_end``; channels ``pde_u0`` (input), ``pde_k0`` = k(u0) (the diffusivity field
at t = 0, the family-agnostic coefficient input) and ``pde_u`` (output).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..variables import VariableInfo
from .base import GridArray
from .pde_ranges import SourceRanges
from .pde_solvers import check_choice, gaussian_source, grid_coords

GPME_FAMILIES: tuple[str, ...] = ("gpme-diffusion", "gpme-porous", "gpme-stefan")
GPME_EQUATIONS: dict[str, str] = {
    "gpme-diffusion": "du/dt = div(k grad u), k constant; no-flux boundaries",
    "gpme-porous": "du/dt = div(u^m grad u); no-flux boundaries",
    "gpme-stefan": "du/dt = div(k(u) grad u), k = 1 for u >= u*, k_low below; no-flux boundaries",
}
GPME_CHANNELS: tuple[str, ...] = ("pde_u0", "pde_k0", "pde_u")
# Observed L1 orders (tests/test_gpme.py), stored in each GridArray's attrs.
GPME_ORDER: dict[str, float] = {"gpme-diffusion": 2.0, "gpme-porous": 1.5, "gpme-stefan": 1.7}
GPME_DISCRETISATION = (
    "cell-centred finite volumes in flux form on the Kirchhoff potential Phi(u) = int_0^u k, "
    "no-flux faces, forward Euler with dt = cfl h^2 / (d k_max) (monotone); mass conserved to "
    "round-off"
)
GPME_GENERATOR_VERSION = 1
# Fixed integers continuing pde.py's family keys (1..3), for the per-sample seeds.
_FAMILY_KEY = {"gpme-diffusion": 4, "gpme-porous": 5, "gpme-stefan": 6}
_TIME_ORIGIN = np.datetime64("2000-01-01T00:00:00", "ns")
_TIME_STEP = np.timedelta64(1, "h").astype("timedelta64[ns]")

GPME_VARIABLES: dict[str, VariableInfo] = {
    info.name: info
    for info in (
        VariableInfo("pde_u0", "1", "grid", long_name="Initial condition u(t=0)"),
        VariableInfo("pde_k0", "1", "grid", long_name="Diffusivity k(u) at t=0"),
        VariableInfo("pde_u", "1", "grid", long_name="Solution u(t_end)"),
    )
}


# --- the problem: k(u) and its Kirchhoff potential -------------------------------------------


@dataclass(frozen=True)
class GPMEProblem:
    """k(u) of one family: ``conductivity`` (diffusion), ``exponent`` m (porous medium),
    ``threshold`` u* and ``k_low`` (Stefan)."""

    family: str
    conductivity: float = 1.0
    exponent: float = 3.0
    threshold: float = 0.6
    k_low: float = 0.0

    def __post_init__(self) -> None:
        check_choice("family", self.family, GPME_FAMILIES)
        if not (self.conductivity > 0 and self.exponent > 0 and self.k_low >= 0):
            raise ValueError(
                f"{self} needs conductivity > 0, exponent > 0 and k_low >= 0. Fix: change them."
            )

    def diffusivity(self, u: np.ndarray) -> np.ndarray:
        """k(u), elementwise (porous: |u|^m)."""
        u = np.asarray(u, dtype=np.float64)
        if self.family == "gpme-diffusion":
            return np.full_like(u, self.conductivity)
        if self.family == "gpme-porous":
            return np.abs(u) ** self.exponent
        return np.where(u >= self.threshold, 1.0, self.k_low)

    def potential(self, u: np.ndarray) -> np.ndarray:
        """Φ(u) = ∫₀ᵘ k(s) ds, elementwise (odd extension below 0 for the porous medium)."""
        if self.family == "gpme-diffusion":
            return self.conductivity * u
        if self.family == "gpme-porous":
            return np.sign(u) * np.abs(u) ** (self.exponent + 1) / (self.exponent + 1)
        below = self.k_low * np.minimum(u, self.threshold)
        return below + np.maximum(u - self.threshold, 0.0)

    def max_diffusivity(self, lo: float, hi: float) -> float:
        """max k(u) over u in [lo, hi] (k is monotone in |u| for every family)."""
        if self.family == "gpme-diffusion":
            return self.conductivity
        if self.family == "gpme-porous":
            return max(abs(lo), abs(hi)) ** self.exponent
        return max(self.k_low, 1.0 if hi >= self.threshold else 0.0)


# --- the solver ------------------------------------------------------------------------------


def _laplacian_flux_form(p: np.ndarray) -> np.ndarray:
    """Σ over axes of the face differences of ``p``: h² · (discrete ΔΦ) with no-flux faces.

    Each interior face value g = p_{i+1} − p_i is added to cell i and subtracted from cell i+1,
    so the sum over cells telescopes to zero (mass conservation).
    """
    out = np.zeros_like(p)
    for ax in range(p.ndim):
        g = np.diff(p, axis=ax)
        lo = [slice(None)] * p.ndim
        hi = [slice(None)] * p.ndim
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        out[tuple(lo)] += g
        out[tuple(hi)] -= g
    return out


def solve_gpme(
    u0: np.ndarray,
    problem: GPMEProblem,
    t_end: float,
    *,
    h: float | None = None,
    cfl: float | None = None,
    dirichlet_left: float | None = None,
    t_start: float = 0.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Advance cell averages ``u0`` (1-D or 2-D, cell-centred, spacing ``h`` = 1/n) from
    ``t_start`` to ``t_end``; returns (u, info) with info = {"steps", "dt", "k_max"}.

    No-flux faces everywhere, except with ``dirichlet_left`` (the value of u on the x = 0 face
    of the last axis; used by the Stefan convergence test): that face then carries the flux
    −(Φ(u_0) − Φ(u_b)) / (h/2). ``cfl`` defaults to 0.45 (no-flux; monotone for cfl ≤ 1/2) or
    0.3 (Dirichlet face; monotone for cfl ≤ d/(2d+1)).
    """
    u = np.array(u0, dtype=np.float64)
    if u.ndim not in (1, 2) or min(u.shape) < 2:
        raise ValueError(f"u0 must be a 1-D or 2-D grid with >= 2 cells a side, got {u.shape}")
    if not t_end >= t_start:
        raise ValueError(f"t_end {t_end} must be >= t_start {t_start}. Fix: swap them.")
    h = 1.0 / u.shape[-1] if h is None else float(h)
    d = u.ndim
    cfl = (0.3 if dirichlet_left is not None else 0.45) if cfl is None else float(cfl)
    lo, hi = float(u.min()), float(u.max())
    if dirichlet_left is not None:
        lo, hi = min(lo, dirichlet_left), max(hi, dirichlet_left)
    k_max = problem.max_diffusivity(lo, hi)
    span = t_end - t_start
    if k_max <= 0 or span == 0:
        return u, {"steps": 0, "dt": 0.0, "k_max": k_max}
    steps = max(1, math.ceil(span * d * k_max / (cfl * h * h)))
    dt = span / steps
    lam = dt / (h * h)
    phi: Callable[[np.ndarray], np.ndarray] = problem.potential
    phi_b = None if dirichlet_left is None else float(phi(np.float64(dirichlet_left)))
    for _ in range(steps):
        p = phi(u)
        du = _laplacian_flux_form(p)
        if phi_b is not None:
            du[..., 0] -= 2.0 * (p[..., 0] - phi_b)  # half-cell distance to the x = 0 face
        u += lam * du
    return u, {"steps": steps, "dt": dt, "k_max": k_max}


# --- parameter ranges and sampling -----------------------------------------------------------


@dataclass(frozen=True)
class GPMERanges(SourceRanges):
    """Shared by the GPME families: the initial condition u0 = min(1, Σ_b a_b exp(−|x − c_b|² /
    (2 w_b²))) — positive bumps (no sign draw), amplitudes ``bump_amplitude`` — and the final
    time ``t_end`` (a range; the default fixes it at 0.01)."""

    n_bumps: tuple[int, int] = (1, 4)
    bump_width: tuple[float, float] = (0.05, 0.15)
    bump_amplitude: tuple[float, float] = (0.6, 1.0)
    bump_centre: tuple[float, float] = (0.2, 0.8)
    t_end: tuple[float, float] = (0.01, 0.01)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("t_end", low=0, strict=True)


@dataclass(frozen=True)
class DiffusionRanges(GPMERanges):
    """gpme-diffusion: k ~ U(conductivity)."""

    conductivity: tuple[float, float] = (1.0, 5.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("conductivity", low=0, strict=True)


@dataclass(frozen=True)
class PorousRanges(GPMERanges):
    """gpme-porous: m ~ U(exponent) (default m = 3 exactly)."""

    exponent: tuple[float, float] = (3.0, 3.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("exponent", low=0, strict=True)


@dataclass(frozen=True)
class StefanRanges(GPMERanges):
    """gpme-stefan: u* ~ U(threshold), k_low ~ U(k_low) (default 0, the paper's)."""

    threshold: tuple[float, float] = (0.55, 0.7)
    k_low: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check("threshold", low=0, strict=True, high=1)
        self._check("k_low", low=0, high=1)


GPME_RANGES: dict[str, type[GPMERanges]] = {
    "gpme-diffusion": DiffusionRanges,
    "gpme-porous": PorousRanges,
    "gpme-stefan": StefanRanges,
}


def _draw(family: str, r: GPMERanges, rng: np.random.Generator) -> tuple[GPMEProblem, dict]:
    """The problem and the JSON-ready record of one sample (draw order: version 1)."""
    rec: dict[str, Any] = {"t_end": rng.uniform(*r.t_end)}
    if isinstance(r, DiffusionRanges):
        rec["conductivity"] = rng.uniform(*r.conductivity)
    elif isinstance(r, PorousRanges):
        rec["exponent"] = rng.uniform(*r.exponent)
    elif isinstance(r, StefanRanges):
        rec.update(threshold=rng.uniform(*r.threshold), k_low=rng.uniform(*r.k_low))
    nb = int(rng.integers(r.n_bumps[0], r.n_bumps[1], endpoint=True))
    rec["initial"] = {
        "x": rng.uniform(*r.bump_centre, nb).tolist(),
        "y": rng.uniform(*r.bump_centre, nb).tolist(),
        "width": rng.uniform(*r.bump_width, nb).tolist(),
        "amplitude": rng.uniform(*r.bump_amplitude, nb).tolist(),
    }
    params = {k: rec[k] for k in ("conductivity", "exponent", "threshold", "k_low") if k in rec}
    return GPMEProblem(family, **params), rec


def generate_gpme(
    family: str,
    n_samples: int,
    *,
    grid: int,
    seed: int,
    start_index: int = 0,
    ranges: GPMERanges | None = None,
) -> GridArray:
    """Samples ``start_index ..`` of a GPME family: values (T, 3, grid, grid) float32 with
    channels :data:`GPME_CHANNELS`; ``attrs["samples"]`` holds each sample's draws, steps and
    the total mass ``h² Σ u`` at t = 0 and t_end (equal to round-off, in float64)."""
    check_choice("family", family, GPME_FAMILIES)
    ranges = GPME_RANGES[family]() if ranges is None else ranges
    if type(ranges) is not GPME_RANGES[family]:
        raise ValueError(
            f"ranges for family {family!r} must be {GPME_RANGES[family].__name__}, got "
            f"{type(ranges).__name__}. Fix: pass {GPME_RANGES[family].__name__}(...) or None."
        )
    coords = grid_coords(grid, "periodic")  # cell centres (i + ½)/n, like the periodic grid
    h = 1.0 / grid
    values = np.empty((n_samples, len(GPME_CHANNELS), grid, grid), dtype=np.float32)
    samples = []
    for t in range(n_samples):
        index = start_index + t
        rng = np.random.default_rng(np.random.SeedSequence([seed, _FAMILY_KEY[family], index]))
        problem, rec = _draw(family, ranges, rng)
        ic = rec["initial"]
        bumps = gaussian_source(
            np.array(ic["x"]),
            np.array(ic["y"]),
            np.array(ic["amplitude"]),
            np.array(ic["width"]),
            coords,
        )
        # Round u0 to float32 first: the stored input is then exactly the solver's initial state.
        u0 = np.minimum(bumps, 1.0).astype(np.float32).astype(np.float64)
        u, info = solve_gpme(u0, problem, rec["t_end"], h=h)
        values[t, 0] = u0
        values[t, 1] = problem.diffusivity(u0)
        values[t, 2] = u
        rec.update(info, mass_initial=float(u0.sum() * h * h), mass_final=float(u.sum() * h * h))
        samples.append({"index": index, **rec})
    return GridArray(
        values=values,
        variables=[GPME_VARIABLES[name] for name in GPME_CHANNELS],
        lat=coords.copy(),
        lon=coords.copy(),
        time=_TIME_ORIGIN + (start_index + np.arange(n_samples)) * _TIME_STEP,
        source=f"pde:{family}",
        coords="cartesian",
        attrs={
            "family": family,
            "equation": GPME_EQUATIONS[family],
            "bc": "noflux",
            "grid": grid,
            "spacing": h,
            "cell_area": h * h,
            "discretisation": GPME_DISCRETISATION,
            "order_of_accuracy": GPME_ORDER[family],
            "generator_version": GPME_GENERATOR_VERSION,
            "seed": seed,
            "start_index": start_index,
            "time_axis": "pseudo-time: sample index i at 2000-01-01T00:00 + i hours",
            "ranges": {k: list(v) for k, v in asdict(ranges).items()},
            "samples": samples,
        },
    )
