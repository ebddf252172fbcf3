"""SEG-Y traces (segyio) → :class:`SeriesArray`, one per file.

Conventions
-----------
* **Records.** Every trace is one record (N = traces, in file order) with one channel,
  ``amplitude`` (modality ``"waveform"``, units ``"1"``: post-stack amplitudes have no physical
  unit). Samples are float32 whatever the file's sample format. IBM float (format 1) is decoded
  here from the raw trace bytes (:func:`ibm_to_float32`), not by segyio, whose conversion gets
  unnormalised IBM numbers (leading hexadecimal fraction digit 0) wrong by up to a factor 16**k:
  each IBM value is exact in float64, then rounded once to float32 (round half to even,
  float32 subnormals, overflow → inf), bit for bit as the ``ibm2ieee`` reference (tested over
  every sign, exponent and leading-fraction pattern in both byte orders). A value beyond float32's
  range is refused, naming the trace. Integer formats (2, 3, 8) are converted exactly up to 2**24
  in magnitude (``attrs["float32_exact"]`` says whether every value was). Dead traces (trace
  identification code 2) are all NaN.
* **Time.** SEG-Y time is relative (two-way travel time for post-stack data), not absolute: each
  record starts at the Unix epoch plus its delay recording time (trace header bytes 109-110, ms),
  so ``start - 1970-01-01`` is the time of sample 0, the ``segyio`` ``samples`` axis. ``step`` is
  the sample interval (binary header bytes 3217-3218, µs, falling back to trace header 117-118).
* **Coordinates.** ``record_attrs`` ``inline`` and ``crossline`` (header bytes ``iline`` and
  ``xline``, default 189/193), ``cdp_x`` and ``cdp_y`` (bytes 181/185) with the coordinate scalar
  of bytes 71-72 applied (positive: multiply, negative: divide, 0: none). With ``crs`` the CDP
  X/Y are projected to latitude/longitude (WGS 84) through ``rasterio.warp.transform``;
  without it latitude/longitude are NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import segyio

from ..variables import VariableInfo
from .base import ReaderError, SeriesArray
from .ibm import ibm_to_float32

Endian = Literal["big", "little", "auto"]

AMPLITUDE = VariableInfo(
    name="amplitude", units="1", modality="waveform", long_name="Seismic reflection amplitude"
)
_TF = segyio.TraceField
_HEADER_BYTES = frozenset(segyio.tracefield.keys.values())  # first byte of each field
_DEAD_TRACE = 2  # trace identification code (bytes 29-30): 2 = dead
# Coordinate units (bytes 89-90): 2 = arc seconds, 3 = decimal degrees, 4 = DMS. Such X/Y are
# already geographic; projecting them from a metric CRS would give silent nonsense.
_ANGULAR_UNITS = {2: "arc seconds", 3: "decimal degrees", 4: "DMS"}


def _open(path: Path, endian: Endian) -> tuple[Any, str]:
    """Open with segyio; on "auto" try big-endian (the standard) first, then little-endian.

    A wrong byte order makes the binary header's sample count nonsense, which segyio rejects as
    a trace count inconsistent with the file size: that is how "auto" tells them apart.
    """
    if not path.is_file():
        raise ReaderError(path, "no such file. Fix: check the path in the source config.")
    errors = []
    for order in ("big", "little") if endian == "auto" else (endian,):
        try:
            # ignore_geometry: a file need not be a sorted 3-D cube to be read trace by trace.
            return segyio.open(str(path), "r", ignore_geometry=True, endian=order), order
        except Exception as exc:  # segyio raises RuntimeError/OSError for malformed files
            errors.append(f"{order}-endian: {type(exc).__name__}: {exc}")
    raise ReaderError(
        path,
        f"segyio cannot open it as SEG-Y ({'; '.join(errors)}). Fix: re-download the file if it "
        "is truncated, or set endian to its byte order.",
    )


def _ibm_traces(path: Path, f: Any, order: str) -> np.ndarray:
    """(N, L) float32 of a format-1 file, decoded from the raw trace bytes."""
    n, ns = f.tracecount, len(f.samples)
    first = 3600 + 3200 * int(f.ext_headers)  # after the textual + binary + extended headers
    size = path.stat().st_size
    if first + n * (240 + 4 * ns) > size:
        raise ReaderError(path, f"{n} traces of {ns} samples do not fit in {size} bytes")
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=first, shape=(n, 240 + 4 * ns))
    words = np.ascontiguousarray(raw[:, 240:]).view(">u4" if order == "big" else "<u4")
    return ibm_to_float32(words.astype(np.uint32))


def _scale(raw: np.ndarray, scalar: np.ndarray) -> np.ndarray:
    """Apply the SEG-Y coordinate scalar: >0 multiplies, <0 divides by its magnitude, 0 is 1."""
    raw = raw.astype(np.float64)
    s = scalar.astype(np.float64)
    magnitude = np.where(s == 0, 1.0, np.abs(s))
    # Divide rather than multiply by 1/|s|: X = 6201972 / 10 is then exactly the nearest double.
    return np.where(s < 0, raw / magnitude, raw * magnitude)


def _check_crs(crs: str) -> None:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        CRS.from_user_input(crs)
    except CRSError as exc:
        raise ValueError(
            f"crs={crs!r}: not a CRS rasterio knows ({exc}). Fix: give an EPSG code such as "
            "'EPSG:23031' (ED50 / UTM 31N, the F3 block)."
        ) from None


def _lat_lon(x: np.ndarray, y: np.ndarray, crs: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    # rasterio, not pyproj: pyproj's bundled PROJ breaks once cfgrib/eccodes is imported.
    from rasterio.warp import transform

    lon, lat = transform(crs, "EPSG:4326", x.tolist(), y.tolist())  # x = lon, y = lat order
    lat_a, lon_a = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    if not (np.isfinite(lat_a).all() and np.isfinite(lon_a).all()):
        raise ReaderError(path, f"CDP X/Y do not project to latitude/longitude from {crs}")
    return lat_a, lon_a


def _read_one(
    path: Path,
    *,
    crs: str | None,
    coordinate_scalar: bool,
    iline: int,
    xline: int,
    endian: Endian,
) -> SeriesArray:
    f, order = _open(path, endian)
    with f:
        try:
            dt_us = float(segyio.tools.dt(f, fallback_dt=0.0))
            # (N, L): IBM floats decoded here (segyio mis-decodes unnormalised ones), others
            # as segyio decodes the file's sample type
            ibm = int(f.format) == 1
            data = _ibm_traces(path, f, order) if ibm else np.asarray(f.trace.raw[:])
            inline = np.asarray(f.attributes(iline)[:], dtype=np.int64)
            crossline = np.asarray(f.attributes(xline)[:], dtype=np.int64)
            cdp_x = np.asarray(f.attributes(_TF.CDP_X)[:], dtype=np.int64)
            cdp_y = np.asarray(f.attributes(_TF.CDP_Y)[:], dtype=np.int64)
            scalar = np.asarray(f.attributes(_TF.SourceGroupScalar)[:], dtype=np.int64)
            units = np.asarray(f.attributes(_TF.CoordinateUnits)[:], dtype=np.int64)
            delay_ms = np.asarray(f.attributes(_TF.DelayRecordingTime)[:], dtype=np.int64)
            ident = np.asarray(f.attributes(_TF.TraceIdentificationCode)[:], dtype=np.int64)
            sample_format = str(f.format)
        except Exception as exc:  # a header or trace beyond the end of a damaged file
            raise ReaderError(path, f"cannot read its traces: {type(exc).__name__}: {exc}") from exc
    n = data.shape[0]
    if n == 0 or data.ndim != 2 or data.shape[1] == 0:
        raise ReaderError(path, f"no samples (traces x samples = {data.shape})")
    if dt_us <= 0:
        raise ReaderError(
            path, "no sample interval in the binary or trace header. Fix: set bytes 3217-3218."
        )
    values = data.astype(np.float32)  # (N, L)
    overflow = np.argwhere(np.isinf(values))
    if len(overflow):
        t, k = overflow[0]
        raise ReaderError(
            path,
            f"{len(overflow)} IBM float samples exceed the float32 range (first: trace {t}, "
            f"sample {k}): the traces are damaged or not IBM floats. Fix: check the sample format "
            "code (binary header bytes 3225-3226) or re-download the file.",
        )
    exact = bool(np.array_equal(values.astype(np.float64), data.astype(np.float64)))
    dead = ident == _DEAD_TRACE
    values[dead] = np.nan
    if coordinate_scalar:
        x, y = _scale(cdp_x, scalar), _scale(cdp_y, scalar)
    else:
        x, y = cdp_x.astype(np.float64), cdp_y.astype(np.float64)
    if crs is not None:
        angular = sorted({_ANGULAR_UNITS[u] for u in units.tolist() if u in _ANGULAR_UNITS})
        if angular:
            raise ReaderError(
                path,
                f"coordinate units (bytes 89-90) are {angular}, not lengths, so crs={crs!r} "
                "does not apply. Fix: leave crs unset.",
            )
        lat, lon = _lat_lon(x, y, crs, path)
    else:
        lat = lon = np.full(n, np.nan)
    epoch = np.datetime64(0, "ns")
    return SeriesArray(
        values=values[:, None, :],  # (N, C=1, L)
        variables=[AMPLITUDE],
        start=epoch + (delay_ms * 1_000_000).astype("timedelta64[ns]"),
        step=np.timedelta64(round(dt_us * 1000), "ns"),
        lat=lat,
        lon=lon,
        source=f"segy:{path.stem}",
        record_attrs={"inline": inline, "crossline": crossline, "cdp_x": x, "cdp_y": y},
        attrs={
            "path": str(path),
            "sample_format": sample_format,
            "endian": order,
            "time_reference": "relative: start - 1970-01-01 is the time of sample 0",
            "crs": crs,
            "coordinate_scalar_applied": bool(coordinate_scalar),
            "dead_traces": int(dead.sum()),
            "float32_exact": exact,
        },
    )


def read_segy(
    paths: Sequence[str | Path],
    *,
    crs: str | None = None,
    coordinate_scalar: bool = True,
    iline: int = 189,
    xline: int = 193,
    endian: Endian = "auto",
) -> list[SeriesArray]:
    """Read SEG-Y files, one :class:`SeriesArray` of N traces × 1 channel per file.

    Options:
      crs: the CRS of the CDP X/Y (e.g. ``"EPSG:23031"`` for F3); None leaves lat/lon NaN.
      coordinate_scalar: apply the scalar of trace header bytes 71-72 to CDP X/Y.
      iline, xline: trace header byte positions of the inline and crossline numbers.
      endian: byte order; ``"auto"`` tries big-endian (the SEG-Y standard), then little.

    See the module docstring for the time and coordinate conventions.
    """
    if isinstance(paths, (str, Path)):
        raise ValueError(f"read_segy takes a sequence of paths, got the single path {paths!r}")
    if not paths:
        raise ValueError("read_segy got no paths. Fix: pass the SEG-Y files to read.")
    if endian not in ("big", "little", "auto"):
        raise ValueError(f"endian={endian!r}: choose 'big', 'little' or 'auto'")
    for name, byte in (("iline", iline), ("xline", xline)):
        if isinstance(byte, bool) or byte not in _HEADER_BYTES:
            raise ValueError(
                f"{name}={byte!r} is not the first byte of a standard trace header field. "
                "Fix: use e.g. 189 (INLINE_3D), 193 (CROSSLINE_3D), 9 (FieldRecord) or 21 (CDP)."
            )
    if crs is not None:
        _check_crs(crs)
    return [
        _read_one(
            Path(p),
            crs=crs,
            coordinate_scalar=coordinate_scalar,
            iline=iline,
            xline=xline,
            endian=endian,
        )
        for p in paths
    ]


__all__ = ["AMPLITUDE", "Endian", "read_segy"]
