"""Zarr reader (ARCO-ERA5 / WeatherBench-2 style stores) → :class:`GridArray` of canonical fields.

These stores name variables in long CF-like form (``temperature``, ``2m_temperature``) on
``(time, level, latitude, longitude)``; the long names are mapped to ERA5 short names here and
everything after that (level split, units, axes checks) is the netCDF reader's code, so the two
readers cannot drift apart. Stores are opened lazily (no dask): only the chunks of the requested
variables, levels and time window are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from ..units import to_canonical
from ..variables import ERA5_VARIABLES
from .base import GridArray, LazyGrid, ReaderError, select_variables
from .netcdf import (
    _LAT_NAMES,
    _LEVEL_NAMES,
    _LON_NAMES,
    _TIME_NAMES,
    _check_axes,
    _Field,
    _find_coord,
    _grid_shape,
    _load,
    _scan,
    _times,
)
from .time_join import Piece, join_pieces, time_window

# WeatherBench-2 / ARCO-ERA5 variable names → ERA5 short names (variables.ERA5_VARIABLES).
# Accumulations over a window ("total_precipitation_6hr") are other quantities and not aliased.
WB2_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "temperature": "t",
        "geopotential": "z",
        "specific_humidity": "q",
        "u_component_of_wind": "u",
        "v_component_of_wind": "v",
        "vertical_velocity": "w",
        "relative_humidity": "r",
        "2m_temperature": "t2m",
        "2m_dewpoint_temperature": "d2m",
        "10m_u_component_of_wind": "u10",
        "10m_v_component_of_wind": "v10",
        "surface_pressure": "sp",
        "mean_sea_level_pressure": "msl",
        "total_column_water": "tcw",
        "total_column_water_vapour": "tcwv",
        "total_precipitation": "tp",
        "evaporation": "e",
        "skin_temperature": "skt",
        "sea_surface_temperature": "sst",
        "land_sea_mask": "lsm",
    }
)


@contextlib.contextmanager
def _as_reader_error(path: Path) -> Iterator[None]:
    """Re-raise the netCDF helpers' ValueErrors as ReaderError (without repeating the path)."""
    try:
        yield
    except ReaderError:
        raise
    except ValueError as exc:
        msg = str(exc)
        prefix = f"{path}:"
        raise ReaderError(
            path, msg[len(prefix) :].lstrip() if msg.startswith(prefix) else msg
        ) from exc


def _open(path: Path) -> xr.Dataset:
    if not path.exists():
        raise ReaderError(path, "no such Zarr store. Fix: check the path (a store directory).")
    try:
        with warnings.catch_warnings():
            # consolidated=None tries .zmetadata first and warns when falling back: not an error.
            warnings.simplefilter("ignore", RuntimeWarning)
            # chunks=None: lazily indexed arrays, so .isel() reads only the chunks it touches.
            return xr.open_zarr(path, chunks=None, consolidated=None, mask_and_scale=True)
    except Exception as exc:  # zarr/xarray raise many types; refuse the store, naming it
        raise ReaderError(
            path,
            f"cannot open as a Zarr store: {type(exc).__name__}: {exc}. Fix: check that the path "
            "is a complete Zarr v2/v3 store (zarr.json or .zgroup at its root).",
        ) from exc


def _canonical_view(
    ds: xr.Dataset, path: Path, level_names: Sequence[str]
) -> tuple[xr.Dataset, dict[str, str], list[str]]:
    """The store's time-dependent ERA5 fields under short names, their store names, and the rest.

    The returned dataset is a lazy view (renames only); ``store_names`` maps short → store name.
    """
    with _as_reader_error(path):
        lat = _find_coord(ds, _LAT_NAMES, "latitude", path)
        lon = _find_coord(ds, _LON_NAMES, "longitude", path)
        time = _find_coord(ds, _TIME_NAMES, "time", path)
    extra_levels = [n for n in level_names if n in ds.dims and n not in _LEVEL_NAMES]
    if len(extra_levels) > 1 or (extra_levels and "level" in ds.variables):
        raise ReaderError(
            path, f"several level dims {extra_levels}; pass the one pressure-level dim name"
        )
    store_names: dict[str, str] = {}
    unknown: list[str] = []
    for var_name, da in ds.data_vars.items():
        name = str(var_name)
        if lat not in da.dims or lon not in da.dims:
            continue  # bounds, grid helpers: not data
        short = WB2_ALIASES.get(name, name)
        if short not in ERA5_VARIABLES or time not in da.dims:
            # Static fields (WB2's land_sea_mask over (lat, lon)) have no time axis to stack on.
            unknown.append(name if time in da.dims else f"{name} (static, no {time} dim)")
            continue
        if short in store_names:
            raise ReaderError(
                path,
                f"variables {store_names[short]!r} and {name!r} are both ERA5 {short!r}. "
                "Fix: drop one of them from the store.",
            )
        store_names[short] = name
    view = ds[list(store_names.values())].rename({v: k for k, v in store_names.items() if k != v})
    if extra_levels:
        # A custom level dim name becomes "level" (hPa unless its coordinate says otherwise).
        view = view.rename({extra_levels[0]: "level"})
    return view, store_names, unknown


async def _all_exist(paths: list[Any]) -> list[bool]:
    return list(await asyncio.gather(*(p.exists() for p in paths)))


def _check_chunks(
    path: Path, store_name: str, dims: tuple[str, ...], selection: dict[str, slice | int]
) -> None:
    """Refuse a read that touches a chunk absent from the store.

    Zarr reads an absent chunk as the fill value without complaint, so a deleted or never-written
    chunk would pass as data (zeros, or NaN that looks like real missing values).
    """
    import zarr
    from zarr.core.sync import sync

    arr = zarr.open_array(store=str(path), path=store_name, mode="r")
    grid = arr.shards or arr.chunks  # storage unit: a shard when the array is sharded
    ranges = []
    for dim, size, step in zip(dims, arr.shape, grid, strict=True):
        sel = selection.get(dim, slice(0, size))
        if isinstance(sel, slice):
            lo, hi = sel.start or 0, (size if sel.stop is None else sel.stop)
            ranges.append(range(lo // step, (hi - 1) // step + 1))
        else:
            ranges.append(range(sel // step, sel // step + 1))
    keys = [arr.metadata.encode_chunk_key(c) for c in itertools.product(*ranges)]
    exists = sync(_all_exist([arr.store_path / k for k in keys]))
    missing = [k for k, ok in zip(keys, exists, strict=True) if not ok]
    if missing:
        raise ReaderError(
            path,
            f"variable {store_name!r}: {len(missing)} chunk(s) in the requested window are "
            f"missing (first: {store_name}/{missing[0]}). Fix: re-download or rewrite the store; "
            "or pass missing_chunks='fill' if it was written with write_empty_chunks=False and "
            "absent chunks are truly all-missing.",
        )


def probe_zarr(
    paths: Sequence[str | Path], *, level_names: Sequence[str] = (), **_options: object
) -> tuple[list[str], tuple[int, int]]:
    """The canonical variables the stores offer and their grid (H, W), from their metadata
    alone (no chunk is read)."""
    names: list[str] = []
    shape: tuple[int, int] | None = None
    for path in map(Path, paths):
        with _open(path) as raw:
            view, _, _ = _canonical_view(raw, path, level_names)
            with _as_reader_error(path):
                fields, _ = _scan(view, path)
                if shape is None:
                    lat = view[_find_coord(view, _LAT_NAMES, "latitude", path)]
                    shape = _grid_shape(lat, view[_find_coord(view, _LON_NAMES, "lon", path)])
            names += [f.info.name for f in fields if f.info.name not in names]
    assert shape is not None, "probe_zarr needs at least one path"
    return names, shape


def probe_times(
    path: Path, *, level_names: Sequence[str] = (), **_options: object
) -> tuple[list[str], np.ndarray]:
    """The canonical variables of one store and its time axis, from metadata (work_units.py
    groups stores by time with it)."""
    with _open(path) as raw:
        view, _, _ = _canonical_view(raw, path, level_names)
        with _as_reader_error(path):
            fields, _ = _scan(view, path)
            times = _times(view, _find_coord(view, _TIME_NAMES, "time", path), path)
    return [f.info.name for f in fields], times


def _store_pieces(
    path: Path,
    raw: xr.Dataset,
    view: xr.Dataset,
    store_names: dict[str, str],
    fields: Sequence[_Field],
    window: slice,
    times: np.ndarray,
    missing_chunks: str,
) -> dict[str, Piece]:
    """One lazily read piece per field of a store; absent chunks of the window are refused
    before anything is read, a corrupt chunk when it is read."""
    time_dim = _find_coord(raw, _TIME_NAMES, "time", path)
    dims = (
        time_dim,
        _find_coord(view, _LAT_NAMES, "latitude", path),
        _find_coord(view, _LON_NAMES, "longitude", path),
    )
    out: dict[str, Piece] = {}
    for field in fields:
        store_name = store_names[field.var]
        if missing_chunks == "error" and window.stop > window.start:
            raw_dims = tuple(str(d) for d in raw[store_name].dims)
            selection: dict[str, slice | int] = {time_dim: window}
            if field.level_index is not None:
                level_dim = next(d for d in raw_dims if d not in dims)
                selection[level_dim] = field.level_index
            _check_chunks(path, store_name, raw_dims, selection)

        def read(a: int, b: int, field: _Field = field, store_name: str = store_name):
            steps = slice(window.start + a, window.start + b)
            try:
                return _load(view, field, dims, steps)  # (b - a, H, W)
            except Exception as exc:  # codec errors of a corrupt chunk surface only when read
                raise ReaderError(
                    path,
                    f"cannot read variable {store_name!r} ({field.info.name}): "
                    f"{type(exc).__name__}: {exc}. Fix: a chunk is corrupt; re-download or "
                    "rewrite the store.",
                ) from exc

        out[field.info.name] = Piece(path, times[window], read)
    return out


def _assemble(stack, stores, variables, time_slice, level_names, missing_chunks):
    """Open the stores (on ``stack``), check them and join their fields (``time_join.py``):
    (lat, lon, time, names, variable infos, block loader)."""
    pieces: dict[str, list[Piece]] = {}
    first: dict[str, _Field] = {}
    unknown: list[str] = []
    windows: list[slice] = []
    first_times = None
    lat = lon = None
    for path in stores:
        raw = stack.enter_context(_open(path))
        view, store_names, store_unknown = _canonical_view(raw, path, level_names)
        unknown.extend(f"{path}:{n}" for n in store_unknown)
        with _as_reader_error(path):
            if lat is None:
                lat = np.asarray(view[_find_coord(view, _LAT_NAMES, "lat", path)].values, "f8")
                lon = np.asarray(view[_find_coord(view, _LON_NAMES, "lon", path)].values, "f8")
            _check_axes(view, path, stores[0], lat, lon)
            times = _times(view, _find_coord(view, _TIME_NAMES, "time", path), path)
            window = time_window(times, time_slice, path)
            fields, _ = _scan(view, path)
        if first_times is None:
            first_times = pd.DatetimeIndex(times)
        windows.append(window)
        # Units are checked for every field before any data is read: a bad units attribute
        # is then the only ValueError, and later read errors mean corrupt chunks.
        for field in fields:
            first.setdefault(field.info.name, field)
        fields = [f for f in fields if variables is None or f.info.name in variables]
        for field in fields:
            where = f"{field.path}:{store_names[field.var]}"
            with _as_reader_error(field.path):
                to_canonical(np.zeros(1), field.units, field.info.units, where=where)
        got = _store_pieces(path, raw, view, store_names, fields, window, times, missing_chunks)
        for name, piece in got.items():
            pieces.setdefault(name, []).append(piece)
    if all(w.stop <= w.start for w in windows):  # nothing selected: say so for the first store
        raise ReaderError(
            stores[0],
            f"time_slice {time_slice} selects no times; the store covers {first_times[0]} to "
            f"{first_times[-1]}. Fix: pick a window inside that range.",
        )
    names = select_variables(
        list(first), variables, unknown, ", ".join(map(str, stores)), inputs="stores"
    )
    with _as_reader_error(stores[0]):
        time, load = join_pieces(names, pieces)
    assert lat is not None and lon is not None
    return lat, lon, time, names, [first[n].info for n in names], load


def read_zarr(
    paths: Sequence[str | Path],
    *,
    variables: Sequence[str] | None = None,
    time_slice: tuple[str, str] | None = None,
    level_names: Sequence[str] = (),
    missing_chunks: Literal["error", "fill"] = "error",
) -> list[GridArray]:
    """Read ARCO-ERA5 / WeatherBench-2 style Zarr stores (v2 or v3) as one :class:`GridArray`.

    Variables may carry long names (``temperature``, ``2m_temperature``; see ``WB2_ALIASES``) or
    ERA5 short names; dims may be in any order. ``variables``: canonical names with level
    (``t850``, ``t2m``) in the order wanted; ``None`` reads every field and refuses stores with
    unrecognised or static (time-less) fields. ``time_slice=(start, stop)``: ISO times, both ends
    inclusive, read lazily. ``level_names``: extra names of the pressure-level dim besides
    ``level``/``pressure_level``/``isobaricInhPa``/``plev`` (hPa unless its units say otherwise).
    ``missing_chunks``: ``"error"`` refuses absent chunks, ``"fill"`` reads them as fill values.
    Several stores are combined like netCDF files (``time_join.py``): the stores of one variable
    are concatenated in time, different variables joined per time step; they must share the grid
    and, variable by variable, cover the same (sliced) times. Values are read lazily, a block of
    time steps at a time (``LazyGrid``).
    Latitude/longitude are kept as stored (WB2: ascending latitude; ARCO: descending).
    """
    if isinstance(paths, (str, Path)):
        raise ValueError(f"read_zarr takes a sequence of paths, got the single path {paths!r}")
    if missing_chunks not in ("error", "fill"):
        raise ValueError(f"missing_chunks={missing_chunks!r}: use 'error' or 'fill'")
    if time_slice is not None and len(time_slice) != 2:
        raise ValueError(f"time_slice={time_slice!r}: give (start, stop) ISO times")
    stores = [Path(p) for p in paths]
    if not stores:
        raise ValueError("read_zarr got no paths. Fix: pass the Zarr stores to read.")

    # The stores stay open for the lazy reads; LazyGrid.close (or garbage collection) closes them.
    stack = contextlib.ExitStack()
    try:
        lat, lon, time, names, infos, load = _assemble(
            stack, stores, variables, time_slice, level_names, missing_chunks
        )
    except BaseException:
        stack.close()
        raise
    grid = GridArray(
        values=LazyGrid((len(time), len(names), len(lat), len(lon)), load, stack.close),
        variables=infos,
        lat=lat,
        lon=lon,
        time=time,
        source=f"era5-zarr:{stores[0].resolve().name}",
        attrs={"stores": [str(p) for p in stores], "time_slice": time_slice},
    )
    return [grid]
