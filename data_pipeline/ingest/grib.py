"""GRIB reader (ERA5 through cfgrib/ecCodes) → :class:`GridArray` of canonical variables.

cfgrib splits a file into hypercubes (``cfgrib.open_datasets``): one per level type and per set
of compatible keys. Every hypercube variable is mapped through the ERA5 short-name table
(``t`` at 850 hPa → ``t850``), converted to canonical units, and combined with the fields of the
other hypercubes and files: different variables and levels side by side, the same variable in
several files (time-split downloads) concatenated along time.
"""

from __future__ import annotations

import mmap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from ..units import to_canonical
from ..variables import ERA5_VARIABLES, VariableInfo, era5_variable_info
from .base import GridArray, ReaderError, select_variables
from .netcdf import _first_difference, _grid_shape

_MEMBER_DIM = "number"
_MAX_PADDING = 120  # bytes of zeros allowed between messages (ECMWF GRIB 1 record padding)
_REF_TIME_DIM, _STEP_DIM = "time", "step"
# cfgrib names the pressure axis after the GRIB typeOfLevel; levels below 1 hPa come in Pa.
_PRESSURE_DIMS = ("isobaricInhPa", "isobaricInPa")

Members = Literal["split", "mean"] | int


@dataclass(frozen=True)
class _Ref:
    """Where one canonical variable lives: file, hypercube, cfgrib variable, level index."""

    info: VariableInfo
    path: Path
    cube: xr.Dataset
    var: str
    level_index: int | None
    units: str


@dataclass
class _Piece:
    """One canonical variable loaded from one hypercube: members × valid times."""

    ref: _Ref
    members: np.ndarray  # (M,) GRIB ensemble numbers
    time: np.ndarray  # (T,) datetime64[ns] valid times, ascending
    values: np.ndarray  # (M, T, H, W) float32, canonical units
    lat: np.ndarray
    lon: np.ndarray


def grib_messages(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of every message, from the file's own structure; damage is an error.

    ecCodes scans for the next ``GRIB`` marker and silently skips bytes that are not a message,
    so a message whose first bytes were zeroed disappears, and cfgrib returns the complete
    messages of a truncated file. Here the file must be a sequence of messages, each starting
    with ``GRIB``, of the length its section 0 declares (edition 1: 3 bytes at octet 5; edition
    2: 8 bytes at octet 9; WMO FM 92), ending with ``7777``. Between and after messages only zero
    padding shorter than 120 bytes may lie (ECMWF pads GRIB 1 messages to a multiple of 120).
    """
    with path.open("rb") as fh:
        data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
    try:
        size, pos, out = len(data), 0, []
        while pos < size:
            start = data.find(b"GRIB", pos)
            stop = size if start < 0 else start
            gap = data[pos:stop]
            if start < 0 and not out:
                raise ReaderError(
                    path, "cannot read as GRIB: no 'GRIB' marker in the file. Fix: check it is "
                    "GRIB 1/2 (the sniffed signature names other formats)."
                )  # fmt: skip
            if gap and (not out or gap.strip(b"\x00") or len(gap) >= _MAX_PADDING):
                what = f"before message {len(out) + 1}" if start >= 0 else "after the last message"
                raise ReaderError(
                    path,
                    f"bytes {pos}..{stop - 1} {what} are not part of any GRIB message (a damaged "
                    "or zeroed message header?): ecCodes would skip them, losing a field. Fix: "
                    "re-download the file.",
                )
            if start < 0:
                break
            if start + 16 > size:
                raise ReaderError(path, f"message {len(out) + 1} at byte {start} is cut short")
            edition = data[start + 7]
            if edition == 1:
                length = int.from_bytes(data[start + 4 : start + 7], "big")
            elif edition == 2:
                length = int.from_bytes(data[start + 8 : start + 16], "big")
            else:
                raise ReaderError(
                    path, f"message {len(out) + 1} at byte {start}: edition {edition}"
                )
            end = start + length
            if end > size:
                raise ReaderError(
                    path,
                    f"message {len(out) + 1} at byte {start} declares {length} B but the file "
                    f"ends {size - start} B after its start: the file is truncated after "
                    f"{len(out)} complete messages. Fix: re-download it.",
                )
            if data[end - 4 : end] != b"7777":
                raise ReaderError(
                    path,
                    f"message {len(out) + 1} at byte {start} does not end with '7777' at byte "
                    f"{end - 4}: it is damaged. Fix: re-download the file.",
                )
            out.append((start, length))
            pos = end
        return out
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _open_cubes(path: Path) -> list[xr.Dataset]:
    import cfgrib  # imported on use: ecCodes takes a second to load and is an optional extra
    import eccodes

    if not path.is_file():
        raise ReaderError(path, "no such GRIB file. Fix: check the path.")
    messages = grib_messages(path)
    with path.open("rb") as fh:
        counted = eccodes.codes_count_in_file(fh)
    if counted != len(messages):
        raise ReaderError(
            path,
            f"ecCodes counts {counted} messages where the file's structure has "
            f"{len(messages)}: the file is damaged. Fix: re-download it.",
        )
    # indexpath "": never write a .idx next to the input (shared data is read-only in CI).
    # errors "raise": cfgrib otherwise logs and skips a truncated message, returning fewer times.
    # squeeze False: every hypercube keeps (number, time, step, level, ...) dims, so one code path
    # serves ensembles, deterministic runs, analyses and forecasts.
    kwargs = {"indexpath": "", "errors": "raise", "squeeze": False}
    try:
        with warnings.catch_warnings():
            # cfgrib's internal xr.merge trips an xarray FutureWarning about its own defaults.
            warnings.simplefilter("ignore", FutureWarning)
            cubes = cfgrib.open_datasets(str(path), backend_kwargs=kwargs)
    except Exception as exc:  # ecCodes/cfgrib raise many types; refuse the file, naming it
        raise ReaderError(
            path,
            f"cannot read as GRIB: {type(exc).__name__}: {exc}. Fix: check the file is complete "
            "GRIB 1/2 (re-download it if truncated).",
        ) from exc
    if not cubes:
        raise ReaderError(path, "holds no GRIB messages. Fix: check the file is GRIB 1/2.")
    return cubes


def _era5_name(name: str, da: xr.DataArray) -> str | None:
    """The ERA5 short name of a cfgrib variable: its name, else its GRIB shortName."""
    for candidate in (name, da.attrs.get("GRIB_shortName"), da.attrs.get("GRIB_cfVarName")):
        if candidate in ERA5_VARIABLES:
            return str(candidate)
    return None


def _horizontal_dims(cube: xr.Dataset, path: Path) -> tuple[str, ...]:
    lat, lon = cube["latitude"], cube["longitude"]
    if lat.ndim == 2:  # curvilinear (Lambert, polar stereographic): 2-D lat/lon over (y, x)
        return tuple(str(d) for d in lat.dims)
    if lat.dims == lon.dims:  # one "values" dim: reduced Gaussian or unstructured
        raise ReaderError(
            path,
            f"grid has one horizontal dim {lat.dims[0]!r} (reduced Gaussian or unstructured). "
            "Fix: request a regular lat/lon grid (CDS 'grid': [0.25, 0.25]) or regrid "
            "(e.g. 'cdo remapbil') before ingest.",
        )
    return (str(lat.dims[0]), str(lon.dims[0]))


def _scan(path: Path, cube: xr.Dataset) -> tuple[list[_Ref], list[str]]:
    """Canonical variables a hypercube offers (no data read yet), and unrecognised ones."""
    refs: list[_Ref] = []
    unknown: list[str] = []
    horizontal = _horizontal_dims(cube, path)
    for var_name, da in cube.data_vars.items():
        name = str(var_name)
        short = _era5_name(name, da)
        if short is None:
            unknown.append(f"{path}:{name} (paramId {da.attrs.get('GRIB_paramId', '?')})")
            continue
        level_dims = [
            d for d in da.dims if d not in (_MEMBER_DIM, _REF_TIME_DIM, _STEP_DIM, *horizontal)
        ]
        if len(level_dims) > 1:
            raise ReaderError(path, f"variable {name!r} has dims {da.dims}; expected one level dim")
        units = da.attrs.get("units")
        if not units or units == "unknown":
            raise ReaderError(
                path,
                f"variable {name!r} has no units in its GRIB tables. Fix: update ecCodes, or "
                "convert the file with known parameter ids.",
            )
        level_dim = level_dims[0] if level_dims else None
        if level_dim in _PRESSURE_DIMS:
            coord = cube[level_dim]
            try:
                levels = to_canonical(
                    np.asarray(coord.values, dtype=np.float64),
                    str(coord.attrs.get("units", "hPa" if level_dim == "isobaricInhPa" else "Pa")),
                    "hPa",
                    where=f"{path}:{level_dim}",
                )
            except ValueError as exc:
                raise ReaderError(path, str(exc)) from exc
            for k, level in enumerate(levels):
                info = era5_variable_info(short, float(level))
                refs.append(_Ref(info, path, cube, name, k, str(units)))
        elif level_dim == "hybrid" and cube.sizes[level_dim] == 1:
            # One model level keeps its number ("t_ml1"), as the netCDF reader names them: a
            # model-level field is never taken for the single-level or pressure-level one.
            level = float(np.asarray(cube[level_dim].values).reshape(-1)[0])
            info = era5_variable_info(short, level, "model")
            refs.append(_Ref(info, path, cube, name, None, str(units)))
        elif level_dim is None or cube.sizes[level_dim] == 1:
            # Surface, 2 m, 10 m, mean sea level...: one level, a single-level variable.
            refs.append(_Ref(era5_variable_info(short, None), path, cube, name, None, str(units)))
        else:
            raise ReaderError(
                path,
                f"variable {name!r} has {cube.sizes[level_dim]} levels of type {level_dim!r}; "
                "only pressure levels become per-level variables. Fix: extract the levels you "
                "need (e.g. 'grib_copy -w level=1') into separate variables first.",
            )
    return refs, unknown


def _load(ref: _Ref) -> _Piece:
    """Read one canonical variable of one hypercube: (M, T, H, W) float32 over valid times."""
    cube, path = ref.cube, ref.path
    da = cube[ref.var]
    horizontal = _horizontal_dims(cube, path)
    level_dims = [
        d for d in da.dims if d not in (_MEMBER_DIM, _REF_TIME_DIM, _STEP_DIM, *horizontal)
    ]
    if level_dims:
        da = da.isel({level_dims[0]: ref.level_index or 0})
    if _MEMBER_DIM not in da.dims:  # a deterministic field: one member, number 0
        da = da.expand_dims(_MEMBER_DIM)
        members = np.zeros(1, dtype=np.int64)
    else:
        members = np.asarray(cube[_MEMBER_DIM].values, dtype=np.int64).reshape(-1)
    for dim in (_REF_TIME_DIM, _STEP_DIM):
        if dim not in da.dims:
            da = da.expand_dims(dim)
    try:
        raw = np.asarray(da.transpose(_MEMBER_DIM, _REF_TIME_DIM, _STEP_DIM, *horizontal).values)
    except Exception as exc:  # ecCodes decoding errors surface only here, when values are read
        raise ReaderError(
            path, f"cannot decode variable {ref.var!r}: {type(exc).__name__}: {exc}"
        ) from exc
    m, n_ref, n_step = raw.shape[:3]
    values = raw.reshape(m, n_ref * n_step, *raw.shape[3:])  # (M, T, H, W), reference-time major
    time = np.asarray(cube["valid_time"].values).astype("datetime64[ns]").reshape(-1)
    # A field cfgrib did not find in the file is filled in as all-NaN: (M, T) True where absent.
    absent = np.all(np.isnan(values), axis=(2, 3))
    if n_step > 1:
        # A forecast hypercube (time × step) is ragged in practice (accumulations at 06/18 UTC
        # with steps 1..12): a (time, step) that no member has is not in the file. Drop those.
        present = ~absent.all(axis=0)
        values, time, absent = values[:, present], time[present], absent[:, present]
    # Any other absent field is a hole in the hypercube: a valid time that some members lack
    # (a file cut or damaged between messages). Refuse, naming it. (All absent: the variable
    # has no valid value, which the store refuses by name.)
    if absent.any() and not absent.all():
        m0, t0 = np.argwhere(absent)[0]
        raise ReaderError(
            path,
            f"{ref.info.name}: {int(absent.sum())} of {absent.size} fields are missing from "
            f"the file (first: member {members[m0]}, {time[t0]}): it is truncated or damaged "
            "between messages. Fix: re-download it.",
        )
    order = np.argsort(time, kind="stable")
    values, time = values[:, order], time[order]
    if len(time) > 1 and np.any(time[1:] == time[:-1]):
        dup = time[1:][time[1:] == time[:-1]][0]
        raise ReaderError(
            path,
            f"variable {ref.var!r} has two fields valid at {dup} (overlapping forecasts). "
            "Fix: keep one forecast per valid time.",
        )
    try:
        values = to_canonical(values, ref.units, ref.info.units, where=f"{path}:{ref.var}")
    except ValueError as exc:
        raise ReaderError(path, str(exc)) from exc
    return _Piece(
        ref=ref,
        members=members,
        time=time,
        values=values.astype(np.float32, copy=False),
        lat=np.asarray(cube["latitude"].values, dtype=np.float64),
        lon=np.asarray(cube["longitude"].values, dtype=np.float64),
    )


def _combine(name: str, pieces: list[_Piece]) -> _Piece:
    """Concatenate one variable's pieces (time-split files) along time, in time order."""
    if len(pieces) == 1:
        return pieces[0]
    first = pieces[0]
    for p in pieces[1:]:
        if not np.array_equal(p.members, first.members):
            raise ReaderError(
                p.ref.path,
                f"{name!r} has members {p.members.tolist()} here but {first.members.tolist()} in "
                f"{first.ref.path}. Fix: pass files with the same ensemble members.",
            )
    time = np.concatenate([p.time for p in pieces])
    values = np.concatenate([p.values for p in pieces], axis=1)  # (M, T, H, W)
    order = np.argsort(time, kind="stable")
    time, values = time[order], values[:, order]
    if np.any(time[1:] == time[:-1]):
        dup = time[1:][time[1:] == time[:-1]][0]
        where = [str(p.ref.path) for p in pieces if dup in p.time]
        raise ReaderError(
            where[-1],
            f"{name!r} at {dup} is also in {where[0]}. Fix: pass each variable and time once.",
        )
    return _Piece(first.ref, first.members, time, values, first.lat, first.lon)


def _check_same(ref: _Piece, p: _Piece) -> None:
    """All variables must share grid, members and valid times (no regridding, no joins)."""
    for what, a, b in (("latitude", p.lat, ref.lat), ("longitude", p.lon, ref.lon)):
        if a.shape != b.shape or not np.array_equal(a, b):
            raise ReaderError(
                p.ref.path,
                f"{p.ref.info.name!r} has a different {what} axis than {ref.ref.info.name!r} in "
                f"{ref.ref.path}. Fix: regrid them to one grid before ingest.",
            )
    # Within one file a mismatch is a hole in its hypercube: fields cut or damaged away.
    hole = (
        "some fields of the file are missing, as when it is cut or damaged between messages. "
        "Fix: re-download it; if the request itself was ragged, read variables that share their "
    )
    one_file = p.ref.path == ref.ref.path
    if not np.array_equal(p.members, ref.members):
        if one_file:
            raise ReaderError(
                p.ref.path,
                f"{p.ref.info.name!r} has members {p.members.tolist()} but "
                f"{ref.ref.info.name!r} {ref.members.tolist()}: {hole}members.",
            )
        raise ReaderError(
            p.ref.path,
            f"{p.ref.info.name!r} has members {p.members.tolist()}, {ref.ref.info.name!r} in "
            f"{ref.ref.path} has {ref.members.tolist()}. Fix: pass one ensemble per call.",
        )
    if not np.array_equal(p.time, ref.time):
        if one_file:
            raise ReaderError(
                p.ref.path,
                f"{p.ref.info.name!r} has fields at {len(p.time)} valid times and "
                f"{ref.ref.info.name!r} at {len(ref.time)} (first difference: "
                f"{_first_difference(p.time, ref.time)}): {hole}valid times.",
            )
        raise ReaderError(
            p.ref.path,
            f"{p.ref.info.name!r} and {ref.ref.info.name!r} ({ref.ref.path}) cover different "
            f"valid times ({len(p.time)} vs {len(ref.time)}; first difference: "
            f"{_first_difference(p.time, ref.time)}). Fix: pass files covering the same times.",
        )


def _where(files: list[Path]) -> str:
    """How an error names a set of files: the file, or all of them."""
    return ", ".join(str(p) for p in files)


def probe_grib(
    paths: Sequence[str | Path], **_options: object
) -> tuple[list[str], tuple[int, int]]:
    """The canonical variables ``paths`` offer and their grid (H, W), from the GRIB headers
    alone (cfgrib's index; no values decoded)."""
    names: list[str] = []
    shape: tuple[int, int] | None = None
    for path in map(Path, paths):
        for cube in _open_cubes(path):
            refs, _ = _scan(path, cube)
            names += [r.info.name for r in refs if r.info.name not in names]
            if shape is None:
                shape = _grid_shape(cube["latitude"], cube["longitude"])
    assert shape is not None, "probe_grib needs at least one path"
    return names, shape


def read_grib(
    paths: Sequence[str | Path],
    *,
    variables: Sequence[str] | None = None,
    members: Members = "split",
) -> list[GridArray]:
    """Read GRIB 1/2 files (ERA5 and other ECMWF-table data) into canonical grids.

    ``variables``: canonical names with level (``t850``, ``z500``, ``t2m``) in the order wanted;
    ``None`` reads every field (an unrecognised parameter is then an error, not a silent skip).
    ``members`` (ERA5 EDA / ENS, GRIB key ``number``): ``"split"`` (default) returns one
    :class:`GridArray` per member in member order, ``attrs["member"] = number``; ``"mean"``
    returns one array of the ensemble mean (float64 sum, NaN propagates); an ``int`` returns the
    member with that GRIB ``number`` (not position). Deterministic data count as member 0.

    Conventions: time is the valid time (reference time + step), ascending; latitude and
    longitude are kept as in the file (ERA5: latitude descending 90 → -90, longitude 0 → 360);
    values are float32 in canonical units, NaN where the GRIB bitmap marks missing values.
    """
    if isinstance(paths, (str, Path)):
        raise ValueError(f"read_grib takes a sequence of paths, got the single path {paths!r}")
    if not (members in ("split", "mean") or (isinstance(members, int) and members is not True)):
        raise ValueError(f"members={members!r}: use 'split', 'mean' or a member number (int)")
    files = [Path(p) for p in paths]
    if not files:
        raise ValueError("read_grib got no paths. Fix: pass the GRIB files to read.")

    available: dict[str, list[_Ref]] = {}
    unknown: list[str] = []
    for path in files:
        for cube in _open_cubes(path):
            refs, cube_unknown = _scan(path, cube)
            unknown.extend(cube_unknown)
            for ref in refs:
                available.setdefault(ref.info.name, []).append(ref)

    names = select_variables(list(available), variables, unknown, _where(files))

    pieces = [_combine(n, [_load(r) for r in available[n]]) for n in names]  # V × (M, T, H, W)
    first = pieces[0]
    for p in pieces[1:]:
        _check_same(first, p)

    infos = [p.ref.info for p in pieces]
    decoding = {
        p.ref.info.name: {
            "rule": "GRIB packing decoded by ecCodes ("
            f"{p.ref.cube[p.ref.var].attrs.get('GRIB_packingType', 'unknown')})",
            "rule_from": "the message's data representation section",
            "fill_value": "bitmap (section 3/6): absent points are NaN",
            "units": p.ref.units,
            "units_from": "ecCodes parameter tables (paramId "
            f"{p.ref.cube[p.ref.var].attrs.get('GRIB_paramId', '?')})",
        }
        for p in pieces
    }
    common: dict[str, Any] = {"files": [str(p) for p in files], "decoding": decoding}
    source = f"era5-grib:{files[0].resolve().parent.name}"

    def grid(values: np.ndarray, attrs: dict[str, Any]) -> GridArray:
        return GridArray(
            values=values,
            variables=infos,
            lat=first.lat,
            lon=first.lon,
            time=first.time,
            source=source,
            attrs={**common, **attrs},
        )

    numbers = first.members.tolist()
    if members == "mean":
        stack = np.stack([p.values for p in pieces], axis=2)  # (M, T, V, H, W)
        mean = stack.mean(axis=0, dtype=np.float64).astype(np.float32)  # (T, V, H, W)
        return [grid(mean, {"member": "mean", "members": numbers})]
    if members == "split":
        chosen = list(range(len(numbers)))
    else:
        if members not in numbers:
            raise ReaderError(
                _where(files),
                f"member {members} is not in the files; they hold members {numbers}. "
                "Fix: pick one of those, or members='split'/'mean'.",
            )
        chosen = [numbers.index(members)]
    return [
        grid(np.stack([p.values[k] for p in pieces], axis=1), {"member": numbers[k]})  # (T,V,H,W)
        for k in chosen
    ]
