"""One small units registry: aliases plus affine conversions to canonical units.

Every unit is ``(dimension, scale, offset)`` relative to the SI unit of its dimension, so that
``si = value * scale + offset``. That covers everything the Earth-science sources spell
differently (``°C`` vs ``K``, ``hPa`` vs ``Pa``, ``m s**-1`` vs ``m/s``) without a general
units library; anything not listed is an error, never a silent pass-through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Unit:
    """A unit as an affine map to the SI unit of its dimension: ``si = x * scale + offset``."""

    symbol: str  # the spelling used as canonical units in VariableInfo
    dimension: str
    scale: float = 1.0
    offset: float = 0.0


_UNITS: tuple[tuple[Unit, tuple[str, ...]], ...] = (
    # temperature
    (Unit("K", "temperature"), ("kelvin", "degK", "deg K", "degrees_K")),
    (
        Unit("degC", "temperature", 1.0, 273.15),
        (
            "°C",
            "deg C",
            "degrees_C",
            "degrees_Celsius",
            "celsius",
            "Celsius",
            # UDUNITS spellings (NOAA OISST, NEMO, CMIP "tos")
            "degree_C",
            "degree_Celsius",
            "deg_C",
        ),
    ),
    # pressure; "millibars" is what the CDS netCDF writer puts on the level coordinate
    (Unit("Pa", "pressure"), ("pascal", "Pascal", "N m**-2")),
    (Unit("hPa", "pressure", 100.0), ("mbar", "millibars", "millibar", "mb", "hectopascal")),
    # speed
    (Unit("m s**-1", "speed"), ("m/s", "meter/second", "metre/second", "meters per second")),
    # pressure tendency (ERA5 w)
    (Unit("Pa s**-1", "pressure_tendency"), ("Pa/s",)),
    # mass ratio: kept apart from "1" so that a humidity is never mistaken for a fraction
    (Unit("kg kg**-1", "mass_ratio"), ("kg/kg",)),
    (Unit("g kg**-1", "mass_ratio", 1e-3), ("g/kg",)),
    # areal mass density (column water)
    (Unit("kg m**-2", "areal_density"), ("kg/m**2", "kg/m2")),
    # length, including ERA5's accumulated water depths
    (Unit("m", "length"), ("metre", "meter", "meters", "m of water equivalent")),
    (Unit("mm", "length", 1e-3), ("millimetre", "millimeter")),
    # specific energy (geopotential)
    (Unit("m**2 s**-2", "specific_energy"), ("m**2/s**2", "J kg**-1", "J/kg")),
    # plane angle (MODIS sun/view zenith and azimuth); SI is the radian
    (Unit("degree", "angle", np.pi / 180), ("degrees", "deg")),
    # dimensionless: "1" is the canonical unit of every ratio, fraction, index (NDVI, EVI),
    # emissivity, reflectance and count of events (clear-sky days); percent converts to it.
    (
        Unit("1", "dimensionless"),
        (
            "",
            "dimensionless",
            "(0 - 1)",
            "0-1",
            "fraction",
            "~",
            "m**2/m**2",
            "ratio",
            "index",
            "number",
        ),
    ),
    (Unit("%", "dimensionless", 1e-2), ("percent", "Percent", "pct")),
    # raw digitiser output (seismic waveforms, not restituted): a dimension of its own, so counts
    # never convert to, or pass for, a physical unit
    (Unit("counts", "counts"), ("count", "digital counts")),
    # station series (GHCN-D, CAMELS, FLUXNET); daily totals are kept apart from speeds
    (Unit("s", "time"), ("second", "seconds")),
    # MODIS LST view time (local solar time of the observation) is in "hrs"
    (Unit("h", "time", 3600.0), ("hr", "hrs", "hour", "hours")),
    (Unit("day", "time", 86400.0), ("days",)),
    (Unit("mm day**-1", "depth_rate", 1e-3 / 86400.0), ("mm/day", "mm d**-1", "mm/d")),
    (Unit("W m**-2", "energy_flux"), ("W/m2", "W/m**2")),
    (Unit("m**3 s**-1", "volume_flow"), ("m3/s", "m**3/s")),
    (Unit("ft**3 s**-1", "volume_flow", 0.028316846592), ("ft3/s", "ft**3/s", "cfs")),
    (Unit("umol m**-2 s**-1", "molar_flux", 1e-6), ("µmol m**-2 s**-1", "umol/m2/s")),
)


def _normalise(units: str) -> str:
    """Spelling-level clean-up: whitespace, ``^`` → ``**``, ``s-1`` → ``s**-1``."""
    s = " ".join(units.strip().split())
    s = s.replace("^", "**")
    # "m s-1", "m2 s-2" (UDUNITS style) → "m s**-1", "m**2 s**-2"; only digits right after a
    # letter are exponents, so "(0 - 1)" and "10" are left alone.
    return re.sub(r"(?<=[A-Za-z])(?<!\*\*)(-?\d+)", r"**\1", s)


_REGISTRY: dict[str, Unit] = {}
for _unit, _aliases in _UNITS:
    for _spelling in (_unit.symbol, *_aliases):
        _REGISTRY[_normalise(_spelling)] = _unit


def parse_units(units: str) -> Unit | None:
    """The registered :class:`Unit` for a spelling, or ``None`` if it is not known."""
    return _REGISTRY.get(_normalise(units))


def known_units() -> list[str]:
    """Canonical symbols the registry knows (for error messages and docs)."""
    return [unit.symbol for unit, _ in _UNITS]


def to_canonical(values: np.ndarray, units: str, canonical: str, *, where: str) -> np.ndarray:
    """Convert ``values`` from ``units`` to ``canonical`` units.

    ``where`` names the data (``"file.nc:variable"``) for the error message. When the two
    spellings denote the same unit the input array is returned unchanged (bit-exact). Otherwise
    the arithmetic is done in float64 and the result keeps the input's floating dtype.
    """
    src = parse_units(units)
    if src is None:
        raise ValueError(
            f"{where}: unknown units {units!r}. Known units (aliases accepted): "
            f"{known_units()}. Fix: correct the units attribute in the file, or register the "
            "spelling in scigpt.data_pipeline.units._UNITS."
        )
    dst = parse_units(canonical)
    if dst is None:
        raise ValueError(
            f"{where}: canonical units {canonical!r} are not in the units registry. "
            "Fix: register them in scigpt.data_pipeline.units._UNITS."
        )
    if src.dimension != dst.dimension:
        raise ValueError(
            f"{where}: units {units!r} ({src.dimension}) cannot be converted to {canonical!r} "
            f"({dst.dimension}). Fix: check that the variable is the one you meant, or correct "
            "its units attribute."
        )
    if src == dst:
        return values
    arr = np.asarray(values)
    out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
    si = arr.astype(np.float64) * src.scale + src.offset
    return ((si - dst.offset) / dst.scale).astype(out_dtype, copy=False)
