"""miniSEED and SAC waveforms (obspy) → :class:`SeriesArray`, one per station channel group.

Conventions
-----------
* **Groups.** Traces that share network, station, location, band + instrument code (the first two
  letters of the SEED channel, ``"BH"``) and sampling rate form one :class:`SeriesArray` with one
  record (N = 1) and one channel per component (the channel's last letter), ordered Z, N, E, 1,
  2, 3, then others alphabetically. ``merge_components=False`` makes one array per SEED channel.
  Traces of one channel from several files or records are merged by obspy (``Stream.merge``).
* **Variables.** ``<stem>_<component>``: the stem comes from the SEED instrument code (H, L, P
  seismometers and geophones → ``vel``; N accelerometers → ``acc``), the component is the last
  letter lower-cased (``vel_z``, ``vel_1``). Units are ``"counts"``: raw digitiser output, no
  instrument correction. Modality ``"waveform"``.
* **Time.** ``step`` is 1 / sampling rate in whole nanoseconds. The record's ``start`` is the
  earliest first sample among its channels; every channel is placed on that sample grid at the
  nearest sample, and its sub-sample offset (true minus grid time of its first sample,
  -step/2 < offset <= step/2) is kept in ``record_attrs["start_offset_ns_<variable>"]`` (int64).
* **Missing data.** The record spans the union of its channels; samples before a channel's first
  or after its last sample are NaN. Gaps inside a channel (and overlaps whose samples disagree)
  are NaN with ``fill_gaps="nan"``, or linearly interpolated by obspy with ``"interpolate"``.
* **Coordinates.** SAC headers ``stla``/``stlo``/``stel`` when present, else the ``stations``
  sidecar (``"NET.STA"`` → latitude, longitude, elevation in m), else NaN: the store refuses
  such records when the tokenizer needs coordinates.
* **Record attrs.** ``network``, ``station``, ``location``, ``band`` (SEED band code, e.g. "B"),
  ``instrument`` (e.g. "H") and the start offsets above.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..variables import VariableInfo
from .base import ReaderError, SeriesArray
from .mseed_records import MSEED3, MSEED3_REFUSAL, check_record_times, mseed_records

if TYPE_CHECKING:  # obspy takes a while to import: it is loaded when a file is read
    from obspy import Trace

FillGaps = Literal["nan", "interpolate"]

# SEED instrument code (second letter of the channel) → variable stem and quantity. SEED manual
# v2.4 appendix A; "P" (geophone) is from the FDSN source-identifier spec.
_INSTRUMENTS: dict[str, tuple[str, str]] = {
    "H": ("vel", "Ground velocity (high-gain seismometer)"),
    "L": ("vel", "Ground velocity (low-gain seismometer)"),
    "P": ("vel", "Ground velocity (geophone)"),
    "N": ("acc", "Ground acceleration (accelerometer)"),
}
# Canonical channel order inside a record: vertical first, then the horizontals.
_COMPONENT_ORDER = "ZNE123"
# SAC ``idep`` codes of restituted data (IDISP, IVEL, IACC, IVOLTS): not counts.
_SAC_PHYSICAL_IDEP = {
    6: "displacement (nm)",
    7: "velocity (nm/s)",
    8: "acceleration (nm/s/s)",
    50: "volts",
}
# Warnings that say nothing about the file's integrity; anything else obspy/libmseed warns
# about while reading (e.g. "Not a SEED record. Will skip bytes ...") means damaged input.
_BENIGN_WARNINGS = (
    DeprecationWarning,
    PendingDeprecationWarning,
    FutureWarning,
    ResourceWarning,
    ImportWarning,
)


# Warnings known to be harmless, each with why: kept in the unit's record, never a reject.
_HARMLESS_WARNINGS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        # obspy io/sac/util.py (#3408): SAC stores delta as float32; obspy rounds the spacing to
        # whole microseconds so that 1/delta is the intended rate. Every sample is kept.
        re.compile(r"^Sample spacing read from SAC file .* rounded of(f)? to microsecond"),
        "SAC delta rounded to whole microseconds by obspy (float32 header); no sample lost",
    ),
)


def _harmless(message: str) -> str | None:
    """Why a reader warning is harmless, or None when it may mean lost or damaged data."""
    for pattern, why in _HARMLESS_WARNINGS:
        if pattern.search(message):
            return why
    return None


def waveform_variable(stem: str, component: str, quantity: str) -> VariableInfo:
    """The canonical variable of one seismic component: ``("vel", "Z")`` → ``vel_z``, counts."""
    return VariableInfo(
        name=f"{stem}_{component.lower()}",
        units="counts",
        modality="waveform",
        long_name=f"{quantity}, component {component.upper()} (raw counts, not restituted)",
    )


def _component_key(component: str) -> tuple[int, str]:
    i = _COMPONENT_ORDER.find(component.upper())
    return (i if i >= 0 else len(_COMPONENT_ORDER), component.upper())


def _step_ns(sampling_rate: float) -> int:
    """Sampling interval in whole ns (exact for the usual rates; 3 Hz drifts 1/3 ns a sample).

    Rates that differ by float noise land on the same step and so in the same group; obspy
    already rounds SAC's float32 ``delta`` (0.0500000007 → 0.05).
    """
    return round(1e9 / sampling_rate)


@dataclass
class _Piece:
    """One obspy trace and the file it came from."""

    path: Path
    trace: Trace
    warnings: list[str] = field(default_factory=list)  # harmless reader warnings of the file


@dataclass
class _Channel:
    """One component of a group after merging: first-sample time and samples (NaN in gaps)."""

    component: str
    start_ns: int
    values: np.ndarray  # (n,) float64
    pieces: list[_Piece] = field(default_factory=list)


def _read_file(path: Path) -> list[_Piece]:
    """All traces of one miniSEED or SAC file; damaged or unsupported files raise ReaderError."""
    import obspy

    if not path.is_file():
        raise ReaderError(path, "no such file. Fix: check the path in the source config.")
    with path.open("rb") as fh:
        if fh.read(3) == MSEED3:  # obspy would call it an unknown format (damage, re-download)
            raise ReaderError(path, MSEED3_REFUSAL)
    try:
        # A file object (not the name) so obspy never treats the path as a glob or URL.
        with warnings.catch_warnings(record=True) as caught, path.open("rb") as fh:
            warnings.simplefilter("always")
            stream = obspy.read(fh)
    except Exception as exc:  # any obspy/libmseed error means the file cannot be used
        raise ReaderError(
            path,
            f"obspy cannot read it as miniSEED or SAC ({type(exc).__name__}: {exc}). "
            "Fix: re-download the file; it is corrupt, truncated or in another format.",
        ) from exc
    messages = [str(w.message) for w in caught if not issubclass(w.category, _BENIGN_WARNINGS)]
    notes = [f"{m} ({_harmless(m)})" for m in messages if _harmless(m)]
    damage = [m for m in messages if not _harmless(m)]
    if damage:
        raise ReaderError(
            path,
            f"obspy warned while reading it, and the warning is not one known to be harmless, so "
            f"data may be missing or damaged: {damage[:3]}. Fix: check the file (e.g. with "
            "dataselect or msi), re-download or repair it.",
        )
    if len(stream) == 0:
        raise ReaderError(path, "no waveform data in the file")
    formats = {tr.stats._format for tr in stream}
    if not formats <= {"MSEED", "SAC"}:
        raise ReaderError(
            path, f"format {sorted(formats)} is not miniSEED or SAC. Fix: convert it to miniSEED."
        )
    if "MSEED" in formats:
        # libmseed drops a final record cut short without a word when the file holds records of
        # several lengths, and skips records it cannot parse: walk the records' own headers and
        # compare the samples they promise with the samples obspy decoded; then check that
        # the records' rates and times agree with each other (mseed_records.py).
        data = path.read_bytes()
        records = mseed_records(path, data)
        promised = sum(r.nsamples for r in records)
        decoded = sum(int(tr.stats.npts) for tr in stream)
        if promised != decoded:
            raise ReaderError(
                path,
                f"its record headers promise {promised} samples but {decoded} were decoded: "
                "records are damaged or missing. Fix: re-download the file or repair it.",
            )
        notes += check_record_times(path, records, data)
    for tr in stream:
        if tr.data.dtype.kind == "S":  # encoding 0 (ASCII): log or console text, not samples
            raise ReaderError(
                path,
                f"{tr.id}: its records hold text (miniSEED encoding 0, ASCII: log messages), not "
                "waveform samples. Fix: leave the log channels out of the source.",
            )
        idep = tr.stats.get("sac", {}).get("idep")
        if idep in _SAC_PHYSICAL_IDEP:
            raise ReaderError(
                path,
                f"{tr.id}: SAC idep says the data are {_SAC_PHYSICAL_IDEP[idep]}, not raw counts. "
                "Fix: ingest the raw (not restituted) waveforms.",
            )
        if len(tr.stats.channel) != 3:
            raise ReaderError(
                path,
                f"{tr.id}: channel code {tr.stats.channel!r} is not a 3-letter SEED code. "
                "Fix: set it (SAC header kcmpnm), e.g. 'BHZ'.",
            )
        if tr.stats.channel[1] not in _INSTRUMENTS:
            raise ReaderError(
                path,
                f"{tr.id}: instrument code {tr.stats.channel[1]!r} is not one of "
                f"{sorted(_INSTRUMENTS)} (seismometer velocity or accelerometer). Fix: leave "
                "other channels (mass positions, state of health) out of the file.",
            )
    return [_Piece(path, tr, notes) for tr in stream]


def _merge(pieces: list[_Piece], component: str, step_ns: int, fill_gaps: FillGaps) -> _Channel:
    """Merge all traces of one SEED channel into one gap-aware sample vector."""
    from obspy import Stream

    traces = [p.trace for p in pieces]
    if len({tr.stats.sampling_rate for tr in traces}) > 1:
        # Rates that differ only by float noise share step_ns: merge them at that rate.
        for tr in traces:
            tr.stats.sampling_rate = 1e9 / step_ns
    stream = Stream(traces)
    try:
        # method 0: gaps, and overlaps whose samples disagree, become masked (or interpolated).
        stream.merge(method=0, fill_value=None if fill_gaps == "nan" else "interpolate")
    except Exception as exc:
        where = sorted({str(p.path) for p in pieces})
        raise ReaderError(
            where[0], f"cannot merge the traces of {traces[0].id} from {where}: {exc}"
        ) from exc
    if len(stream) != 1:  # cannot happen for one id and one rate; guards the indexing below
        raise ReaderError(pieces[0].path, f"{traces[0].id} did not merge into one trace")
    tr = stream[0]
    if np.ma.isMaskedArray(tr.data):
        values = tr.data.astype(np.float64).filled(np.nan)
    else:
        values = np.asarray(tr.data, dtype=np.float64)
    return _Channel(component, int(tr.stats.starttime.ns), values, pieces)


def _check_stations(
    stations: Mapping[str, Sequence[float]] | None,
) -> dict[str, tuple[float, float, float]]:
    out: dict[str, tuple[float, float, float]] = {}
    for key, value in (stations or {}).items():
        if str(key).count(".") != 1:
            raise ValueError(
                f"stations[{key!r}]: keys are 'NET.STA' (e.g. 'IU.ANMO'). Fix: rename the key."
            )
        try:
            lat, lon, elev = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(
                f"stations[{key!r}] = {value!r}: expected [latitude, longitude, elevation_m]"
            ) from None
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 360.0):
            raise ValueError(
                f"stations[{key!r}] = {value!r}: latitude must be in [-90, 90] and longitude in "
                "[-180, 360] degrees. Fix: check the order (latitude first)."
            )
        out[str(key)] = (lat, lon, elev)
    return out


def _coordinates(
    channels: list[_Channel], net_sta: str, stations: dict[str, tuple[float, float, float]]
) -> tuple[float, float, float, str]:
    """(lat, lon, elevation, where from): SAC headers, else the sidecar, else NaN."""
    found: dict[tuple[float, float, float | None], Path] = {}
    for ch in channels:
        for p in ch.pieces:
            sac = p.trace.stats.get("sac", {})
            if "stla" in sac and "stlo" in sac:
                elev = float(sac["stel"]) if "stel" in sac else None
                found.setdefault((float(sac["stla"]), float(sac["stlo"]), elev), p.path)
    if len(found) > 1:
        raise ReaderError(
            next(iter(found.values())),
            f"the SAC headers of {net_sta} give different station coordinates {sorted(found)} "
            "(stla, stlo, stel). Fix: correct the headers.",
        )
    if found:
        lat, lon, elev = next(iter(found))
        return lat, lon, np.nan if elev is None else elev, "sac"
    if net_sta in stations:
        return (*stations[net_sta], "stations")
    return np.nan, np.nan, np.nan, "none"


def _assemble(
    key: tuple[str, str, str, str, int],
    channels: list[_Channel],
    stations: dict[str, tuple[float, float, float]],
    fill_gaps: FillGaps,
    dropped: list[str],
) -> SeriesArray:
    net, sta, loc, code, step_ns = key
    channels = sorted(channels, key=lambda ch: _component_key(ch.component))
    stem, quantity = _INSTRUMENTS[code[1]]
    variables = [waveform_variable(stem, ch.component, quantity) for ch in channels]
    ref = min(ch.start_ns for ch in channels)
    # Nearest sample of the common grid (integer ns arithmetic, rounding half up).
    index = [(2 * (ch.start_ns - ref) + step_ns) // (2 * step_ns) for ch in channels]
    length = max(k + len(ch.values) for k, ch in zip(index, channels, strict=True))
    values = np.full((1, len(channels), length), np.nan, dtype=np.float32)  # (N=1, C, L)
    exact = True
    record_attrs: dict[str, np.ndarray] = {
        "network": np.array([net]),
        "station": np.array([sta]),
        "location": np.array([loc]),
        "band": np.array([code[0]]),
        "instrument": np.array([code[1]]),
    }
    for c, (k, ch, var) in enumerate(zip(index, channels, variables, strict=True)):
        values[0, c, k : k + len(ch.values)] = ch.values  # float64 → float32 rounds once
        placed = values[0, c, k : k + len(ch.values)].astype(np.float64)
        exact = exact and np.array_equal(placed, ch.values, equal_nan=True)
        offset = ch.start_ns - (ref + k * step_ns)
        record_attrs[f"start_offset_ns_{var.name}"] = np.array([offset], dtype=np.int64)
    lat, lon, elev, coords_from = _coordinates(channels, f"{net}.{sta}", stations)
    paths = sorted({str(p.path) for ch in channels for p in ch.pieces})
    formats = sorted({p.trace.stats._format for ch in channels for p in ch.pieces})
    return SeriesArray(
        values=values,
        variables=variables,
        start=np.array([ref], dtype="datetime64[ns]"),
        step=np.timedelta64(step_ns, "ns"),
        lat=np.array([lat], dtype=np.float64),
        lon=np.array([lon], dtype=np.float64),
        elevation=np.array([elev], dtype=np.float64),
        source=f"seismic:{net}.{sta}.{loc}.{code}",
        record_attrs=record_attrs,
        attrs={
            "paths": paths,
            "formats": formats,
            "sampling_rate_hz": 1e9 / step_ns,
            "fill_gaps": fill_gaps,
            "coordinates_from": coords_from,
            # False when some count exceeded 2**24 and float32 rounded it.
            "float32_exact": bool(exact),
            "dropped_channels": list(dropped),
            "reader_warnings": sorted(
                {f"{p.path.name}: {w}" for ch in channels for p in ch.pieces for w in p.warnings}
            ),
        },
    )


def read_waveforms(
    paths: Sequence[str | Path],
    *,
    stations: Mapping[str, tuple[float, float, float]] | None = None,
    fill_gaps: FillGaps = "nan",
    merge_components: bool = True,
    min_samples: int = 1,
) -> list[SeriesArray]:
    """Read miniSEED and SAC files (format detected per file) into one array per channel group.

    Options:
      stations: ``"NET.STA"`` → (latitude °N, longitude °E, elevation m), used where SAC headers
        give no coordinates.
      fill_gaps: ``"nan"`` keeps gaps inside a trace as NaN; ``"interpolate"`` fills them
        linearly (obspy). Samples outside a channel's span are NaN either way.
      merge_components: one array per station/band/instrument/rate with the components as
        channels (True), or one array per SEED channel (False).
      min_samples: channels with fewer valid samples are left out and listed in
        ``attrs["dropped_channels"]``; a file set with no channel left is refused.

    See the module docstring for naming, time-alignment and coordinate conventions.
    """
    if isinstance(paths, (str, Path)):
        raise ValueError(f"read_waveforms takes a sequence of paths, got the single path {paths!r}")
    if not paths:
        raise ValueError("read_waveforms got no paths. Fix: pass the miniSEED/SAC files to read.")
    if fill_gaps not in ("nan", "interpolate"):
        raise ValueError(f"fill_gaps={fill_gaps!r}: choose 'nan' or 'interpolate'")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ValueError(f"min_samples={min_samples!r}: must be an integer >= 1")
    sidecar = _check_stations(stations)
    paths = [Path(p) for p in paths]

    # (net, sta, loc, band+instrument, step_ns) → component → traces
    groups: dict[tuple[str, str, str, str, int], dict[str, list[_Piece]]] = {}
    for path in paths:
        for piece in _read_file(path):
            s = piece.trace.stats
            key = (s.network, s.station, s.location, s.channel[:2], _step_ns(s.sampling_rate))
            groups.setdefault(key, {}).setdefault(s.channel[2], []).append(piece)

    merged: dict[tuple[str, str, str, str, int], list[_Channel]] = {}
    dropped: list[str] = []
    for key, components in sorted(groups.items()):
        for comp, pieces in sorted(components.items()):
            ch = _merge(pieces, comp, key[4], fill_gaps)
            n_valid = int(np.isfinite(ch.values).sum())
            if n_valid < min_samples:
                dropped.append(f"{pieces[0].trace.id}: {n_valid} valid samples < {min_samples}")
                continue
            merged.setdefault(key, []).append(ch)
    if not merged:
        raise ReaderError(
            paths[0],
            f"no channel has min_samples={min_samples} valid samples ({dropped}). "
            "Fix: lower min_samples or check the files.",
        )

    out: list[SeriesArray] = []
    for key, channels in merged.items():
        parts = [channels] if merge_components else [[ch] for ch in channels]
        for part in parts:
            k = key if merge_components else (*key[:3], key[3] + part[0].component, key[4])
            out.append(_assemble(k, part, sidecar, fill_gaps, dropped))
    return out


__all__ = ["FillGaps", "read_waveforms", "waveform_variable"]
