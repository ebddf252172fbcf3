"""MODIS HDF4-EOS tiles and generic HDF5 satellite grids → :class:`GridArray`.

Conventions (both readers):

* **Packing.** Per layer, one of three rules turns the stored integer into a value:
  ``hdf4`` ``scale_factor * (raw - add_offset)`` (HDF4 ``SDsetcal``; most MODIS land products),
  ``cf`` ``raw * scale_factor + add_offset`` (MOD11/MOD21 LST, CF/netCDF files) or ``divisor``
  ``(raw - add_offset) / scale_factor`` (MOD13 vegetation indices, whose ``scale_factor`` is
  10000). The rule is the source option ``scale_convention`` if set, else the one a text
  attribute of the layer or file states, else the product's documented one, else ``hdf4``
  (packing.py); it is recorded per variable in ``attrs["decoding"]`` with where it came from.
* **Masking.** ``_FillValue`` (and CF ``missing_value``) → NaN; raw values outside
  ``valid_range`` (or ``valid_min``/``valid_max``) → NaN. Both tests are on the *raw* stored
  values, as the MODIS products and CF (for packed attributes) define them.
* **QC layers.** Bit-field SDS (units such as ``"bit field"``/``"class-flag"``, or ``qc`` in
  the name) are kept as raw integers, units ``"1"``, long name ``"QC raw bit field: ..."``: only
  ``_FillValue`` → NaN (a valid range is meaningless on a bit pattern). Values are float32 in a
  :class:`GridArray`, which is exact only below 2**24, so an integer QC word wider than 16 bits
  is split into 16-bit planes ``<name>_bits00_15``, ``<name>_bits16_31`` (…), each exact.
* **Units.** The source config's ``units`` override, else the ``units`` attribute, else the
  product's documented units for layers without one (MOD11 emissivity "1", percent land "%",
  clear-sky day bits), go through :mod:`..units`; dimensionless quantities
  (reflectance, ``m^2/m^2``, percent) become ``"1"`` (fractions), angles stay ``"degree"``.
  MODIS labels some scaled fractions with the units of the *stored* integer (FPAR: ``"Percent"``
  with ``scale_factor`` 0.01, valid raw 0–100): when the decoded valid range tops out at ≤ 1 a
  percent label is taken as already converted, so FPAR decodes to 0–1 and is not divided by
  100 a second time.
* **Geolocation.** 2-D ``lat``/``lon`` ``(H, W)`` of pixel centres, degrees, from the closed-form
  inverse of the sinusoidal projection (:func:`sinusoidal_inverse`). Pixels that lie outside
  the projection's domain (``|lon| > 180°``: the corners of the tiles at the dateline) get NaN
  coordinates and NaN values; PROJ would wrap them onto the far side of the globe.
* **Time.** One step per file: the start of the composite period (``RANGEBEGINNINGDATE`` /
  ``RANGEBEGINNINGTIME`` of ``CoreMetadata.0``, else of ``OldCoreMetadata.0``), cross-checked
  against the ``.AYYYYDDD.`` acquisition date of the LP DAAC file name (year + day of year, i.e.
  the first day of the 8-/16-day composite); either alone suffices, a disagreement is an error.
* **Empty variables.** A selected variable with no valid pixel (e.g. every MCD15A2 pixel of the
  ocean tile h00v08 holds the land-cover code 254) is a :class:`ReaderError` that names the
  variables: a tile without signal is rejected, not ingested as all-NaN.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import GridArray, ReaderError
from .packing import (
    Decoded,
    Layer,
    ScaleOption,
    check_units_override,
    decode_field,
    is_qc,
)

# Sphere of the MODIS land grids (GCTP_SNSOID ProjParams[0]); MODIS Land grid user guide.
MODIS_SPHERE_RADIUS = 6371007.181  # m

# LP DAAC names: <product>.A<YYYY><DDD>.h<HH>v<VV>.<collection>.<production time>.hdf
_NAME_DATE = re.compile(r"\.A(\d{4})(\d{3})\.")
_NAME_TILE = re.compile(r"^(?P<product>[A-Z0-9]+)\.A\d{7}\.(?P<tile>h\d{2}v\d{2})\.")


# --------------------------------------------------------------------------- projection


def sinusoidal_inverse(
    x: np.ndarray,
    y: np.ndarray,
    *,
    radius: float = MODIS_SPHERE_RADIUS,
    lon0: float = 0.0,
    false_easting: float = 0.0,
    false_northing: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) in degrees of sinusoidal ``x``/``y`` (metres) on a sphere of ``radius``.

    ``lat = y' / R``, ``lon = lon0 + x' / (R cos lat)`` with ``x' = x - false_easting``,
    ``y' = y - false_northing`` (Snyder 1987, "Map projections — a working manual", §30).
    Points outside the map (``|y'| > πR/2`` or ``|lon - lon0| > 180°``) get NaN for both.
    """
    x = np.asarray(x, dtype=np.float64) - false_easting
    y = np.asarray(y, dtype=np.float64) - false_northing
    x, y = np.broadcast_arrays(x, y)
    phi = y / radius
    with np.errstate(divide="ignore", invalid="ignore"):
        dlam = x / (radius * np.cos(phi))
    # At the pole cos(phi) is 0: only x' == 0 is on the map there, and its longitude is lon0.
    dlam = np.where(x == 0.0, 0.0, dlam)
    outside = (np.abs(phi) > np.pi / 2) | ~(np.abs(dlam) <= np.pi)
    lat = np.degrees(phi)
    lon = lon0 + np.degrees(dlam)
    lon = np.where(lon > 180.0, lon - 360.0, np.where(lon < -180.0, lon + 360.0, lon))
    lat = np.where(outside, np.nan, lat)
    lon = np.where(outside, np.nan, lon)
    return lat, lon


def _packed_dms_to_degrees(value: float) -> float:
    """GCTP packed DMS (``DDDMMMSSS.SS``) → decimal degrees."""
    sign = -1.0 if value < 0 else 1.0
    v = abs(value)
    deg = int(v // 1_000_000)
    minutes = int((v - deg * 1_000_000) // 1_000)
    seconds = v - deg * 1_000_000 - minutes * 1_000
    return sign * (deg + minutes / 60.0 + seconds / 3600.0)


@dataclass(frozen=True)
class SinusoidalGrid:
    """One HDF-EOS2 GCTP_SNSOID grid as StructMetadata describes it."""

    name: str
    shape: tuple[int, int]  # (H, W) = (YDim, XDim)
    upper_left: tuple[float, float]  # (x, y) m: outer corner of the upper-left pixel
    lower_right: tuple[float, float]  # (x, y) m: outer corner of the lower-right pixel
    radius: float  # m
    lon0: float  # degrees, central meridian
    false_easting: float  # m
    false_northing: float  # m
    pixel_centre: bool  # HDFE_CENTER (default): values sit at pixel centres, else at UL corners
    fields: tuple[str, ...]

    @property
    def pixel_size(self) -> tuple[float, float]:
        """(dx, dy) in metres; dy is positive (rows run southwards)."""
        h, w = self.shape
        return (
            (self.lower_right[0] - self.upper_left[0]) / w,
            (self.upper_left[1] - self.lower_right[1]) / h,
        )

    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Projected x (W,) and y (H,) in metres of each pixel's registration point."""
        h, w = self.shape
        dx, dy = self.pixel_size
        shift = 0.5 if self.pixel_centre else 0.0
        x = self.upper_left[0] + (np.arange(w) + shift) * dx  # (W,)
        y = self.upper_left[1] - (np.arange(h) + shift) * dy  # (H,)
        return x, y

    def latlon(self) -> tuple[np.ndarray, np.ndarray]:
        """2-D (lat, lon) of shape (H, W), degrees; NaN outside the projection's domain."""
        x, y = self.xy()
        return sinusoidal_inverse(
            x[None, :],
            y[:, None],
            radius=self.radius,
            lon0=self.lon0,
            false_easting=self.false_easting,
            false_northing=self.false_northing,
        )

    @property
    def proj4(self) -> str:
        return (
            f"+proj=sinu +R={self.radius} +lon_0={self.lon0} +x_0={self.false_easting} "
            f"+y_0={self.false_northing} +units=m +no_defs"
        )


# --------------------------------------------------------------------------- ODL metadata


def _joined_attr(attrs: Mapping[str, Any], base: str) -> str | None:
    """``base.0`` + ``base.1`` + ...: HDF-EOS splits metadata over 32 000-character attributes."""
    parts: list[str] = []
    k = 0
    while f"{base}.{k}" in attrs:
        parts.append(str(attrs[f"{base}.{k}"]).rstrip("\x00"))
        k += 1
    return "".join(parts) if parts else None


def _odl_scalar(block: str, key: str) -> str | None:
    m = re.search(rf"^\s*{re.escape(key)}\s*=\s*(.+?)\s*$", block, re.MULTILINE)
    return m.group(1).strip('"') if m else None


def _odl_floats(text: str, where: str, path: Path) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.strip("()").split(","))
    except ValueError:
        raise ReaderError(path, f"{where}: cannot parse {text!r} as numbers") from None


def _parse_grids(text: str, source: str, path: Path) -> list[SinusoidalGrid]:
    """Every GRID_n group of an HDF-EOS2 StructMetadata text."""
    grids: list[SinusoidalGrid] = []
    pattern = r"^\s*GROUP\s*=\s*(GRID_\d+)\s*$(.*?)^\s*END_GROUP\s*=\s*\1\s*$"
    for m in re.finditer(pattern, text, re.MULTILINE | re.DOTALL):
        block = m.group(2)
        name = _odl_scalar(block, "GridName") or m.group(1)
        where = f"{source} grid {name!r}"
        projection = _odl_scalar(block, "Projection")
        if projection != "GCTP_SNSOID":
            raise ReaderError(
                path,
                f"{where} has projection {projection!r}; only GCTP_SNSOID (the MODIS land "
                "sinusoidal grid) is supported. Fix: reproject the product to sinusoidal or "
                "add its projection to ingest/modis.py.",
            )
        origin = _odl_scalar(block, "GridOrigin") or "HDFE_GD_UL"
        if origin != "HDFE_GD_UL":
            raise ReaderError(path, f"{where} has GridOrigin {origin}; only HDFE_GD_UL is known")
        values = {}
        for key in ("XDim", "YDim", "UpperLeftPointMtrs", "LowerRightMtrs", "ProjParams"):
            raw = _odl_scalar(block, key)
            if raw is None:
                raise ReaderError(path, f"{where} lacks {key}; the file is not an HDF-EOS2 grid")
            values[key] = _odl_floats(raw, f"{where} {key}", path)
        params = values["ProjParams"] + (0.0,) * 13
        if params[0] <= 0:
            raise ReaderError(
                path, f"{where} ProjParams[0] (sphere radius) is {params[0]}; expected > 0"
            )
        registration = _odl_scalar(block, "PixelRegistration") or "HDFE_CENTER"
        grids.append(
            SinusoidalGrid(
                name=name,
                shape=(int(values["YDim"][0]), int(values["XDim"][0])),
                upper_left=values["UpperLeftPointMtrs"][:2],  # type: ignore[arg-type]
                lower_right=values["LowerRightMtrs"][:2],  # type: ignore[arg-type]
                radius=params[0],
                lon0=_packed_dms_to_degrees(params[4]),
                false_easting=params[6],
                false_northing=params[7],
                pixel_centre=registration != "HDFE_CORNER",
                fields=tuple(re.findall(r'DataFieldName\s*=\s*"([^"]+)"', block)),
            )
        )
    if not grids:
        raise ReaderError(path, f"{source} holds no GRID group; the file is not an HDF-EOS2 grid")
    return grids


def _odl_object_value(text: str, name: str) -> str | None:
    """``VALUE`` of ``OBJECT = name`` in ECS core metadata (ODL)."""
    m = re.search(
        rf"OBJECT\s*=\s*{name}\s*$.*?VALUE\s*=\s*\"?([^\"\n]*?)\"?\s*$.*?END_OBJECT\s*=\s*{name}",
        text,
        re.MULTILINE | re.DOTALL,
    )
    return m.group(1).strip() if m else None


def _datetime(date: str, clock: str | None, what: str, path: Path) -> np.datetime64:
    text = (date if not clock else f"{date}T{clock}").rstrip("Z")
    try:
        return np.datetime64(text, "ns")
    except ValueError:
        raise ReaderError(path, f"{what} {text!r} is not an ISO date/time") from None


def _time_from_name(path: Path) -> np.datetime64 | None:
    m = _NAME_DATE.search(path.name)
    if m is None:
        return None
    year, doy = int(m.group(1)), int(m.group(2))
    start = np.datetime64(f"{year:04d}-01-01", "ns")
    days_in_year = 366 if (year % 4 == 0 and year % 100 != 0) or year % 400 == 0 else 365
    if not 1 <= doy <= days_in_year:
        raise ReaderError(path, f"file name day of year {doy} is not in 1..{days_in_year}")
    return start + np.timedelta64(doy - 1, "D")


def _product(attrs: Mapping[str, Any]) -> str | None:
    """ECS short name (``MOD13Q1``) from CoreMetadata.0, else OldCoreMetadata.0."""
    for base in ("CoreMetadata", "OldCoreMetadata"):
        core = _joined_attr(attrs, base)
        name = _odl_object_value(core, "SHORTNAME") if core else None
        if name:
            return name
    return None


def _time(attrs: Mapping[str, Any], path: Path) -> tuple[np.datetime64, dict[str, Any]]:
    """Start of the composite period, and provenance notes for ``GridArray.attrs``."""
    from_name = _time_from_name(path)
    for base in ("CoreMetadata", "OldCoreMetadata"):
        core = _joined_attr(attrs, base)
        date = _odl_object_value(core, "RANGEBEGINNINGDATE") if core else None
        if core is None or date is None:
            continue
        begin = _datetime(
            date, _odl_object_value(core, "RANGEBEGINNINGTIME"), f"{base} begin", path
        )
        end_date = _odl_object_value(core, "RANGEENDINGDATE")
        end = (
            _datetime(end_date, _odl_object_value(core, "RANGEENDINGTIME"), f"{base} end", path)
            if end_date
            else None
        )
        if from_name is not None and begin.astype("datetime64[D]") != from_name:
            raise ReaderError(
                path,
                f"{base}.0 RANGEBEGINNINGDATE {date} disagrees with the file name date "
                f"{from_name.astype('datetime64[D]')}. Fix: restore the original LP DAAC file "
                "name (the file may have been renamed or mislabelled).",
            )
        notes = {"time_source": f"{base}.0", "time_end": None if end is None else str(end)}
        return begin, notes
    if from_name is not None:
        return from_name, {"time_source": "file name (.AYYYYDDD.)", "time_end": None}
    raise ReaderError(
        path,
        "no time: neither CoreMetadata.0/OldCoreMetadata.0 RANGEBEGINNINGDATE nor a .AYYYYDDD. "
        "date in the file name. Fix: keep the LP DAAC file name.",
    )


def _finish(
    out: Decoded,
    lat: np.ndarray,
    lon: np.ndarray,
    time: np.ndarray,
    source: str,
    attrs: dict[str, Any],
    path: Path,
) -> GridArray:
    """Mask off-map pixels, refuse all-invalid variables, build the GridArray."""
    values = np.stack(out.planes, axis=1)  # (T, V, H, W)
    if lat.ndim == 2:
        off_map = ~(np.isfinite(lat) & np.isfinite(lon))  # (H, W)
    else:
        off_map = ~(np.isfinite(lat)[:, None] & np.isfinite(lon)[None, :])  # (H, W)
    values[:, :, off_map] = np.nan
    empty = [info.name for v, info in enumerate(out.infos) if not np.isfinite(values[:, v]).any()]
    if empty:
        raise ReaderError(
            path,
            f"variables {empty} have no valid pixel (every value is fill, outside valid_range "
            "or off the map). Fix: drop this file (e.g. an all-water tile), or select other "
            "variables.",
        )
    attrs = {**attrs, "qc_variables": out.qc_names, "off_map_pixels": int(off_map.sum()),
             "decoding": out.decoding}  # fmt: skip
    return GridArray(
        values=values,
        variables=out.infos,
        lat=lat,
        lon=lon,
        time=time,
        source=source,
        attrs=attrs,
    )


def _check_paths(paths: Sequence[str | Path], reader: str) -> list[Path]:
    if isinstance(paths, str | Path):
        raise ValueError(f"{reader} takes a sequence of paths, got the single path {paths!r}")
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError(f"{reader} got no paths. Fix: pass the files to read.")
    return out


def _resolve(
    requested: Iterable[str], available: Sequence[str], path: Path, what: str
) -> list[str]:
    """File names of requested fields: exact, or case-insensitive (canonical lower-case names)."""
    lower = {a.lower(): a for a in available}
    names: list[str] = []
    for name in requested:
        found = name if name in available else lower.get(name.lower())
        if found is None:
            raise ReaderError(path, f"{what} {name!r} is not in the file; it has {list(available)}")
        if found in names:
            raise ValueError(f"variables names {name!r} twice (as {found!r})")
        names.append(found)
    return names


# --------------------------------------------------------------------------- HDF4-EOS


def read_modis_hdf4(
    paths: Sequence[str | Path],
    *,
    variables: Sequence[str] | None = None,
    qc: bool = True,
    apply_valid_range: bool = True,
    scale_convention: ScaleOption = "auto",
    units: Mapping[str, str] | None = None,
) -> list[GridArray]:
    """Read MODIS HDF4-EOS2 sinusoidal tiles: one :class:`GridArray` per file and grid (T=1).

    ``variables`` are SDS names (as in the file, or lower-case); ``None`` takes every non-QC
    SDS that belongs to a grid, in file order. ``qc`` appends the file's QC layers (raw bits).
    ``apply_valid_range`` masks raw values outside ``valid_range``. ``scale_convention``
    (``"auto"``, ``"hdf4"``, ``"cf"``, ``"divisor"``) forces one packing rule for every layer;
    ``units`` maps layer names to units that replace (or supply) their units attribute; a name
    that is not a layer read is refused. Canonical names are the lower-case SDS names; see the
    module docstring for packing, units, geolocation and time.
    """
    paths = _check_paths(paths, "read_modis_hdf4")
    try:
        from pyhdf.error import HDF4Error
        from pyhdf.SD import SD, SDC
    except ImportError as exc:
        raise RuntimeError(
            "read_modis_hdf4 needs pyhdf. Fix: pip install 'scigpt[formats]'."
        ) from exc

    arrays: list[GridArray] = []
    for path in paths:
        try:
            sd = SD(str(path), SDC.READ)
        except HDF4Error as exc:
            raise ReaderError(
                path,
                f"cannot open as HDF4 ({exc}). Fix: check the file is a complete HDF4 file "
                "(re-download it if truncated).",
            ) from None
        try:
            arrays.extend(
                _read_hdf4_file(sd, path, variables, qc, apply_valid_range, scale_convention, units)
            )
        except HDF4Error as exc:
            raise ReaderError(path, f"HDF4 read failed ({exc}); the file is corrupt") from None
        finally:
            sd.end()
    return arrays


# pyhdf attribute types → (SWIG buffer class in pyhdf.hdfext, numpy dtype of its elements)
_HDF4_ATTR_TYPES = {
    4: ("array_byte", "u1"),  # CHAR8: text
    3: ("array_byte", "u1"),  # UCHAR8
    21: ("array_byte", "u1"),  # UINT8
    20: ("array_int8", "i1"),
    22: ("array_int16", "i2"),
    23: ("array_uint16", "u2"),
    24: ("array_int32", "i4"),
    25: ("array_uint32", "u4"),
    5: ("array_float32", "f4"),
    6: ("array_float64", "f8"),
}


def hdf4_attributes(obj: Any, count: int) -> dict[str, Any]:
    """The ``count`` attributes of a pyhdf ``SD`` or ``SDS``, equal to ``obj.attributes()``.

    pyhdf's ``attributes()`` converts every value element by element in Python, which for the
    HDF-EOS metadata text (tens of kB per file) was 95 % of a MODIS read; here each attribute
    is read by the same C call into the same buffer, then copied out in one piece (the buffer's
    address is the SWIG object's ``this``). Values: ``str`` for text, a Python scalar for one
    number, a list for several — as pyhdf gives them.
    """
    from pyhdf import hdfext
    from pyhdf.error import HDF4Error

    out: dict[str, Any] = {}
    for index in range(count):
        status, name, data_type, n_values = hdfext.SDattrinfo(obj._id, index)
        if status < 0:
            raise HDF4Error(f"SDattrinfo failed on attribute {index}")
        if data_type not in _HDF4_ATTR_TYPES or n_values < 1:
            out[name] = obj.attr(index).get()  # anything unusual: pyhdf's own conversion
            continue
        cls, dtype = _HDF4_ATTR_TYPES[data_type]
        buf = getattr(hdfext, cls)(n_values)
        if hdfext.SDreadattr(obj._id, index, buf) < 0:
            raise HDF4Error(f"SDreadattr failed on attribute {name!r}")
        raw = ctypes.string_at(int(buf.this), n_values * np.dtype(dtype).itemsize)
        if data_type == 4:
            out[name] = raw.decode("latin-1")  # pyhdf: "".join(chr(b) for b in buf)
        else:
            values = np.frombuffer(raw, dtype=dtype).tolist()
            out[name] = values[0] if n_values == 1 else values
    return out


def _read_hdf4_file(
    sd: Any,
    path: Path,
    variables: Sequence[str] | None,
    qc: bool,
    apply_valid_range: bool,
    scale_convention: ScaleOption,
    units: Mapping[str, str] | None,
) -> list[GridArray]:
    attrs = hdf4_attributes(sd, sd.info()[1])
    # The metadata of the file as written wins; a subsetter (HEG) keeps the parent tile's in
    # Old*Metadata.0, so that is only a fallback, and only if its grid matches the SDS shapes.
    source = "StructMetadata"
    text = _joined_attr(attrs, source)
    if text is None:
        source = "OldStructMetadata"
        text = _joined_attr(attrs, source)
    if text is None:
        raise ReaderError(
            path, "no StructMetadata.0 (nor OldStructMetadata.0): not an HDF-EOS2 grid file"
        )
    grids = _parse_grids(text, f"{source}.0", path)
    grid_of = {field: grid for grid in grids for field in grid.fields}
    sds_info = sd.datasets()  # name -> (dims, shape, type, index)
    in_file = sorted(sds_info, key=lambda n: sds_info[n][3])
    on_grid = [n for n in in_file if n in grid_of]
    sds_attrs = {}
    for name in in_file:
        sds = sd.select(name)
        sds_attrs[name] = hdf4_attributes(sds, sds.info()[4])
        sds.endaccess()
    m = _NAME_TILE.match(path.name)
    product = _product(attrs) or (m["product"] if m else None)
    qc_layers = [n for n in on_grid if is_qc(n, sds_attrs[n], product)]

    if variables is None:
        chosen = [n for n in on_grid if n not in qc_layers]
    else:
        chosen = _resolve(variables, in_file, path, "SDS")
    if qc:
        chosen += [n for n in qc_layers if n not in chosen]
    if not chosen:
        raise ReaderError(path, f"no SDS selected; grid fields are {on_grid}")

    time, time_notes = _time(attrs, path)
    overrides = check_units_override(units, chosen, path)
    label = f"{m['product']}.{m['tile']}" if m else path.stem
    by_grid: dict[str, list[str]] = {}
    for name in chosen:
        if name not in grid_of:
            raise ReaderError(path, f"SDS {name!r} is in no grid of {source}.0: no geolocation")
        by_grid.setdefault(grid_of[name].name, []).append(name)

    arrays = []
    for grid_name, names in by_grid.items():
        grid = next(g for g in grids if g.name == grid_name)
        out = Decoded([], [], [], {})
        for name in names:
            shape = tuple(sds_info[name][1])
            if shape != grid.shape:
                raise ReaderError(
                    path,
                    f"{source}.0 gives grid {grid.name!r} as {grid.shape[0]}×{grid.shape[1]} "
                    f"but SDS {name!r} is {'×'.join(map(str, shape))}: the metadata describes "
                    "another (the parent?) tile, so this subset cannot be geolocated. Fix: "
                    "subset with a tool that rewrites StructMetadata.0 (HEG, GDAL).",
                )
            sds = sd.select(name)
            try:
                raw = np.asarray(sds.get())[None]  # (1, H, W)
                layer = Layer(name, product, scale_convention, attrs, overrides.get(name))
                decode_field(
                    out, raw, sds_attrs[name], layer, path=path, apply_valid_range=apply_valid_range
                )
            finally:
                sds.endaccess()
        lat, lon = grid.latlon()  # (H, W) each
        dx, dy = grid.pixel_size
        notes = {
            "path": str(path),
            "product": product,
            "tile": m["tile"] if m else None,
            "grid": grid.name,
            "projection": "sinusoidal",
            "proj4": grid.proj4,
            "upper_left_m": grid.upper_left,
            "lower_right_m": grid.lower_right,
            "pixel_size_m": (dx, dy),
            "struct_metadata": f"{source}.0",
            **time_notes,
        }
        suffix = f":{grid.name}" if len(by_grid) > 1 else ""
        arrays.append(
            _finish(out, lat, lon, np.array([time]), f"modis-hdf4:{label}{suffix}", notes, path)
        )
    return arrays


# --------------------------------------------------------------------------- generic HDF5
