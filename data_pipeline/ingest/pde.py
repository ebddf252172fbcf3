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

Discretisation and exact solvers: ``pde_solvers.py`` (second-order finite differences).

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
from .pde_solvers import (
    BOUNDARY_CONDITIONS,
    Coefficients,
    apply_operator,
    check_choice,
    gaussian_source,
    grid_coords,
    solve,
    spacing,
)

FAMILIES: tuple[str, ...] = ("poisson", "advection_diffusion", "helmholtz")
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
        h = spacing(grid, bc)
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
    check_choice("family", family, FAMILIES)
    check_choice("bc", bc, BOUNDARY_CONDITIONS)
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
            h = spacing(grid, bc)
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
            "spacing": spacing(grid, bc),
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
    check_choice("family", family, FAMILIES)
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
