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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from scigpt.atomic import atomic_write

__all__ = ["realization_dataset", "write_realizations"]


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
    """Write an ensemble dataset (``realization_dataset``) as netCDF-4, atomically. ``encoding``
    of the member variables applies to their ``_mean`` and ``_spread`` too."""
    enc = {k: dict(v) for k, v in (encoding or {}).items() if k in ds.variables}
    for k in list(enc):
        for suffix in ("_mean", "_spread"):
            if f"{k}{suffix}" in ds.data_vars and f"{k}{suffix}" not in enc:
                enc[f"{k}{suffix}"] = dict(enc[k])
    enc.setdefault("realization", {"_FillValue": None, "dtype": "int32"})
    out = Path(out)

    def write(tmp: Path) -> None:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=enc)

    atomic_write(out, write)
    return out
