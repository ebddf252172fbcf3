"""GeoTIFF reader (Landsat/HLS-style per-band files, or multiband files) → :class:`GridArray`.

Files are grouped by time (one group per acquisition); a group holds the bands of that time,
either in one multiband file or spread over single-band files. Raw counts are scaled with the
band's scale/offset, nodata becomes NaN, and lat/lon of pixel centres are computed from the affine
transform and the CRS through rasterio (GDAL/PROJ; pyproj is not used, see pyproject.toml).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..units import parse_units, to_canonical
from ..variables import VariableInfo
from .base import GridArray, ReaderError

# HLS writes scale/offset as band tags rather than GDAL's band scale/offset.
_SCALE_TAGS = ("scale_factor", "scale")
_OFFSET_TAGS = ("add_offset", "offset")


@dataclass(frozen=True)
class _Band:
    """One band of one file: where it is, what it is called, how to decode it."""

    path: Path
    index: int  # 1-based, as rasterio counts bands
    label: str  # the band description, else "" (single-band files are matched by file name)
    gdal_scale: tuple[float, float]  # GDAL band (scale, offset); (1, 0) when unset
    tag_scale: tuple[float | None, float | None]  # band tags (scale_factor, add_offset)
    nodata: float | None
    units: str  # GDAL band units, "" when the file does not say


def _parse_time(text: str, path: Path) -> np.datetime64:
    """A time from a file name: YYYYMMDD[THHMM[SS]], YYYYDDD[THHMMSS] (day of year), or ISO."""
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})(?:T?(\d{2})(\d{2})(\d{2})?)?", text)
    if m:
        y, mo, d, hh, mm, ss = (g or "00" for g in m.groups())
        text = f"{y}-{mo}-{d}T{hh}:{mm}:{ss}"
    m = re.fullmatch(r"(\d{4})(\d{3})(?:T?(\d{2})(\d{2})(\d{2}))?", text)
    if m:
        y, doy, hh, mm, ss = (g or "00" for g in m.groups())
        start = np.datetime64(f"{y}-01-01T{hh}:{mm}:{ss}", "ns")
        return start + np.timedelta64(int(doy) - 1, "D")
    try:
        return np.datetime64(text, "ns")
    except ValueError:
        raise ReaderError(
            path,
            f"cannot read a time from {text!r}. Fix: give (or capture with the time_from_name "
            "group) YYYYMMDD, YYYYDDD (day of year), YYYYDDDTHHMMSS or an ISO date.",
        ) from None


def _tag(tags: dict[str, str], names: tuple[str, ...]) -> float | None:
    lowered = {k.lower(): v for k, v in tags.items()}
    for name in names:
        if name in lowered:
            return float(lowered[name])
    return None


def _describe(path: Path) -> tuple[list[_Band], dict[str, Any]]:
    """Bands of one file (no pixels read) and its grid: CRS, transform, shape."""
    import rasterio

    if not path.is_file():
        raise ReaderError(path, "no such GeoTIFF file. Fix: check the path.")
    try:
        with warnings.catch_warnings():
            # A missing CRS is refused below with a fix; GDAL's warning adds nothing.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                bands = []
                for i in range(1, ds.count + 1):
                    tags = ds.tags(i)
                    bands.append(
                        _Band(
                            path,
                            i,
                            ds.descriptions[i - 1] or "",
                            (float(ds.scales[i - 1]), float(ds.offsets[i - 1])),
                            (_tag(tags, _SCALE_TAGS), _tag(tags, _OFFSET_TAGS)),
                            ds.nodatavals[i - 1],
                            ds.units[i - 1] or "",
                        )
                    )
                grid = {"crs": ds.crs, "transform": ds.transform, "shape": (ds.height, ds.width)}
    except ReaderError:
        raise
    except Exception as exc:  # rasterio/GDAL errors: refuse the file, naming it
        raise ReaderError(
            path,
            f"cannot open as GeoTIFF: {type(exc).__name__}: {exc}. Fix: check the file is a "
            "complete GeoTIFF (re-download it if truncated).",
        ) from exc
    if grid["crs"] is None:
        raise ReaderError(
            path, "has no CRS (not georeferenced). Fix: assign one, e.g. 'gdal_edit.py -a_srs'."
        )
    if not (grid["crs"].is_geographic or grid["crs"].is_projected):
        # An engineering (local) CRS: image or site coordinates with no transformation to
        # latitude/longitude (GDAL's LOCAL_CS); PROJ would fail on it inside the warp.
        name = grid["crs"].to_wkt().split('"')[1] if '"' in grid["crs"].to_wkt() else "?"
        raise ReaderError(
            path,
            f"its CRS is a local (engineering) one, {name!r}, not geographic or projected, so "
            "its pixels have no latitude/longitude. Fix: georeference it "
            "('gdal_edit.py -a_srs EPSG:...' with its true CRS) or leave it out of the source.",
        )
    return bands, grid


def _scale_offset(band: _Band) -> tuple[float, float]:
    """GDAL band scale/offset, else the band tags; both set and different is an error."""
    gdal, tags = band.gdal_scale, band.tag_scale
    gdal_set = gdal != (1.0, 0.0)
    tag_set = tags != (None, None)
    tag_pair = (1.0 if tags[0] is None else tags[0], 0.0 if tags[1] is None else tags[1])
    if gdal_set and tag_set and gdal != tag_pair:
        raise ReaderError(
            band.path,
            f"band {band.index}: GDAL scale/offset {gdal} disagree with band tags {tag_pair}. "
            "Fix: correct one of them (gdal_edit.py -scale/-offset) or pass apply_scale=False.",
        )
    return gdal if gdal_set else tag_pair


def _matches(name: str, band: _Band, n_bands: int) -> bool:
    """A band name matches the band description, or a token of a single-band file's name."""
    if band.label:
        return band.label == name
    return n_bands == 1 and name in re.split(r"[._\-]", band.path.stem)


def _select(
    group: list[tuple[Path, list[_Band]]], band_names: Sequence[str] | None, when: np.datetime64
) -> list[_Band]:
    """The bands of one time group, in ``band_names`` order (or all, in file then band order)."""
    if band_names is None:
        return [b for _, bands in group for b in bands]
    chosen = []
    for name in band_names:
        hits = [b for _, bands in group for b in bands if _matches(name, b, len(bands))]
        if len(hits) != 1:
            have = [b.label or b.path.name for _, bands in group for b in bands]
            what = "no band" if not hits else f"{len(hits)} bands"
            raise ReaderError(
                group[0][0],
                f"{what} named {name!r} at {when} (bands: {have}). Fix: band_names must match "
                "one band description, or one token of a single-band file's name.",
            )
        chosen.append(hits[0])
    return chosen


def _lat_lon(grid: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre latitude/longitude: 1-D for north-up EPSG:4326, else 2-D (H, W)."""
    from rasterio.warp import transform as warp_transform

    crs, t = grid["crs"], grid["transform"]
    h, w = grid["shape"]
    rows, cols = np.arange(h) + 0.5, np.arange(w) + 0.5  # +0.5: centres, not corners
    if crs.to_epsg() == 4326 and t.b == 0 and t.d == 0:
        return t.f + t.e * rows, t.c + t.a * cols  # (H,), (W,)
    xs = t.c + t.a * cols[None, :] + t.b * rows[:, None]  # (H, W) projected x
    ys = t.f + t.d * cols[None, :] + t.e * rows[:, None]  # (H, W) projected y
    try:
        lon, lat = warp_transform(crs, "EPSG:4326", xs.ravel(), ys.ravel())
    except Exception as exc:  # a CRS PROJ cannot take to WGS 84: the file's problem, named
        raise ReaderError(
            path,
            f"its pixel coordinates cannot be transformed to latitude/longitude "
            f"({type(exc).__name__}: {exc}). Fix: reproject it (gdalwarp -t_srs EPSG:4326).",
        ) from exc
    return np.asarray(lat, dtype=np.float64).reshape(h, w), np.asarray(
        lon, dtype=np.float64
    ).reshape(h, w)


def _read_band(
    band: _Band, nodata: float | None, nodata_to_nan: bool, apply_scale: bool
) -> np.ndarray:
    """(H, W) float64 values of one band: scaled, nodata → NaN."""
    import rasterio

    try:
        with rasterio.open(band.path) as ds:
            raw = ds.read(band.index)  # (H, W) native dtype
    except Exception as exc:  # a truncated file opens but fails here
        raise ReaderError(
            band.path,
            f"cannot read band {band.index} ({type(exc).__name__}: {exc}); the file is truncated "
            "or corrupt. Fix: re-download or rewrite it.",
        ) from exc
    values = raw.astype(np.float64)
    if apply_scale:
        scale, offset = _scale_offset(band)
        values = values * scale + offset
    fill = band.nodata if nodata is None else nodata
    if nodata_to_nan and fill is not None:
        # Compare raw counts, not scaled values: nodata is defined in the stored dtype.
        missing = np.isnan(raw) if np.isnan(fill) else raw == np.asarray(fill).astype(raw.dtype)
        values[missing] = np.nan
    return values


def read_geotiff(
    paths: Sequence[str | Path],
    *,
    variables: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
    units: str | Sequence[str] = "1",
    time: str | None = None,
    time_from_name: str | None = None,
    nodata: float | None = None,
    nodata_to_nan: bool = True,
    apply_scale: bool = True,
) -> list[GridArray]:
    """Read GeoTIFFs (one multiband file or per-band files per time) into one :class:`GridArray`.

    ``variables``: canonical names of the bands read, in order (default: ``band_names``, else the
    band descriptions). ``band_names``: bands to read, matched against band descriptions, or a
    ``._-``-separated token of a single-band file's name (``B04`` in ``HLS...B04.tif``); default
    all bands, in file then band order. ``units``: units of the scaled values, one for all bands
    or one per variable, checked against the registry and the bands' own units. ``time`` (ISO)
    sets one time for all files; ``time_from_name``: regex whose first (or ``time``) group in
    each file name is the time (YYYYMMDD, YYYYDDD, YYYYDDDTHHMMSS or ISO); files with equal times
    form one step, steps are sorted. ``nodata`` overrides the files' nodata value;
    ``nodata_to_nan`` turns nodata pixels into NaN; ``apply_scale`` applies scale/offset (GDAL
    band scale/offset, else ``scale_factor``/``add_offset`` band tags). All files must share
    CRS, transform and shape. lat/lon are pixel centres in degrees: 1-D for north-up
    EPSG:4326, else 2-D (H, W) from rasterio.warp.transform; rows stay in file order (north first).
    """
    if isinstance(paths, (str, Path)):
        raise ValueError(f"read_geotiff takes a sequence of paths, got the single path {paths!r}")
    files = [Path(p) for p in paths]
    if not files:
        raise ValueError("read_geotiff got no paths. Fix: pass the GeoTIFF files to read.")
    if (time is None) == (time_from_name is None):
        raise ValueError(
            "read_geotiff needs exactly one of time='2021-07-12' (all files one time) or "
            "time_from_name=r'(\\d{8})' (a regex group on each file name)."
        )

    described = [(path, *_describe(path)) for path in files]
    ref_path, _, ref_grid = described[0]
    for path, _, grid in described[1:]:
        for key in ("crs", "transform", "shape"):
            if grid[key] != ref_grid[key]:
                raise ReaderError(
                    path,
                    f"{key} {grid[key]} differs from {ref_grid[key]} in {ref_path}. "
                    "Fix: warp the files onto one grid first (gdalwarp -tap -tr ...).",
                )

    groups: dict[np.datetime64, list[tuple[Path, list[_Band]]]] = {}
    for path, bands, _ in described:
        if time_from_name is not None:
            m = re.search(time_from_name, path.name)
            if m is None or not m.groups():
                raise ReaderError(
                    path,
                    f"time_from_name {time_from_name!r} does not match the file name (or has no "
                    "group). Fix: give a regex with one group around the date.",
                )
            text = m.group("time") if "time" in m.re.groupindex else m.group(1)
            when = _parse_time(text, path)
        else:
            when = _parse_time(str(time), path)
        groups.setdefault(when, []).append((path, bands))
    times = sorted(groups)

    selected = [_select(groups[t], band_names, t) for t in times]  # T × V bands
    n_bands = len(selected[0])
    for t, bands in zip(times, selected, strict=True):
        if len(bands) != n_bands:
            raise ReaderError(
                groups[t][0][0],
                f"{len(bands)} bands at {t} but {n_bands} at {times[0]}. "
                "Fix: pass the same bands for every time, or choose them with band_names.",
            )
    if variables is not None:
        names = list(variables)
    elif band_names is not None:
        names = list(band_names)
    else:
        names = [b.label for b in selected[0]]
        if not all(names):
            raise ReaderError(
                ref_path,
                "bands have no descriptions to name them. Fix: pass variables=[...] "
                "(canonical names, one per band).",
            )
    if len(names) != n_bands:
        raise ValueError(f"variables {names} name {len(names)} bands but {n_bands} are read")
    unit_list = [units] * n_bands if isinstance(units, str) else list(units)
    if len(unit_list) != n_bands:
        raise ValueError(f"units {unit_list} has {len(unit_list)} entries for {n_bands} bands")

    infos: list[VariableInfo] = []
    for name, unit, band in zip(names, unit_list, selected[0], strict=True):
        parsed = parse_units(unit)
        if parsed is None:
            raise ReaderError(
                band.path,
                f"variable {name!r}: unknown units {unit!r}. Fix: pass units registered in "
                "scigpt.data_pipeline.units (e.g. '1' for reflectance, 'K', 'm').",
            )
        infos.append(VariableInfo(name=name, units=parsed.symbol, modality="grid"))

    h, w = ref_grid["shape"]
    out = np.empty((len(times), n_bands, h, w), dtype=np.float32)
    for ti, bands in enumerate(selected):
        for v, band in enumerate(bands):
            where = f"{band.path}:band {band.index} ({names[v]})"
            if band.units and parse_units(band.units) != parse_units(unit_list[v]):
                raise ReaderError(
                    band.path,
                    f"band {band.index} ({names[v]}) says units {band.units!r}, the option says "
                    f"{unit_list[v]!r}. Fix: pass units={band.units!r} (if registered) for it.",
                )
            values = _read_band(band, nodata, nodata_to_nan, apply_scale)
            values = to_canonical(values, unit_list[v], infos[v].units, where=where)
            out[ti, v] = values.astype(np.float32)  # (H, W)

    lat, lon = _lat_lon(ref_grid, ref_path)
    return [
        GridArray(
            values=out,
            variables=infos,
            lat=lat,
            lon=lon,
            time=np.array(times, dtype="datetime64[ns]"),
            source=f"geotiff:{ref_path.resolve().parent.name}",
            attrs={
                "files": [str(p) for p in files],
                "crs": ref_grid["crs"].to_wkt(),
                "transform": tuple(ref_grid["transform"])[:6],
            },
        )
    ]
