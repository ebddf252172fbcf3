"""Generic HDF5 / netCDF-4 satellite grids (h5py) → :class:`GridArray`.

Decoding (fill, valid range, scale convention, units, empty-variable check) is shared with the
MODIS HDF4 reader, so an HDF4 tile rewritten as HDF5 reads back identically (tested).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from .base import GridArray, ReaderError
from .modis import _check_paths, _datetime, _finish, _time_from_name
from .packing import Decoded, Layer, ScaleConvention, check_units_override, decode_field
from .packing import text as _text

# Calendars numpy's datetime64 models (CF 1.8 §4.4.1), and the Gregorian reform date.
_GREGORIAN = frozenset({"standard", "gregorian", "proleptic_gregorian"})
_GREGORIAN_REFORM = np.datetime64("1582-10-15", "us")
_NS_RANGE = (np.datetime64("1678-01-01", "us"), np.datetime64("2262-01-01", "us"))
# CF/UDUNITS spellings of degrees (CF 1.8 §4.1, §4.2), compared lower-case.
_DEGREE_UNITS = {
    "lat": frozenset({"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen",
                      "degreesn", "degrees", "degree", "deg"}),
    "lon": frozenset({"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee",
                      "degreese", "degrees", "degree", "deg"}),
}  # fmt: skip
_TIME_UNITS_NS = {
    "seconds": 10**9, "second": 10**9, "secs": 10**9, "sec": 10**9, "s": 10**9,
    "minutes": 60 * 10**9, "minute": 60 * 10**9, "min": 60 * 10**9,
    "hours": 3600 * 10**9, "hour": 3600 * 10**9, "hr": 3600 * 10**9, "h": 3600 * 10**9,
    "days": 86400 * 10**9, "day": 86400 * 10**9, "d": 86400 * 10**9,
}  # fmt: skip


def _cf_times(
    values: np.ndarray, units: str, where: str, path: Path, calendar: str | None = None
) -> np.ndarray:
    """CF ``<unit> since <epoch>`` numbers → datetime64[ns]: the standard or proleptic
    Gregorian calendar only (numpy's); a model calendar is refused, not read as Gregorian."""
    m = re.fullmatch(r"\s*(\w+)\s+since\s+(.+?)\s*", units)
    if m is None or m.group(1).lower() not in _TIME_UNITS_NS:
        raise ReaderError(
            path, f"{where} units {units!r} are not '<seconds|minutes|hours|days> since <date>'"
        )
    if calendar is not None and calendar.lower() not in _GREGORIAN:
        raise ReaderError(
            path,
            f"{where} is in the {calendar!r} calendar (CF 1.8 §4.4.1; a model calendar, e.g. "
            "360_day has 30 February); read as Gregorian its dates would drift by about 5 "
            "days a year from the reference date. Fix: convert the file to the standard "
            "calendar first (e.g. xarray's ds.convert_calendar('standard', align_on='year')), "
            "or pass time=<a root attribute holding an ISO date>.",
        )
    text = m.group(2).replace(" ", "T", 1).rstrip("Z")
    try:
        # Microseconds: numpy's nanosecond datetimes wrap silently before 1678 and after 2262.
        epoch = np.datetime64(text, "us")
    except ValueError:
        raise ReaderError(path, f"{where} reference date {m.group(2)!r} is not ISO") from None
    if epoch < _GREGORIAN_REFORM and (calendar or "standard").lower() != "proleptic_gregorian":
        raise ReaderError(
            path,
            f"{where} counts from {m.group(2)!r}, before 1582-10-15, in the mixed Julian/"
            "Gregorian calendar, which numpy does not model. Fix: set the calendar attribute "
            "to proleptic_gregorian if that is what the dates are, or read the file as netCDF.",
        )
    step = _TIME_UNITS_NS[m.group(1).lower()] // 1000  # µs per unit
    values = np.asarray(values, dtype=np.float64).ravel()
    if np.all(values == np.round(values)):
        us = values.astype(np.int64) * step  # integer arithmetic: exact
    else:
        us = np.round(values * step).astype(np.int64)
    times = epoch + us.astype("timedelta64[us]")
    if len(times) and (times.min() < _NS_RANGE[0] or times.max() > _NS_RANGE[1]):
        raise ReaderError(
            path, f"{where} holds dates outside 1678-2262, which datetime64[ns] cannot hold"
        )
    return times.astype("datetime64[ns]")


def _hdf5_time(f: h5py.File, time: str | None, path: Path) -> np.ndarray:
    if time is None:
        t = _time_from_name(path)
        if t is None:
            raise ReaderError(
                path, "time=None needs a .AYYYYDDD. date in the file name. Fix: pass time=..."
            )
        return np.array([t])
    if time in f:
        ds = f[time]
        if "units" not in ds.attrs:
            raise ReaderError(path, f"time dataset {time!r} has no units attribute")
        calendar = _text(ds.attrs["calendar"]).strip() if "calendar" in ds.attrs else None
        where = f"time dataset {time!r}"
        return _cf_times(ds[()], _text(ds.attrs["units"]), where, path, calendar)
    if time in f.attrs:
        return np.array([_datetime(_text(f.attrs[time]), None, f"attribute {time!r}", path)])
    raise ReaderError(
        path,
        f"no time dataset or root attribute {time!r}; datasets: {list(f)}. Fix: pass "
        "time=<dataset or attribute name>, or time=None to use the .AYYYYDDD. file-name date.",
    )


def _check_geographic(ds: h5py.Dataset, name: str, what: str, path: Path) -> None:
    """Refuse a coordinate dataset whose CF attributes say it is not geographic latitude or
    longitude in degrees: a rotated-pole ``grid_latitude`` or a projection ``x``/``y`` read as
    latitude/longitude would put every value in the wrong place without a word."""
    wanted = "latitude" if what == "lat" else "longitude"
    standard = _text(ds.attrs["standard_name"]).strip() if "standard_name" in ds.attrs else None
    units = _text(ds.attrs["units"]).strip() if "units" in ds.attrs else None
    bad = []
    if standard is not None and standard != wanted:
        bad.append(f"standard_name {standard!r}")
    if units is not None and units.lower() not in _DEGREE_UNITS[what]:
        bad.append(f"units {units!r}")
    if bad:
        rotated = standard in ("grid_latitude", "grid_longitude")
        kind = "rotated-pole grid coordinates" if rotated else "not geographic degrees"
        raise ReaderError(
            path,
            f"{what} dataset {name!r} has {' and '.join(bad)}: {kind}, not {wanted} in degrees "
            "(CF 1.8 §4.1-4.2, §5.6). Fix: pass lat=/lon= datasets of true latitude/longitude "
            "(2-D, e.g. computed from the grid mapping), or regrid the file first.",
        )


def _hdf5_coord(f: h5py.File, name: str, what: str, path: Path) -> np.ndarray:
    if name not in f or not isinstance(f[name], h5py.Dataset):
        raise ReaderError(
            path, f"no {what} dataset {name!r}; the file has {list(f)}. Fix: pass {what}=..."
        )
    _check_geographic(f[name], name, what, path)
    values = np.asarray(f[name][()], dtype=np.float64)
    if values.ndim not in (1, 2):
        raise ReaderError(path, f"{what} dataset {name!r} has shape {values.shape}; need 1-D/2-D")
    return values


def read_hdf5_grid(
    paths: Sequence[str | Path],
    *,
    variables: Sequence[str],
    lat: str = "lat",
    lon: str = "lon",
    time: str | None = "time",
    scale_convention: ScaleConvention = "cf",
    apply_valid_range: bool = True,
    units: Mapping[str, str] | None = None,
) -> list[GridArray]:
    """Read gridded HDF5 satellite products (h5py): one :class:`GridArray` per file.

    ``variables`` are dataset paths (``"sur_refl_b01"``, ``"/Grid/Data Fields/NDVI"``), each
    ``(H, W)`` or ``(T, H, W)``; the canonical name is the lower-case last path component.
    ``lat``/``lon`` name 1-D ``(H,)``/``(W,)`` or 2-D ``(H, W)`` coordinate datasets in degrees.
    ``time`` names a dataset with CF units (``"days since 2017-01-01"``) or a root attribute
    holding an ISO date; ``None`` takes the ``.AYYYYDDD.`` date of the file name.
    ``scale_convention`` is ``"cf"`` (``raw * scale + offset``), ``"hdf4"``
    (``scale * (raw - offset)``, MODIS products converted from HDF4) or ``"divisor"``
    (``(raw - offset) / scale``); a rule a text attribute states wins (packing.py). ``units``
    maps dataset names to units that replace (or supply) their units attribute. Masking, QC
    layers and units follow the module docstring, identically to :func:`read_modis_hdf4`.
    """
    paths = _check_paths(paths, "read_hdf5_grid")
    if isinstance(variables, str) or not variables:
        raise ValueError(
            f"read_hdf5_grid needs variables=[dataset, ...], got {variables!r}. Fix: list the "
            "datasets to read."
        )
    if scale_convention not in ("cf", "hdf4", "divisor"):
        raise ValueError(
            f"scale_convention must be 'cf', 'hdf4' or 'divisor', got {scale_convention!r}"
        )
    arrays = []
    for path in paths:
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise ReaderError(
                path,
                f"cannot open as HDF5 ({exc}). Fix: check the file is a complete HDF5 file "
                "(re-download it if truncated).",
            ) from None
        try:
            with f:
                arrays.append(
                    _read_hdf5_file(
                        f,
                        path,
                        variables,
                        lat,
                        lon,
                        time,
                        scale_convention,
                        apply_valid_range,
                        units,
                    )
                )
        except (OSError, KeyError, RuntimeError) as exc:  # h5py errors on damaged data/objects
            raise ReaderError(path, f"HDF5 read failed ({exc}); the file is corrupt") from None
    return arrays


def _read_hdf5_file(
    f: h5py.File,
    path: Path,
    variables: Sequence[str],
    lat_name: str,
    lon_name: str,
    time_name: str | None,
    convention: ScaleConvention,
    apply_valid_range: bool,
    units: Mapping[str, str] | None,
) -> GridArray:
    lat = _hdf5_coord(f, lat_name, "lat", path)
    lon = _hdf5_coord(f, lon_name, "lon", path)
    if lat.ndim != lon.ndim or (lat.ndim == 2 and lat.shape != lon.shape):
        raise ReaderError(path, f"lat {lat.shape} and lon {lon.shape} do not form one grid")
    hw = lat.shape if lat.ndim == 2 else (len(lat), len(lon))
    time = _hdf5_time(f, time_name, path)
    out = Decoded([], [], [], {})
    overrides = check_units_override(
        units, [n.rstrip("/").rsplit("/", 1)[-1] for n in variables], path
    )
    seen: dict[str, str] = {}
    for name in variables:
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise ReaderError(path, f"dataset {name!r} is not in the file; it has {list(f)}")
        ds = f[name]
        raw = np.asarray(ds[()])
        if raw.shape == hw:
            raw = raw[None]  # (1, H, W)
        if raw.shape != (len(time), *hw):
            raise ReaderError(
                path,
                f"dataset {name!r} has shape {ds.shape}; expected (H, W) = {hw} or (T, H, W) = "
                f"{(len(time), *hw)} from lat/lon/time",
            )
        short = name.rstrip("/").rsplit("/", 1)[-1]
        if short.lower() in seen:
            raise ValueError(
                f"datasets {seen[short.lower()]!r} and {name!r} map to one canonical name "
                f"{short.lower()!r}. Fix: read them in separate sources."
            )
        seen[short.lower()] = name
        # The option is this reader's default rule; a rule the file states still wins.
        layer = Layer(short, None, "auto", dict(f.attrs), overrides.get(short), convention)
        decode_field(
            out, raw, dict(ds.attrs), layer, path=path, apply_valid_range=apply_valid_range
        )
    notes = {
        "path": str(path),
        "scale_convention": convention,
        "lat_dataset": lat_name,
        "lon_dataset": lon_name,
    }
    return _finish(out, lat, lon, time, f"hdf5-grid:{path.stem}", notes, path)
