"""Packed satellite layers (MODIS HDF4-EOS, HDF5 grids): scale/offset rule, fill, units → values.

Which rule turns a stored integer into a physical value is decided per layer, in this order, and
the decision is written into the array's ``attrs["decoding"]`` (then the unit's record and the
manifest) with where it came from:

1. the source option ``scale_convention`` when it is not ``"auto"``;
2. a rule the file itself states in a text attribute of the layer or of the file (MOD11_L2's
   ``Slope_and_Offset_Usage``, MOD08's "scale_factor * (Stored Integer - add_offset)"): an
   attribute that writes ``scale_factor * (x - add_offset)`` means ``hdf4``, ``x * scale_factor +
   add_offset`` means ``cf``, ``x / scale_factor`` means ``divisor``;
3. the product's documented rule (:data:`PRODUCT_RULES`, each with its user guide);
4. the HDF4 calibration rule ``scale_factor * (raw - add_offset)`` (HDF4 User's Guide,
   ``SDsetcal``), which the MODIS land products without a rule of their own follow.

The rules: ``hdf4`` ``scale * (raw - offset)``; ``cf`` ``raw * scale + offset`` (CF 1.8 §8.1);
``divisor`` ``(raw - offset) / scale`` (MOD13: ``scale_factor`` = 10000 is what the stored
integer was multiplied by). They agree only when ``add_offset`` is 0 and the scale is a
multiplier; a wrong choice is caught afterwards by the plausibility stage (plausibility.py),
which names the likely cause.

Units: the layer's ``units`` attribute, else the product's documented units for layers that carry
none (:data:`LAYER_UNITS`), else the source config's per-variable ``units`` override, which also
wins over the attribute. A layer with none of them is refused, naming the override to set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..units import known_units, parse_units, to_canonical
from ..variables import VariableInfo
from .base import ReaderError

ScaleConvention = Literal["cf", "hdf4", "divisor"]
ScaleOption = Literal["auto", "cf", "hdf4", "divisor"]

RULES: dict[str, str] = {
    "hdf4": "value = scale_factor * (raw - add_offset)",
    "cf": "value = raw * scale_factor + add_offset",
    "divisor": "value = (raw - add_offset) / scale_factor",
}

# (product short-name pattern, rule, documentation). Product = LP DAAC short name (MOD13Q1 ...).
PRODUCT_RULES: tuple[tuple[re.Pattern[str], ScaleConvention, str], ...] = (
    (
        re.compile(r"^M[OY]D13"),
        "divisor",
        "MODIS VI user guide C6 (Didan, Munoz, Solano, Huete 2015), SDS table: NDVI/EVI and the "
        "reflectances have scale factor 10000, i.e. value = stored integer / 10000",
    ),
    (
        re.compile(r"^M[OY]D(11|21)"),
        "cf",
        "MODIS LST user guide C6 (Wan 2013) SDS tables: value = stored × scale_factor + "
        "add_offset (view angle offset -65 over 0..130, emissivity 0.49 + 0.002 × stored)",
    ),
)
DEFAULT_RULE: tuple[ScaleConvention, str] = (
    "hdf4",
    "HDF4 calibration rule (HDF User's Guide, SDsetcal), followed by the MODIS land products",
)

# Layers a product documents without a units attribute: (product, layer, units or "bit field").
LAYER_UNITS: tuple[tuple[re.Pattern[str], re.Pattern[str], str, str], ...] = (
    (
        re.compile(r"^M[OY]D(11|21)"),
        re.compile(r"^Emis_\d+$", re.IGNORECASE),
        "1",
        "MODIS LST user guide C6: band emissivity, dimensionless (0.49..1)",
    ),
    (
        re.compile(r"^M[OY]D(11|21)"),
        re.compile(r"^Percent_land_in_grid$", re.IGNORECASE),
        "%",
        "MODIS LST user guide C6 (CMG products): percentage of land in the grid cell",
    ),
    (
        re.compile(r"^M[OY]D(11|21)"),
        re.compile(r"^Clear_sky_(days|nights)$", re.IGNORECASE),
        "bit field",
        "MODIS LST user guide C6: one bit per day (night) of the period with a clear-sky LST",
    ),
)

# units attribute spellings of bit-field layers (compared lower-case, "-"/"_" read as space).
_QC_UNITS = frozenset({"bit field", "bitfield", "bit fields", "class flag", "flag", "flags"})
_QC_NAME = re.compile(r"(^|_)qc(_|$)", re.IGNORECASE)
# MODIS spellings that name a quantity rather than a unit; both are dimensionless ("Julian day"
# is MODIS's name for the day of year 1–366 of a pixel's observation, an ordinal, not JD).
_MODIS_UNIT_SPELLINGS = {
    "reflectance": "1", "Julian day": "1", "none": "1", "NDVI": "1", "EVI": "1", "n/a": "1",
}  # fmt: skip
# A text attribute that states a rule. The stored value is any word: "data", "x", "SI".
_STATED = (
    ("hdf4", re.compile(r"scale_factor\s*\*\s*\(\s*[\w ]+?\s*-\s*add_offset\s*\)", re.I)),
    ("cf", re.compile(r"\*\s*scale_factor\s*\)?\s*\+\s*add_offset", re.I)),
    ("cf", re.compile(r"scale_factor\s*\*\s*[\w ]+?\s*\+\s*add_offset", re.I)),
    ("divisor", re.compile(r"/\s*scale_factor", re.I)),
)
# HDF-EOS metadata blocks are ODL, not rules; skipped when looking for a stated rule.
_ODL = re.compile(r"^(Old)?(Core|Struct|Archive)Metadata\.\d+$")


def scalar(attrs: Mapping[str, Any], key: str) -> float | None:
    if key not in attrs:
        return None
    try:
        arr = np.asarray(attrs[key], dtype=np.float64).ravel()
    except (TypeError, ValueError):  # "n/a" (MOD21 QC layers)
        return None
    return float(arr[0]) if arr.size else None


def pair(attrs: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    if key not in attrs:
        return None
    try:
        arr = np.asarray(attrs[key], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None
    return (float(arr[0]), float(arr[1])) if arr.size == 2 else None


def text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8", "replace").rstrip("\x00")
    if isinstance(value, np.ndarray) and value.size == 1:
        return text(value.ravel()[0])
    return str(value).rstrip("\x00")


@dataclass(frozen=True)
class Layer:
    """How one layer is decoded: the context a rule and the units are chosen in."""

    name: str
    product: str | None = None  # LP DAAC short name, e.g. "MOD13Q1"
    option: ScaleOption = "auto"
    file_attrs: Mapping[str, Any] | None = None
    units_override: str | None = None  # from the source config's `units:`
    default_rule: ScaleConvention | None = None  # the reader's, instead of DEFAULT_RULE


def _layer_units(product: str | None, name: str) -> tuple[str, str] | None:
    for prod, layer, units, doc in LAYER_UNITS:
        if product and prod.search(product) and layer.search(name):
            return units, doc
    return None


def is_qc(name: str, attrs: Mapping[str, Any], product: str | None = None) -> bool:
    units = text(attrs.get("units", "")).lower().replace("-", " ").replace("_", " ").strip()
    table = _layer_units(product, name)
    return (
        units in _QC_UNITS
        or bool(_QC_NAME.search(name))
        or ("units" not in attrs and table is not None and table[0] == "bit field")
    )


def stated_rule(
    layer_attrs: Mapping[str, Any], file_attrs: Mapping[str, Any]
) -> tuple[ScaleConvention, str] | None:
    """The rule a text attribute of the layer (first) or of the file states, and where."""
    for scope, attrs in (("layer", layer_attrs), ("file", file_attrs)):
        for key, value in attrs.items():
            if _ODL.match(str(key)) or not isinstance(value, str | bytes | np.bytes_):
                continue
            s = text(value)
            if "scale_factor" not in s:
                continue
            for rule, pattern in _STATED:
                if pattern.search(s):
                    return rule, f"stated in the {scope} attribute {key!r}"  # type: ignore[return-value]
    return None


def choose_rule(layer: Layer, layer_attrs: Mapping[str, Any]) -> tuple[ScaleConvention, str]:
    """(rule, where it came from) for one layer; see the module docstring for the order."""
    if layer.option != "auto":
        return layer.option, "source option scale_convention"
    stated = stated_rule(layer_attrs, layer.file_attrs or {})
    if stated is not None:
        return stated
    for pattern, rule, doc in PRODUCT_RULES:
        if layer.product and pattern.search(layer.product):
            return rule, f"product rule for {layer.product}: {doc}"
    if layer.default_rule is not None:
        return layer.default_rule, "the reader's scale_convention option (default)"
    return DEFAULT_RULE


def apply_scale(
    raw64: np.ndarray, scale: float, offset: float, convention: ScaleConvention
) -> np.ndarray:
    if convention == "hdf4":
        return scale * (raw64 - offset)  # HDF4 SDgetcal: value = cal * (raw - offset)
    if convention == "divisor":
        return (raw64 - offset) / scale
    return raw64 * scale + offset  # CF: unpacked = packed * scale_factor + add_offset


def invalid(raw: np.ndarray, attrs: Mapping[str, Any], *, valid_range: bool) -> np.ndarray:
    """(H, W) bool: fill/missing codes and (optionally) raw values outside the valid range."""
    raw64 = raw.astype(np.float64)  # exact for every integer type up to 2**53
    bad = np.isnan(raw64)
    for key in ("_FillValue", "missing_value"):
        if key in attrs:
            for code in np.asarray(attrs[key], dtype=np.float64).ravel():
                bad |= raw64 == code
    if valid_range:
        bounds = pair(attrs, "valid_range")
        lo = bounds[0] if bounds else scalar(attrs, "valid_min")
        hi = bounds[1] if bounds else scalar(attrs, "valid_max")
        if lo is not None:
            bad |= raw64 < lo
        if hi is not None:
            bad |= raw64 > hi
    return bad


def _units(
    attrs: Mapping[str, Any],
    layer: Layer,
    scale: float,
    offset: float,
    convention: ScaleConvention,
) -> tuple[str, str, str]:
    """(source spelling, canonical units, where the units came from) of a science layer."""
    if layer.units_override is not None:
        spelling, origin = layer.units_override, "source config units override"
    elif "units" in attrs:
        spelling, origin = text(attrs["units"]).strip(), "units attribute"
    elif (table := _layer_units(layer.product, layer.name)) is not None:
        spelling, origin = table[0], f"product documentation: {table[1]}"
    else:
        raise ValueError(
            f"{layer.name} has no units attribute and its product documents none here. Fix: set "
            f"its units in the source config, e.g. `units: {{{layer.name.lower()}: '1'}}` for a "
            "dimensionless layer (ratio, index, count)."
        )
    spelling = _MODIS_UNIT_SPELLINGS.get(spelling, spelling)
    unit = parse_units(spelling)
    if unit is None:
        raise ValueError(
            f"{layer.name} has unknown units {spelling!r} ({origin}); known (aliases accepted): "
            f"{known_units()}. Fix: set its units in the source config (`units:`), or register "
            "the spelling in scigpt.data_pipeline.units._UNITS."
        )
    if unit.dimension != "dimensionless":
        return spelling, unit.symbol, origin
    bounds = pair(attrs, "valid_range")
    if unit.symbol == "%" and bounds is not None and layer.units_override is None:
        top = max(apply_scale(np.asarray(bounds), scale, offset, convention))
        if top <= 1.0:
            # The label describes the stored integer (0–100 %); scale_factor has already turned
            # it into a fraction (MOD15 FPAR). Converting again would divide by 100 twice.
            return "1", "1", f"{origin} (percent label of the stored integer; scaled to 0-1)"
    return spelling, "1", origin


def _fill(attrs: Mapping[str, Any]) -> list[float] | None:
    codes = [
        float(c)
        for key in ("_FillValue", "missing_value")
        if key in attrs
        for c in np.asarray(attrs[key], dtype=np.float64).ravel()
    ]
    return codes or None


def decode_science(
    raw: np.ndarray,
    attrs: Mapping[str, Any],
    layer: Layer,
    *,
    apply_valid_range: bool,
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Decoded float32 values (NaN where invalid), canonical units and the decoding record."""
    scale = scalar(attrs, "scale_factor")
    offset = scalar(attrs, "add_offset")
    scale = 1.0 if scale is None else scale
    offset = 0.0 if offset is None else offset
    convention, rule_from = choose_rule(layer, attrs)
    if convention == "divisor" and scale == 0:
        raise ValueError(f"{layer.name}: scale_factor 0 cannot be a divisor")
    spelling, canonical, units_from = _units(attrs, layer, scale, offset, convention)
    bad = invalid(raw, attrs, valid_range=apply_valid_range)
    # Decode and convert in float64, then round once to float32.
    values = apply_scale(raw.astype(np.float64), scale, offset, convention)
    values = to_canonical(values, spelling, canonical, where=layer.name).astype(np.float32)
    values[bad] = np.nan
    record = {
        "rule": convention,
        "formula": RULES[convention],
        "rule_from": rule_from,
        "scale_factor": scale,
        "add_offset": offset,
        "fill_value": _fill(attrs),
        "valid_range": pair(attrs, "valid_range") if apply_valid_range else None,
        "units": spelling,
        "units_from": units_from,
    }
    return values, canonical, record


def qc_planes(raw: np.ndarray, attrs: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
    """Raw bit-field planes (suffix, float32 values with NaN at fill) of one QC layer."""
    bad = invalid(raw, attrs, valid_range=False)
    if not np.issubdtype(raw.dtype, np.integer):
        values = raw.astype(np.float32)
        values[bad] = np.nan
        return [("", values)]
    # Bits, not signed numbers: a set top bit must not read as a negative value.
    bits = raw.view(np.dtype(f"u{raw.dtype.itemsize}")).astype(np.uint64)
    n_planes = max(1, raw.dtype.itemsize // 2)
    planes: list[tuple[str, np.ndarray]] = []
    for k in range(n_planes):
        plane = ((bits >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.float32)
        plane[bad] = np.nan
        suffix = "" if n_planes == 1 else f"_bits{16 * k:02d}_{16 * k + 15:02d}"
        planes.append((suffix, plane))
    return planes


@dataclass
class Decoded:
    infos: list[VariableInfo]
    planes: list[np.ndarray]  # each (T, H, W) float32
    qc_names: list[str]
    decoding: dict[str, dict[str, Any]]  # canonical name → decoding record


def decode_field(
    out: Decoded,
    raw: np.ndarray,
    attrs: Mapping[str, Any],
    layer: Layer,
    *,
    path: Path,
    apply_valid_range: bool,
) -> None:
    """Append one layer (raw (T, H, W)) to ``out``: decoded science values or QC planes."""
    canonical = layer.name.lower()
    long_name = text(attrs.get("long_name", layer.name))
    if is_qc(layer.name, attrs, layer.product):
        stacked = [qc_planes(r, attrs) for r in raw]  # per time step
        for k, (suffix, _) in enumerate(stacked[0]):
            bits = f", bits {suffix[5:].replace('_', '-')}" if suffix else ""
            out.infos.append(
                VariableInfo(
                    name=canonical + suffix,
                    units="1",
                    modality="grid",
                    long_name=f"QC raw bit field{bits}: {long_name}",
                )
            )
            out.planes.append(np.stack([s[k][1] for s in stacked]))
            out.qc_names.append(canonical + suffix)
            out.decoding[canonical + suffix] = {
                "rule": "raw bits",
                "fill_value": _fill(attrs),
                "units": "1",
                "units_from": "bit field (QC layer)",
            }
        return
    try:
        decoded = [
            decode_science(r, attrs, layer, apply_valid_range=apply_valid_range) for r in raw
        ]
    except ValueError as exc:  # a units problem is a problem of this file: name it
        raise ReaderError(path, str(exc)) from None
    out.infos.append(
        VariableInfo(name=canonical, units=decoded[0][1], modality="grid", long_name=long_name)
    )
    out.planes.append(np.stack([d[0] for d in decoded]))
    out.decoding[canonical] = decoded[0][2]


def check_units_override(
    units: Mapping[str, str] | None, names: list[str], path: Path
) -> dict[str, str]:
    """The override keyed by layer name; a key that names no layer read is refused."""
    if not units:
        return {}
    lower = {n.lower(): n for n in names}
    unknown = sorted(k for k in units if k.lower() not in lower)
    if unknown:
        raise ReaderError(
            path,
            f"units override names {unknown}, which are not layers read from this file "
            f"(read: {sorted(lower)}). Fix: correct the names under the source's `units:`.",
        )
    for key, value in units.items():
        if parse_units(value) is None:
            raise ValueError(
                f"units override {key}: {value!r} is not a known unit; known (aliases accepted): "
                f"{known_units()}"
            )
    return {lower[k.lower()]: v for k, v in units.items()}
