"""Forecasts from input files to CF-1.8 netCDF: ``predict(package, inputs, out, leads=...)``.

The inputs are read with SciGPT's own ingest readers (``scigpt.data_pipeline.ingest``), so
variable names and units are canonical exactly as in training; frames are normalised with the
package's statistics (NaN → 0, as the training loader does), rolled out autoregressively in
normalised space, denormalised to physical units and written, atomically, as one netCDF file:
``name(time, prediction_timedelta, latitude, longitude)`` with an auxiliary
``valid_time(time, prediction_timedelta)`` and provenance attributes naming the package.
"""

from __future__ import annotations

import datetime as dt
import inspect
import re
import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm import tqdm

from scigpt import __version__
from scigpt.atomic import atomic_write, sha256_file
from scigpt.config import ConstraintConfig
from scigpt.data_pipeline.ingest.base import GridArray, format_kind, get_reader
from scigpt.eval.ensemble import apply_constraints
from scigpt.eval.realization import realization_dataset, write_realizations
from scigpt.export.ensemble import ENSEMBLE, is_ensemble, load_ensemble, member_paths
from scigpt.export.loader import load_pretrained
from scigpt.export.verify import WEIGHTS

# Input file suffix → reader format (scigpt.data_pipeline.ingest.base.READERS).
SUFFIX_FORMATS: dict[str, str] = {
    ".nc": "netcdf",
    ".nc4": "netcdf",
    ".netcdf": "netcdf",
    ".grib": "grib",
    ".grib2": "grib",
    ".grb": "grib",
    ".grb2": "grib",
    ".zarr": "zarr",
}

_NS = {"s": 10**9, "min": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}
_NS["w"] = 7 * _NS["d"]
# Unit spellings accepted by parse_lead ("6h", "90min", "2d", "30 s"), case-insensitive.
_UNIT_ALIASES = {
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "min": "min", "mins": "min", "minute": "min", "minutes": "min",
    "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "d": "d", "day": "d", "days": "d",
    "w": "w", "week": "w", "weeks": "w",
}  # fmt: skip
_LEAD_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$", re.IGNORECASE)
_ISO_RE = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<min>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)

# CF standard names (CF standard name table) of canonical variable stems. Only names that are
# right for the ERA5 field are listed; anything else gets no standard_name rather than a wrong
# one.
_STANDARD_NAMES_SINGLE = {
    "u10": "eastward_wind",
    "v10": "northward_wind",
    "d2m": "dew_point_temperature",
    "t2m": "air_temperature",
    "sp": "surface_air_pressure",
    "msl": "air_pressure_at_mean_sea_level",
    "tcw": "atmosphere_mass_content_of_water",
    "tcwv": "atmosphere_mass_content_of_water_vapor",
    "sst": "sea_surface_temperature",
}
_STANDARD_NAMES_LEVEL = {
    "t": "air_temperature",
    "u": "eastward_wind",
    "v": "northward_wind",
    "q": "specific_humidity",
    "z": "geopotential",
    "r": "relative_humidity",
    "w": "lagrangian_tendency_of_air_pressure",
}


# ---- leads ----------------------------------------------------------------------------------
def format_duration(ns: int) -> str:
    """``ns`` nanoseconds as the coarsest exact unit: "2d", "6h", "90min", "30s"."""
    ns = int(ns)
    for unit in ("d", "h", "min", "s"):
        if ns and ns % _NS[unit] == 0:
            return f"{ns // _NS[unit]}{unit}"
    return f"{ns}ns"


def _duration_ns(text: str) -> int | None:
    """Nanoseconds of "6h", "90min", "2d", "PT6H", "P1DT12H"; None when ``text`` is neither."""
    s = text.strip()
    m = _LEAD_RE.match(s)
    if m:
        unit = _UNIT_ALIASES.get(m.group(2).lower())
        if unit is None:
            raise ValueError(
                f"lead {text!r}: unknown unit {m.group(2)!r}; use s, min, h, d or w "
                "(e.g. '6h', '90min', '2d'), an ISO 8601 duration ('PT6H') or a number of steps"
            )
        total = Fraction(m.group(1)) * _NS[unit]
    else:
        m = _ISO_RE.match(s)
        if not m or not any(m.groupdict().values()):
            date_part = s.upper().split("T")[0]
            if date_part.startswith("P") and ("Y" in date_part or "M" in date_part):
                raise ValueError(
                    f"lead {text!r}: years and months have no fixed length; give the lead in "
                    "days, hours or minutes (e.g. 'P30D', '720h')"
                )
            return None
        total = sum(
            (Fraction(v) * _NS[k] for k, v in m.groupdict().items() if v is not None),
            Fraction(0),
        )
    if total.denominator != 1:
        raise ValueError(f"lead {text!r} is not a whole number of nanoseconds")
    return int(total)


def parse_lead(text: str, step_ns: int, *, model_lead: int = 1) -> int:
    """A lead time as a number of model time steps of ``step_ns`` nanoseconds each.

    ``text``: a duration ("6h", "90min", "2d", "30s", ISO 8601 "PT6H"/"P1DT6H") or a bare
    integer, read as a number of time steps ("3"). The lead must be positive and a whole
    multiple of the forecast step, ``model_lead`` time steps (what one model call advances);
    otherwise a ValueError names the allowed multiples.
    """
    step_ns = int(step_ns)
    if step_ns <= 0:
        raise ValueError(f"the time step must be positive, got {step_ns} ns")
    if model_lead < 1:
        raise ValueError(f"model_lead must be a positive number of steps, got {model_lead}")
    s = str(text).strip()
    forecast_ns = model_lead * step_ns
    allowed = ", ".join(format_duration(k * forecast_ns) for k in (1, 2, 3))
    hint = (
        f"allowed leads are whole multiples of the model's forecast step "
        f"{format_duration(forecast_ns)} ({model_lead} time step(s) of "
        f"{format_duration(step_ns)}): {allowed}, … or step counts "
        f"{model_lead}, {2 * model_lead}, {3 * model_lead}, …"
    )
    if re.fullmatch(r"\d+", s):
        steps = int(s)
        what = f" ({steps} step(s))"
    else:
        ns = _duration_ns(s)
        if ns is None:
            raise ValueError(
                f"lead {text!r} is not a duration: write e.g. '6h', '90min', '2d', 'PT6H' "
                "or a bare number of time steps ('3')"
            )
        if ns % step_ns:
            raise ValueError(f"lead {text!r} is not a whole number of time steps; {hint}")
        steps = ns // step_ns
        what = ""
    if steps <= 0:
        raise ValueError(f"lead {text!r} must be positive; {hint}")
    if steps % model_lead:
        raise ValueError(f"lead {text!r}{what} is not a multiple of the forecast step; {hint}")
    return steps


# ---- inputs ---------------------------------------------------------------------------------
def infer_format(paths: Sequence[Path]) -> str:
    """The reader format of the input files, from their suffixes (all must agree)."""
    found: dict[str, list[str]] = {}
    for p in paths:
        fmt = SUFFIX_FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise ValueError(
                f"cannot tell the format of {p} from its suffix {p.suffix or '(none)'!r} "
                f"(known: {', '.join(sorted(SUFFIX_FORMATS))}); pass the format explicitly "
                "(--format / fmt=, e.g. 'netcdf', 'grib', 'zarr')"
            )
        found.setdefault(fmt, []).append(p.name)
    if len(found) > 1:
        raise ValueError(
            f"the inputs mix formats {found}; predict reads one format at a time "
            "(pass files of one format, or give --format / fmt=)"
        )
    return next(iter(found))


def _read_grid(paths: list[Path], fmt: str, options: dict[str, Any]):
    if format_kind(fmt) != "grid":
        raise ValueError(f"format {fmt!r} holds series, not grids: predict forecasts grids")
    reader = get_reader(fmt)
    params = inspect.signature(reader).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown and not takes_any:
        raise ValueError(
            f"reader options {unknown} are not options of the {fmt!r} reader; it takes {known}"
        )
    arrays = reader(paths, **options)
    grids = [a for a in arrays if isinstance(a, GridArray)]
    if len(grids) != 1:
        raise ValueError(
            f"the {fmt!r} reader returned {len(grids)} grids from {[str(p) for p in paths]}; "
            "predict needs exactly one (select fields with options, e.g. variables=[...])"
        )
    grid = grids[0]
    if grid.coords != "geographic" or grid.lat.ndim != 1 or grid.lon.ndim != 1:
        raise ValueError(
            f"{grid.source}: predict writes regular latitude/longitude grids; this input has "
            f"{grid.coords} coordinates of shape {grid.lat.shape} x {grid.lon.shape}"
        )
    return grid


def _parse_time(text: str) -> np.datetime64:
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError) as e:
        raise ValueError(f"init {text!r} is not an ISO 8601 time ({e})") from None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return np.datetime64(ts.to_datetime64(), "ns")


def _list_times(times: np.ndarray, limit: int = 8) -> str:
    s = [str(t)[:19] for t in times.astype("datetime64[s]")]
    if len(s) <= limit:
        return ", ".join(s)
    return f"{', '.join(s[:3])}, …, {', '.join(s[-3:])} ({len(s)} times)"


def _common_step(times: np.ndarray) -> int | None:
    if len(times) < 2:
        return None
    diffs = np.diff(times.astype("datetime64[ns]").astype(np.int64))
    vals, counts = np.unique(diffs, return_counts=True)
    step = int(vals[np.argmax(counts)])
    return step if step > 0 else None


# ---- netCDF ---------------------------------------------------------------------------------
def _stem(var: dict[str, Any]) -> str:
    name, level, kind = var["name"], var.get("level"), var.get("level_type")
    if level is None:
        return name
    if kind == "model" and "_ml" in name:
        return name.split("_ml")[0]
    suffix = f"{float(level):g}"
    return name[: -len(suffix)] if name.endswith(suffix) else name


def standard_name(var: dict[str, Any]) -> str | None:
    """The CF standard name of a registry variable, or None when none is known for sure."""
    if var.get("level") is None:
        return _STANDARD_NAMES_SINGLE.get(var["name"])
    return _STANDARD_NAMES_LEVEL.get(_stem(var))


def _time_unit(ns_values: np.ndarray) -> str | None:
    """The coarsest of hours/minutes/seconds that encodes every value exactly."""
    v = np.asarray(ns_values, dtype=np.int64)
    for unit, ns in (("hours", _NS["h"]), ("minutes", _NS["min"]), ("seconds", _NS["s"])):
        if np.all(v % ns == 0):
            return unit
    return None


def _build_dataset(
    fields: np.ndarray,
    variables: list[dict[str, Any]],
    lat: np.ndarray,
    lon: np.ndarray,
    init: np.datetime64,
    lead_ns: np.ndarray,
    attrs: dict[str, Any],
):
    """(L, V, H, W) float32 forecasts → the CF dataset and its encoding."""
    leads = lead_ns.astype("timedelta64[ns]")
    valid = (init + leads)[None, :]
    coords = {
        "time": (
            "time",
            np.array([init], dtype="datetime64[ns]"),
            {"standard_name": "forecast_reference_time", "long_name": "initial time of forecast",
             "axis": "T"},
        ),
        "prediction_timedelta": (
            "prediction_timedelta",
            leads,
            {"long_name": "forecast lead time", "standard_name": "forecast_period"},
        ),
        "latitude": (
            "latitude",
            np.asarray(lat, dtype=np.float64),
            {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude",
             "axis": "Y"},
        ),
        "longitude": (
            "longitude",
            np.asarray(lon, dtype=np.float64),
            {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude",
             "axis": "X"},
        ),
        "valid_time": (
            ("time", "prediction_timedelta"),
            valid,
            {"standard_name": "time", "long_name": "time the forecast is valid for"},
        ),
    }  # fmt: skip
    data_vars = {}
    dims = ("time", "prediction_timedelta", "latitude", "longitude")
    for v, var in enumerate(variables):
        a = {"units": var["units"], "long_name": var.get("long_name") or var["name"]}
        sn = standard_name(var)
        if sn:
            a["standard_name"] = sn
        if var.get("level") is not None and var.get("level_type") == "pressure":
            a["level_hPa"] = float(var["level"])
        elif var.get("level") is not None and var.get("level_type") == "model":
            a["model_level"] = float(var["level"])
        data_vars[var["name"]] = (dims, fields[None, :, v].astype(np.float32), a)
    ds = xr.Dataset(data_vars=data_vars, coords=coords, attrs=attrs)

    epoch = np.datetime64("1970-01-01T00:00:00", "ns")
    t_ns = (np.concatenate([[init], valid.ravel()]) - epoch).astype(np.int64)
    enc: dict[str, dict[str, Any]] = {
        "latitude": {"_FillValue": None},
        "longitude": {"_FillValue": None},
        "time": {"_FillValue": None, "calendar": "proleptic_gregorian"},
        "valid_time": {"_FillValue": None, "calendar": "proleptic_gregorian"},
        "prediction_timedelta": {"_FillValue": None},
    }
    t_unit, l_unit = _time_unit(t_ns), _time_unit(lead_ns)
    if t_unit:
        for key in ("time", "valid_time"):
            enc[key]["units"] = f"{t_unit} since 1970-01-01 00:00:00"
            enc[key]["dtype"] = "int64"
    if l_unit:
        enc["prediction_timedelta"].update(units=l_unit, dtype="int64")
    for var in variables:
        enc[var["name"]] = {"dtype": "float32", "zlib": True, "complevel": 4}
    return ds, enc


# ---- predict --------------------------------------------------------------------------------
@torch.no_grad()
def _rollout(pm, frames, names, lat, lon, t0, steps, model_lead, step_ns, progress) -> np.ndarray:
    """One model's autoregressive forecasts at ``steps`` from ``frames`` (T, V, H, W), in
    normalised space, denormalised: (L, V, H, W)."""
    hist, n_calls = pm.history, steps[-1] // model_lead
    x = torch.from_numpy(np.ascontiguousarray(frames.transpose(1, 0, 2, 3)))[None]
    x = pm.normalise(x.to(pm.mean.device), names)  # (1, V, T, H, W), NaN → 0 as in training
    wanted = set(steps)
    got: dict[int, np.ndarray] = {}
    for k in tqdm(range(n_calls), desc="predict", unit="step", disable=not progress):
        t_in = t0 + np.timedelta64(k * model_lead * step_ns, "ns")
        y = pm.model(pm.batch(x, names, lat, lon, np.array([t_in]))).float()
        lead_k = (k + 1) * model_lead
        if lead_k in wanted:
            got[lead_k] = pm.denormalise(y, names)[0].cpu().numpy()
        if k + 1 < n_calls:
            x = y[:, :, None] if hist == 1 else torch.cat([x[:, :, 1:], y[:, :, None]], 2)
    return np.stack([got[s] for s in steps])


def _conserved(
    fields: list[np.ndarray],
    initial: np.ndarray,
    names: list[str],
    lat: np.ndarray,
    conserve: Sequence[str],
) -> list[np.ndarray]:
    """The members' forecasts (each (L, V, H, W)) after ProbConserve: the cos(latitude)-weighted
    total of each ``conserve`` variable equal to the initial frame's at every lead."""
    unknown = [v for v in conserve if v not in names]
    if unknown:
        raise ValueError(f"--conserve {', '.join(unknown)}: not forecast here; choose from {names}")
    ens = np.stack(fields).astype(np.float64)  # (M, L, V, H, W)
    fc = {"ens": ens, "names": names, "input_names": names, "task": "forecast",
          "inputs": np.broadcast_to(initial, ens.shape[1:])}  # fmt: skip
    area = np.cos(np.deg2rad(lat))[:, None] * np.ones(ens.shape[-1])
    out, _ = apply_constraints(fc, [ConstraintConfig(variable=v) for v in conserve], cell_area=area)
    return [m.astype(f.dtype) for m, f in zip(out, fields, strict=True)]


def predict(
    package: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    leads: Sequence[str],
    fmt: str | None = None,
    init: str | None = None,
    options: dict | None = None,
    device: str = "cpu",
    progress: bool = False,
    command: str | None = None,
    allow_missing: bool = False,
    trusted_keys: Sequence | None = None,
    conserve: Sequence[str] = (),
) -> Path:
    """Forecast from ``inputs`` with a model package and write the forecasts as CF-1.8 netCDF.
    ``trusted_keys``: the package must be signed by one of these public keys.

    ``package``: a model package (``scigpt export``). ``inputs``: files (or a Zarr store) that
    SciGPT's ingest reader of ``fmt`` reads as one grid (default format: from the suffix);
    ``options`` go to the reader (e.g. ``{"variables": [...]}``). ``leads``: lead times
    (``parse_lead``: "6h", "PT6H", "2d", or a number of time steps "3"), each a whole multiple
    of the package's forecast step. ``init``: the initial time (ISO 8601, default the last
    input time); the ``history`` frames ending at it are the model's input. The model is
    called autoregressively, in normalised space, up to the longest lead. ``command``: the
    command line recorded in the ``history`` attribute (default: a description of this call).
    Inputs that lack some of the package's variables are refused (the model was trained with
    all of them, and a forecast without them is not what it was scored on) unless
    ``allow_missing``: then the missing ones are listed in the ``scigpt_missing_variables``
    attribute of the output. ``conserve`` (an ensemble package only): variables whose total —
    Σ cos(latitude)·value over the grid, or Σ value on a grid without latitudes — is held at
    its value in the initial frame at every lead by ProbConserve (``eval.ensemble.
    apply_constraints``, the variance from the members; no boundary flux), recorded in the
    ``scigpt_constraints`` attribute. Writes ``out`` atomically and returns its path.
    """
    if isinstance(leads, str):
        leads = [leads]
    if not leads:
        raise ValueError("no leads given: ask for at least one lead time (e.g. '6h')")
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no input files given")
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory: give the netCDF file to write")
    options = dict(options or {})

    if conserve and not is_ensemble(package):
        raise ValueError(
            f"--conserve {', '.join(conserve)}: ProbConserve weights its correction by the "
            f"ensemble's variance, and {package} is a single model: give an ensemble package "
            "(scigpt ensemble)"
        )
    if is_ensemble(package):  # every member along a CF realization dimension
        members = member_paths(package)
        models = load_ensemble(package, device=device, trusted_keys=trusted_keys)
    else:
        members = []
        models = [load_pretrained(package, device=device, trusted_keys=trusted_keys)]
    pm = models[0]  # an ensemble's members share config and variables (write_ensemble)
    task = (pm.config.get("run_config") or {}).get("data", {}).get("task", "forecast")
    if task != "forecast":
        raise ValueError(
            f"{package} is an {task}-task model (it maps a frame's inputs to outputs, no lead): "
            "predict runs forecasters"
        )
    pkg_path = Path(package).resolve()
    fmt = fmt or infer_format(paths)
    missing_files = [str(p) for p in paths if not p.exists()]
    if missing_files:
        raise FileNotFoundError(f"input files not found: {missing_files}")
    grid = _read_grid(paths, fmt, options)

    # variables: the package's registry order, restricted to those the input has
    names = [n for n in pm.var_names if n in grid.names]
    if not names:
        raise ValueError(
            f"the inputs hold none of the model's variables: they have {grid.names}, the model "
            f"knows {pm.var_names}"
        )
    absent = [n for n in pm.var_names if n not in grid.names]
    if absent and not allow_missing:
        raise ValueError(
            f"the inputs lack {len(absent)} of the package's {len(pm.var_names)} variables: "
            f"{absent} (they hold {names}). The model was trained and scored with all of them; "
            "a forecast without them is of unknown quality. Fix: add input files holding "
            "them, or pass --allow-missing (allow_missing=True) to forecast anyway; the "
            "missing variables are then recorded in the output's attributes"
        )
    if absent:
        warnings.warn(
            f"the inputs lack package variables {absent}: forecasting only {names} "
            "(recorded in the output's scigpt_missing_variables attribute)",
            stacklevel=2,
        )
    info = {v["name"]: v for v in pm.variables}
    for n in names:
        got = next(v for v in grid.variables if v.name == n).units
        if got != info[n]["units"]:
            raise ValueError(
                f"variable {n!r}: the reader gives units {got!r}, the package was trained on "
                f"{info[n]['units']!r}"
            )

    data = pm.config["data"]
    hist, model_lead = int(pm.history), int(data["lead"])
    times = grid.time.astype("datetime64[ns]")
    step_ns = data.get("time_step_ns")
    if step_ns is None:
        step_ns = _common_step(times)
        if step_ns is None:
            raise ValueError(
                "the package records no time step (an older export) and the inputs hold one "
                "time, so the step of a lead is unknown: pass two or more input times"
            )
    step_ns = int(step_ns)
    steps = sorted({parse_lead(str(x), step_ns, model_lead=model_lead) for x in leads})
    n_calls = steps[-1] // model_lead
    if n_calls > 1 and hist > 1 and model_lead > 1:
        raise ValueError(
            f"this model takes {hist} consecutive frames and forecasts {model_lead} steps "
            f"({format_duration(model_lead * step_ns)}) ahead, so its forecasts cannot be fed "
            f"back as inputs: only the lead {format_duration(model_lead * step_ns)} "
            f"({model_lead} steps) is possible"
        )

    t0 = times[-1] if init is None else _parse_time(init)
    where = np.flatnonzero(times == t0)
    if where.size == 0:
        raise ValueError(
            f"init {np.datetime_as_string(t0, unit='s')} is not an input time; the inputs "
            f"have {_list_times(times)}"
        )
    i = int(where[-1])
    window = times[max(0, i - hist + 1) : i + 1].astype(np.int64)
    if i - hist + 1 < 0 or np.any(np.diff(window) != step_ns):
        need = t0 - np.arange(hist - 1, -1, -1) * np.timedelta64(step_ns, "ns")
        raise ValueError(
            f"init {np.datetime_as_string(t0, unit='s')}: the model needs history={hist} "
            f"consecutive frames {format_duration(step_ns)} apart ending at it "
            f"({_list_times(need)}); the inputs have {_list_times(times)}"
        )

    vidx = [grid.names.index(n) for n in names]
    frames = grid.values[i - hist + 1 : i + 1][:, vidx]  # (T, V, H, W)
    lat, lon = np.array(grid.lat, dtype=np.float64), np.array(grid.lon, dtype=np.float64)
    member_fields = [
        _rollout(m, frames, names, lat, lon, t0, steps, model_lead, step_ns, progress)
        for m in models
    ]  # each (L, V, H, W)
    if conserve:
        member_fields = _conserved(member_fields, frames[-1], names, lat, conserve)
    lead_ns = np.array([s * step_ns for s in steps], dtype=np.int64)

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if command is None:
        command = (
            f"scigpt.eval.predict.predict({str(pkg_path)!r}, {[str(p) for p in paths]}, "
            f"{str(out)!r}, leads={[str(x) for x in leads]}, fmt={fmt!r}, init={init!r})"
        )
    prov = pm.provenance or {}
    attrs = {
        "Conventions": "CF-1.8",
        "title": f"SciGPT forecast from {np.datetime_as_string(t0, unit='s')} "
        f"by model {pkg_path.name}",
        "institution": "SciGPT",
        "source": f"SciGPT model package {pkg_path.name} (scigpt {__version__})",
        "history": f"{now}: {command}",
        "references": f"model card: {pkg_path / 'MODEL_CARD.md'}",
        "scigpt_package": str(pkg_path),
        "scigpt_package_sha256": sha256_file(pkg_path / (ENSEMBLE if members else WEIGHTS)),
        "scigpt_git_sha": str(prov.get("git_sha") or "unknown"),
        "scigpt_source_run": str(prov.get("source_run") or "unknown"),
        "scigpt_input_files": ", ".join(str(p.resolve()) for p in paths),
        "scigpt_input_format": fmt,
        "scigpt_version": __version__,
        # what the model did not see (allow_missing); empty when every variable was given
        "scigpt_missing_variables": ", ".join(absent),
        "scigpt_model_variables": ", ".join(pm.var_names),
        # ProbConserve: these totals held at the initial frame's (empty: none)
        "scigpt_constraints": ", ".join(f"mass of {v}" for v in conserve),
    }
    built = [_build_dataset(f, [info[n] for n in names], lat, lon, t0, lead_ns, attrs)
             for f in member_fields]  # fmt: skip
    if members:
        ens = realization_dataset([b[0] for b in built], names=[n for n, _ in members])
        return write_realizations(ens, out, built[0][1])
    ds, enc = built[0]

    def write(tmp: Path) -> None:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=enc)

    atomic_write(out, write)  # temp file beside ``out``, fsync, os.replace
    return out
