"""The one netCDF writer of ensemble forecasts: members along a CF ``realization`` dimension,
plus the ensemble mean and spread. Grids and series alike: the member datasets may have any
dimensions (``(time, prediction_timedelta, latitude, longitude)`` from ``scigpt predict``,
``(time, station)`` from a series forecast).

For each data variable ``x`` of the members the output holds

* ``x(realization, …)`` — every member (CF-1.8 §5.8: ``realization`` is an integer coordinate
  with ``standard_name: realization``, the ensemble member number);
* ``x_mean(…)`` — the member mean (``cell_methods: "realization: mean"``);
* ``x_spread(…)`` — the member standard deviation with ddof 1 (the unbiased variance's root,
  as WeatherBench 2's spread; ``cell_methods: "realization: standard_deviation"``).

xarray reads it back with ``xr.open_dataset``.

``timeseries_forecast_dataset`` builds a station-series forecast as a CF-1.8 discrete sampling
geometry (Appendix H.2, timeSeries, orthogonal multidimensional array): ``station`` and ``time``
dimensions, a ``station_id(station)`` variable with ``cf_role = "timeseries_id"``, ``lat`` /
``lon(station)``, and sample paths through ``realization_dataset`` plus quantiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from scigpt.atomic import atomic_write

__all__ = ["realization_dataset", "timeseries_forecast_dataset", "write_realizations"]


def realization_dataset(
    members: Sequence[xr.Dataset], names: Sequence[str] | None = None
) -> xr.Dataset:
    """Stack ``members`` (datasets with the same variables, dims and coords) along a new
    ``realization`` dimension and add ``<var>_mean`` and ``<var>_spread``. ``names``: the member
    names, kept as the ``member_name(realization)`` string coordinate. Attributes come from the
    first member."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs 2 or more members, got {len(members)}")
    keys = list(members[0].data_vars)
    for i, m in enumerate(members[1:], 1):
        if list(m.data_vars) != keys:
            raise ValueError(f"member {i} has variables {list(m.data_vars)}, member 0 {keys}")
    ens = xr.concat(members, dim="realization", coords="minimal", compat="override",
                    combine_attrs="override")  # fmt: skip
    r = np.arange(len(members), dtype=np.int32)
    ens = ens.assign_coords(realization=("realization", r))
    ens["realization"].attrs.update(standard_name="realization", long_name="ensemble member",
                                    units="1")  # fmt: skip
    if names is not None:
        if len(names) != len(members):
            raise ValueError(f"{len(names)} names for {len(members)} members")
        ens = ens.assign_coords(member_name=("realization", [str(n) for n in names]))
    for k in keys:
        # transpose so realization comes first (CF orders it before the spatial dims)
        ens[k] = ens[k].transpose("realization", *members[0][k].dims)
        attrs = dict(members[0][k].attrs)
        mean = ens[k].mean("realization")
        spread = ens[k].std("realization", ddof=1)
        ens[f"{k}_mean"] = mean.astype(ens[k].dtype)
        ens[f"{k}_mean"].attrs = {
            **attrs,
            "cell_methods": "realization: mean",
            "long_name": f"ensemble mean of {attrs.get('long_name', k)}",
        }
        ens[f"{k}_spread"] = spread.astype(ens[k].dtype)
        ens[f"{k}_spread"].attrs = {
            **{a: v for a, v in attrs.items() if a != "standard_name"},
            "cell_methods": "realization: standard_deviation",
            "long_name": f"ensemble spread (std, ddof 1) of {attrs.get('long_name', k)}",
        }  # fmt: skip
    ens.attrs = {**members[0].attrs, "scigpt_ensemble_members": len(members)}
    return ens


def write_realizations(
    ds: xr.Dataset, out: str | Path, encoding: dict[str, dict[str, Any]] | None = None
) -> Path:
    """Write an ensemble dataset (``realization_dataset`` or ``timeseries_forecast_dataset``)
    as netCDF-4, atomically. ``encoding``
    of the member variables applies to their ``_mean`` and ``_spread`` too."""
    enc = {k: dict(v) for k, v in (encoding or {}).items() if k in ds.variables}
    for k in list(enc):
        for suffix in ("_mean", "_spread"):
            if f"{k}{suffix}" in ds.data_vars and f"{k}{suffix}" not in enc:
                enc[f"{k}{suffix}"] = dict(enc[k])
    if "realization" in ds.variables:  # a quantile-only series forecast has none
        enc.setdefault("realization", {"_FillValue": None, "dtype": "int32"})
    out = Path(out)

    def write(tmp: Path) -> None:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=enc)

    atomic_write(out, write)
    return out


def timeseries_forecast_dataset(
    station_ids: Sequence[str],
    lat: Sequence[float],
    lon: Sequence[float],
    init_time: np.datetime64 | str,
    step_ns: int,
    samples: Mapping[str, np.ndarray],
    quantiles: Mapping[str, np.ndarray],
    levels: Sequence[float],
    attrs: Mapping[str, Mapping[str, Any]],
    elevation: Sequence[float] | None = None,
) -> xr.Dataset:
    """A CF-1.8 ``featureType = "timeSeries"`` forecast of P stations for H steps.

    ``samples[var]`` (S, P, H) sample paths → ``var(realization, station, time)`` with
    ``var_mean`` / ``var_spread`` (``realization_dataset``; S >= 2); ``quantiles[var]``
    (Q, P, H) at ``levels`` → ``var_quantile(quantile, station, time)``. Either mapping may be
    empty (a quantile head has no samples). ``attrs[var]``: units, long_name, standard_name if
    any. ``time`` = init + lead·step for lead 1..H, with ``leadtime(time)`` (forecast_period)
    and the scalar ``forecast_reference_time``. ``elevation`` (m) adds ``alt(station)``.
    Write it with ``write_realizations`` (``encoding`` not needed: it rides on the variables).
    """
    ids = [str(s) for s in station_ids]
    n = len(ids)
    la, lo = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    if la.shape != (n,) or lo.shape != (n,):
        raise ValueError(f"lat {la.shape} and lon {lo.shape} must be ({n},), one per station")
    names = list(samples) + [k for k in quantiles if k not in samples]
    if not names:
        raise ValueError("no variables: pass samples= and/or quantiles= as {name: array}")
    missing = [k for k in names if k not in attrs or "units" not in attrs[k]]
    if missing:
        raise ValueError(f"attrs lack units for {missing}. Fix: attrs={{var: {{'units': ...}}}}")
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    if step_ns <= 0:
        raise ValueError(f"step_ns must be positive, got {step_ns}")
    shapes = {k: np.shape(a) for k, a in (*samples.items(), *quantiles.items())}
    h = next(iter(shapes.values()))[-1]
    for k, a in samples.items():
        if np.ndim(a) != 3 or np.shape(a)[1:] != (n, h) or np.shape(a)[0] < 2:
            raise ValueError(f"samples[{k!r}] shape {np.shape(a)} must be (S >= 2, {n}, {h})")
    for k, a in quantiles.items():
        if np.shape(a) != (lv.size, n, h):
            raise ValueError(f"quantiles[{k!r}] shape {np.shape(a)} must be ({lv.size}, {n}, {h})")

    init = np.datetime64(init_time).astype("datetime64[ns]")
    lead = (np.arange(1, h + 1, dtype=np.int64) * int(step_ns)).astype("timedelta64[ns]")
    coords: dict[str, Any] = {
        "station_id": ("station", np.array(ids, dtype=object),
                       {"cf_role": "timeseries_id", "long_name": "station identifier"}),
        "lat": ("station", la, {"standard_name": "latitude", "long_name": "station latitude",
                                "units": "degrees_north"}),
        "lon": ("station", lo, {"standard_name": "longitude", "long_name": "station longitude",
                                "units": "degrees_east"}),
        "time": ("time", init + lead, {"standard_name": "time", "axis": "T",
                                       "long_name": "time the forecast is valid for"}),
        "leadtime": ("time", lead, {"standard_name": "forecast_period",
                                    "long_name": "forecast lead time (prediction_timedelta)"}),
        "forecast_reference_time": ((), init, {"standard_name": "forecast_reference_time",
                                               "long_name": "initial time of forecast"}),
    }  # fmt: skip
    aux = "lat lon station_id"
    if elevation is not None:
        alt = np.asarray(elevation, dtype=np.float64)
        if alt.shape != (n,):
            raise ValueError(f"elevation shape {alt.shape} must be ({n},)")
        coords["alt"] = ("station", alt, {"standard_name": "height", "units": "m",
                                          "positive": "up", "axis": "Z",
                                          "long_name": "station elevation"})  # fmt: skip
        aux += " alt"
    # CF H.2 wants the auxiliary coordinates named on each data variable. xarray moves the
    # attribute into .encoding on read and writes its own list on write unless attrs has one;
    # set it explicitly, and name the lead and reference time too (else a global attribute).
    aux += " leadtime forecast_reference_time"
    glob = {"featureType": "timeSeries", "Conventions": "CF-1.8"}

    def var_attrs(k: str) -> dict[str, Any]:
        return {**dict(attrs[k]), "coordinates": aux}

    dims = ("station", "time")
    if samples:
        arrs = {k: np.asarray(a, dtype=np.float64) for k, a in samples.items()}
        s = next(iter(arrs.values())).shape[0]
        if any(a.shape[0] != s for a in arrs.values()):
            raise ValueError(f"every variable needs the same sample count, got {shapes}")
        members = [
            xr.Dataset({k: (dims, a[i], var_attrs(k)) for k, a in arrs.items()}, coords, glob)
            for i in range(s)
        ]
        ds = realization_dataset(members)
    else:
        ds = xr.Dataset(coords=coords, attrs=glob)
    ds = ds.assign_coords(quantile=("quantile", lv))
    ds["quantile"].attrs.update(long_name="quantile level of the forecast distribution", units="1")
    for k, a in quantiles.items():
        a_attrs = var_attrs(k)
        a_attrs["long_name"] = f"quantiles of {attrs[k].get('long_name', k)}"
        ds[f"{k}_quantile"] = (("quantile", *dims), np.asarray(a, dtype=np.float64), a_attrs)
    if not quantiles:
        ds = ds.drop_vars("quantile")
    # whole seconds unless the times need finer ones (int64 either way: exact round trip)
    t_ns = np.concatenate([[init], init + lead]).astype(np.int64)
    unit = "seconds" if np.all(t_ns % 10**9 == 0) and step_ns % 10**9 == 0 else "nanoseconds"
    for k in ("time", "forecast_reference_time"):
        ds[k].encoding.update(units=f"{unit} since 1970-01-01 00:00:00", dtype="int64",
                              calendar="proleptic_gregorian", _FillValue=None)  # fmt: skip
    ds["leadtime"].encoding.update(units=unit, dtype="int64", _FillValue=None)
    for k in ("lat", "lon", "quantile", "alt"):
        if k in ds.variables:
            ds[k].encoding["_FillValue"] = None
    return ds
