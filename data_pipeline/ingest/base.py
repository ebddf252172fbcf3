"""Canonical in-memory forms every reader returns, and the reader registry.

Two shapes cover every source (DESIGN.md §7):

* :class:`GridArray` — gridded fields ``(T, V, H, W)`` on one grid and one time axis: reanalysis,
  satellite tiles, simulations. Coordinates are 1-D (regular lat/lon) or 2-D (curvilinear, e.g.
  MODIS sinusoidal) latitude/longitude in degrees, or, for simulations, Cartesian ``y``/``x``.
* :class:`SeriesArray` — N records of C channels × L uniformly spaced samples: seismic traces,
  station time series. Each record has its own start time and location.

Readers raise :class:`ReaderError` for bad input (naming the path and the reason); the ingest
driver records it as a reject and carries on with the other files.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..variables import VariableInfo
from .errors import ReaderError
from .sniff import check_signature


def _check_names(kind: str, variables: Sequence[VariableInfo]) -> None:
    names = [v.name for v in variables]
    if len(set(names)) != len(names):
        raise ValueError(f"{kind} has duplicate variable names: {names}")


class _Channels:
    """What both array kinds share: named variables on axis 1 and NaN as missing."""

    values: np.ndarray
    variables: list[VariableInfo]

    @property
    def names(self) -> list[str]:
        """Canonical variable names, in the order of the variable axis."""
        return [v.name for v in self.variables]

    @property
    def mask(self) -> np.ndarray:
        """Bool array like ``values``, True where the value is valid (not NaN)."""
        return ~np.isnan(self.values)


class LazyGrid:
    """(T, V, H, W) float32 values decoded from their files on demand, a time range at a time.

    What a reader returns as ``GridArray.values`` when the whole unit need not be in memory:
    ``values[t0:t1]`` decodes just those time steps (what the ingest does, block by block:
    :func:`time_blocks`); anything else (``np.asarray(values)``, other indexing, ndarray
    methods) decodes the whole array once and keeps it, so code written for arrays still works.
    """

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        load: Callable[[int, int], np.ndarray],
        close: Callable[[], None] | None = None,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        self._load = load  # (t0, t1) -> (t1 - t0, V, H, W) float32
        self._close = close
        self._full: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def read(self, t0: int, t1: int) -> np.ndarray:
        """Time steps ``t0`` to ``t1`` (exclusive) as a (t1 - t0, V, H, W) float32 array."""
        t0, t1 = max(t0, 0), min(t1, self.shape[0])
        if self._full is not None:
            return self._full[t0:t1]
        if t1 <= t0:
            return np.empty((0, *self.shape[1:]), dtype=np.float32)
        out = self._load(t0, t1)
        if out.shape != (t1 - t0, *self.shape[1:]) or out.dtype != np.float32:
            raise AssertionError(f"LazyGrid loader gave {out.shape} {out.dtype} for [{t0}, {t1})")
        return out

    def close(self) -> None:
        """Release the open files (the values already read stay valid)."""
        if self._close is not None:
            self._close()
            self._close = None

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self._full is None:
            self._full = self.read(0, self.shape[0])
        return self._full if dtype is None else self._full.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        if isinstance(first, slice) and first.step in (None, 1) and Ellipsis not in rest:
            start, stop, _ = first.indices(self.shape[0])
            return self.read(start, max(start, stop))[(slice(None), *rest)]
        if isinstance(first, int | np.integer) and Ellipsis not in rest:
            t = int(first) + (self.shape[0] if first < 0 else 0)
            if not 0 <= t < self.shape[0]:
                raise IndexError(f"time index {first} out of range for {self.shape[0]} steps")
            return self.read(t, t + 1)[(0, *rest)]
        return np.asarray(self)[key]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(np.asarray(self), name)  # ndarray methods: on the decoded whole


def time_blocks(values: np.ndarray | LazyGrid, steps: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(t0, values[t0:t0 + steps])`` over the time axis: for a :class:`LazyGrid`, only one
    block is decoded (and held) at a time."""
    steps = max(int(steps), 1)
    for t0 in range(0, values.shape[0], steps):
        yield t0, values[t0 : t0 + steps]


def close_arrays(arrays: Sequence[Any]) -> None:
    """Close the files behind the lazily read values of ``arrays`` (no-op for in-memory ones)."""
    for arr in arrays:
        if isinstance(getattr(arr, "values", None), LazyGrid):
            arr.values.close()


@dataclass
class GridArray(_Channels):
    """Gridded fields of one source on one grid and one time axis."""

    # (T, V, H, W) float32, NaN where missing; a LazyGrid when read from files block by block
    values: np.ndarray | LazyGrid
    variables: list[VariableInfo]
    lat: np.ndarray  # (H,) or (H, W) degrees north (y for cartesian grids), float64
    lon: np.ndarray  # (W,) or (H, W) degrees east (x for cartesian grids), float64
    time: np.ndarray  # (T,) datetime64[ns]
    source: str  # e.g. "era5-netcdf:<dir name>"
    # "geographic": lat/lon in degrees; "cartesian": y/x in domain units (PDE simulations).
    coords: Literal["geographic", "cartesian"] = "geographic"
    attrs: dict[str, Any] = field(default_factory=dict)  # provenance, projection, QC notes

    def __post_init__(self) -> None:
        t, v = len(self.time), len(self.variables)
        if self.lat.ndim == 2 or self.lon.ndim == 2:
            if self.lat.shape != self.lon.shape or self.lat.ndim != 2:
                raise ValueError(
                    f"2-D coordinates must share one shape, got lat {self.lat.shape} and lon "
                    f"{self.lon.shape}"
                )
            h, w = self.lat.shape
        else:
            h, w = len(self.lat), len(self.lon)
        expected = (t, v, h, w)
        if self.values.ndim != 4 or self.values.shape != expected:
            raise ValueError(
                f"GridArray values have shape {self.values.shape}, expected (T, V, H, W) = "
                f"{expected} from time, variables, lat and lon"
            )
        if self.values.dtype != np.float32:
            raise ValueError(f"GridArray values must be float32, got {self.values.dtype}")
        _check_names("GridArray", self.variables)


@dataclass
class SeriesArray(_Channels):
    """N records of C channels sampled every ``step``: traces, station series, events."""

    values: np.ndarray  # (N, C, L) float32, NaN where missing (gaps, missing-value codes)
    variables: list[VariableInfo]  # (C,) one per channel, modality "waveform" or "series"
    start: np.ndarray  # (N,) datetime64[ns] time of sample 0 of each record
    step: np.timedelta64  # sampling interval, timedelta64[ns]
    lat: np.ndarray  # (N,) degrees north, NaN where unknown
    lon: np.ndarray  # (N,) degrees east, NaN where unknown
    source: str
    elevation: np.ndarray | None = None  # (N,) metres above sea level (station), NaN unknown
    depth: np.ndarray | None = None  # (N,) metres below surface (borehole, event depth)
    # Per-record metadata as equal-length columns: station id, event magnitude, split, ...
    record_attrs: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.ndim != 3:
            raise ValueError(f"SeriesArray values must be (N, C, L), got {self.values.shape}")
        n, c, _ = self.values.shape
        if c != len(self.variables):
            raise ValueError(f"SeriesArray has {c} channels but {len(self.variables)} variables")
        if self.values.dtype != np.float32:
            raise ValueError(f"SeriesArray values must be float32, got {self.values.dtype}")
        for name in ("start", "lat", "lon"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"SeriesArray.{name} must have shape ({n},)")
        for name in ("elevation", "depth"):
            a = getattr(self, name)
            if a is not None and a.shape != (n,):
                raise ValueError(f"SeriesArray.{name} must have shape ({n},)")
        for key, col in self.record_attrs.items():
            if len(col) != n:
                raise ValueError(f"record_attrs[{key!r}] has {len(col)} entries, expected {n}")
        if self.step <= np.timedelta64(0, "ns"):
            raise ValueError(f"SeriesArray.step must be positive, got {self.step}")
        _check_names("SeriesArray", self.variables)

    @property
    def has_coordinates(self) -> bool:
        return bool(np.all(np.isfinite(self.lat)) and np.all(np.isfinite(self.lon)))


def select_variables(
    available: Sequence[str],
    requested: Sequence[str] | None,
    unknown: Sequence[str],
    where: str | Path,
    *,
    inputs: str = "files",
) -> list[str]:
    """The canonical names to read, in order: all known ones, or exactly those requested.

    ``unknown`` are source fields the variable table does not know: refused when everything is
    asked for (never skipped silently), mentioned when a requested name is missing.
    """
    if requested is None:
        if unknown:
            raise ReaderError(
                where,
                f"variables {list(unknown)} are not in the ERA5 table (variables.ERA5_VARIABLES). "
                "Fix: add them to variables._ERA5, or pass variables=[...] to read known ones.",
            )
        return list(available)
    names = list(requested)
    if len(set(names)) != len(names):
        raise ValueError(f"variables lists a name twice: {names}")
    missing = [n for n in names if n not in available]
    if missing:
        extra = f" (unrecognised: {list(unknown)})" if unknown else ""
        raise ReaderError(
            where,
            f"variables {missing} are not in the {inputs}; they have {list(available)}{extra}. "
            "Fix: request only these names (canonical, with level, e.g. 'u850').",
        )
    return names


Array = GridArray | SeriesArray
Reader = Callable[..., list[Array]]

# format (as written in a source config) → "module:function" inside scigpt.data_pipeline.ingest.
# Imported on first use: obspy, cfgrib or pyhdf take seconds to import and are optional extras.
# Every reader is ``fn(paths: Sequence[Path], *, <keyword-only options>) -> list[Array]``; its
# keyword parameters (with type hints and defaults) are the source's options in a config.
READERS: dict[str, str] = {
    "netcdf": "netcdf:read_netcdf_source",
    "grib": "grib:read_grib",
    "zarr": "zarr_store:read_zarr",
    "geotiff": "geotiff:read_geotiff",
    "modis_hdf4": "modis:read_modis_hdf4",
    "hdf5_grid": "hdf5_grid:read_hdf5_grid",
    "mseed": "seismic:read_waveforms",
    "sac": "seismic:read_waveforms",
    "segy": "segy:read_segy",
    "seisbench": "seisbench:read_seisbench",
    "ghcn": "ghcn:read_ghcn",
    "camels": "camels:read_camels",
    "fluxnet": "fluxnet:read_fluxnet",
    "pde": "pde:read_pde",
}


# format → "module:function" that lists the canonical variables a unit's inputs offer and their
# grid (H, W) from metadata alone, without reading values: ``scigpt validate`` checks a source's
# ``variables`` with it before anything is ingested. Other formats are checked at ingest.
PROBES: dict[str, str] = {
    "netcdf": "netcdf:probe_netcdf",
    "grib": "grib:probe_grib",
    "zarr": "zarr_store:probe_zarr",
}


def probe(
    fmt: str, paths: Sequence[Path], options: dict[str, Any]
) -> tuple[list[str], tuple[int, int]] | None:
    """(variables, (H, W)) that ``paths`` offer, or None when the format has no probe."""
    if fmt not in PROBES or not paths:
        return None
    module, func = PROBES[fmt].split(":")
    fn = getattr(importlib.import_module(f"{__package__}.{module}"), func)
    return fn(list(paths), **{k: v for k, v in options.items() if k != "variables"})


SERIES_FORMATS = frozenset({"mseed", "sac", "segy", "seisbench", "ghcn", "camels", "fluxnet"})


def format_kind(fmt: str) -> str:
    """ "grid" or "series": which array a format's reader returns (and how it is patched)."""
    if fmt not in READERS:
        raise ValueError(f"unknown source format {fmt!r}: choose one of {sorted(READERS)}")
    return "series" if fmt in SERIES_FORMATS else "grid"


def get_reader(fmt: str) -> Reader:
    """The reader function of a source format (imported on demand), behind a signature check:
    a file whose first bytes name another format is refused before it is parsed (sniff.py)."""
    if fmt not in READERS:
        raise ValueError(f"unknown source format {fmt!r}: choose one of {sorted(READERS)}")
    module, func = READERS[fmt].split(":")
    mod = importlib.import_module(f"{__package__}.{module}")
    reader = getattr(mod, func)

    @functools.wraps(reader)
    def checked(paths: Sequence[str | Path], **options: Any) -> list[Array]:
        if not isinstance(paths, str | Path):
            for path in paths:
                check_signature(fmt, path)
        return reader(paths, **options)

    return checked


def reader_formats() -> list[str]:
    return sorted(READERS)
