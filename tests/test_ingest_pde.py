"""Generated PDE source (data_pipeline/ingest/pde.py).

References, all independent of the module's solvers: manufactured solutions with the source
derived by hand below (accuracy and observed order), a dense matrix assembled here with np.kron
and solved with np.linalg (the fast FFT / DST / block-tridiagonal solvers), Gaussian sources
recomputed here from the recorded parameters, and a serial run against sliced / other-process
runs (determinism).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scigpt.data_pipeline.ingest import pde
from scigpt.data_pipeline.ingest.base import get_reader

# Coefficients of each family in the manufactured-solution tests: anisotropic K, advection
# along both axes with both signs (a sign error in v·∇u cannot cancel), ω away from 1.
MMS_COEFFS = {
    "poisson": pde.Coefficients(kxx=1.7, kyy=0.6),
    "advection_diffusion": pde.Coefficients(kxx=1.2, kyy=0.5, vx=7.0, vy=-4.0),
    "helmholtz": pde.Coefficients(omega=8.5),
}


def _exp_sine(z: np.ndarray, a: float, m: int) -> tuple[np.ndarray, ...]:
    """X = e^{az} sin(mπz) and its first two derivatives (zero at z = 0 and z = 1)."""
    e, s, c, k = np.exp(a * z), np.sin(m * np.pi * z), np.cos(m * np.pi * z), m * np.pi
    return e * s, e * (a * s + k * c), e * ((a * a - k * k) * s + 2 * a * k * c)


def _periodic_x(z: np.ndarray) -> tuple[np.ndarray, ...]:
    """X = exp(sin 2πz): 1-periodic, infinitely many Fourier modes."""
    w = 2 * np.pi
    x = np.exp(np.sin(w * z))
    return x, w * np.cos(w * z) * x, w * w * (np.cos(w * z) ** 2 - np.sin(w * z)) * x


def _periodic_y(z: np.ndarray) -> tuple[np.ndarray, ...]:
    """Y = cos 2πz + 0.3 sin 4πz: zero mean on any cell-centred grid, so u* has zero mean."""
    w = 2 * np.pi
    y = np.cos(w * z) + 0.3 * np.sin(2 * w * z)
    dy = -w * np.sin(w * z) + 0.6 * w * np.cos(2 * w * z)
    return y, dy, -w * w * np.cos(w * z) - 1.2 * w * w * np.sin(2 * w * z)


def _manufactured(n: int, c: pde.Coefficients, bc: str) -> tuple[np.ndarray, np.ndarray]:
    """(u*, f) on the grid, f = −(k_xx u_xx + k_yy u_yy) + v·∇u + ω u derived analytically."""
    if bc == "dirichlet":
        z = np.arange(1, n + 1) / (n + 1)
        x0, x1, x2 = _exp_sine(z, 1.0, 1)
        y0, y1, y2 = _exp_sine(z, -0.5, 2)
    else:
        z = (np.arange(n) + 0.5) / n
        x0, x1, x2 = _periodic_x(z)
        y0, y1, y2 = _periodic_y(z)
    # Rows are y, columns x: u[j, i] = Y(y_j) X(x_i).
    u = np.outer(y0, x0)
    f = (
        -c.kxx * np.outer(y0, x2)
        - c.kyy * np.outer(y2, x0)
        + c.vx * np.outer(y0, x1)
        + c.vy * np.outer(y1, x0)
        + c.omega * u
    )
    return u, f


@pytest.mark.parametrize("bc", ["dirichlet", "periodic"])
@pytest.mark.parametrize("family", pde.FAMILIES)
def test_manufactured_solution_converges_at_second_order(family: str, bc: str) -> None:
    c = MMS_COEFFS[family]
    sizes = (15, 31, 63) if bc == "dirichlet" else (16, 32, 64)  # h = 1/16, 1/32, 1/64
    errors = []
    for n in sizes:
        u_star, f = _manufactured(n, c, bc)
        u = pde.solve(f, c, bc)
        errors.append(float(np.abs(u - u_star).max() / np.abs(u_star).max()))
    orders = [float(np.log2(errors[k] / errors[k + 1])) for k in range(2)]
    print(f"\n{family} {bc}: relative max errors {errors}, observed orders {orders}")
    assert errors[-1] < 5e-3, errors
    for p in orders:
        assert 1.8 <= p <= 2.2, f"{family}/{bc}: observed orders {orders}, errors {errors}"


def _dense_operator(n: int, c: pde.Coefficients, bc: str) -> np.ndarray:
    """L_h as an (n², n²) dense matrix, rows/cols in C order (y slow, x fast)."""
    h = 1.0 / (n + 1) if bc == "dirichlet" else 1.0 / n
    eye, up = np.eye(n), np.eye(n, k=1)
    shift = up.copy()
    if bc == "periodic":
        shift[-1, 0] = 1.0  # u_{n} ≡ u_0
    d2 = (shift + shift.T - 2 * eye) / h**2
    d1 = (shift - shift.T) / (2 * h)
    return (
        -c.kxx * np.kron(eye, d2)
        - c.kyy * np.kron(d2, eye)
        + c.vx * np.kron(eye, d1)
        + c.vy * np.kron(d1, eye)
        + c.omega * np.eye(n * n)
    )


@pytest.mark.parametrize("n", [3, 12])
@pytest.mark.parametrize("bc", ["dirichlet", "periodic"])
@pytest.mark.parametrize("family", pde.FAMILIES)
def test_fast_solvers_match_dense_reference(family: str, bc: str, n: int) -> None:
    c = MMS_COEFFS[family]
    f = np.random.default_rng(n).standard_normal((n, n))
    a = _dense_operator(n, c, bc)
    if bc == "periodic" and c.omega == 0:
        # Singular (constants); the min-norm least-squares solution is the zero-mean one.
        ref = np.linalg.lstsq(a, (f - f.mean()).ravel(), rcond=None)[0]
    else:
        ref = np.linalg.solve(a, f.ravel())
    u = pde.solve(f, c, bc)
    np.testing.assert_allclose(u.ravel(), ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    np.testing.assert_allclose(pde.apply_operator(u, c, bc).ravel(), a @ u.ravel(), atol=1e-9)


def _digest(g) -> str:
    blob = g.values.tobytes() + json.dumps(g.attrs["samples"]).encode()
    return hashlib.sha256(blob).hexdigest()


@pytest.mark.parametrize("family", pde.FAMILIES)
def test_generation_is_deterministic_and_splits_exactly(family: str) -> None:
    kw = {"grid": 32, "seed": 7}
    full = pde.generate(family, 6, **kw)
    again = pde.generate(family, 6, **kw)
    np.testing.assert_array_equal(full.values, again.values)
    parts = [pde.generate(family, 2, **kw), pde.generate(family, 4, start_index=2, **kw)]
    np.testing.assert_array_equal(np.concatenate([p.values for p in parts]), full.values)
    np.testing.assert_array_equal(np.concatenate([p.time for p in parts]), full.time)
    assert parts[0].attrs["samples"] + parts[1].attrs["samples"] == full.attrs["samples"]
    # A lone middle sample, as a rank holding index 3 would make it.
    np.testing.assert_array_equal(
        pde.generate(family, 1, start_index=3, **kw).values, full.values[3:4]
    )
    other = pde.generate(family, 6, grid=32, seed=8)
    assert not np.array_equal(other.values[:, 0], full.values[:, 0])


def test_generation_is_identical_in_another_process() -> None:
    """Seeds must not depend on per-process state such as Python's salted str hash."""
    local = {f: _digest(pde.generate(f, 3, grid=32, seed=11, bc="periodic")) for f in pde.FAMILIES}
    code = (
        "import hashlib, json; from scigpt.data_pipeline.ingest import pde\n"
        "for f in pde.FAMILIES:\n"
        "    g = pde.generate(f, 3, grid=32, seed=11, bc='periodic')\n"
        "    b = g.values.tobytes() + json.dumps(g.attrs['samples']).encode()\n"
        "    print(f, hashlib.sha256(b).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert dict(line.split() for line in out.splitlines()) == local


@pytest.mark.parametrize("bc", ["dirichlet", "periodic"])
def test_layout_coordinates_and_time(bc: str) -> None:
    g = pde.generate("advection_diffusion", 3, grid=40, seed=0, start_index=5, bc=bc)
    assert g.values.shape == (3, 6, 40, 40) and g.values.dtype == np.float32
    assert g.names == ["pde_f", "pde_kxx", "pde_kyy", "pde_vx", "pde_vy", "pde_u"]
    assert {(v.units, v.modality) for v in g.variables} == {("1", "grid")}
    assert g.coords == "cartesian" and g.source == "pde:advection_diffusion"
    nodes = np.arange(1, 41) / 41 if bc == "dirichlet" else (np.arange(40) + 0.5) / 40
    np.testing.assert_allclose(g.lat, nodes, rtol=1e-15)
    np.testing.assert_allclose(g.lon, nodes, rtol=1e-15)
    expected = np.array(["2000-01-01T05", "2000-01-01T06", "2000-01-01T07"], "datetime64[ns]")
    np.testing.assert_array_equal(g.time, expected)
    assert g.attrs["family"] == "advection_diffusion" and g.attrs["bc"] == bc
    assert [s["index"] for s in g.attrs["samples"]] == [5, 6, 7]
    assert g.attrs["order_of_accuracy"] == 2
    json.dumps(g.attrs)  # manifests need JSON-ready attrs


def test_periodic_singular_problems_store_zero_mean_source() -> None:
    for family in ("poisson", "advection_diffusion"):
        g = pde.generate(family, 2, grid=32, seed=3, bc="periodic")
        f, u = g.values[:, 0].astype(np.float64), g.values[:, -1].astype(np.float64)
        assert np.abs(f.mean(axis=(1, 2))).max() < 1e-6 * np.abs(f).max()
        assert np.abs(u.mean(axis=(1, 2))).max() < 1e-6 * np.abs(u).max()


RANGES = {
    "poisson": pde.PoissonRanges(
        diffusivity=(0.3, 0.8), eigen_ratio=(2.0, 3.0), n_bumps=(2, 3), bump_width=(0.08, 0.1),
        bump_amplitude=(1.0, 2.0), bump_centre=(0.3, 0.6),
    ),
    "advection_diffusion": pde.AdvectionDiffusionRanges(
        diffusivity=(1.0, 1.5), eigen_ratio=(1.0, 2.0), peclet=(2.0, 4.0), n_bumps=(1, 1),
    ),
    "helmholtz": pde.HelmholtzRanges(omega=(3.0, 4.0), n_bumps=[4, 5], bump_width=[0.1, 0.12]),
}  # fmt: skip


def _inside(value: float, r: tuple[float, float]) -> bool:
    return r[0] <= value <= r[1]


@pytest.mark.parametrize("family", pde.FAMILIES)
def test_samples_respect_ranges_and_solve_their_problem(family: str) -> None:
    r, n = RANGES[family], 12
    g = pde.generate(family, 40, grid=n, seed=2, ranges=r)
    assert g.attrs["ranges"]["bump_width"] == list(r.bump_width)
    x = np.arange(1, n + 1) / (n + 1)
    signs = set()
    for t, s in enumerate(g.attrs["samples"]):
        fld = dict(zip(g.names, g.values[t].astype(np.float64), strict=True))  # name → (H, W)
        kxx, kyy = s.get("kxx", 1.0), s.get("kyy", 1.0)
        vx, vy, omega = s.get("vx", 0.0), s.get("vy", 0.0), s.get("omega", 0.0)
        if family != "helmholtz":
            assert _inside(max(kxx, kyy), r.diffusivity)
            assert _inside(max(kxx, kyy) / min(kxx, kyy), r.eigen_ratio)
            np.testing.assert_allclose(max(kxx, kyy) / min(kxx, kyy), s["eigen_ratio"])
        if family == "advection_diffusion":
            assert _inside(s["peclet"], r.peclet)
            np.testing.assert_allclose(np.hypot(vx, vy) / ((kxx + kyy) / 2), s["peclet"])
            assert s["cell_peclet"] <= 1.0 and s["adv_diff_ratio"] > 0
        if family == "helmholtz":
            assert _inside(omega, r.omega)
        for name, val in (("pde_kxx", kxx), ("pde_kyy", kyy), ("pde_vx", vx), ("pde_vy", vy)):
            if name in fld:
                assert np.all(fld[name] == np.float32(val)), name
        if "pde_omega" in fld:
            assert np.all(fld["pde_omega"] == np.float32(omega))
        src = s["source"]
        assert _inside(len(src["x"]), r.n_bumps) and len(set(map(len, src.values()))) == 1
        assert all(_inside(v, r.bump_centre) for v in src["x"] + src["y"])
        assert all(_inside(v, r.bump_width) for v in src["width"])
        assert all(_inside(abs(v), r.bump_amplitude) for v in src["amplitude"])
        signs |= {np.sign(v) for v in src["amplitude"]}
        bumps = zip(src["x"], src["y"], src["width"], src["amplitude"], strict=True)
        f = sum(
            a
            * np.outer(
                np.exp(-((x - cy) ** 2) / (2 * w * w)), np.exp(-((x - cx) ** 2) / (2 * w * w))
            )
            for cx, cy, w, a in bumps
        )
        np.testing.assert_allclose(fld["pde_f"], f, rtol=1e-6, atol=1e-6 * np.abs(f).max())
        mat = _dense_operator(n, pde.Coefficients(kxx, kyy, vx, vy, omega), "dirichlet")
        residual = mat @ fld["pde_u"].ravel() - f.ravel()
        assert np.abs(residual).max() < 1e-4 * np.abs(f).max()
    assert signs == {-1.0, 1.0}


def test_read_pde_is_the_registered_reader() -> None:
    reader = get_reader("pde")
    assert reader.__wrapped__ is pde.read_pde
    (g,) = reader([], family="helmholtz", n_samples=3, grid=16, seed=4, omega=[3.0, 4.0])
    ref = pde.generate("helmholtz", 3, grid=16, seed=4, ranges=pde.HelmholtzRanges(omega=(3, 4)))
    np.testing.assert_array_equal(g.values, ref.values)
    assert g.attrs["samples"] == ref.attrs["samples"] and "ignored_paths" not in g.attrs


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"family": "heat"}, "family 'heat'"),
        ({"grid": 2}, "grid must be an integer >= 3"),
        ({"family": "helmholtz", "omega": (-1.0, 5.0)}, "omega range (-1, 5) must lie in (0, inf)"),
        ({"family": "helmholtz", "omega": (5.0, 1.0)}, "omega range (5, 1) needs finite lo <= hi"),
        ({"family": "helmholtz", "omega": (2.0,)}, "omega must be a pair"),
        ({"eigen_ratio": (0.5, 2.0)}, "eigen_ratio range (0.5, 2) must lie in [1, inf)"),
        ({"n_bumps": (0, 2)}, "n_bumps range (0, 2) must lie in [1, inf)"),
        ({"bc": "neumann"}, "bc 'neumann'"),
        ({"n_samples": 0}, "n_samples must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"start_index": -2}, "start_index must be an integer >= 0"),
        ({"omega": (1.0, 2.0)}, "['omega'] do not apply to family 'poisson'"),
        ({"family": "advection_diffusion", "grid": 8}, "Fix: use grid >= 29"),
    ],
)
def test_bad_options_name_the_option_and_the_fix(options: dict, needle: str) -> None:
    kwargs = {"family": "poisson", "n_samples": 2, "grid": 8, **options}
    with pytest.raises(ValueError, match="Fix") as err:
        pde.read_pde([], **kwargs)
    assert needle in str(err.value)
