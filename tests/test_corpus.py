"""The GRIB corpus of tests/data/grib (PROVENANCE.md): every valid value against raw ecCodes.

Each file covers a convention or code path no other file does (scanning modes, Gaussian and
wrongly-incremented grids, bitmaps, Pa levels, model levels, several level types, ensembles of
parameters, minute steps, GRIB 1 and 2, other centres), so the reader is exercised on files it was
not written against. The reference is independent of cfgrib (which the reader uses): each message
is read with the ecCodes C library through its own Python binding, and each value is placed by
ecCodes' own per-point ``latitudes``/``longitudes`` (so scanning order, alternate rows and
Gaussian latitudes are checked too) and by its validity date/time. Floats are compared to 1e-6
relative (the reader rounds float64 to float32 once), missing points (bitmap) must be NaN.
"""

from __future__ import annotations

from pathlib import Path

import eccodes
import numpy as np
import pytest

from scigpt.data_pipeline.ingest.base import ReaderError, get_reader
from scigpt.data_pipeline.prepare import SourceSpec, prepare_store
from scigpt.data_pipeline.variables import ERA5_VARIABLES, canonical_name

READ = [
    "alternate-scanning.grib",
    "era5-single-level-scalar-time.grib",
    "fields_with_missing_values.grib",
    "hpa_and_pa.grib",
    "multi_param_on_multi_dims.grib",
    "regular_gg_ml.grib",
    "regular_gg_sfc.grib",
    "regular_ll_sfc.grib",
    "regular_ll_wrong_increment.grib",
    "scanning_mode_64.grib",
    "t_on_different_level_types.grib",
    "uv_on_different_levels.grib",
    "xarray-example.grib",
    "step_60m.grib",
    "t_analysis_and_fc_0.grib",
]
# Real files whose values are not what their parameter says (checked by hand: 2 m temperature
# of -3..4 K over the Alps in January; 1000 hPa temperature of 0.00..0.03 K): the plausibility
# stage must refuse them, though they decode exactly.
IMPLAUSIBLE = {
    "step_60m.grib": "degrees Celsius labelled K",
    "t_analysis_and_fc_0.grib": "t1000: 2664 of 2664 valid values (100.00%) lie outside",
}
REFUSED = {
    "era5-levels-corrupted.grib": "does not end with '7777'",
    "reduced_gg.grib": "reduced Gaussian",
    # its 0.01 hPa field is all missing (bitmap): refused as a whole unless variables= is set
    "hpa_and_pa.grib": "t0.01 has no valid value",
}


def _reference(path: Path) -> list[dict]:
    """Every message: canonical name, member, valid time, per-point lat/lon and values."""
    out = []
    with path.open("rb") as fh:
        while (h := eccodes.codes_grib_new_from_file(fh)) is not None:
            try:
                g = lambda key: eccodes.codes_get(h, key)  # noqa: E731
                short = g("shortName")
                level_type, level = g("typeOfLevel"), float(g("level"))
                if level_type == "isobaricInPa":
                    level, level_type = level / 100.0, "isobaricInhPa"
                if level_type == "isobaricInhPa":
                    name = canonical_name(short, level)
                elif level_type == "hybrid":
                    name = canonical_name(short, level, "model")
                else:
                    name = ERA5_VARIABLES[short].stem
                date, clock = str(g("validityDate")), int(g("validityTime"))
                valid = np.datetime64(
                    f"{date[:4]}-{date[4:6]}-{date[6:]}T{clock // 100:02d}:{clock % 100:02d}", "ns"
                )
                values = eccodes.codes_get_double_array(h, "values")
                if eccodes.codes_is_defined(h, "alternativeRowScanning") and g(
                    "alternativeRowScanning"
                ):
                    # Values come in storage order, where odd rows run the other way (GRIB 2
                    # flag table 3.4, bit 4); ecCodes' per-point longitudes do not follow them.
                    rows = values.reshape(g("Nj"), g("Ni"))
                    rows[1::2] = rows[1::2, ::-1].copy()
                    values = rows.ravel()
                if g("bitmapPresent"):
                    values[values == g("missingValue")] = np.nan
                number = g("number") if eccodes.codes_is_defined(h, "number") else 0
                out.append({
                    "name": name, "member": int(number or 0), "time": valid, "values": values,
                    "lat": eccodes.codes_get_double_array(h, "latitudes"),
                    "lon": eccodes.codes_get_double_array(h, "longitudes"),
                })  # fmt: skip
            finally:
                eccodes.codes_release(h)
    return out


def _index(axis: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each coordinate value on a 1-D axis (exact within 1e-6 degrees)."""
    order = np.argsort(axis)
    pos = np.clip(np.searchsorted(axis[order], values - 1e-6), 0, len(axis) - 1)
    idx = order[pos]
    assert np.allclose(axis[idx], values, atol=1e-6), "ecCodes point not on the reader's grid"
    return idx


@pytest.mark.parametrize("name", READ)
def test_grib_corpus_matches_eccodes(shared_data: Path, name: str) -> None:
    path = shared_data / "grib" / name
    arrays = get_reader("grib")([path])
    ref = _reference(path)
    members = {a.attrs["member"]: a for a in arrays}
    checked = 0
    for msg in ref:
        arr = members[msg["member"]]
        v = arr.names.index(msg["name"])
        [t] = np.flatnonzero(arr.time == msg["time"])
        lon = np.mod(msg["lon"], 360.0) if arr.lon.max() > 180 else msg["lon"]
        i, j = _index(arr.lat, msg["lat"]), _index(arr.lon, lon)
        got = arr.values[t, v, i, j].astype(np.float64)
        missing = np.isnan(msg["values"])
        assert np.array_equal(np.isnan(got), missing), f"{name}: {msg['name']} missing points"
        np.testing.assert_allclose(got[~missing], msg["values"][~missing], rtol=1e-6, atol=0)
        checked += int((~missing).sum())
    # Every field of the reader came from a message (nothing invented or duplicated).
    n_fields = sum(int(np.isfinite(a.values).any(axis=(2, 3)).sum()) for a in arrays)
    assert n_fields == sum(int(np.isfinite(m["values"]).any()) for m in ref) and checked > 0
    if name == "fields_with_missing_values.grib":
        assert any(np.isnan(m["values"]).any() for m in ref)


def test_grib_corpus_through_prepare(shared_data: Path, tmp_path: Path) -> None:
    """One ingest over the corpus: implausible and damaged files are refused with the reason,
    the rest land (each file its own unit)."""
    files = {shared_data / "grib" / n for n in (*READ, *REFUSED)}
    spec = SourceSpec("corpus", "grib", sorted(files))
    manifest = prepare_store([spec], tmp_path / "store", progress=False)
    rejects = {Path(r["paths"][0]).name: r["reason"] for r in manifest["rejects"]}
    assert set(rejects) == set(IMPLAUSIBLE) | set(REFUSED), rejects
    for file, why in {**IMPLAUSIBLE, **REFUSED}.items():
        assert why in rejects[file], (file, rejects[file])
    assert len(manifest["sources"]["corpus"]["units"]) == len(files) - len(rejects)


def test_corrupted_grib_is_refused_where_ecodes_fails(shared_data: Path) -> None:
    path = shared_data / "grib" / "era5-levels-corrupted.grib"
    with path.open("rb") as fh, pytest.raises(eccodes.WrongLengthError):
        eccodes.codes_grib_new_from_file(fh)
    with pytest.raises(ReaderError, match=r"message 1 at byte 0 does not end with '7777'"):
        get_reader("grib")([path])
