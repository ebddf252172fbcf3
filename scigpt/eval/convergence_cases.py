"""Cases, references and predictors for ``scigpt.eval.convergence.convergence_study``.

(a) PDE cases at several grids. ``data_pipeline.ingest.pde`` draws each sample from a generator
seeded by (seed, family, index) only, and the draws (coefficients; Gaussian-bump centres,
widths, amplitudes, signs) do not depend on ``grid``: the source is a continuous function
sampled at the grid's nodes. So ``generate(family, 1, grid=n, seed=s, start_index=i)`` is the
same physical problem at every n — no change to the generator was needed. ``pde_level`` gives a
case at a grid; ``FineReference`` the continuous solution at a level's nodes (Richardson-
extrapolated from two fine grids of the generator's second-order solver, interpolated by bicubic
splines: error O(h_fine⁴)); ``package_predictor`` a trained operator model's prediction.

(b) Reanalysis fields: ``coarsening_study`` coarsens the input and the truth by each factor with
a conservative ``coarsen(field, factor)`` (data_pipeline.coarsen) and scores the model there.

(c) Forecasts at several time steps: ``convergence_study(step_predict, cases, dts, reference,
spacing=float)`` — the level is the step itself (tests/test_convergence.py: forward Euler).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy.interpolate import RectBivariateSpline

from scigpt.data_pipeline.ingest.base import GridArray
from scigpt.data_pipeline.ingest.pde import (
    CHANNELS,
    FAMILIES,
    RANGES,
    TIME_ORIGIN,
    TIME_STEP,
    generate,
)
from scigpt.data_pipeline.ingest.pde_solvers import grid_coords, spacing
from scigpt.eval.convergence import Thresholds, convergence_study


@dataclass(frozen=True)
class PDECase:
    """One generated problem: sample ``index`` of ``family`` under ``seed`` (any grid)."""

    family: str
    seed: int
    index: int
    bc: str = "dirichlet"
    options: tuple[tuple[str, Any], ...] = ()  # range options (pde.RANGES[family] fields)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"the convergence test regenerates steady PDE cases ({list(FAMILIES)}); "
                f"{self.family!r} is not one. Fix: evaluate a model trained on one of them."
            )


@lru_cache(maxsize=256)
def pde_level(case: PDECase, grid: int) -> GridArray:
    """``case`` generated on a (grid, grid) mesh (cached)."""
    ranges = RANGES[case.family](**{k: tuple(v) for k, v in case.options})
    return generate(case.family, 1, grid=grid, seed=case.seed, start_index=case.index,
                    bc=case.bc, ranges=ranges)  # fmt: skip


def _solution(ga: GridArray) -> np.ndarray:
    return ga.values[0, ga.names.index("pde_u")].astype(np.float64)


def interpolate(u: np.ndarray, bc: str, grid: int) -> np.ndarray:
    """Bicubic-spline interpolation of a grid solution ``u`` (n, n) to the nodes of ``grid``:
    with the boundary zeros (Dirichlet) or three wrapped nodes each side (periodic)."""
    n = u.shape[0]
    x = grid_coords(n, bc)
    if bc == "dirichlet":
        xe = np.concatenate([[0.0], x, [1.0]])
        ue = np.pad(u, 1)
    else:
        xe = np.concatenate([x[-3:] - 1.0, x, x[:3] + 1.0])
        ue = np.pad(u, 3, mode="wrap")
    xt = grid_coords(grid, bc)
    return RectBivariateSpline(xe, xe, ue, kx=3, ky=3, s=0)(xt, xt)


class FineReference:
    """The continuous solution of a case at a level's nodes: u* = (4 u_R − u_r) / 3 from the
    generator's second-order solutions on a fine grid R and its half r (Richardson), both
    interpolated by ``interpolate``. Default R: 2·finest + 1 (Dirichlet: nodes nest) or
    2·finest (periodic)."""

    def __init__(self, finest: int, bc: str = "dirichlet", fine: int | None = None):
        self.fine = fine or (2 * finest + 1 if bc == "dirichlet" else 2 * finest)
        self.half = (self.fine - 1) // 2 if bc == "dirichlet" else self.fine // 2
        self._cache: dict[PDECase, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, case: PDECase, grid: int) -> np.ndarray:
        if case not in self._cache:
            self._cache[case] = (_solution(pde_level(case, self.fine)),
                                 _solution(pde_level(case, self.half)))  # fmt: skip
        uf, uh = self._cache[case]
        return (4 * interpolate(uf, case.bc, grid) - interpolate(uh, case.bc, grid)) / 3


def level_reference(case: PDECase, grid: int) -> np.ndarray:
    """The generator's own solution at ``grid`` (the model against each grid's discretisation)."""
    return _solution(pde_level(case, grid))


def package_predictor(pm, outputs: Sequence[str] = ("pde_u",)) -> Callable[[PDECase, int], Any]:
    """``predict(case, grid)`` of a loaded operator package (``PretrainedModel``): the case's
    fields at ``grid`` with the outputs hidden (NaN → 0, as in training) → the first output
    (grid, grid) in physical units."""

    def predict(case: PDECase, grid: int) -> np.ndarray:
        ga = pde_level(case, grid)
        names = list(ga.names)
        unknown = [n for n in names if n not in pm.var_names]
        if unknown:
            raise ValueError(f"the model does not know {unknown} (it has {pm.var_names})")
        x = ga.values.astype(np.float32).copy()  # (1, V, H, W)
        out_idx = [names.index(o) for o in outputs]
        x[:, out_idx] = np.nan
        times = ga.time.astype("datetime64[ns]").astype(np.int64)
        y = pm.forecast(torch.from_numpy(x[:, :, None]), names, ga.lat, ga.lon, times)
        return y[0, out_idx[0]].double().cpu().numpy()

    return predict


def pde_study(
    predict: Callable[[PDECase, int], np.ndarray],
    cases: Sequence[PDECase],
    levels: Sequence[int],
    *,
    reference: str = "fine",
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """``convergence_study`` on PDE cases at grid sizes ``levels`` (h = the node spacing) against
    the continuous solution (``reference="fine"``) or each grid's own discretisation
    (``"level"``)."""
    if reference not in ("fine", "level"):
        raise ValueError(f"reference must be 'fine' or 'level', got {reference!r}")
    bc = cases[0].bc
    ref = FineReference(max(levels), bc) if reference == "fine" else level_reference
    res = convergence_study(predict, cases, levels, ref, thresholds=thresholds,
                            spacing=lambda n: spacing(int(n), bc))  # fmt: skip
    res["reference"] = reference
    if reference == "fine":
        res["reference_grids"] = [ref.fine, ref.half]
    res["channels"] = list(CHANNELS[cases[0].family])
    return res


def coarsening_study(
    model: Callable[[np.ndarray], np.ndarray],
    inputs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    factors: Sequence[int],
    coarsen: Callable[[np.ndarray, int], np.ndarray],
    *,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """(b) Reanalysis: case i is (inputs[i], truths[i]) on the native grid; at factor f the
    model sees ``coarsen(input, f)`` and is scored against ``coarsen(truth, f)`` (h = f, factor
    1 the native grid)."""
    cases = list(range(len(inputs)))
    return convergence_study(
        lambda i, f: model(coarsen(inputs[i], f) if f > 1 else inputs[i]),
        cases,
        factors,
        lambda i, f: coarsen(truths[i], f) if f > 1 else truths[i],
        spacing=float,
        thresholds=thresholds,
    )


def _pseudo_index(stamp: Any) -> int:
    """The sample index of a pseudo-time stamp (``pde.TIME_ORIGIN + index hours``)."""
    t = np.datetime64(str(stamp).replace("Z", ""), "ns")
    return int((t - TIME_ORIGIN) // TIME_STEP)


def cases_from_config(
    run_config: dict[str, Any], *, source: str | None = None, n_cases: int = 8
) -> tuple[list[PDECase], dict[str, Any]]:
    """The cases of an operator run's steady PDE source: up to ``n_cases`` samples of its test
    split (the last ``n_cases`` samples without one), and the source's config entry.

    ``run_config``: a run config as a dict (a package's ``config.json`` ``run_config``).
    ``source``: the source's name (default: the first ``format: pde`` source of a steady
    family)."""
    data = run_config.get("data") or {}
    if data.get("task") != "operator":
        raise ValueError(
            f"the convergence test evaluates an operator model (data.task: operator); this run "
            f"has data.task {data.get('task', 'forecast')!r}. Fix: pass an operator-task PDE "
            "model (e.g. one trained from configs/runs/transfer-*.yaml)."
        )
    pde = [s for s in data.get("sources") or [] if s.get("format") == "pde"
           and (s.get("options") or {}).get("family") in FAMILIES]  # fmt: skip
    if source is not None:
        pde = [s for s in pde if s.get("name") == source]
    if not pde:
        names = [s.get("name") for s in data.get("sources") or []]
        raise ValueError(
            f"no steady PDE source {'named ' + repr(source) + ' ' if source else ''}among the "
            f"run's data.sources {names} (format: pde, family one of {list(FAMILIES)}). Fix: "
            "name one with --source, or evaluate a model trained on one."
        )
    src = pde[0]
    opts = dict(src.get("options") or {})
    n = int(opts.get("n_samples", 1))
    start = int(opts.get("start_index", 0))
    test = (src.get("splits") or data.get("splits") or {}).get("test")
    if test:
        lo, hi = _pseudo_index(test["start"]), _pseudo_index(test["end"])
        idx = [i for i in range(max(lo, start), min(hi, start + n - 1) + 1)]
    else:
        idx = list(range(start, start + n))[-n_cases:]
    if not idx:
        raise ValueError(f"source {src.get('name')!r}: its test split holds no sample")
    skip = {"family", "n_samples", "grid", "seed", "start_index", "bc"}
    extra = tuple(sorted((k, tuple(v)) for k, v in opts.items() if k not in skip))
    cases = [PDECase(opts["family"], int(opts.get("seed", 0)), i, opts.get("bc") or "dirichlet",
                     extra) for i in idx[:n_cases]]  # fmt: skip
    return cases, src
