"""2-D incompressible Navier–Stokes (Kolmogorov flow): a pseudo-spectral solver and a PDE family.

The equation, in vorticity–streamfunction form on the doubly periodic box [0, 2π)²::

    ∂ω/∂t + u·∇ω = ν Δω − α ω + A sin(k_f y),     Δψ = −ω,     u = ∂ψ/∂y,  v = −∂ψ/∂x

ν the viscosity, α a linear (Rayleigh) drag, A sin(k_f y) the Kolmogorov forcing *of the
vorticity equation*; it is the curl of the body force f = ((A/k_f) cos(k_f y), 0) on the
velocity (the usual χ sin(k_f y) forcing of the u-equation shifted by a quarter period, with
χ = A/k_f). Arrays are (…, y, x): axis −2 is y, axis −1 is x, both at x_j = 2π j / N.

Discretisation (:func:`simulate`):

* Fourier pseudo-spectral in space (``scipy.fft.rfft2``). The product u·∇ω is formed on the
  grid and dealiased by the 2/3 rule: ω is kept on the modes |k_x|, |k_y| < N/3 (:func:`retained`)
  and the product is projected back onto them. Products of retained modes alias only onto
  |k| ≥ N/3, so the semi-discrete system is an exact Galerkin truncation: the nonlinear term
  conserves the energy and the enstrophy to round-off.
* Time: the classical fourth-order Runge–Kutta scheme with an integrating factor for the
  linear terms (Lawson's IF-RK4; ν Δ − α is integrated exactly, the advection and the forcing
  by RK4): order 4 (``tests/test_ns_solver.py`` measures it). dt fixed, or chosen each step by
  the CFL condition dt (max|u|/Δx + max|v|/Δy) ≤ ``cfl``, clipped to ``dt_max`` and to land on
  every requested output time.

The initial condition is *band-limited*: a random vorticity whose Fourier coefficients are
drawn for |k| ≤ K0 only, in an order that does not depend on the grid, from a generator seeded
by (seed, trajectory). For every grid whose dealiasing limit exceeds K0 it is therefore the same
continuous function, and so is the forcing: the same physical case at several resolutions
(:func:`simulate_grids`; :func:`downsample_spectral` compares them).

The family ``ns-kolmogorov`` of the generated PDE source (``pde.py``, :func:`generate_ns`):
trajectories of ``snapshots`` frames each, ``interval`` apart after a ``spinup``, channels
``ns_w`` (vorticity), ``ns_u``, ``ns_v``. Sample i is frame ``i % snapshots`` of trajectory
``i // snapshots``, stored at the pseudo-time 2000-01-01 + (j (snapshots + 1) + s) hours: an
hour is left empty between trajectories, so a forecast window (consecutive steps only, see
``data_pipeline.loader``) never spans two of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import scipy.fft as sfft

from ..variables import VariableInfo
from .base import GridArray

NS_FAMILIES: tuple[str, ...] = ("ns-kolmogorov",)
NS_EQUATION = (
    "dw/dt + u.grad w = nu lap w - alpha w + A sin(k_f y), lap psi = -w, u = psi_y, v = -psi_x; "
    "doubly periodic [0, 2pi)^2"
)
NS_DISCRETISATION = (
    "Fourier pseudo-spectral (rfft2), 2/3-rule dealiasing (|k_x|, |k_y| < N/3), integrating-"
    "factor RK4 (Lawson) in time: order 4; CFL-chosen or fixed dt"
)
NS_ORDER_IN_TIME = 4
NS_CHANNELS: tuple[str, ...] = ("ns_w", "ns_u", "ns_v")
NS_GENERATOR_VERSION = 1
# Continues the family keys of pde.py (1..3) and pde_gpme.py (4..6), for the per-trajectory seeds.
_FAMILY_KEY = {"ns-kolmogorov": 7}
_TIME_ORIGIN = np.datetime64("2000-01-01T00:00:00", "ns")
_TIME_STEP = np.timedelta64(1, "h").astype("timedelta64[ns]")

NS_VARIABLES: dict[str, VariableInfo] = {
    info.name: info
    for info in (
        VariableInfo("ns_w", "1", "grid", long_name="Vorticity w = dv/dx - du/dy"),
        VariableInfo("ns_u", "1", "grid", long_name="Velocity component u (along x)"),
        VariableInfo("ns_v", "1", "grid", long_name="Velocity component v (along y)"),
    )
}


# --- the physical case -------------------------------------------------------------------------


@dataclass(frozen=True)
class NSPhysics:
    """The physical coefficients shared by a case and the family's options.

    ``ic_wavenumber`` K0: the initial vorticity has Fourier modes 1 ≤ |k| ≤ K0 only, with equal
    expected energy per mode, scaled so that its kinetic energy ½⟨|u|²⟩ is ``ic_energy``
    exactly. ``forcing_amplitude`` A and ``forcing_wavenumber`` k_f: the vorticity forcing
    A sin(k_f y).
    """

    nu: float = 1e-3
    drag: float = 0.1
    forcing_wavenumber: int = 4
    forcing_amplitude: float = 4.0
    ic_wavenumber: int = 4
    ic_energy: float = 0.5


@dataclass(frozen=True)
class NSCase(NSPhysics):
    """One physical case, independent of the grid: the coefficients, forcing and initial
    condition of :class:`NSPhysics`; ``seed`` and ``trajectory`` seed the initial condition."""

    seed: int = 0
    trajectory: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("nu", self.nu >= 0, "nu >= 0"),
            ("drag", self.drag >= 0, "drag >= 0"),
            ("forcing_wavenumber", self.forcing_wavenumber >= 1, "an integer >= 1"),
            ("forcing_amplitude", math.isfinite(self.forcing_amplitude), "a finite number"),
            ("ic_wavenumber", self.ic_wavenumber >= 1, "an integer >= 1"),
            ("ic_energy", self.ic_energy >= 0, "ic_energy >= 0"),
            ("seed", self.seed >= 0 and self.trajectory >= 0, "non-negative seed, trajectory"),
        )
        for name, ok, need in checks:
            if not ok:
                raise ValueError(
                    f"Navier–Stokes option {name}={getattr(self, name)!r}: need {need}. Fix: "
                    "change it (in a pde source: under options)."
                )
        for name in ("forcing_wavenumber", "ic_wavenumber"):
            if int(getattr(self, name)) != getattr(self, name):
                raise ValueError(
                    f"Navier–Stokes option {name}={getattr(self, name)!r} must be an integer "
                    "(a wavenumber on the 2π-periodic box). Fix: round it."
                )

    def max_wavenumber(self) -> int:
        """The largest |k_x| or |k_y| the case puts into ω (initial condition, forcing)."""
        return int(max(self.ic_wavenumber, self.forcing_wavenumber))


def min_grid(case: NSCase) -> int:
    """The smallest grid whose retained modes (|k_i| < N/3) hold the whole case."""
    return 3 * case.max_wavenumber() + 1


# --- spectral helpers --------------------------------------------------------------------------


def wavenumbers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(k_y, k_x) of the rfft2 layout on an n × n grid: shapes (n, 1) and (1, n//2 + 1)."""
    ky = np.fft.fftfreq(n, 1.0 / n)[:, None]
    kx = np.arange(n // 2 + 1, dtype=np.float64)[None, :]
    return ky, kx


def retained(n: int) -> np.ndarray:
    """The 2/3-rule mask of the rfft2 layout: True where |k_x| < n/3 and |k_y| < n/3."""
    ky, kx = wavenumbers(n)
    return (np.abs(ky) < n / 3.0) & (kx < n / 3.0)


def _column_weights(n: int) -> np.ndarray:
    """Multiplicity of each rfft2 column in the full spectrum (kx = 0 and n/2 once, others
    twice), so that Σ over the full plane of |c_k|² is Σ w |c|² over the half plane."""
    w = np.full(n // 2 + 1, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return w[None, :]


def _check_grid(n: int, case: NSCase | None = None) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 4:
        raise ValueError(f"grid must be an integer >= 4, got {n!r}. Fix: e.g. grid: 64.")
    if case is not None and 3 * case.max_wavenumber() >= n:
        raise ValueError(
            f"grid {n} keeps modes |k| < {n / 3:.4g} after 2/3 dealiasing, but the case has "
            f"modes up to {case.max_wavenumber()} (ic_wavenumber {case.ic_wavenumber}, "
            f"forcing_wavenumber {case.forcing_wavenumber}). Fix: use grid >= {min_grid(case)}, "
            "or lower those wavenumbers."
        )
    return int(n)


def to_spectral(field: np.ndarray, workers: int = 1) -> np.ndarray:
    """rfft2 over the last two axes, normalised: the coefficients c_k of Σ c_k e^{i k·x}."""
    f = np.asarray(field, dtype=np.float64)
    return sfft.rfft2(f, norm="forward", workers=workers)


def to_physical(hat: np.ndarray, n: int, workers: int = 1) -> np.ndarray:
    """Inverse of :func:`to_spectral` on an n × n grid."""
    return sfft.irfft2(hat, s=(n, n), norm="forward", workers=workers)


def streamfunction_hat(w_hat: np.ndarray, n: int) -> np.ndarray:
    """ψ̂ = ω̂ / |k|² (zero mean), from Δψ = −ω."""
    ky, kx = wavenumbers(n)
    k2 = ky**2 + kx**2
    k2[0, 0] = 1.0
    psi = w_hat / k2
    psi[..., 0, 0] = 0.0
    return psi


def velocity(w: np.ndarray, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) = (∂ψ/∂y, −∂ψ/∂x) of a vorticity field (…, n, n), spectrally."""
    n = w.shape[-1]
    ky, kx = wavenumbers(n)
    psi = streamfunction_hat(to_spectral(w, workers), n)
    return to_physical(1j * ky * psi, n, workers), to_physical(-1j * kx * psi, n, workers)


def downsample_spectral(field: np.ndarray, n: int) -> np.ndarray:
    """A periodic field (…, N, N) on the n × n grid (n ≤ N) keeping the modes |k_i| < n/2.

    The coarse field's values are the truncated Fourier series evaluated at the coarse nodes,
    which are every (N/n)-th fine node when n divides N. Modes at the coarse Nyquist are
    dropped (their sine part is invisible on the coarse grid).
    """
    big = field.shape[-1]
    if field.shape[-2] != big or not 2 <= n <= big:
        raise ValueError(f"downsample_spectral: need a square (…, N, N) field and 2 <= n <= N, "
                         f"got shape {field.shape} and n={n}")  # fmt: skip
    hat = to_spectral(field)
    ky, kx = wavenumbers(big)
    out = np.zeros((*field.shape[:-2], n, n // 2 + 1), dtype=complex)
    rows = np.flatnonzero(np.abs(ky[:, 0]) < n / 2.0)
    cols = int(np.sum(kx[0] < n / 2.0))
    out[..., ky[rows, 0].astype(int) % n, :cols] = hat[..., rows, :cols]
    return to_physical(out, n)


# --- initial condition and forcing -------------------------------------------------------------


def _ic_modes(k0: int) -> list[tuple[int, int]]:
    """The half plane of modes 1 ≤ |k| ≤ k0 as (k_x, k_y), in a fixed, grid-independent order."""
    modes = []
    for kx in range(0, k0 + 1):
        for ky in range(-k0, k0 + 1):
            if (kx > 0 or ky > 0) and kx * kx + ky * ky <= k0 * k0:
                modes.append((kx, ky))
    return modes


def initial_vorticity_hat(case: NSCase, n: int) -> np.ndarray:
    """The band-limited initial ω̂ on an n × n grid (rfft2 layout, normalised coefficients).

    ω(x) = Σ_k a_k cos(k·x) + b_k sin(k·x) over the half plane of 1 ≤ |k| ≤ K0, with a_k, b_k
    standard normal draws scaled by |k| (equal expected energy per mode), then by one factor
    so that ½⟨|u|²⟩ = ic_energy. The draws never see n.
    """
    n = _check_grid(n, case)
    rng = np.random.default_rng(
        np.random.SeedSequence([case.seed, _FAMILY_KEY["ns-kolmogorov"], case.trajectory])
    )
    modes = _ic_modes(int(case.ic_wavenumber))
    ab = rng.standard_normal((len(modes), 2))
    kk = np.sqrt(np.array([kx * kx + ky * ky for kx, ky in modes], dtype=np.float64))
    ab *= kk[:, None]
    energy = 0.25 * float(np.sum((ab**2).sum(1) / kk**2))  # ½ Σ ½(a² + b²) / |k|²
    if energy > 0:
        ab *= math.sqrt(case.ic_energy / energy)
    hat = np.zeros((n, n // 2 + 1), dtype=complex)
    for (kx, ky), (a, b) in zip(modes, ab, strict=True):
        c = 0.5 * (a - 1j * b)  # a cos + b sin = c e^{ik·x} + conj(c) e^{-ik·x}
        hat[ky % n, kx] += c
        if kx == 0:
            hat[-ky % n, 0] += np.conj(c)
    return hat


def forcing_hat(case: NSCase, n: int) -> np.ndarray:
    """Spectral A sin(k_f y) on an n × n grid: ±A/(2i) at (k_y = ±k_f, k_x = 0)."""
    n = _check_grid(n, case)
    hat = np.zeros((n, n // 2 + 1), dtype=complex)
    kf, amp = int(case.forcing_wavenumber), float(case.forcing_amplitude)
    hat[kf % n, 0] = amp / 2j
    hat[-kf % n, 0] = -amp / 2j
    return hat


# --- diagnostics (domain means, from the spectrum by Parseval) ----------------------------------


def _mean_square(hat: np.ndarray, n: int, factor: np.ndarray | float = 1.0) -> np.ndarray:
    return np.sum(_column_weights(n) * factor * np.abs(hat) ** 2, axis=(-2, -1))


def _k2(n: int) -> np.ndarray:
    ky, kx = wavenumbers(n)
    return ky**2 + kx**2


def energy(w: np.ndarray) -> np.ndarray:
    """Kinetic energy E = ½⟨u² + v²⟩ (domain mean) of vorticity fields (…, n, n)."""
    n = w.shape[-1]
    return 0.5 * _mean_square(streamfunction_hat(to_spectral(w), n), n, _k2(n))


def enstrophy(w: np.ndarray) -> np.ndarray:
    """Enstrophy Z = ½⟨ω²⟩."""
    return 0.5 * _mean_square(to_spectral(w), w.shape[-1])


def palinstrophy(w: np.ndarray) -> np.ndarray:
    """Palinstrophy P = ½⟨|∇ω|²⟩ (dZ/dt = ⟨ωF⟩ − 2νP − 2αZ)."""
    n = w.shape[-1]
    return 0.5 * _mean_square(to_spectral(w), n, _k2(n))


def injection(w: np.ndarray, case: NSCase) -> np.ndarray:
    """Energy injection rate ⟨u·f⟩ = ⟨ψ A sin(k_f y)⟩ of the forcing."""
    n = w.shape[-1]
    psi, f = streamfunction_hat(to_spectral(w), n), forcing_hat(case, n)
    return np.sum(_column_weights(n) * np.real(np.conj(psi) * f), axis=(-2, -1))


def dissipation(w: np.ndarray, case: NSCase) -> np.ndarray:
    """Energy dissipation rate 2νZ (viscous) + 2αE (drag): dE/dt = injection − dissipation."""
    return 2.0 * case.nu * enstrophy(w) + 2.0 * case.drag * energy(w)


# --- the solver --------------------------------------------------------------------------------


@dataclass
class NSResult:
    """Snapshots of one simulation: ``w``, ``u``, ``v`` (T, n, n) float64 at ``times`` (T,)."""

    times: np.ndarray
    w: np.ndarray
    u: np.ndarray
    v: np.ndarray
    steps: int
    grid: int


class _Rhs:
    """The explicit part N(ω̂) = −P(u·∇ω) + F̂ on one grid, and the last max speed seen."""

    def __init__(self, case: NSCase, n: int, workers: int) -> None:
        self.n, self.workers = n, workers
        self.ky, self.kx = wavenumbers(n)
        k2 = self.ky**2 + self.kx**2
        k2[0, 0] = 1.0
        self.inv_k2 = 1.0 / k2
        self.inv_k2[0, 0] = 0.0
        self.mask = retained(n)
        self.f_hat = forcing_hat(case, n)
        self.speed = 0.0  # max of max|u|/Δx + max|v|/Δy over the evaluations since reset

    def __call__(self, w_hat: np.ndarray) -> np.ndarray:
        n, wk = self.n, self.workers
        psi = w_hat * self.inv_k2
        u = sfft.irfft2(1j * self.ky * psi, s=(n, n), norm="forward", workers=wk)
        v = sfft.irfft2(-1j * self.kx * psi, s=(n, n), norm="forward", workers=wk)
        wx = sfft.irfft2(1j * self.kx * w_hat, s=(n, n), norm="forward", workers=wk)
        wy = sfft.irfft2(1j * self.ky * w_hat, s=(n, n), norm="forward", workers=wk)
        adv = sfft.rfft2(u * wx + v * wy, norm="forward", workers=wk)
        speed = (np.abs(u).max() + np.abs(v).max()) * n / (2.0 * math.pi)
        if not speed <= self.speed:  # also takes a nan (max() would drop it)
            self.speed = float(speed)
        return np.where(self.mask, -adv, 0.0) + self.f_hat


def simulate(
    case: NSCase,
    grid: int,
    times: Sequence[float],
    *,
    dt: float | None = None,
    cfl: float = 0.5,
    dt_max: float = 0.1,
    w0: np.ndarray | None = None,
    workers: int = 1,
) -> NSResult:
    """Integrate ``case`` on a ``grid`` × ``grid`` mesh from t = 0 and return the snapshots at
    ``times`` (ascending, ≥ 0; t = 0 is the initial condition).

    ``dt`` fixed (each interval between outputs is split into equal steps ≤ dt), or None: the
    CFL step dt = cfl / (max|u|/Δx + max|v|/Δy), at most ``dt_max``. ``w0`` replaces the
    band-limited initial condition by a given vorticity (n, n) (projected on the retained
    modes). Order 4 in time (IF-RK4), spectral in space.
    """
    n = _check_grid(grid, case)
    t_out = np.asarray(times, dtype=np.float64)
    if t_out.ndim != 1 or (t_out.size and (t_out[0] < 0 or np.any(np.diff(t_out) < 0))):
        raise ValueError(f"times must be ascending and >= 0, got {t_out!r}. Fix: sort them.")
    if (dt is not None and not dt > 0) or not cfl > 0 or not dt_max > 0:
        raise ValueError(f"need dt > 0 (or None), cfl > 0, dt_max > 0; got {dt}, {cfl}, {dt_max}")
    rhs = _Rhs(case, n, workers)
    lin = -case.nu * _k2(n) - case.drag  # the exactly integrated linear part ν Δ − α
    if w0 is None:
        w_hat = initial_vorticity_hat(case, n)
    else:
        if np.shape(w0) != (n, n):
            raise ValueError(f"w0 must have shape ({n}, {n}), got {np.shape(w0)}")
        w_hat = np.where(rhs.mask, to_spectral(w0, workers), 0.0)
    out = np.empty((t_out.size, n, n))
    t, steps, cached = 0.0, 0, (None, None, None)
    for i, target in enumerate(t_out):
        while t < target:
            left = target - t
            if dt is not None:
                h = left / math.ceil(left / dt * (1 - 1e-12))
            else:
                if steps == 0:
                    rhs(w_hat)  # the initial speed; later, the fastest stage of the last step
                h = min(dt_max, cfl / rhs.speed if rhs.speed > 0 else dt_max)
                h = left / math.ceil(left / h * (1 - 1e-12))
                rhs.speed = 0.0
            if cached[0] != h:
                half = np.exp(lin * (h / 2))
                cached = (h, half, half * half)
            _, e1, e2 = cached
            k1 = h * rhs(w_hat)
            k2 = h * rhs(e1 * (w_hat + k1 / 2))
            k3 = h * rhs(e1 * w_hat + k2 / 2)
            k4 = h * rhs(e2 * w_hat + e1 * k3)
            w_hat = e2 * w_hat + (e2 * k1 + 2 * e1 * (k2 + k3) + k4) / 6
            t = t + h if target - (t + h) > 1e-12 * max(1.0, target) else target
            steps += 1
            if not math.isfinite(rhs.speed):  # max|u| of a stage: inf or nan after a blow-up
                how = f"cfl={cfl:g}" if dt is None else f"dt={dt:g}"
                raise FloatingPointError(
                    f"the {n}² Navier–Stokes run blew up near t = {t:g} ({how}). Fix: lower "
                    "dt or cfl."
                )
        out[i] = to_physical(w_hat, n, workers)
    u, v = velocity(out, workers) if t_out.size else (out, out)
    return NSResult(times=t_out, w=out, u=u, v=v, steps=steps, grid=n)


def simulate_grids(
    case: NSCase, grids: Sequence[int], times: Sequence[float], **kwargs: Any
) -> dict[int, NSResult]:
    """The same physical case (same band-limited initial condition and forcing) on each grid;
    ``kwargs`` go to :func:`simulate` (a fixed ``dt`` isolates the spatial error)."""
    for g in grids:
        _check_grid(g, case)
    return {int(g): simulate(case, int(g), times, **kwargs) for g in grids}


# --- the PDE family ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NSParams(NSPhysics):
    """Options of the ``ns-kolmogorov`` family (scalars, the same for every trajectory; each
    trajectory draws its own initial condition). Defaults: the Kolmogorov flow of JAX-CFD and
    SuperBench — ν = 1e-3 (Re = 1000), drag 0.1, k_f = 4, u-forcing amplitude χ = A/k_f = 1."""

    spinup: float = 20.0  # time before the first snapshot
    interval: float = 0.5  # time between snapshots
    snapshots: int = 32  # per trajectory
    dt: float | None = None  # None: CFL-chosen
    cfl: float = 0.5

    def __post_init__(self) -> None:
        self.case(0, 0)  # validates the physical coefficients
        if not (self.spinup >= 0 and self.interval > 0 and self.cfl > 0):
            raise ValueError(
                f"ns-kolmogorov needs spinup >= 0, interval > 0 and cfl > 0, got spinup="
                f"{self.spinup}, interval={self.interval}, cfl={self.cfl}. Fix: change them."
            )
        if (
            isinstance(self.snapshots, bool)
            or int(self.snapshots) != self.snapshots
            or (self.snapshots < 1)
        ):
            raise ValueError(
                f"snapshots must be an integer >= 1, got {self.snapshots!r}. Fix: e.g. 32."
            )
        if self.dt is not None and not self.dt > 0:
            raise ValueError(f"dt must be > 0 or left out (CFL-chosen), got {self.dt!r}.")

    def case(self, seed: int, trajectory: int) -> NSCase:
        """The physical case of one trajectory."""
        kw = {f.name: getattr(self, f.name) for f in fields(NSPhysics)}
        return NSCase(**kw, seed=seed, trajectory=trajectory)


def sample_time(index: np.ndarray | int, snapshots: int) -> np.ndarray:
    """Pseudo-time of sample ``index``: trajectory j, frame s at 2000-01-01 + (j(S+1) + s) h."""
    j, s = np.divmod(np.asarray(index, dtype=np.int64), snapshots)
    return _TIME_ORIGIN + (j * (snapshots + 1) + s) * _TIME_STEP


def generate_ns(
    family: str,
    n_samples: int,
    *,
    grid: int,
    seed: int,
    start_index: int = 0,
    params: NSParams | None = None,
    workers: int = 1,
) -> GridArray:
    """Samples ``start_index ..`` of ``ns-kolmogorov``: values (T, 3, grid, grid) float32 with
    channels :data:`NS_CHANNELS`; y/x node coordinates 2π j / grid (``coords="cartesian"``).

    Sample i is frame ``i % snapshots`` (physical time spinup + s·interval) of trajectory
    ``i // snapshots``; a slice that starts inside a trajectory re-runs its spin-up, so any
    split of ``[0, N)`` into slices gives the same samples. ``attrs["samples"]`` holds each
    sample's trajectory, frame, physical time, energy, enstrophy, injection and dissipation.
    """
    if family not in NS_FAMILIES:
        raise ValueError(f"unknown Navier–Stokes family {family!r}; known: {list(NS_FAMILIES)}")
    params = NSParams() if params is None else params
    if not isinstance(params, NSParams):
        raise ValueError(f"{family} takes NSParams, got {type(params).__name__}.")
    snaps = int(params.snapshots)
    _check_grid(grid, params.case(seed, 0))
    values = np.empty((n_samples, len(NS_CHANNELS), grid, grid), dtype=np.float32)
    index = start_index + np.arange(n_samples)
    samples: list[dict[str, Any]] = []
    steps = 0
    for j in np.unique(index // snaps):
        rows = np.flatnonzero(index // snaps == j)
        frames = index[rows] % snaps
        case = params.case(seed, int(j))
        # Always through frames 0..last: the steps (CFL-chosen) land on every frame's time, so
        # a frame is the same whichever slice asks for it.
        t_all = params.spinup + np.arange(frames.max() + 1) * params.interval
        res = simulate(case, grid, t_all, dt=params.dt, cfl=params.cfl, workers=workers)
        steps += res.steps
        w, u, v = res.w[frames], res.u[frames], res.v[frames]
        values[rows, 0], values[rows, 1], values[rows, 2] = w, u, v
        t_phys = t_all[frames]
        stats = (energy(w), enstrophy(w), injection(w, case), dissipation(w, case))
        for k, r in enumerate(rows):
            e, z, inj, dis = (float(a[k]) for a in stats)
            samples.append({"index": int(index[r]), "trajectory": int(j), "frame": int(frames[k]),
                            "t": float(t_phys[k]), "energy": e, "enstrophy": z,
                            "injection": inj, "dissipation": dis})  # fmt: skip
    coords = 2.0 * np.pi * np.arange(grid) / grid
    return GridArray(
        values=values,
        variables=[NS_VARIABLES[name] for name in NS_CHANNELS],
        lat=coords.copy(),
        lon=coords.copy(),
        time=sample_time(index, snaps),
        source=f"pde:{family}",
        coords="cartesian",
        attrs={
            "family": family,
            "equation": NS_EQUATION,
            "bc": "periodic",
            "grid": grid,
            "spacing": 2.0 * np.pi / grid,
            "discretisation": NS_DISCRETISATION,
            "order_of_accuracy": NS_ORDER_IN_TIME,
            "generator_version": NS_GENERATOR_VERSION,
            "seed": seed,
            "start_index": start_index,
            "steps": steps,
            "time_axis": (
                "pseudo-time: trajectory j, frame s at 2000-01-01T00:00 + (j (snapshots + 1) + s)"
                " hours; physical time spinup + s interval"
            ),
            "params": asdict(params),
            "samples": samples,
        },
    )
