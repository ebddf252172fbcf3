"""SeisBench datasets (``waveforms.hdf5`` + ``metadata.csv``) → one :class:`SeriesArray` each.

The layout (https://seisbench.readthedocs.io, "Data format"): ``metadata.csv`` has one row per
trace; its ``trace_name`` says where the samples are, either ``"bucketK$i,:3,:1200"`` (row ``i``
of the dataset ``data/bucketK``, then the given slices of the remaining axes) or a plain name
(the dataset ``data/<name>``). ``data_format/*`` holds ``component_order`` (e.g. ``"ZNE"``),
``dimension_order`` (``"CW"``: channels, then samples), ``sampling_rate``, ``measurement``,
``unit`` and ``instrument_response``.

Conventions
-----------
* **Records.** One record per metadata row (after the ``splits`` filter), in file order; channels
  in ``component_order``, named like the miniSEED reader's (``vel_z``, ``vel_n``, ``vel_e``;
  ``acc_*`` for acceleration), units ``"counts"``. Traces shorter than the longest one are
  NaN-padded at the end.
* **Time.** ``start`` from ``trace_start_time`` (UTC; ISO 8601 or ``YYYY/MM/DD hh:mm:ss.ff``);
  ``step`` from ``data_format/sampling_rate`` or the ``trace_sampling_rate_hz`` column.
* **Location.** ``lat``/``lon``/``elevation`` are the station's (``station_latitude_deg``,
  ``station_longitude_deg``, ``station_elevation_m``); ``depth`` is the sensor depth
  ``station_depth_m`` when that column exists. The event (source) location and depth stay in
  ``record_attrs`` (``source_latitude_deg``, ``source_depth_km``, ...), not in ``depth``.
* **Record attrs.** Every metadata column: numeric columns as float64 (empty → NaN), all others,
  and every identifier column (names ending ``_code``, ``_id``, ``_name``; ``split``), as
  strings. ``network``, ``station`` and ``location`` repeat the station codes under the names the
  miniSEED reader uses.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..units import parse_units
from .base import ReaderError, SeriesArray
from .seismic import waveform_variable

# data_format/measurement → variable stem and quantity (same stems as the miniSEED reader).
_MEASUREMENTS: dict[str, tuple[str, str]] = {
    "velocity": ("vel", "Ground velocity"),
    "acceleration": ("acc", "Ground acceleration"),
}
_ID_SUFFIXES = ("_code", "_id", "_name")
_ID_COLUMNS = {"split"}
# Station codes under the names the miniSEED reader uses for them.
_ALIASES = {
    "network": "station_network_code",
    "station": "station_code",
    "location": "station_location_code",
}
_TIME = re.compile(
    r"^(\d{4})[-/](\d{2})[-/](\d{2})[T ](\d{2}):(\d{2}):(\d{2})(\.\d+)?\s*(Z|[+-]00:?00)?$"
)
_BUCKET = re.compile(r"^(?P<bucket>[^$]+)\$(?P<index>\d+)(?P<rest>(,[^,]*)*)$")
_SLICE = re.compile(r"^\s*(-?\d*)\s*(?::\s*(-?\d*)\s*)?$")


def _metadata_path(waveforms: Path) -> Path:
    """``waveforms.hdf5`` → ``metadata.csv``; chunked ``waveforms_X.hdf5`` → ``metadata_X.csv``."""
    stem = waveforms.stem
    chunk = stem[len("waveforms") :] if stem.startswith("waveforms") else ""
    return waveforms.with_name(f"metadata{chunk}.csv")


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise ReaderError(
            path,
            "metadata file not found. Fix: put metadata.csv beside waveforms.hdf5 or set "
            "the metadata option.",
        )
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = [c for c in (reader.fieldnames or []) if c]  # "" = a pandas index column
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReaderError(path, f"cannot read it as CSV: {exc}") from exc
    if "trace_name" not in columns:
        raise ReaderError(path, f"no trace_name column (columns: {columns})")
    for i, row in enumerate(rows):
        if None in row or any(row.get(c) is None for c in columns):
            raise ReaderError(path, f"row {i + 2} has {len(row)} fields, the header {len(columns)}")
    return columns, rows


def _column(name: str, raw: list[str]) -> np.ndarray:
    """One metadata column: float64 if every non-empty value is a number, else strings."""
    if name not in _ID_COLUMNS and not name.endswith(_ID_SUFFIXES):
        try:
            if any(v.strip() for v in raw):
                return np.array([float(v) if v.strip() else np.nan for v in raw])
        except ValueError:
            pass
    return np.array(raw, dtype=str)


def _parse_time(text: str) -> np.datetime64:
    m = _TIME.match(text.strip())
    if m is None:
        raise ValueError(text)
    y, mo, d, h, mi, s, frac, _ = m.groups()
    frac = (frac or ".0")[:10]  # nanoseconds at most
    return np.datetime64(f"{y}-{mo}-{d}T{h}:{mi}:{s}{frac}", "ns")


def _parse_slices(rest: str, trace: str, path: Path) -> tuple[slice | int, ...]:
    out: list[slice | int] = []
    for part in rest.split(",")[1:]:
        m = _SLICE.match(part)
        if m is None or (m.group(1) == "" and ":" not in part):
            raise ReaderError(path, f"trace {trace!r}: cannot parse the index {part!r}")
        lo, hi = m.group(1), m.group(2)
        if ":" not in part:
            out.append(int(lo))
        else:
            out.append(slice(int(lo) if lo else None, int(hi) if hi else None))
    return tuple(out)


def _scalar(group: h5py.Group | None, key: str) -> Any:
    if group is None or key not in group:
        return None
    value = group[key][()]
    return value.decode() if isinstance(value, bytes) else value


def _locate(trace: str, path: Path) -> tuple[str, int | None, tuple[slice | int, ...]]:
    """trace_name → (dataset under data/, row in it or None, slices of the remaining axes)."""
    m = _BUCKET.match(trace)
    if m is None:
        return trace, None, ()
    return m["bucket"], int(m["index"]), _parse_slices(m["rest"], trace, path)


def _load_traces(f: h5py.File, traces: list[str], path: Path, transpose: bool) -> list[np.ndarray]:
    """(C, W) float64 samples of each trace, read one bucket range at a time."""
    if "data" not in f:
        raise ReaderError(path, "no data group. Fix: check it is a SeisBench waveforms.hdf5")
    data = f["data"]
    located = [_locate(t, path) for t in traces]
    by_bucket: dict[str, list[int]] = {}
    for k, (name, _, _) in enumerate(located):
        if name not in data or not isinstance(data[name], h5py.Dataset):
            raise ReaderError(
                path,
                f"trace {traces[k]!r} points at data/{name}, which is not in the file (it has "
                f"{sorted(data)[:10]}). Fix: regenerate metadata.csv or the waveform file.",
            )
        by_bucket.setdefault(name, []).append(k)
    out: list[np.ndarray] = [np.empty(0)] * len(traces)
    for name, ks in by_bucket.items():
        ds = data[name]
        rows = [located[k][1] for k in ks]
        if rows[0] is None:  # plain per-trace datasets
            for k in ks:
                out[k] = np.asarray(ds[()])
            continue
        bad = [traces[k] for k, r in zip(ks, rows, strict=True) if r >= ds.shape[0]]
        if bad:
            raise ReaderError(
                path, f"traces {bad[:5]} index past the end of data/{name} ({ds.shape[0]} rows)"
            )
        # One contiguous read per bucket: h5py point selections are far slower than a range.
        lo, hi = min(rows), max(rows)
        block = ds[lo : hi + 1]  # (rows, C, W) or (rows, W, C)
        for k, r in zip(ks, rows, strict=True):
            try:
                out[k] = block[r - lo][located[k][2]]
            except IndexError as exc:
                raise ReaderError(path, f"trace {traces[k]!r}: {exc}") from None
    for k, arr in enumerate(out):
        if arr.ndim != 2:
            raise ReaderError(path, f"trace {traces[k]!r} selects {arr.ndim}-D data, not 2-D")
        if transpose:
            out[k] = arr.T
    return out


def _read_one(path: Path, meta_path: Path, splits: Sequence[str] | None) -> SeriesArray:
    columns, rows = _read_csv(meta_path)
    if splits is not None:
        if "split" not in columns:
            raise ReaderError(meta_path, "no split column, so splits cannot select rows")
        present = sorted({r["split"] for r in rows})
        rows = [r for r in rows if r["split"] in set(splits)]
        if not rows:
            raise ReaderError(meta_path, f"no row is in splits {list(splits)} (present: {present})")
    if not rows:
        raise ReaderError(meta_path, "no metadata rows")
    if not path.is_file():
        raise ReaderError(path, "no such file. Fix: check the path in the source config.")

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ReaderError(path, f"cannot open it as HDF5: {exc}") from exc
    with f:
        fmt = f.get("data_format")
        assumed: list[str] = []
        order, dims = _scalar(fmt, "component_order"), _scalar(fmt, "dimension_order")
        # SeisBench's own defaults when a dataset leaves them out.
        if order is None:
            order = "ZNE"
            assumed.append("component_order ZNE (data_format/component_order missing)")
        if dims is None:
            dims = "CW"
            assumed.append("dimension_order CW (data_format/dimension_order missing)")
        order, dims = str(order), str(dims)
        rate = _scalar(fmt, "sampling_rate")
        measurement = _scalar(fmt, "measurement")
        unit = _scalar(fmt, "unit")
        response = _scalar(fmt, "instrument_response")
        if dims not in ("CW", "WC"):
            raise ReaderError(path, f"dimension_order {dims!r}: this reader takes 'CW' or 'WC'")
        traces = [r["trace_name"] for r in rows]
        samples = _load_traces(f, traces, path, transpose=dims == "WC")  # each (C, W)

    if measurement is None:
        measurement = "velocity"
        assumed.append("measurement velocity (data_format/measurement missing)")
    if str(measurement).lower() not in _MEASUREMENTS:
        raise ReaderError(
            path, f"measurement {measurement!r}: this reader takes {sorted(_MEASUREMENTS)}"
        )
    if unit is None:
        assumed.append("unit counts (data_format/unit missing)")
    elif parse_units(str(unit)) != parse_units("counts"):
        raise ReaderError(
            path,
            f"unit {unit!r}: the waveforms are restituted, the reader keeps raw counts. "
            "Fix: ingest the raw-count version of the dataset.",
        )
    stem, quantity = _MEASUREMENTS[str(measurement).lower()]
    variables = [waveform_variable(stem, comp, quantity) for comp in order]

    rates = (
        {r["trace_sampling_rate_hz"] for r in rows}
        if "trace_sampling_rate_hz" in columns
        else set()
    )
    if len(rates) > 1:
        raise ReaderError(
            meta_path,
            f"traces have sampling rates {sorted(rates)}; one array needs one rate. "
            "Fix: split the metadata by trace_sampling_rate_hz.",
        )
    if rates:
        column_rate = float(next(iter(rates)))
        if rate is not None and not np.isclose(float(rate), column_rate):
            raise ReaderError(
                path,
                f"data_format/sampling_rate {rate} disagrees with the metadata's "
                f"trace_sampling_rate_hz {column_rate}",
            )
        rate = column_rate
    if rate is None or not float(rate) > 0:
        raise ReaderError(path, f"no positive sampling rate (data_format/sampling_rate: {rate})")

    n, c = len(rows), len(order)
    length = max(s.shape[1] for s in samples)
    values = np.full((n, c, length), np.nan, dtype=np.float32)  # (N, C, L)
    exact = True
    for i, (trace, s) in enumerate(zip(traces, samples, strict=True)):
        if s.shape[0] != c:
            raise ReaderError(
                path, f"trace {trace!r} has {s.shape[0]} channels, component_order {order!r} {c}"
            )
        values[i, :, : s.shape[1]] = s
        exact = exact and np.array_equal(values[i, :, : s.shape[1]], s, equal_nan=True)

    starts = np.empty(n, dtype="datetime64[ns]")
    for i, r in enumerate(rows):
        try:
            starts[i] = _parse_time(r.get("trace_start_time", ""))
        except ValueError:
            raise ReaderError(
                meta_path,
                f"trace {r['trace_name']!r}: trace_start_time "
                f"{r.get('trace_start_time')!r} is not a UTC time like 2007-01-01T01:42:45.08",
            ) from None

    record_attrs = {col: _column(col, [r[col] for r in rows]) for col in columns}
    for alias, col in _ALIASES.items():
        record_attrs.setdefault(alias, record_attrs.get(col, np.full(n, "", dtype=str)))

    def coord(col: str) -> np.ndarray:
        a = record_attrs.get(col)
        return a.astype(np.float64) if a is not None and a.dtype.kind == "f" else np.full(n, np.nan)

    return SeriesArray(
        values=values,
        variables=variables,
        start=starts,
        step=np.timedelta64(round(1e9 / float(rate)), "ns"),
        lat=coord("station_latitude_deg"),
        lon=coord("station_longitude_deg"),
        elevation=coord("station_elevation_m"),
        depth=coord("station_depth_m") if "station_depth_m" in columns else None,
        source=f"seisbench:{path.resolve().parent.name}",
        record_attrs=record_attrs,
        attrs={
            "path": str(path),
            "metadata": str(meta_path),
            "component_order": order,
            "dimension_order": dims,
            "sampling_rate_hz": float(rate),
            "measurement": str(measurement),
            "unit": None if unit is None else str(unit),
            "instrument_response": None if response is None else str(response),
            "assumed": assumed,
            "splits": None if splits is None else list(splits),
            "float32_exact": bool(exact),
        },
    )


def read_seisbench(
    paths: Sequence[str | Path],
    *,
    metadata: str | None = None,
    splits: Sequence[str] | None = None,
) -> list[SeriesArray]:
    """Read SeisBench ``waveforms*.hdf5`` files, one :class:`SeriesArray` (N rows × C × L) each.

    Options:
      metadata: the metadata CSV; default ``metadata.csv`` beside each waveform file
        (``metadata_X.csv`` for a chunk ``waveforms_X.hdf5``). Only with a single path.
      splits: keep only rows whose ``split`` column is one of these (e.g. ``["train"]``).

    See the module docstring for the layout and conventions.
    """
    if isinstance(paths, (str, Path)):
        raise ValueError(f"read_seisbench takes a sequence of paths, got the single path {paths!r}")
    if not paths:
        raise ValueError("read_seisbench got no paths. Fix: pass the waveforms.hdf5 files.")
    if metadata is not None and len(paths) > 1:
        raise ValueError(
            f"metadata={metadata!r} names one CSV but {len(paths)} waveform files were given. "
            "Fix: leave metadata unset (each file's metadata.csv is used) or read one file."
        )
    if isinstance(splits, str):
        raise ValueError(f"splits={splits!r}: give a list, e.g. [{splits!r}]")
    out = []
    for p in paths:
        path = Path(p)
        meta_path = Path(metadata) if metadata is not None else _metadata_path(path)
        out.append(_read_one(path, meta_path, splits))
    return out


__all__ = ["read_seisbench"]
