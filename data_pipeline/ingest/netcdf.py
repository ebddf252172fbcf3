"""CF netCDF reader (ERA5 as written by the CDS) → :class:`GridArray` of canonical variables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cftime
import numpy as np
import xarray as xr

from ..units import to_canonical
from ..variables import ERA5_VARIABLES, VariableInfo, era5_variable, era5_variable_info
from .base import GridArray, LazyGrid, select_variables
from .time_join import Piece, join_pieces, time_window

_LAT_NAMES = ("latitude", "lat")
_LON_NAMES = ("longitude", "lon")
# "valid_time" is what the new (2024+) CDS netCDF writer calls the time axis.
_TIME_NAMES = ("time", "valid_time")
# Pressure-level axis names: CDS netCDF (old, new), cfgrib, CMIP.
_LEVEL_NAMES = ("level", "pressure_level", "isobaricInhPa", "plev", "hybrid", "model_level")
# Model-level axes (ERA5 on its 137 hybrid levels): canonical names get "_ml<n>" ("t_ml137").
_MODEL_LEVEL_NAMES = ("hybrid", "model_level")
# Units assumed when the level coordinate has no units attribute: CMIP's plev is in Pa, the
# ECMWF-derived names are in hPa.
# Calendars whose dates xarray decodes to datetime64 (CF 1.8 §4.4.1); others are model calendars.
_DATETIME64_CALENDARS = frozenset({"standard", "gregorian", "proleptic_gregorian"})
_LEVEL_DEFAULT_UNITS = {
    "level": "hPa",
    "pressure_level": "hPa",
    "isobaricInhPa": "hPa",
    "plev": "Pa",
}


@dataclass(frozen=True)
class _Field:
    """Where one canonical variable lives: file, netCDF variable, level index."""

    info: VariableInfo
    path: Path
    var: str
    level_index: int | None
    units: str
    # Extra dimensions of length 1 (OISST's zlev, CMIP's height), read at their only index.
    squeezed: tuple[str, ...] = ()


def _find_coord(ds: xr.Dataset, names: Sequence[str], what: str, path: Path) -> str:
    for name in names:
        if name in ds.variables:
            return name
    raise ValueError(
        f"{path}: no {what} coordinate; looked for {list(names)}, file has {sorted(ds.variables)}. "
        "Fix: rename the coordinate to one of the accepted names."
    )


def _open(path: Path) -> xr.Dataset:
    try:
        # mask_and_scale decodes packed int16 (scale_factor/add_offset) and turns _FillValue and
        # missing_value into NaN; xarray decodes in float64 for float64 scale factors.
        return xr.open_dataset(path, mask_and_scale=True, decode_times=True, cache=False)
    except Exception as exc:  # any backend error: refuse the file, naming it
        calendar = _calendar_problem(path)
        if calendar is not None:
            raise ValueError(f"{path}: {calendar}") from exc
        raise ValueError(
            f"cannot open {path} as netCDF: {type(exc).__name__}: {exc}. "
            "Fix: check the file is a complete netCDF3/netCDF4 file (re-download it if truncated)."
        ) from exc


def _calendar_problem(path: Path) -> str | None:
    """Why a time axis cannot be decoded, when the reason is its calendar (not damage)."""
    try:
        ds = xr.open_dataset(path, decode_times=False, cache=False)
    except Exception:
        return None  # not a calendar problem: the file itself does not open
    with ds:
        for name, var in ds.variables.items():
            units = str(var.attrs.get("units", ""))
            if " since " not in units:
                continue
            calendar = str(var.attrs.get("calendar", "standard"))
            reference = units.split(" since ", 1)[1].strip()
            try:
                cftime.num2date(np.asarray(var.values).ravel()[:1], units, calendar)
            except Exception as exc:
                default = (
                    "" if "calendar" in var.attrs else " (no calendar attribute: the CF default)"
                )
                return (
                    f"time axis {name!r} cannot be decoded in its calendar {calendar!r}{default}: "
                    f"{exc}. The reference date {reference!r} of units {units!r} does not exist "
                    "in that calendar (the standard calendar is mixed Julian/Gregorian and skips "
                    "1582-10-05..14). This is a calendar problem, not a damaged file. Fix: set "
                    f"the variable's calendar attribute (e.g. ncatted -a calendar,{name},o,c,"
                    "proleptic_gregorian) if its dates are proleptic Gregorian, or correct the "
                    "reference date in its units."
                )
    return None


def _is_model_level(ds: xr.Dataset, name: str) -> bool:
    """Model (hybrid) levels: by coordinate name, or a unitless ``level`` that says so."""
    if name in _MODEL_LEVEL_NAMES:
        return True
    attrs = ds[name].attrs
    text = f"{attrs.get('long_name', '')} {attrs.get('standard_name', '')}".lower()
    return "model" in text or "hybrid" in text


def _levels(ds: xr.Dataset, name: str, path: Path) -> tuple[np.ndarray, str]:
    """Level values and type: pressure levels in hPa, or model level numbers."""
    coord = ds[name]
    values = np.asarray(coord.values, dtype=np.float64)
    if _is_model_level(ds, name):
        return values, "model"
    units = coord.attrs.get("units", _LEVEL_DEFAULT_UNITS.get(name, "hPa"))
    return to_canonical(values, units, "hPa", where=f"{path}:{name}"), "pressure"


def _scan(ds: xr.Dataset, path: Path) -> tuple[list[_Field], list[str]]:
    """Canonical fields a file offers (no data read yet), and its unrecognised variables."""
    lat = _find_coord(ds, _LAT_NAMES, "latitude", path)
    lon = _find_coord(ds, _LON_NAMES, "longitude", path)
    time = _find_coord(ds, _TIME_NAMES, "time", path)
    fields: list[_Field] = []
    unknown: list[str] = []
    for var_name, da in ds.data_vars.items():
        dims = tuple(str(d) for d in da.dims)
        # Only gridded variables are fields; bounds and other 0-D/1-D helpers are not data.
        if lat not in dims or lon not in dims:
            continue
        if str(var_name) not in ERA5_VARIABLES:
            unknown.append(f"{path}:{var_name}")
            continue
        level_dims = [d for d in dims if d in _LEVEL_NAMES]
        allowed = {lat, lon, time, *level_dims}
        # A length-1 extra dimension (a depth or height of 0 or 2 m, one member) holds one
        # value per point: it is dropped losslessly and named in the decoding record.
        squeezed = tuple(d for d in dims if d not in allowed and ds.sizes[d] == 1)
        extra = [d for d in dims if d not in allowed and d not in squeezed]
        if extra or time not in dims or len(level_dims) > 1:
            raise ValueError(
                f"{path}:{var_name} has dims {dims}; the reader takes (time, [level,] lat, lon). "
                "Fix: select one member/expver (e.g. ds.isel(number=0)) and write it out, or "
                "drop the variable from the file."
            )
        units = da.attrs.get("units")
        if units is None:
            raise ValueError(
                f"{path}:{var_name} has no units attribute. Fix: add the units attribute "
                f"(canonical: {era5_variable(str(var_name)).units!r})."
            )
        if level_dims:
            levels, level_type = _levels(ds, level_dims[0], path)
            for k, level in enumerate(levels):
                info = era5_variable_info(str(var_name), float(level), level_type)
                fields.append(_Field(info, path, str(var_name), k, str(units), squeezed))
        else:
            info = era5_variable_info(str(var_name), None)
            fields.append(_Field(info, path, str(var_name), None, str(units), squeezed))
    return fields, unknown


def _load(
    ds: xr.Dataset, field: _Field, dims: tuple[str, str, str], steps: slice | None = None
) -> np.ndarray:
    """(T, H, W) float32 values of one field (its time ``steps`` only, if given), converted to
    canonical units."""
    da = ds[field.var].isel(dict.fromkeys(field.squeezed, 0))
    if field.level_index is not None:
        level_dim = next(d for d in da.dims if d in _LEVEL_NAMES)
        da = da.isel({level_dim: field.level_index})
    if steps is not None:
        da = da.isel({dims[0]: steps})
    values = np.asarray(da.transpose(*dims).values)  # (T, H, W), float64 after unpacking
    where = f"{field.path}:{field.var}"
    values = to_canonical(values, field.units, field.info.units, where=where)
    # Decode (and convert) in float64 first, then round once to float32.
    return values.astype(np.float32)


class OpenFiles:
    """The files of one lazily read unit, at most ``keep`` open at a time (least recently used
    closed first), each closed once all its pieces are read. An open netCDF4/HDF5 file holds
    ~1 MB of metadata cache plus a chunk cache per variable read, so holding every file of a
    unit open would grow with its length."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.open: dict[Path, xr.Dataset] = {}
        self.pending: dict[Path, int] = {}  # pieces of each file not yet read to their end

    def adopt(self, path: Path, ds: xr.Dataset, pieces: int) -> None:
        """Keep ``ds`` (opened to scan it) for the reads of its ``pieces``."""
        self.pending[path] = pieces
        self.open[path] = ds
        self._trim()

    def get(self, path: Path) -> xr.Dataset:
        ds = self.open.pop(path, None) or _open(path)
        self.open[path] = ds  # most recent last
        self._trim()
        return ds

    def _trim(self) -> None:
        while len(self.open) > self.keep:
            self.open.pop(next(iter(self.open))).close()

    def release(self, path: Path) -> None:
        self.pending[path] = self.pending.get(path, 1) - 1
        if self.pending[path] <= 0:
            ds = self.open.pop(path, None)
            if ds is not None:
                ds.close()

    def close(self) -> None:
        for ds in self.open.values():
            ds.close()
        self.open.clear()


def field_pieces(
    ds: xr.Dataset,
    path: Path,
    fields: Sequence[_Field],
    window: slice,
    times: np.ndarray,
    files: OpenFiles,
) -> dict[str, Piece]:
    """One lazily read :class:`Piece` per field of a file (its steps in ``window``), read
    through ``files``."""
    dims = (
        _find_coord(ds, _TIME_NAMES, "time", path),
        _find_coord(ds, _LAT_NAMES, "latitude", path),
        _find_coord(ds, _LON_NAMES, "longitude", path),
    )
    base = window.start or 0

    def reader(field: _Field):
        def read(a: int, b: int) -> np.ndarray:
            return _load(files.get(path), field, dims, slice(base + a, base + b))

        return read

    return {
        f.info.name: Piece(path, times[window], reader(f), lambda: files.release(path))
        for f in fields
    }


def read_netcdf(
    paths: Sequence[str | Path],
    variables: Sequence[str] | None = None,
    time_slice: tuple[str, str] | None = None,
) -> GridArray:
    """Read CF netCDF files into one :class:`GridArray`, decoded lazily (``LazyGrid``).

    Files may hold one or many variables each, over the same or consecutive periods (ERA5 as
    downloaded: one variable per file per day, month or year): the files of one variable are
    concatenated in time, different variables are joined per time step and must cover the same
    times (``time_join.py``). Pressure-level variables are split into one canonical variable
    per level (``u`` at 850 hPa → ``u850``) and all values are converted to canonical units.
    ``variables=None`` returns every field in path order, then file order, then level order;
    otherwise exactly the named canonical variables in the given order. ``time_slice``: ISO
    (start, stop), both inclusive. All files must share the same lat and lon axes.
    """
    if isinstance(paths, (str, Path)):
        raise ValueError(f"read_netcdf takes a sequence of paths, got the single path {paths!r}")
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_netcdf got no paths. Fix: pass the netCDF files to read.")
    if time_slice is not None and len(time_slice) != 2:
        raise ValueError(f"time_slice={time_slice!r}: give (start, stop) ISO times")
    # Metadata is read here, one file at a time; the values later, through ``files``.
    files = OpenFiles()
    pieces: dict[str, list[Piece]] = {}
    first: dict[str, tuple[_Field, dict]] = {}  # name -> (field, decoding record)
    unknown: list[str] = []
    ref_path = paths[0]
    lat = lon = np.zeros(0)
    for k, path in enumerate(paths):
        ds = _open(path)
        try:
            # Variables are split per level before combining, so files may carry different
            # level sets; the horizontal grid must match exactly (no regridding).
            if k == 0:
                lat = np.asarray(ds[_find_coord(ds, _LAT_NAMES, "latitude", path)].values, "f8")
                lon = np.asarray(ds[_find_coord(ds, _LON_NAMES, "longitude", path)].values, "f8")
            _check_axes(ds, path, ref_path, lat, lon)
            times = _times(ds, _find_coord(ds, _TIME_NAMES, "time", path), path)
            fields, file_unknown = _scan(ds, path)
            unknown.extend(file_unknown)
            window = time_window(times, time_slice, path)
            for name, piece in field_pieces(ds, path, fields, window, times, files).items():
                pieces.setdefault(name, []).append(piece)
            for field in fields:
                if field.info.name not in first:
                    first[field.info.name] = (field, _decoding(ds[field.var], field))
        except BaseException:
            ds.close()
            files.close()
            raise
        files.adopt(path, ds, len(fields))

    try:
        names = select_variables(list(first), variables, unknown, paths[0])
        time, load = join_pieces(names, pieces)
        if not len(time):
            raise ValueError(
                f"{ref_path}: no time step selected (time_slice={time_slice!r}). "
                "Fix: pick a time_slice inside the files' times."
            )
    except BaseException:
        files.close()
        raise
    infos = [first[n][0].info for n in names]
    decoding = {n: first[n][1] for n in names}
    return GridArray(
        values=LazyGrid((len(time), len(names), len(lat), len(lon)), load, files.close),
        variables=infos,
        lat=lat,
        lon=lon,
        time=time,
        source=f"era5-netcdf:{ref_path.resolve().parent.name}",
        attrs={"decoding": decoding},
    )


def _decoding(da: xr.DataArray, field: _Field) -> dict:
    """The CF unpacking xarray applied (from the variable's encoding) and the units' origin."""
    enc = da.encoding

    def num(key: str) -> float | list[float] | None:
        value = enc.get(key)
        if value is None:
            return None
        arr = np.asarray(value, dtype=np.float64).ravel()
        return float(arr[0]) if arr.size == 1 else arr.tolist()

    packed = "scale_factor" in enc or "add_offset" in enc
    return {
        "rule": "cf" if packed else "none (stored values)",
        "formula": "value = raw * scale_factor + add_offset" if packed else None,
        "rule_from": "CF conventions 1.8 §8.1 (xarray mask_and_scale)",
        "scale_factor": num("scale_factor"),
        "add_offset": num("add_offset"),
        "fill_value": [x for x in (num("_FillValue"), num("missing_value")) if x is not None]
        or None,
        "units": field.units,
        "units_from": "units attribute",
        "squeezed": {d: _coordinate_value(da, d) for d in field.squeezed} or None,
    }


def _coordinate_value(da: xr.DataArray, dim: str) -> float | str | None:
    """The one value of a length-1 dimension (its coordinate), for the decoding record."""
    if dim not in da.coords:
        return None
    value = np.asarray(da.coords[dim].values).ravel()[0]
    return float(value) if np.issubdtype(type(value), np.number) else str(value)


def _times(ds: xr.Dataset, name: str, path: Path) -> np.ndarray:
    values = np.asarray(ds[name].values)
    if not np.issubdtype(values.dtype, np.datetime64):
        calendar = ds[name].encoding.get("calendar", ds[name].attrs.get("calendar"))
        if calendar is not None and str(calendar).lower() not in _DATETIME64_CALENDARS:
            raise ValueError(
                f"{path}: time coordinate {name!r} is in the {calendar!r} calendar (a model "
                "calendar: e.g. 360_day has 30 February, noleap has no 29 February), which has "
                "no exact equivalent in the standard calendar the shards use. Fix: convert it "
                "to the standard calendar first and say how days are matched, e.g. xarray's "
                "ds.convert_calendar('standard', align_on='year'), then write the file out."
            )
        raise ValueError(
            f"{path}: time coordinate {name!r} did not decode to datetimes (dtype {values.dtype}). "
            "Fix: give it CF units such as 'hours since 1900-01-01' and a standard calendar."
        )
    return values.astype("datetime64[ns]")


def _check_axes(
    ds: xr.Dataset,
    path: Path,
    ref_path: Path,
    lat: np.ndarray,
    lon: np.ndarray,
    time: np.ndarray | None = None,
) -> None:
    """Same latitude and longitude axes as the reference file (and the same time axis, if
    given)."""
    names = {
        "latitude": _find_coord(ds, _LAT_NAMES, "latitude", path),
        "longitude": _find_coord(ds, _LON_NAMES, "longitude", path),
    }
    for what, ref in (("latitude", lat), ("longitude", lon)):
        values = np.asarray(ds[names[what]].values, dtype=np.float64)
        if values.ndim != 1 or not np.array_equal(values, ref):
            raise ValueError(
                f"{path} and {ref_path} have different {what} axes. "
                "Fix: regrid/subset them to one grid before ingest."
            )
    if time is None:
        return
    this = _times(ds, _find_coord(ds, _TIME_NAMES, "time", path), path)
    if not np.array_equal(this, time):
        first = _first_difference(this, time)
        raise ValueError(
            f"{path} and {ref_path} have different time axes ({len(this)} vs {len(time)} steps; "
            f"first difference: {first}). Fix: pass files that cover the same times."
        )


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"step {i}: {x} vs {y}"
    return f"lengths differ after step {min(len(a), len(b)) - 1}"


def _grid_shape(lat: xr.DataArray, lon: xr.DataArray) -> tuple[int, int]:
    """(H, W) of a grid with 1-D axes or 2-D (curvilinear) coordinates."""
    return tuple(lat.shape) if lat.ndim == 2 else (int(lat.size), int(lon.size))  # type: ignore[return-value]


def probe_netcdf(
    paths: Sequence[str | Path], **_options: object
) -> tuple[list[str], tuple[int, int]]:
    """The canonical variables ``paths`` offer and their grid (H, W), from metadata alone (no
    values are read): what ``scigpt validate`` checks a source's ``variables`` against."""
    names: list[str] = []
    shape: tuple[int, int] | None = None
    for path in map(Path, paths):
        with _open(path) as ds:
            fields, _ = _scan(ds, path)
            names += [f.info.name for f in fields if f.info.name not in names]
            if shape is None:
                lat = ds[_find_coord(ds, _LAT_NAMES, "latitude", path)]
                shape = _grid_shape(lat, ds[_find_coord(ds, _LON_NAMES, "longitude", path)])
    assert shape is not None, "probe_netcdf needs at least one path"
    return names, shape


def read_netcdf_source(
    paths: Sequence[str | Path],
    *,
    variables: Sequence[str] | None = None,
    time_slice: tuple[str, str] | None = None,
) -> list[GridArray]:
    """Reader-registry entry point: all ``paths`` of one work unit read as one grid (within
    ``time_slice``: ISO start and stop, both inclusive; set per unit by time-grouped units)."""
    return [read_netcdf(paths, variables, time_slice)]


def probe_times(path: Path, **_options: object) -> tuple[list[str], np.ndarray]:
    """The canonical variables of one file and its time axis, from metadata (work_units.py
    groups one-variable-per-file downloads by time with it)."""
    with _open(path) as ds:
        fields, _ = _scan(ds, path)
        times = _times(ds, _find_coord(ds, _TIME_NAMES, "time", path), path)
    return [f.info.name for f in fields], times
