"""Product conventions and physical plausibility (issue 17, defects 1–3 and the plausibility stage).

No real MOD13 or MOD11 tile is small enough to ship, so the products are built here from the real
MOD09A1 tile, with the conventions their user guides document: MOD13 stores reflectance and NDVI
× 10000 with ``scale_factor`` 10000 (a divisor); MOD11 stores the view angle as ``angle + 65``
with ``add_offset`` -65 and emissivity as ``(e - 0.49) / 0.002`` with ``add_offset`` 0.49 (the CF
rule); its view time is in "hrs" and its emissivity layers carry no units attribute. The
reference decoding is written out here from those documents and pyhdf's raw integers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyhdf.SD import SD, SDC

from scigpt.config import SourceConfig
from scigpt.data_pipeline.ingest.base import ReaderError
from scigpt.data_pipeline.ingest.hdf5_grid import read_hdf5_grid
from scigpt.data_pipeline.ingest.modis import read_modis_hdf4
from scigpt.data_pipeline.plausibility import (
    RANGES,
    check_arrays,
    plausible_range,
    unbounded_reason,
)
from scigpt.data_pipeline.prepare import SourceSpec, prepare_store
from scigpt.data_pipeline.shards import PatchSpec
from scigpt.data_pipeline.variables import ERA5_VARIABLES, VariableInfo, era5_variable_info

MOD09 = "MOD09A1.A2017193.h18v04.006.2017202035302.hdf"
_SDC_TYPE = {np.dtype(np.int16): SDC.INT16, np.dtype(np.uint8): SDC.UINT8}


def _derive(src: Path, dst: Path, product: str, layers: dict, file_attrs: dict | None = None):
    """``src`` rewritten as ``product``: global attributes copied with the product name and the
    layer names replaced, and the given layers ``{new: (old, data, attrs)}`` written on the
    grid of ``old`` (its dimensions; data type from ``data``)."""
    s, d = SD(str(src), SDC.READ), SD(str(dst), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    try:
        for key, (value, _, typ, _) in s.attributes(full=1).items():
            if isinstance(value, str):
                value = value.replace("MOD09A1", product)
                for new, (old, _, _) in layers.items():
                    value = value.replace(f'"{old}"', f'"{new}"')
            d.attr(key).set(typ, value)
        for key, value in (file_attrs or {}).items():
            d.attr(key).set(SDC.CHAR8, value)
        for new, (old, data, attrs) in layers.items():
            si = s.select(old)
            o = d.create(new, _SDC_TYPE[data.dtype], data.shape)
            for j in range(data.ndim):
                o.dim(j).setname(si.dim(j).info()[0])
            for key, value in attrs.items():
                if isinstance(value, str):
                    o.attr(key).set(SDC.CHAR8, value)
                elif isinstance(value, float):
                    o.attr(key).set(SDC.FLOAT64, value)
                else:
                    o.attr(key).set(_SDC_TYPE[data.dtype], np.asarray(value, data.dtype).tolist())
            o[:] = data
            o.endaccess()
            si.endaccess()
    finally:
        d.end()
        s.end()
    return dst


def _raw(path: Path, name: str) -> tuple[np.ndarray, dict]:
    sd = SD(str(path), SDC.READ)
    try:
        sds = sd.select(name)
        return np.asarray(sds.get()), sds.attributes()
    finally:
        sd.end()


@pytest.fixture(scope="module")
def mod09(shared_data: Path) -> Path:
    return shared_data / "modis" / MOD09


@pytest.fixture(scope="module")
def mod13(mod09: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MOD13A1 layout: red reflectance and NDVI stored × 10000, scale_factor 10000."""
    red, _ = _raw(mod09, "sur_refl_b01")
    nir, _ = _raw(mod09, "sur_refl_b02")
    ndvi = np.round(10000 * (nir - red) / (nir + red).astype(np.float64)).astype(np.int16)
    vi = {"_FillValue": -3000, "valid_range": [-2000, 10000], "scale_factor": 10000.0,
          "add_offset": 0.0}  # fmt: skip
    layers = {
        "500m 16 days red reflectance": ("sur_refl_b01", red, {
            "long_name": "500m 16 days red reflectance", "units": "reflectance",
            "_FillValue": -1000, "valid_range": [0, 10000], "scale_factor": 10000.0,
            "add_offset": 0.0}),
        "500m 16 days NDVI": ("sur_refl_b02", ndvi, {"long_name": "500m 16 days NDVI",
                                                      "units": "NDVI", **vi}),
    }  # fmt: skip
    out = tmp_path_factory.mktemp("mod13") / MOD09.replace("MOD09A1", "MOD13A1")
    return _derive(mod09, out, "MOD13A1", layers)


@pytest.fixture(scope="module")
def mod11(mod09: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MOD11A2 layout from the tile's view zenith and reflectances: view angle (offset -65),
    view time in "hrs", emissivity without units (offset 0.49), clear-sky day bits."""
    vzen, _ = _raw(mod09, "sur_refl_vzen")  # 0.01 degree
    b7, _ = _raw(mod09, "sur_refl_b07")
    angle = (np.round(vzen / 100.0) + 65).astype(np.uint8)  # stored = angle + 65
    emis = (200 + b7 % 55).astype(np.uint8)  # 0.89..0.998 after decoding
    time = (100 + b7 % 20).astype(np.uint8)  # 10.0..11.9 h
    days = (b7 % 256).astype(np.uint8)
    layers = {
        "Day_view_angl": ("sur_refl_vzen", angle, {
            "long_name": "View zenith angle of day observation", "units": "degree",
            "valid_range": [0, 130], "_FillValue": 255, "scale_factor": 1.0,
            "add_offset": -65.0}),
        "Day_view_time": ("sur_refl_b01", time, {
            "long_name": "Day LST observation time", "units": "hrs", "valid_range": [0, 240],
            "_FillValue": 255, "scale_factor": 0.1, "add_offset": 0.0}),
        "Emis_31": ("sur_refl_b02", emis, {
            "long_name": "Band 31 emissivity", "valid_range": [1, 255], "_FillValue": 0,
            "scale_factor": 0.002, "add_offset": 0.49}),
        "Clear_sky_days": ("sur_refl_b03", days, {
            "long_name": "Days in clear-sky conditions and with valid LSTs",
            "valid_range": [1, 255], "_FillValue": 0}),
    }  # fmt: skip
    out = tmp_path_factory.mktemp("mod11") / MOD09.replace("MOD09A1", "MOD11A2")
    return _derive(mod09, out, "MOD11A2", layers)


def test_mod13_scale_factor_is_a_divisor(mod13: Path) -> None:
    """Defect 1: MOD13 documents value = stored / 10000; reading it as a multiplier gave
    reflectance 10**8 too large."""
    [g] = read_modis_hdf4([mod13])
    assert g.names == ["500m 16 days red reflectance", "500m 16 days ndvi"]
    for v, name in enumerate(["500m 16 days red reflectance", "500m 16 days NDVI"]):
        raw, attrs = _raw(mod13, name)
        expected = (raw.astype(np.float64) / attrs["scale_factor"]).astype(np.float32)
        expected[raw == attrs["_FillValue"]] = np.nan
        assert np.array_equal(g.values[0, v], expected, equal_nan=True), name
        d = g.attrs["decoding"][name.lower()]
        assert d["rule"] == "divisor" and "MOD13A1" in d["rule_from"]
    assert 0 < np.nanmax(g.values[0, 0]) <= 1.0  # reflectance, not 10**3
    assert np.nanmin(g.values[0, 1]) >= -1 and np.nanmax(g.values[0, 1]) <= 1.0


def test_mod11_offset_rule_units_and_unitless_layers(mod11: Path) -> None:
    """Defects 2 and 3: MOD11's angles decode as stored + add_offset (CF rule), its view time
    is in "hrs", its emissivity has no units attribute, its clear-sky days are bits."""
    [g] = read_modis_hdf4([mod11])
    names = ["day_view_angl", "day_view_time", "emis_31", "clear_sky_days"]
    assert g.names == names
    raw, _ = _raw(mod11, "Day_view_angl")
    expected = (raw.astype(np.float64) * 1.0 - 65.0).astype(np.float32)
    assert np.array_equal(g.values[0, 0], expected)  # -65..65, not 65..195
    assert g.variables[0].units == "degree" and np.nanmax(np.abs(g.values[0, 0])) <= 65
    raw, _ = _raw(mod11, "Day_view_time")
    assert g.variables[1].units == "h"
    assert np.array_equal(g.values[0, 1], (raw * 0.1).astype(np.float32))
    raw, _ = _raw(mod11, "Emis_31")
    assert g.variables[2].units == "1"
    assert np.array_equal(g.values[0, 2], (raw * 0.002 + 0.49).astype(np.float32))
    assert "product documentation" in g.attrs["decoding"]["emis_31"]["units_from"]
    raw, _ = _raw(mod11, "Clear_sky_days")
    assert g.variables[3].long_name.startswith("QC raw bit field")
    np.testing.assert_array_equal(g.values[0, 3], np.where(raw == 0, np.nan, raw))
    for name in names[:3]:
        assert g.attrs["decoding"][name]["rule"] == "cf"


def test_stated_rule_and_forced_rule(mod09: Path, tmp_path: Path) -> None:
    """A rule the file states wins over the product's default; the option wins over both."""
    raw, attrs = _raw(mod09, "sur_refl_szen")
    layer = {"sur_refl_szen": ("sur_refl_szen", raw, {**attrs, "add_offset": 10.0})}
    stated = {"Slope_and_Offset_Usage": "value = data * scale_factor + add_offset"}
    path = _derive(mod09, tmp_path / MOD09, "MOD09A1", layer, stated)
    [g] = read_modis_hdf4([path], qc=False)
    assert g.attrs["decoding"]["sur_refl_szen"]["rule"] == "cf"
    assert "Slope_and_Offset_Usage" in g.attrs["decoding"]["sur_refl_szen"]["rule_from"]
    np.testing.assert_array_equal(g.values[0, 0], (raw * 0.01 + 10.0).astype(np.float32))
    [h] = read_modis_hdf4([path], qc=False, scale_convention="hdf4")
    np.testing.assert_array_equal(h.values[0, 0], (0.01 * (raw - 10.0)).astype(np.float32))


def test_units_override_reader_and_config(mod11: Path, mod09: Path, tmp_path: Path) -> None:
    """Defect 3: a per-variable units override, typed and validated; unknown names refused."""
    [g] = read_modis_hdf4([mod11], variables=["Emis_31"], qc=False, units={"emis_31": "%"})
    assert g.attrs["decoding"]["emis_31"]["units_from"] == "source config units override"
    raw, _ = _raw(mod11, "Emis_31")
    np.testing.assert_allclose(g.values[0, 0], (raw * 0.002 + 0.49) / 100, rtol=1e-6)
    with pytest.raises(ReaderError, match=r"units override names \['emis_32'\]"):
        read_modis_hdf4([mod11], variables=["Emis_31"], qc=False, units={"emis_32": "1"})
    # A layer without units and no product rule is refused with the fix spelled out.
    raw, attrs = _raw(mod09, "sur_refl_b03")
    attrs = {k: v for k, v in attrs.items() if k != "units"}
    bare = _derive(mod09, tmp_path / MOD09, "MOD09A1", {"sur_refl_b03": ("sur_refl_b03", raw,
                                                                         attrs)})  # fmt: skip
    with pytest.raises(ReaderError, match=r"units: \{sur_refl_b03: '1'\}"):
        read_modis_hdf4([bare], qc=False)
    [ok] = read_modis_hdf4([bare], qc=False, units={"sur_refl_b03": "1"})
    assert ok.variables[0].units == "1"
    # Config: typed (dict of str), known units only, only for formats with units attributes.
    cfg = SourceConfig(name="m", format="modis_hdf4", path="x", units={"emis_31": "1"})
    assert cfg.units == {"emis_31": "1"}
    with pytest.raises(ValueError, match="'furlongs' is not a known unit"):
        SourceConfig(name="m", format="modis_hdf4", path="x", units={"emis_31": "furlongs"})
    with pytest.raises(ValueError, match="units applies to formats"):
        SourceConfig(name="m", format="grib", path="x", units={"t850": "K"})
    with pytest.raises(ValueError, match="plausibility"):
        SourceConfig(name="m", format="grib", path="x", plausibility="maybe")


def _store(tmp_path: Path, name: str, path: Path, **kw) -> dict:
    opts = kw.pop("options", {})
    spec = SourceSpec(name=name, format="modis_hdf4", paths=[path], options=opts,
                      patch=PatchSpec(grid=(1, 8, 8)), **kw)  # fmt: skip
    return prepare_store([spec], tmp_path / name, progress=False)


def test_wrong_scale_is_rejected_naming_the_cause(mod13: Path, mod11: Path, tmp_path: Path):
    """The capability: a MOD13 tile decoded with the multiplier rule is rejected, naming the
    variable, the ranges and the cause; warn keeps and records it; off keeps it silently."""
    forced = {"scale_convention": "hdf4", "qc": False}
    m = _store(tmp_path, "mul", mod13, options=forced)
    [reject] = m["rejects"]
    reason = reject["reason"]
    assert "500m 16 days red reflectance" in reason and "[-0.01, 1.6]" in reason
    assert "scale_factor used as a multiplier where the product divides" in reason
    assert "observed [" in reason and "MOD09 user guide" in reason
    # The offset sign: MOD11 angles decoded with the HDF4 rule are 130° off.
    m = _store(tmp_path, "sign", mod11, options={"scale_convention": "hdf4", "qc": False})
    [reject] = m["rejects"]
    assert (
        "day_view_angl" in reject["reason"]
        and "add_offset applied with the wrong sign" in (reject["reason"])
    )
    m = _store(tmp_path, "warn", mod13, options=forced, plausibility="warn")
    assert not m["rejects"]
    checks = m["sources"]["warn"]["checks"]
    assert any("scale_factor used as a multiplier" in w for w in checks["warnings"])
    m = _store(tmp_path, "off", mod13, options=forced, plausibility="off")
    assert not m["rejects"] and "warnings" not in m["sources"]["off"]["checks"]


def test_manifest_records_ranges_and_decoding(mod13: Path, tmp_path: Path) -> None:
    m = _store(tmp_path, "ok", mod13, options={"qc": False})
    assert not m["rejects"]
    v = m["sources"]["ok"]["checks"]["variables"]["500m 16 days ndvi"]
    raw, attrs = _raw(mod13, "500m 16 days NDVI")
    valid = raw[raw != attrs["_FillValue"]] / 10000.0
    assert v["min"] == pytest.approx(valid.min(), rel=1e-6)
    assert v["max"] == pytest.approx(valid.max(), rel=1e-6)
    assert v["range"] == [-1.0, 1.0] and v["n_outside"] == 0
    [d] = v["decoding"]
    assert d["rule"] == "divisor" and d["scale_factor"] == 10000.0 and d["fill_value"] == [-3000]
    assert d["units_from"] == "units attribute"
    record = json.loads((tmp_path / "ok/units/ok/ok-00000.json").read_text())
    assert record["plausibility"]["variables"]["500m 16 days ndvi"]["decoding"] == d


def test_every_registered_variable_has_a_cited_range() -> None:
    """Each canonical variable of the registries has a range with a source, or a stated reason
    why it has none."""
    from scigpt.data_pipeline.ingest.stations import STATION_CHANNELS

    infos = [era5_variable_info(s, None) for s in ERA5_VARIABLES if s[0].isalpha()]
    infos += [era5_variable_info(s, 850.0) for s in ("t", "z", "q", "u", "v", "w", "r")]
    infos += [c.info() for c in STATION_CHANNELS.values()]
    infos += [VariableInfo(f"{s}_{c}", "counts", "waveform") for s in ("vel", "acc") for c in "zne"]
    for info in infos:
        rng = plausible_range(info)
        assert rng is not None and rng.lo < rng.hi and len(rng.source) > 20, info.name
    assert unbounded_reason(VariableInfo("amplitude", "1", "waveform"))
    for _, rng in RANGES:
        assert rng.source
    # In another unit the range is converted: t850 in °C.
    celsius = plausible_range(VariableInfo("t850", "degC", "grid"))
    assert celsius is not None and celsius.lo == pytest.approx(120.0 - 273.15)


def test_plausibility_units_cause() -> None:
    """°C values labelled K are caught with the units cause."""
    from scigpt.data_pipeline.ingest.base import GridArray

    t = np.linspace(-20, 30, 400, dtype=np.float32).reshape(1, 1, 20, 20)
    arr = GridArray(t, [era5_variable_info("t2m", None)], np.arange(20.0), np.arange(20.0),
                    np.array(["2020-01-01"], "datetime64[ns]"), "test")  # fmt: skip
    with pytest.raises(ReaderError, match="degrees Celsius labelled K"):
        check_arrays([arr], "reject", "netcdf", "t.nc")
    out = check_arrays([arr], "warn", "netcdf", "t.nc")
    assert out["variables"]["t2m"]["n_outside"] == 400 and out["warnings"]


def test_hdf5_divisor_rule(mod13: Path, tmp_path: Path) -> None:
    """The HDF5 reader takes the same rules: divisor by option."""
    import h5py

    raw, attrs = _raw(mod13, "500m 16 days NDVI")
    path = tmp_path / "vi.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("ndvi", data=raw)
        for k in ("scale_factor", "add_offset", "_FillValue", "valid_range", "units"):
            ds.attrs[k] = attrs[k]
        f["lat"], f["lon"] = np.linspace(46, 45, raw.shape[0]), np.linspace(9, 10, raw.shape[1])
        f.attrs["time"] = "2017-07-12"
    [g] = read_hdf5_grid([path], variables=["ndvi"], time="time", scale_convention="divisor")
    expected = (raw / 10000.0).astype(np.float32)
    expected[raw == attrs["_FillValue"]] = np.nan
    np.testing.assert_array_equal(g.values[0, 0], expected)
