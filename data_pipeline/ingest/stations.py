"""Station and basin time series → :class:`SeriesArray`: GHCN-Daily, CAMELS-US, FLUXNET tables.

Conventions shared by the three readers:

* **One SeriesArray per station** (per ``.dly`` file, per CAMELS gauge, per FLUXNET table), each
  with ``N = 1`` record. Stations cover different periods, so stacking them into one ``(N, C, L)``
  array would pad most of it with NaN; the shard writer concatenates records instead.
* **Channels are variables** with canonical lower-case names and canonical units from
  :data:`STATION_CHANNELS` (one name, one unit, whichever source it comes from: GHCN ``TMAX`` and
  Daymet ``tmax(C)`` are both ``tmax`` in K). Values are converted in float64 through
  :func:`..units.to_canonical` and rounded once to float32.
* **The time axis is uniform and gap-filled:** ``start`` is the beginning of the first sample's
  interval (00:00 of the first day for daily data; the start of the first averaging period for
  half-hourly data), ``step`` is one day or the table's period, and every slot no line fills —
  gaps, missing-value codes, dropped flags — is NaN. Times are as written in the file; no time
  zone conversion is applied.
* ``record_attrs["station_id"]`` holds the station / gauge / site id of the record.
* Coordinates come from a sidecar (``ghcnd-stations.txt``, ``camels_topo.txt``) or an option;
  an id the sidecar does not list gets NaN coordinates and a :class:`UserWarning` (the series is
  still usable; ``SeriesArray.has_coordinates`` tells), while a sidecar that cannot be read is a
  :class:`ReaderError`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..variables import VariableInfo
from .base import ReaderError, SeriesArray

_DAY = np.timedelta64(1, "D").astype("timedelta64[ns]")


@dataclass(frozen=True)
class StationChannel:
    """A canonical station variable: one name, one unit, whatever the source."""

    name: str
    units: str
    long_name: str

    def info(self) -> VariableInfo:
        return VariableInfo(self.name, self.units, "series", None, self.long_name)


# Daily totals (precipitation, snowfall, pan evaporation) are rates in "mm day**-1": a GHCN
# PRCP value is the 24-hour total, i.e. mm per observation day, which is exactly what Daymet's
# "prcp(mm/day)" holds, so both sources share one `prcp` channel and one set of statistics.
STATION_CHANNELS: Mapping[str, StationChannel] = {
    c.name: c
    for c in (
        StationChannel("prcp", "mm day**-1", "Daily precipitation"),
        StationChannel("snow", "mm day**-1", "Daily snowfall (snow depth, not water equivalent)"),
        StationChannel("evap", "mm day**-1", "Daily pan evaporation"),
        StationChannel("snwd", "mm", "Snow depth"),
        StationChannel("wesd", "mm", "Water equivalent of snow on the ground"),
        StationChannel("swe", "mm", "Snow water equivalent"),
        StationChannel("tmax", "K", "Daily maximum air temperature"),
        StationChannel("tmin", "K", "Daily minimum air temperature"),
        StationChannel("tavg", "K", "Daily mean air temperature"),
        StationChannel("tobs", "K", "Air temperature at observation time"),
        StationChannel("awnd", "m s**-1", "Daily mean wind speed"),
        StationChannel("dayl", "s", "Day length"),
        StationChannel("srad", "W m**-2", "Daylight-mean incident shortwave radiation"),
        StationChannel("vp", "Pa", "Water vapour pressure"),
        StationChannel("streamflow", "m**3 s**-1", "Daily mean streamflow"),
        StationChannel("streamflow_flag", "1", "USGS streamflow flag: 0 approved, 1 estimated"),
        StationChannel("nee", "umol m**-2 s**-1", "Net ecosystem exchange of CO2"),
        StationChannel("le", "W m**-2", "Latent heat flux"),
        StationChannel("h", "W m**-2", "Sensible heat flux"),
        StationChannel("rg", "W m**-2", "Global radiation (incoming shortwave)"),
        StationChannel("tair", "K", "Air temperature"),
        StationChannel("tsoil", "K", "Soil temperature"),
        StationChannel("rh", "%", "Relative humidity"),
        StationChannel("vpd", "Pa", "Vapour pressure deficit"),
        StationChannel("ustar", "m s**-1", "Friction velocity"),
    )
}


def _split_lines(text: str) -> list[str]:
    """Lines under any terminator: CR-only (old Mac), CRLF or LF, even mixed in one file.

    ``str.splitlines`` is not used: it also splits on form feeds, U+0085 and U+2028.
    """
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()  # the terminator of the last line, not an empty line
    return lines


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ReaderError(
            path, f"cannot read: {exc.strerror or exc}. Fix: check the path."
        ) from exc


def _decode_ascii(path: Path, data: bytes) -> str:
    """ASCII text; a stray multi-byte character would shift every fixed-width column after it."""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + data[: exc.start].count(b"\r") + 1
        raise ReaderError(
            path, f"line {line}: non-ASCII byte 0x{data[exc.start]:02x}. Fix: re-download the file."
        ) from None


def _day(year: int, month: int, day: int) -> np.datetime64:
    return np.datetime64(f"{year:04d}-{month:02d}-{day:02d}", "D")


def _series(
    values: np.ndarray,
    channels: Sequence[StationChannel],
    start: np.datetime64,
    step: np.timedelta64,
    coords: tuple[float, float, float],
    station_id: str,
    source: str,
    attrs: dict[str, Any],
) -> SeriesArray:
    """One-record SeriesArray from ``values`` (C, L) float64 already in canonical units."""
    lat, lon, elevation = coords
    return SeriesArray(
        values=values[None].astype(np.float32),  # (1, C, L)
        variables=[c.info() for c in channels],
        start=np.array([start], dtype="datetime64[ns]"),
        step=np.timedelta64(step, "ns"),
        lat=np.array([lat], dtype=np.float64),
        lon=np.array([lon], dtype=np.float64),
        elevation=np.array([elevation], dtype=np.float64),
        source=source,
        record_attrs={"station_id": np.array([station_id])},
        # The time-stamp convention, recorded in the unit's record and the manifest.
        attrs={"time_stamp": "interval start: a sample's time is the start of its interval "
               "(00:00 of the day for daily values)", **attrs},
    )  # fmt: skip


def _as_paths(paths: Sequence[str | Path], reader: str) -> list[Path]:
    if isinstance(paths, (str, Path)):
        raise ValueError(f"{reader} takes a sequence of paths, got the single path {paths!r}")
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError(f"{reader} got no paths. Fix: pass the files to read.")
    return out


_NO_COORDS = (float("nan"), float("nan"), float("nan"))


def _coords_or_warn(
    table: Mapping[str, tuple[float, float, float]], key: str, where: str
) -> tuple[float, float, float]:
    if key in table:
        return table[key]
    # Not a reader error: the series is intact, only its location is unknown.
    warnings.warn(
        f"{where} does not list {key!r}; its coordinates are NaN. Fix: add the station to the "
        "sidecar, or drop records without coordinates (SeriesArray.has_coordinates).",
        UserWarning,
        stacklevel=3,
    )
    return _NO_COORDS


# ---------------------------------------------------------------------------------------------
# GHCN-Daily .dly
# ---------------------------------------------------------------------------------------------
