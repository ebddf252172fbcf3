"""Physical plausibility: a pipeline stage between the readers and the shard writer.

A file can decode without error and still be wrong by a factor of 10**8 (a MODIS scale factor
used as a multiplier where the product divides by it), by 130° (an offset applied with the
wrong sign) or by 273.15 (°C labelled K). Nothing downstream can see that inside a normalised
shard, so every canonical variable has a plausible physical range (:func:`plausible_range`,
each with its source), and after unit conversion a unit with more than
:data:`MAX_OUTSIDE_FRACTION` of its valid values outside that range is rejected, naming the
variable, the observed and expected ranges and the likely cause (:func:`likely_cause`). Per
source ``plausibility: reject`` (default) | ``warn`` (keep the unit, record the finding) |
``off``. Every unit's record, and the manifest, carry each variable's min/max, the range it was
checked against, and the decoding rule its reader applied (scale/offset rule, fill value, where
the units came from); series sources also record their time-stamp convention.

The ranges are deliberately wide — they bound what the physical quantity can be on Earth (record
extremes, definitions, instrument limits), not what is typical — so a rejected unit is almost
certainly mis-decoded rather than merely unusual.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .ingest.base import GridArray, ReaderError, SeriesArray
from .units import parse_units, to_canonical
from .variables import VariableInfo

Policy = Literal["reject", "warn", "off"]
POLICIES: tuple[str, ...] = ("reject", "warn", "off")
MAX_OUTSIDE_FRACTION = 1e-3  # 0.1 % of the valid values

_WMO_EXTREMES = "WMO Archive of Weather and Climate Extremes (wmo.asu.edu)"


@dataclass(frozen=True)
class PlausibleRange:
    """Closed interval a physical quantity can take, in ``units``, and where it comes from."""

    lo: float
    hi: float
    units: str
    source: str


def _r(lo: float, hi: float, units: str, source: str) -> PlausibleRange:
    return PlausibleRange(lo, hi, units, source)


_AIR_T = _r(
    170.0, 340.0, "K",
    f"{_WMO_EXTREMES}: lowest surface air temperature -89.2 °C (Vostok), highest 56.7 °C (Death "
    "Valley); the coldest stratosphere is ~180 K (polar stratospheric clouds form below 195 K)",
)  # fmt: skip
_WIND = _r(
    -200.0, 200.0, "m s**-1",
    "fastest jet-stream winds ~110 m/s (WMO), polar-night jet of the upper stratosphere "
    "<= ~150 m/s (ERA5 levels reach 1 hPa)",
)  # fmt: skip
_WIND10 = _r(-115.0, 115.0, "m s**-1", f"{_WMO_EXTREMES}: highest surface gust 113 m/s (1996)")
_COUNTS = _r(
    -(2.0**31), 2.0**31 - 1, "counts",
    "SEED manual v2.4 ch. 8: samples are 32-bit integers (INT32, Steim-1/2)",
)  # fmt: skip
_REFLECTANCE = _r(
    -0.01, 1.6, "1", "MOD09 user guide C6: surface reflectance valid range -100..16000 × 0.0001"
)
_SOLAR = _r(
    -20.0, 1500.0, "W m**-2",
    "total solar irradiance 1361 W/m² (Kopp & Lean 2011) bounds incoming shortwave; pyranometer "
    "night-time offsets are a few W/m² below 0",
)  # fmt: skip

# (full-match pattern on the canonical name, range). First match wins; ERA5 pressure-level
# names carry their level ("t850", "z500", "t_ml137"). Names without a range are listed in
# _UNBOUNDED with the reason, so a missing range is a decision, not an omission.
RANGES: tuple[tuple[re.Pattern[str], PlausibleRange], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), rng)
    for pattern, rng in (
        # ERA5 (variables._ERA5)
        (r"t2m|d2m|skt", _AIR_T),
        (
            r"t(\d+(\.\d+)?|_ml\d+)?",
            _r(
                120.0,
                340.0,
                "K",
                "ERA5 levels reach 0.01 hPa (~80 km), where the summer polar "
                "mesopause is ~130 K (Lübken 1999, J. Geophys. Res. 104, 9135); surface extremes "
                f"as for t2m ({_WMO_EXTREMES})",
            ),
        ),
        (
            r"sst",
            _r(
                268.0,
                310.0,
                "K",
                "sea water freezes at -1.9 °C (salinity 35, UNESCO 1983);"
                " the warmest open-ocean SSTs are ~35 °C (Persian Gulf)",
            ),
        ),
        (
            r"z(\d+(\.\d+)?|_ml\d+)?",
            _r(
                -10000.0,
                500000.0,
                "m**2 s**-2",
                "U.S. Standard Atmosphere 1976: 1 hPa lies near 48 km "
                "(≈ 4.7e5 m²/s²); 1000 hPa can lie ~500 m below sea "
                "level in deep lows",
            ),
        ),
        (
            r"q(\d+(\.\d+)?|_ml\d+)?",
            _r(
                -1e-5,
                0.04,
                "kg kg**-1",
                "saturation specific humidity at the record 35 °C dew "
                "point (1013 hPa) is 0.036 (Clausius-Clapeyron, WMO-No. "
                "8 annex 4.B); packing noise reaches 1e-5 below 0",
            ),
        ),
        (r"u10|v10", _WIND10),
        (r"(u|v)(\d+(\.\d+)?|_ml\d+)?", _WIND),
        (
            r"w(\d+(\.\d+)?|_ml\d+)?",
            _r(
                -30.0,
                30.0,
                "Pa s**-1",
                "updrafts of the strongest convection (~50 m/s) are "
                "~20 Pa/s near 500 hPa (ω ≈ -ρ g w)",
            ),
        ),
        (
            r"r(\d+(\.\d+)?|_ml\d+)?",
            _r(
                0.0,
                160.0,
                "%",
                "ERA5 relative humidity is over ice "
                "below -23 °C; ice supersaturation stays below ~160 %",
            ),
        ),
        (
            r"sp",
            _r(
                30000.0,
                110000.0,
                "Pa",
                "surface pressure on Mt Everest ~337 hPa; highest "
                f"sea-level pressure 1084.8 hPa ({_WMO_EXTREMES})",
            ),
        ),
        (
            r"msl",
            _r(
                85000.0,
                110000.0,
                "Pa",
                f"{_WMO_EXTREMES}: lowest sea-level pressure 870 "
                "hPa (Typhoon Tip), highest 1084.8 hPa (Agata)",
            ),
        ),
        (
            r"tcw|tcwv",
            _r(
                0.0,
                100.0,
                "kg m**-2",
                "precipitable water peaks near 75 kg/m² in the tropics (radiosonde climatologies)",
            ),
        ),
        (
            r"tp",
            _r(
                -1e-4,
                0.35,
                "m",
                f"{_WMO_EXTREMES}: most rain in one hour 0.305 m (Holt, "
                "1947); packing noise reaches 1e-4 below 0",
            ),
        ),
        (
            r"e",
            _r(
                -0.01,
                0.01,
                "m",
                "evaporation is limited by available energy: 1000 W/m² of "
                "latent heat is 1.5 mm/h; ERA5 counts evaporation negative",
            ),
        ),
        (r"lsm", _r(0.0, 1.0, "1", "land-sea mask is a fraction")),
        # stations (ingest/stations.STATION_CHANNELS)
        (
            r"prcp",
            _r(
                0.0,
                1900.0,
                "mm day**-1",
                f"{_WMO_EXTREMES}: most rain in 24 h 1825 mm (Foc-Foc, La Réunion, 1966)",
            ),
        ),
        (
            r"snow",
            _r(
                0.0,
                2000.0,
                "mm day**-1",
                "most snowfall in 24 h ~1930 mm (Silver Lake, Colorado, 1921; NOAA NCEI record)",
            ),
        ),
        (r"evap", _r(0.0, 100.0, "mm day**-1", "Class-A pan evaporation stays below ~30 mm/day")),
        (r"snwd", _r(0.0, 15000.0, "mm", "deepest measured snow cover 11.46 m (Tamarack, 1911)")),
        (
            r"wesd|swe",
            _r(
                0.0,
                10000.0,
                "mm",
                "snow water equivalent of the deepest snow packs (11 m of snow at < 900 kg/m³)",
            ),
        ),
        (r"tmax|tmin|tavg|tobs|tair", _AIR_T),
        (
            r"tsoil",
            _r(
                200.0,
                360.0,
                "K",
                "soil temperatures span air extremes plus surface "
                "heating (land surface up to ~350 K, Mildrexler et al. 2011)",
            ),
        ),
        (
            r"awnd|ustar",
            _r(0.0, 115.0, "m s**-1", f"{_WMO_EXTREMES}: highest surface gust 113 m/s"),
        ),
        (r"dayl", _r(0.0, 86400.0, "s", "a day length lies between 0 and 24 h")),
        (r"srad|rg", _SOLAR),
        (
            r"vp",
            _r(
                0.0,
                7000.0,
                "Pa",
                "saturation vapour pressure at the record 35 °C dew point is 5.6 kPa",
            ),
        ),
        (r"vpd", _r(0.0, 13000.0, "Pa", "saturation vapour pressure at 50 °C is 12.3 kPa")),
        (
            r"streamflow",
            _r(
                0.0,
                350000.0,
                "m**3 s**-1",
                "the Amazon's highest flows are ~3e5 m³/s (GRDC, Óbidos)",
            ),
        ),
        (r"streamflow_flag", _r(0.0, 1.0, "1", "flag code: 0 approved, 1 estimated")),
        (
            r"nee",
            _r(
                -100.0,
                100.0,
                "umol m**-2 s**-1",
                "the largest canopy CO2 uptake is ~60 "
                "µmol/m²/s (FLUXNET2015 processing, Pastorello et al. 2020)",
            ),
        ),
        (
            r"le|h",
            _r(
                -1000.0,
                1500.0,
                "W m**-2",
                "turbulent fluxes are bounded by net radiation (< 1361 W/m²) plus advection",
            ),
        ),
        (r"rh", _r(0.0, 105.0, "%", "relative humidity sensors read up to ~102 % in fog")),
        # seismic (ingest/seismic.py, seisbench.py): raw digitiser counts
        (r"(vel|acc)_[a-z0-9]", _COUNTS),
        # MODIS land layers (lower-case SDS names)
        (r"sur_refl_b\d\d|.*reflectance.*", _REFLECTANCE),
        (r".*(ndvi|evi).*", _r(-1.0, 1.0, "1", "NDVI and EVI are normalised differences")),
        (
            r".*view_?ang.*",
            _r(
                -65.0,
                65.0,
                "degree",
                "MODIS LST user guide C6: view zenith angle -65..65° (scan angle limit of MODIS)",
            ),
        ),
        (r".*(szen|vzen|zenith).*", _r(0.0, 180.0, "degree", "a zenith angle lies in 0..180°")),
        (
            r".*(raz|azimuth|azm).*",
            _r(-180.0, 360.0, "degree", "an azimuth lies in -180..180° or 0..360°"),
        ),
        (
            r"lst_.*",
            _r(
                150.0,
                360.0,
                "K",
                "MODIS LST user guide C6: valid LST from 150 K; the "
                "hottest land surface seen by MODIS is ~344 K (Mildrexler et al. 2011)",
            ),
        ),
        (r"emis_\d+", _r(0.49, 1.0, "1", "MODIS LST user guide C6: band emissivity 0.49..1")),
        (r".*view_?time.*", _r(0.0, 24.0, "h", "local solar time of the observation, 0..24 h")),
        (r"lai_1km|lai.*", _r(0.0, 10.0, "1", "MOD15 user guide: LAI valid range 0..100 × 0.1")),
        (r"fpar_1km|fpar.*", _r(0.0, 1.0, "1", "FPAR is a fraction (MOD15 user guide)")),
        (r".*day_of_year.*", _r(1.0, 366.0, "1", "a day of year")),
        (r"percent_land_in_grid", _r(0.0, 1.0, "1", "a fraction of the cell (percent / 100)")),
    )
)
# Canonical names (full match) that have no physical range, and why.
_UNBOUNDED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"amplitude"), "SEG-Y post-stack amplitudes are in arbitrary units"),
)
# QC planes are raw bit patterns: their range is their bit width, checked by the reader.
_QC_PREFIX = "QC raw bit field"


def plausible_range(var: VariableInfo) -> PlausibleRange | None:
    """The range of a canonical variable in its own units, or None if it has none."""
    for pattern, rng in RANGES:
        if pattern.fullmatch(var.name):
            src, dst = parse_units(rng.units), parse_units(var.units)
            if src == dst:
                return rng
            if src is None or dst is None or src.dimension != dst.dimension:
                return None  # another quantity that shares the name (e.g. a PDE field "u")
            lo, hi = to_canonical(np.array([rng.lo, rng.hi]), rng.units, var.units, where=var.name)
            return PlausibleRange(float(lo), float(hi), var.units, rng.source)
    return None


def unbounded_reason(var: VariableInfo) -> str | None:
    if var.long_name.startswith(_QC_PREFIX):
        return "QC bit field: raw bits, no physical range"
    for pattern, why in _UNBOUNDED:
        if pattern.fullmatch(var.name):
            return why
    return None


def likely_cause(values: np.ndarray, rng: PlausibleRange, decoding: dict[str, Any] | None) -> str:
    """The decoding mistake that would bring the values into range, if one does."""
    finite = values[np.isfinite(values)].astype(np.float64)

    def fits(alt: np.ndarray) -> bool:
        outside = (alt < rng.lo) | (alt > rng.hi)
        return bool(outside.mean() <= MAX_OUTSIDE_FRACTION)

    candidates: list[tuple[str, np.ndarray]] = []
    d = decoding or {}
    scale, offset, rule = d.get("scale_factor"), d.get("add_offset"), d.get("rule")
    if rule in ("hdf4", "cf", "divisor") and scale not in (None, 0):
        raw = {
            "hdf4": lambda v: v / scale + offset,
            "cf": lambda v: (v - offset) / scale,
            "divisor": lambda v: v * scale + offset,
        }[rule](finite)
        for other, fn in (
            ("divisor", lambda r: (r - offset) / scale),
            ("hdf4", lambda r: scale * (r - offset)),
            ("cf", lambda r: r * scale + offset),
        ):
            if other == rule:
                continue
            what = {
                "divisor": "scale_factor used as a multiplier where the product divides by it "
                "(value = raw / scale_factor)",
                "hdf4": "add_offset applied with the wrong sign (the HDF4 rule scale_factor * "
                "(raw - add_offset))"
                if rule == "cf"
                else "scale_factor used as a divisor where it multiplies (HDF4 rule)",
                "cf": "add_offset applied with the wrong sign (the CF rule raw * scale_factor + "
                "add_offset)"
                if rule == "hdf4"
                else "scale_factor used as a divisor where it multiplies (CF rule)",
            }[other]
            candidates.append((f"{what}; set scale_convention: {other} if that is right", fn(raw)))
    for factor, what in (
        (1e-2, "units: percent where a fraction is meant (or the reverse)"),
        (1e2, "units: percent where a fraction is meant (or the reverse)"),
        (1e-3, "units: a factor of 1000 (e.g. mm vs m, g/kg vs kg/kg)"),
        (1e3, "units: a factor of 1000 (e.g. mm vs m, g/kg vs kg/kg)"),
    ):
        candidates.append(
            (f"{what}; set the variable's units: in the source config", finite * factor)
        )
    candidates.append(("units: degrees Celsius labelled K; set units: degC", finite + 273.15))
    candidates.append(("units: kelvin labelled °C; set units: K", finite - 273.15))
    for what, alt in candidates:
        if fits(alt):
            return what
    return "no single decoding or units mistake explains it: the data may be damaged"


def _decoding(arr: GridArray | SeriesArray, name: str, fmt: str) -> dict[str, Any]:
    d = (arr.attrs.get("decoding") or {}).get(name)
    if d is not None:
        return d
    return {"rule": f"{fmt} reader: file values, converted to canonical units"}


class PlausibilityCheck:
    """The plausibility check of one unit, fed block by block (a time block of a grid, or a
    whole series array): :meth:`add` each block, then :meth:`result` (raises on reject).

    Counts, min/max and the outside fraction are over the whole unit; the likely cause of a
    rejection is judged on the valid values of the first block with values out of range."""

    def __init__(self, policy: str, fmt: str, where: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"plausibility={policy!r}: choose one of {list(POLICIES)}")
        self.policy, self.fmt, self.where = policy, fmt, where
        self.variables: dict[str, dict[str, Any]] = {}
        self.evidence: dict[str, np.ndarray] = {}  # variable -> valid values of a bad block
        self.time_stamp = None

    def add(self, arr: GridArray | SeriesArray, values: np.ndarray) -> None:
        """Count the values (``arr``'s layout, any leading extent) of one block of ``arr``."""
        if isinstance(arr, SeriesArray):
            self.time_stamp = arr.attrs.get("time_stamp", self.time_stamp)
        for j, var in enumerate(arr.variables):
            vals = values[:, j]
            finite = vals[np.isfinite(vals)]
            entry = self.variables.setdefault(var.name, {
                "units": var.units, "min": None, "max": None, "n_valid": 0, "n_outside": 0,
                "decoding": _decoding(arr, var.name, self.fmt),
            })  # fmt: skip
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
                entry["min"] = lo if entry["min"] is None else min(lo, entry["min"])
                entry["max"] = hi if entry["max"] is None else max(hi, entry["max"])
            entry["n_valid"] += int(finite.size)
            why = unbounded_reason(var)
            rng = None if why else plausible_range(var)
            if rng is None:
                entry["range"] = None
                entry["range_source"] = why or "no range registered"
                continue
            entry["range"] = [rng.lo, rng.hi]
            entry["range_source"] = rng.source
            outside = int(((finite < rng.lo) | (finite > rng.hi)).sum())
            entry["n_outside"] += outside
            if outside and var.name not in self.evidence:
                self.evidence[var.name] = finite

    def result(self) -> dict[str, Any]:
        """The record entry; raises :class:`ReaderError` when the policy rejects the unit."""
        problems: list[str] = []
        for name, entry in self.variables.items():
            outside, n_valid = entry["n_outside"], entry["n_valid"]
            if entry.get("range") is None or not outside:
                continue
            if self.policy != "off" and outside > MAX_OUTSIDE_FRACTION * n_valid:
                rng = PlausibleRange(*entry["range"], entry["units"], entry["range_source"])
                cause = likely_cause(self.evidence[name], rng, entry["decoding"])
                problems.append(
                    f"{name}: {outside} of {n_valid} valid values "
                    f"({outside / n_valid:.2%}) lie outside the plausible range "
                    f"[{rng.lo:g}, {rng.hi:g}] {entry['units']} ({rng.source}); observed "
                    f"[{entry['min']:.6g}, {entry['max']:.6g}]. Likely cause: {cause}"
                )
        out: dict[str, Any] = {"policy": self.policy, "variables": self.variables}
        if self.time_stamp is not None:
            out["time_stamp"] = self.time_stamp
        if problems and self.policy == "reject":
            raise ReaderError(
                self.where,
                "implausible values after decoding — "
                + "; ".join(problems)
                + ". Fix: correct the decoding as suggested, or set plausibility: warn (keep and "
                "record) or off for this source if the values are right.",
            )
        if problems:
            out["warnings"] = problems
        return out


def check_arrays(
    arrays: Sequence[GridArray | SeriesArray], policy: str, fmt: str, where: str
) -> dict[str, Any]:
    """Check every variable of a unit; returns the record entry, raises ReaderError on reject."""
    check = PlausibilityCheck(policy, fmt, where)
    for arr in arrays:
        check.add(arr, arr.values)
    return check.result()


def merge_checks(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per variable over a source's units: min, max, counts, range, distinct decoding rules."""
    merged: dict[str, dict[str, Any]] = {}
    stamps: set[str] = set()
    warnings: list[str] = []
    for rec in records:
        checks = rec.get("plausibility")
        if not checks:
            continue
        if checks.get("time_stamp"):
            stamps.add(checks["time_stamp"])
        warnings.extend(f"{rec['unit']}: {w}" for w in checks.get("warnings", []))
        for name, e in checks["variables"].items():
            m = merged.setdefault(name, {
                "units": e["units"], "min": None, "max": None, "n_valid": 0, "n_outside": 0,
                "range": e.get("range"), "range_source": e.get("range_source"), "decoding": [],
            })  # fmt: skip
            for key, pick in (("min", min), ("max", max)):
                if e[key] is not None:
                    m[key] = e[key] if m[key] is None else pick(m[key], e[key])
            m["n_valid"] += e["n_valid"]
            m["n_outside"] += e["n_outside"]
            if e["decoding"] not in m["decoding"]:
                m["decoding"].append(e["decoding"])
    out: dict[str, Any] = {"variables": merged}
    if stamps:
        out["time_stamp"] = sorted(stamps)
    if warnings:
        out["warnings"] = warnings
    return out
