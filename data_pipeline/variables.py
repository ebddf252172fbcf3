"""Canonical variable metadata: names with level (``u850``, ``sp``), units and modality.

Readers map each source's short names through one table here, so no other module branches on
variable names (HOUSE_STYLE.md: avoid hard-coded variable-name branches, as in makani/ClimaX).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any

# Order is part of the batch format: ``modality_id`` in a batch is the index here (DESIGN.md §7).
MODALITIES: tuple[str, ...] = ("grid", "waveform", "series")


def modality_id(modality: str) -> int:
    """Integer id of a modality, as carried in every batch."""
    try:
        return MODALITIES.index(modality)
    except ValueError:
        raise ValueError(
            f"unknown modality {modality!r}; known: {list(MODALITIES)}. "
            "Fix: use one of them or add the new one to variables.MODALITIES."
        ) from None


@dataclass(frozen=True)
class VariableInfo:
    """One canonical variable as it travels through shards, manifests and batches."""

    name: str  # canonical, with level: "u850", "u10", "sp", "q500"
    units: str  # canonical units string (see units.py)
    modality: str  # "grid" for gridded fields (later: "waveform", "series")
    level: float | None = None  # pressure level in hPa, or model level number
    long_name: str = ""
    level_type: str | None = None  # None (single level), "pressure" or "model"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("VariableInfo.name must be a non-empty string")
        modality_id(self.modality)  # validates

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (manifests, checkpoints, exports)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VariableInfo:
        """Inverse of :meth:`to_dict`; unknown or missing keys are errors, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"VariableInfo dict has unknown keys {unknown}; known keys: {sorted(known)}. "
                "Fix: the manifest was written by a newer format; upgrade scigpt or re-ingest."
            )
        missing = [k for k in ("name", "units", "modality") if k not in d]
        if missing:
            raise ValueError(f"VariableInfo dict {dict(d)!r} lacks required keys {missing}")
        level = d.get("level")
        return cls(
            name=str(d["name"]),
            units=str(d["units"]),
            modality=str(d["modality"]),
            level=None if level is None else float(level),
            long_name=str(d.get("long_name", "")),
            level_type=d.get("level_type"),
        )


@dataclass(frozen=True)
class SourceVariable:
    """How one source short name maps to SciGPT: canonical stem, units and a long name."""

    stem: str
    units: str
    long_name: str


# ERA5 short names (as in CDS netCDF files and cfgrib) → canonical stem and units. Units are the
# ones ERA5 itself uses, so the common case is an identity conversion and values stay bit-exact.
# The GRIB shortNames with a leading digit ("2t", "10u") are aliases of the cfgrib names.
_ERA5: dict[str, SourceVariable] = {
    # pressure-level variables (canonical name gets the level: "t850")
    "t": SourceVariable("t", "K", "Temperature"),
    "z": SourceVariable("z", "m**2 s**-2", "Geopotential"),
    "q": SourceVariable("q", "kg kg**-1", "Specific humidity"),
    "u": SourceVariable("u", "m s**-1", "U component of wind"),
    "v": SourceVariable("v", "m s**-1", "V component of wind"),
    "w": SourceVariable("w", "Pa s**-1", "Vertical velocity"),
    "r": SourceVariable("r", "%", "Relative humidity"),
    # single-level variables
    "d2m": SourceVariable("d2m", "K", "2 metre dewpoint temperature"),
    "t2m": SourceVariable("t2m", "K", "2 metre temperature"),
    "sp": SourceVariable("sp", "Pa", "Surface pressure"),
    "msl": SourceVariable("msl", "Pa", "Mean sea level pressure"),
    "tcw": SourceVariable("tcw", "kg m**-2", "Total column water"),
    "tcwv": SourceVariable("tcwv", "kg m**-2", "Total column vertically-integrated water vapour"),
    "tp": SourceVariable("tp", "m", "Total precipitation"),
    "e": SourceVariable("e", "m", "Evaporation"),
    "u10": SourceVariable("u10", "m s**-1", "10 metre U wind component"),
    "v10": SourceVariable("v10", "m s**-1", "10 metre V wind component"),
    "skt": SourceVariable("skt", "K", "Skin temperature"),
    "sst": SourceVariable("sst", "K", "Sea surface temperature"),
    "lsm": SourceVariable("lsm", "1", "Land-sea mask"),
}
_ERA5_ALIASES = {"2t": "t2m", "2d": "d2m", "10u": "u10", "10v": "v10"}

ERA5_VARIABLES: Mapping[str, SourceVariable] = MappingProxyType(
    {**_ERA5, **{alias: _ERA5[name] for alias, name in _ERA5_ALIASES.items()}}
)


def era5_variable(short_name: str) -> SourceVariable:
    """Table entry for an ERA5 short name; an unknown name is an error naming the fix."""
    try:
        return ERA5_VARIABLES[short_name]
    except KeyError:
        raise ValueError(
            f"unknown ERA5 short name {short_name!r}; known: {sorted(ERA5_VARIABLES)}. "
            "Fix: add it (stem, canonical units, long name) to variables._ERA5."
        ) from None


def canonical_name(short_name: str, level: float | None, level_type: str = "pressure") -> str:
    """Canonical name of an ERA5 variable, with the pressure level appended: ``u`` @ 850 → ``u850``.

    ``level`` is in hPa; ``None`` means a single-level field (``u10``, ``sp``).
    """
    stem = era5_variable(short_name).stem
    if level is None:
        return stem
    if level_type == "model":
        return f"{stem}_ml{float(level):g}"  # "t_ml137": never confused with t137 hPa
    # "g" drops the ".0" of whole hPa levels and keeps fractional ones distinct ("t0.5").
    return f"{stem}{float(level):g}"


def era5_variable_info(
    short_name: str, level: float | None, level_type: str = "pressure"
) -> VariableInfo:
    """Full :class:`VariableInfo` for a gridded ERA5 field (optionally at a pressure or model
    level)."""
    entry = era5_variable(short_name)
    return VariableInfo(
        name=canonical_name(short_name, level, level_type),
        units=entry.units,
        modality="grid",
        level=None if level is None else float(level),
        long_name=entry.long_name,
        level_type=None if level is None else level_type,
    )
