"""The 2-D Navier–Stokes (Kolmogorov flow) solver, its PDE family, and conservative coarsening.

References are independent of the solver's code path: closed-form solutions (Taylor–Green,
the laminar Kolmogorov transient), the budget identities of the continuous equations, the
solver itself at a finer step or grid (convergence), and hand-written block sums.
Durations (OMP_NUM_THREADS=1, 2-core CI box): each test < 2 s, the prepare test ~5 s.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from scigpt.config_loader import load_config
from scigpt.data_pipeline.coarsen import area_weights, coarsen, coarsen_lat
from scigpt.data_pipeline.ingest import pde_ns as ns
from scigpt.data_pipeline.ingest.pde import read_pde
from scigpt.data_pipeline.loader import ForecastDataset
from scigpt.data_pipeline.store import GridStore
from scigpt.prepare import prepare_from_config

INVISCID = ns.NSCase(nu=0.0, drag=0.0, forcing_amplitude=0.0, ic_wavenumber=4, seed=1)
FORCED = ns.NSCase(
    nu=0.02, drag=0.1, forcing_wavenumber=2, forcing_amplitude=2.0, ic_wavenumber=4, seed=5
)


def _mesh(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = 2 * np.pi * np.arange(n) / n
    return np.meshgrid(x, x, indexing="ij")  # (Y, X): axis -2 is y


def _order(errors: list[float]) -> np.ndarray:
    return np.log2(np.array(errors[:-1]) / np.array(errors[1:]))


# --- conservation and order in time ----------------------------------------------------------


def test_inviscid_invariants_conserved_to_time_step_error_at_order_four() -> None:
    """ν = 0, no forcing, no drag: the dealiased nonlinear term conserves E and Z exactly, so
    their drift over t ∈ [0, 2] is the time-step error alone. It must be small (< 2e-5
    relative at dt = 0.04) and fall at least at the scheme's order 4 when dt halves (observed
    order ≈ 5: the invariants' leading error term averages out). The solution itself converges
    at order 4 (observed 3.98, 4.01; band [3.7, 4.3]) against dt = 0.0025."""
    dts = [0.04, 0.02, 0.01]
    drift_e, drift_z, err = [], [], []
    ref = ns.simulate(INVISCID, 32, [2.0], dt=0.0025).w[0]
    for dt in dts:
        r = ns.simulate(INVISCID, 32, [0.0, 2.0], dt=dt)
        e, z = ns.energy(r.w), ns.enstrophy(r.w)
        drift_e.append(abs(e[1] - e[0]) / e[0])
        drift_z.append(abs(z[1] - z[0]) / z[0])
        err.append(float(np.abs(r.w[1] - ref).max()))
    assert max(drift_e[0], drift_z[0]) < 2e-5
    assert np.all(_order(drift_e) >= 3.7) and np.all(_order(drift_z) >= 3.7)
    assert np.all((_order(err) > 3.7) & (_order(err) < 4.3)), _order(err)
    # the initial energy is the case's, exactly: the IC is scaled by its continuous norm
    assert ns.energy(r.w[0]) == pytest.approx(INVISCID.ic_energy, rel=1e-13)


def test_energy_budget_with_viscosity_drag_and_forcing() -> None:
    """dE/dt (fourth-order central differences of E along the trajectory, step 0.01) equals
    injection ⟨ψ F⟩ − dissipation (2νZ + 2αE) at every interior time; tolerance 1e-7 absolute
    against terms of size ~0.3 (observed 9e-10: the difference formula's h⁴ and the scheme's
    dt⁴ errors). The same for the enstrophy: dZ/dt = ⟨ωF⟩ − 2νP − 2αZ."""
    h = 0.01
    r = ns.simulate(FORCED, 32, np.arange(101) * h, dt=h)
    budget = ns.injection(r.w, FORCED) - ns.dissipation(r.w, FORCED)
    assert np.abs(budget).max() > 0.1  # the terms are not trivially zero

    def ddt(q: np.ndarray) -> np.ndarray:
        return (-q[4:] + 8 * q[3:-1] - 8 * q[1:-3] + q[:-4]) / (12 * h)

    assert np.abs(ddt(ns.energy(r.w)) - budget[2:-2]).max() < 1e-7
    y, _ = _mesh(32)
    forcing = FORCED.forcing_amplitude * np.sin(FORCED.forcing_wavenumber * y)
    z_in = np.mean(r.w * forcing, axis=(-2, -1))  # ⟨ωF⟩ on the grid (exact for band-limited)
    z_budget = z_in - 2 * FORCED.nu * ns.palinstrophy(r.w) - 2 * FORCED.drag * ns.enstrophy(r.w)
    assert np.abs(ddt(ns.enstrophy(r.w)) - z_budget[2:-2]).max() < 1e-6


# --- exact solutions ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [32, 64])
def test_taylor_green_vortex_decays_exactly(n: int) -> None:
    """ω = 2k cos(kx) cos(ky) is a Laplacian eigenfunction, so u·∇ω = 0 and ω decays as
    exp(−(2νk² + α) t); the integrating factor makes that exact: tolerance 1e-11 (observed
    1e-14), at two grids."""
    k, case = 3, ns.NSCase(nu=0.01, drag=0.05, forcing_amplitude=0.0, ic_energy=0.0)
    y, x = _mesh(n)
    w0 = 2 * k * np.cos(k * x) * np.cos(k * y)
    r = ns.simulate(case, n, [0.0, 1.0, 3.0], w0=w0, dt=0.05)
    for t, w in zip(r.times, r.w, strict=True):
        assert np.abs(w - w0 * math.exp(-(2 * case.nu * k * k + case.drag) * t)).max() < 1e-11
    # velocity from ψ = ω / (2k²): u = ψ_y, v = −ψ_x
    decay = math.exp(-(2 * case.nu * k * k + case.drag) * 3.0)
    u_ref = -np.cos(k * x) * np.sin(k * y) * decay
    v_ref = np.sin(k * x) * np.cos(k * y) * decay
    assert np.abs(r.u[-1] - u_ref).max() < 1e-11 and np.abs(r.v[-1] - v_ref).max() < 1e-11


@pytest.mark.parametrize("n", [32, 64])
def test_kolmogorov_laminar_transient_from_rest(n: int) -> None:
    """From ω = 0 the flow stays a shear flow ω(y, t) = A sin(k_f y) (1 − e^{−λt}) / λ,
    λ = νk_f² + α (its nonlinear term vanishes): the laminar Kolmogorov flow and its approach to
    the steady state. CFL-chosen dt (≤ dt_max 0.1); tolerance 1e-9 (observed 3e-10)."""
    case = ns.NSCase(nu=0.05, drag=0.1, forcing_wavenumber=2, forcing_amplitude=1.5, ic_energy=0.0)
    lam = case.nu * case.forcing_wavenumber**2 + case.drag
    y, _ = _mesh(n)
    r = ns.simulate(case, n, [0.5, 2.0, 10.0])
    for t, w in zip(r.times, r.w, strict=True):
        exact = case.forcing_amplitude * np.sin(2 * y) / lam * (1 - math.exp(-lam * t))
        assert np.abs(w - exact).max() < 1e-9
    assert np.abs(r.v).max() < 1e-12


# --- resolution independence -------------------------------------------------------------------


def test_same_case_at_three_grids_agrees_after_spectral_truncation() -> None:
    """One band-limited case at grids 32, 64 and 128 (dt 0.01 fixed, so only space differs).
    At t = 0 the fields are the same continuous function (every (128/n)-th node equal to 1e-13).
    At t = 0.5 (ν = 0.05) the coarse grids agree with the 128² run truncated to them: relative
    max error 32: < 2e-2 (observed 4.8e-3), 64: < 1e-4 (observed 1.4e-5), and the error falls
    by > 64× per doubling (faster than any order ≤ 6: spectral convergence; observed 340×)."""
    case = ns.NSCase(
        nu=0.05, drag=0.1, forcing_wavenumber=2, forcing_amplitude=2.0, ic_wavenumber=4, seed=5
    )
    res = ns.simulate_grids(case, [32, 64, 128], [0.0, 0.5], dt=0.01)
    fine = res[128].w
    errs = []
    for n in (32, 64):
        s = 128 // n
        assert np.abs(res[n].w[0] - fine[0, ::s, ::s]).max() < 1e-13
        ref = ns.downsample_spectral(fine[1], n)
        errs.append(float(np.abs(res[n].w[1] - ref).max() / np.abs(ref).max()))
    assert errs[0] < 2e-2 and errs[1] < 1e-4 and errs[0] / errs[1] > 64, errs


def test_downsample_spectral_and_grid_errors() -> None:
    """A band-limited field sampled on 48² and truncated to 16² equals it sampled on 16²
    (1e-13); a mode at or above the coarse Nyquist is dropped. Too coarse a grid for the
    case is an error naming the smallest grid."""
    y, x = _mesh(48)
    y16, x16 = _mesh(16)
    low = np.sin(2 * x - 3 * y) + 0.5 * np.cos(7 * y)
    got = ns.downsample_spectral(low + np.cos(9 * x), 16)
    assert np.abs(got - (np.sin(2 * x16 - 3 * y16) + 0.5 * np.cos(7 * y16))).max() < 1e-13
    with pytest.raises(ValueError, match=r"use grid >= 13"):
        ns.simulate(ns.NSCase(ic_wavenumber=4), 12, [1.0])


# --- the PDE family ----------------------------------------------------------------------------


def test_family_slices_are_exact_and_trajectories_are_separated_in_time() -> None:
    """Samples [4, 7) generated alone equal the same samples of [0, 7) bit for bit (the CFL
    steps land on every frame of the trajectory whichever slice asks); an hour is left empty
    between trajectories; u, v are the velocity of the stored ω."""
    opts = dict(family="ns-kolmogorov", grid=32, seed=1, snapshots=3, spinup=0.5, interval=0.25)
    [whole] = read_pde([], n_samples=7, nu=0.01, **opts)
    [part] = read_pde([], n_samples=3, start_index=4, nu=0.01, **opts)
    assert whole.names == ["ns_w", "ns_u", "ns_v"] and whole.values.shape == (7, 3, 32, 32)
    assert np.array_equal(part.values, whole.values[4:]) and np.array_equal(
        part.time, whole.time[4:]
    )
    hours = (whole.time - whole.time[0]) // np.timedelta64(1, "h")
    assert hours.tolist() == [0, 1, 2, 4, 5, 6, 8]
    w = whole.values[:, 0].astype(np.float64)
    u, v = ns.velocity(w)
    assert (
        np.abs(u - whole.values[:, 1]).max() < 1e-5 and np.abs(v - whole.values[:, 2]).max() < 1e-5
    )
    assert [s["trajectory"] for s in whole.attrs["samples"]] == [0, 0, 0, 1, 1, 1, 2]
    with pytest.raises(ValueError, match=r"do not apply to family 'poisson'"):
        read_pde([], family="poisson", n_samples=1, nu=0.1)
    with pytest.raises(ValueError, match=r"doubly periodic"):
        read_pde([], family="ns-kolmogorov", n_samples=1, grid=32, bc="dirichlet")


def test_prepare_writes_a_store_whose_windows_stay_inside_trajectories(tmp_path: Path) -> None:
    """``scigpt prepare``'s driver on an ns-kolmogorov source (7 samples: trajectories of 3, 3
    and 1 frames, units of 4 samples so one unit starts mid-trajectory): the store opens with
    ns_w, ns_u, ns_v, the values equal the reader's, and a forecast window of history 2 + lead 1
    exists only inside each full trajectory (2 windows; 5 if windows crossed trajectories)."""
    opts = {"family": "ns-kolmogorov", "n_samples": 7, "grid": 32, "seed": 1, "snapshots": 3,
            "spinup": 0.5, "interval": 0.25, "nu": 0.01}  # fmt: skip
    cfg = {
        "name": "ns",
        "data": {
            "sources": [{"name": "ns", "format": "pde", "options": opts, "samples_per_unit": 4}],
            "splits": {
                "train": {"start": "2000-01-01T00:00", "end": "2000-01-01T04:00"},
                "test": {"start": "2000-01-01T05:00", "end": "2000-01-01T08:00"},
            },
        },
    }
    path = tmp_path / "ns.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    manifest = prepare_from_config(load_config(path), tmp_path / "store", progress=False)
    assert manifest["rejects"] == [] and manifest["sources"]["ns"]["n_samples"] == 7
    store = GridStore(tmp_path / "store", source="ns")
    assert store.names == ["ns_w", "ns_u", "ns_v"]
    bounds = (np.datetime64("2000-01-01T00:00"), np.datetime64("2000-01-01T08:00"))
    ds = ForecastDataset(store, time_range=bounds, history=2, lead=1, normalise=False)
    assert len(ds) == 2
    [ref] = read_pde([], **{k: v for k, v in opts.items()})
    for i, first in enumerate((0, 3)):
        frames, target, _ = ds.raw_item(i)
        np.testing.assert_array_equal(frames, ref.values[first : first + 2])
        np.testing.assert_array_equal(target, ref.values[first + 2])


# --- conservative coarsening -------------------------------------------------------------------


def test_coarsen_uniform_equals_hand_block_means_and_conserves() -> None:
    """Cartesian grid: each coarse value is the plain mean of its 4×4 block (hand loop), and the
    sum over cells × cell area is conserved to 1e-12 relative."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2, 3, 8, 12))
    c = coarsen(f, 4)
    assert c.shape == (2, 3, 2, 3)
    for i in range(2):
        for j in range(3):
            assert c[1, 2, i, j] == pytest.approx(
                f[1, 2, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].sum() / 16, rel=1e-14
            )
    assert abs(c.sum() * 16 - f.sum()) <= 1e-12 * np.abs(f).sum()


def test_coarsen_latlon_conserves_the_area_weighted_integral() -> None:
    """Evenly spaced latitude centres, factor 3: the cos-weighted mean of the coarse field on
    the block-centre latitudes equals the fine one to 1e-12 (cos φ is exactly proportional to
    the band's area); one block by hand: Σ cos φ_i f_ij / (3 Σ cos φ_i)."""
    rng = np.random.default_rng(1)
    lat = np.linspace(-88.5, 88.5, 60)  # 3° spacing, cell centres
    f = rng.normal(size=(4, 60, 30)) + 280.0
    c, lat_c = coarsen(f, 3, lat=lat), coarsen_lat(lat, 3)
    assert c.shape == (4, 20, 10) and np.allclose(np.diff(lat_c), 9.0)

    def wmean(x: np.ndarray, phi: np.ndarray) -> np.ndarray:
        w = np.cos(np.deg2rad(phi))[:, None]
        return (x * w).sum(axis=(-2, -1)) / (w.sum() * x.shape[-1])

    np.testing.assert_allclose(wmean(c, lat_c), wmean(f, lat), rtol=1e-12)
    a = np.cos(np.deg2rad(lat[6:9]))
    hand = sum(a[r] * f[2, 6 + r, 3 * 4 + q] for r in range(3) for q in range(3)) / (3 * a.sum())
    assert c[2, 2, 4] == pytest.approx(hand, rel=1e-14)
    np.testing.assert_allclose(area_weights(np.array([90.0, 0.0, -95.0])), [0, 1, 0], atol=1e-15)


def test_coarsen_errors_name_the_shape_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"shape \(10, 12\).*factor 4.*crop it to \(8, 12\)"):
        coarsen(np.zeros((10, 12)), 4)
    with pytest.raises(ValueError, match=r"not evenly spaced"):
        coarsen_lat(np.array([0.0, 1.0, 3.0, 4.0]), 2)
    with pytest.raises(ValueError, match=r"expected \(8,\)"):
        coarsen(np.zeros((8, 8)), 2, lat=np.zeros(6))
