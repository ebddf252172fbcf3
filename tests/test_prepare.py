"""`scigpt prepare`: patching, parallel = serial, resume after SIGKILL, bad input → rejects."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
import yaml

from scigpt.config_loader import ConfigError, load_config
from scigpt.data_pipeline.patches import (
    grid_token_coords,
    patchify_grid,
    patchify_series,
    unpatchify_grid,
    window_starts,
)
from scigpt.data_pipeline.store import PatchStore
from scigpt.prepare import prepare_from_config, source_specs
from tests.conftest import job_env

SPLITS = {
    "train": {"start": "2020-01-01T00:00", "end": "2020-01-01T15:00"},
    "test": {"start": "2020-01-01T16:00", "end": "2020-01-01T23:00"},
}


def _config(tmp: Path, sources: list[dict], name: str = "ingest") -> Path:
    cfg = {"name": name, "data": {"sources": sources, "splits": SPLITS}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _tree(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        # records carry timings; logs hold what each rank's readers printed
        if p.is_file() and p.relative_to(store).parts[0] not in ("units", "logs")
    }


# ---- patches ------------------------------------------------------------------------------


@pytest.mark.parametrize("patch", [(1, 4, 4), (2, 3, 5), (3, 1, 1)])
def test_grid_patchify_round_trip(patch):
    x = np.random.default_rng(0).normal(size=(7, 3, 13, 10)).astype(np.float32)
    p = patchify_grid(x, patch)
    pt, ph, pw = patch
    n = 7 // pt
    assert p.shape == (n, 3, -(-13 // ph) * -(-10 // pw), pt * ph * pw)
    back = unpatchify_grid(p, patch, 13, 10)
    assert np.array_equal(back, x[: n * pt])
    # token 0 of variable 1 in sample 0 is the top-left (pt, ph, pw) block, time-major
    assert np.array_equal(p[0, 1, 0], x[:pt, 1, :ph, :pw].reshape(-1))


def test_token_coords_regular_grid_and_dateline():
    lat = np.linspace(55, 45, 41)
    lon = np.linspace(0, 10, 41)
    tlat, tlon = grid_token_coords(lat, lon, 4, 4)
    assert tlat.shape == tlon.shape == (121,)
    assert tlat[0] == pytest.approx(lat[:4].mean()) and tlon[0] == pytest.approx(lon[:4].mean())
    # a patch across the dateline sits at 180°, not at 0°
    _, tl = grid_token_coords(np.array([0.0, 1.0]), np.array([179.0, -179.0]), 2, 2)
    assert abs(abs(tl[0]) - 180.0) < 1e-9


def test_series_windows_pad_and_drop():
    assert window_starts(10, 4, 4, "pad") == [0, 4, 8]
    assert window_starts(10, 4, 4, "drop") == [0, 4]
    assert window_starts(3, 4, 4, "drop") == []
    x = np.arange(2 * 3 * 10, dtype=np.float32).reshape(2, 3, 10)
    p, origin = patchify_series(x, window=4, patch=2, partial="pad")
    assert p.shape == (6, 3, 2, 2)
    assert origin.tolist() == [[0, 0], [0, 4], [0, 8], [1, 0], [1, 4], [1, 8]]
    assert np.array_equal(p[1, 2].reshape(-1), x[0, 2, 4:8])
    assert np.isnan(p[2, 0, 1]).all() and np.array_equal(p[2, 0, 0], x[0, 0, 8:10])


# ---- ingest from configs -----------------------------------------------------------------


@pytest.fixture
def per_file_config(tmp_path, sample_era5_dir) -> Path:
    src = {"name": "era5", "format": "netcdf", "path": str(sample_era5_dir), "unit": "file"}
    return _config(tmp_path, [src])


def test_prepare_statistics_match_numpy(per_file_config, sample_era5_dir, tmp_path):
    loaded = load_config(per_file_config)
    manifest = prepare_from_config(loaded, tmp_path / "store", progress=False)
    src = manifest["sources"]["era5"]
    assert len(src["units"]) == 8 and manifest["rejects"] == []
    assert src["n_samples"] == 8 * 24
    ds = xr.merge([xr.open_dataset(f) for f in sorted(sample_era5_dir.glob("*.nc"))])
    train = ds.sel(time=slice("2020-01-01T00:00", "2020-01-01T15:00"))
    for name, ref in [("u10", train.u10), ("sp", train.sp), ("q700", train.q.sel(level=700))]:
        # float32 values as the reader decodes them, statistics in float64: rtol 1e-12
        vals = ref.values.astype(np.float32).astype(np.float64)
        st = src["stats"][name]
        assert st["count"] == vals.size
        assert st["mean"] == pytest.approx(vals.mean(), rel=1e-12)
        assert st["std"] == pytest.approx(vals.std(), rel=1e-12)
    with PatchStore(tmp_path / "store") as store:
        names = [v.name for v in store.variables("era5")]
        assert names[:1] == ["d2m"] and "u500" in names and len(names) == 14


@pytest.mark.slow
def test_mpirun_four_ranks_equals_serial(tmp_path, sample_era5_dir):
    pde = {"family": "helmholtz", "n_samples": 20, "grid": 24}
    per_file_config = _config(
        tmp_path,
        [
            {"name": "era5", "format": "netcdf", "path": str(sample_era5_dir), "unit": "file"},
            {"name": "helm", "format": "pde", "options": pde, "samples_per_unit": 8},
        ],
    )
    serial = subprocess.run(
        [sys.executable, "-m", "scigpt", "prepare", str(per_file_config),
         "--out", str(tmp_path / "serial"), "--no-progress"],
        capture_output=True, text=True, timeout=300, env=job_env(),
    )  # fmt: skip
    assert serial.returncode == 0, serial.stderr[-3000:]
    par = subprocess.run(
        ["mpirun", "-n", "4", "--oversubscribe", sys.executable, "-m", "scigpt", "prepare",
         str(per_file_config), "--out", str(tmp_path / "mpi"), "--no-progress"],
        capture_output=True, text=True, timeout=300, env=job_env(),
    )  # fmt: skip
    assert par.returncode == 0, par.stdout[-3000:] + par.stderr[-3000:]
    a, b = _tree(tmp_path / "serial"), _tree(tmp_path / "mpi")
    assert a.keys() == b.keys() and len(a) == 12  # 8 + 3 shards + manifest
    for rel in a:
        assert a[rel] == b[rel], f"{rel} differs between serial and mpirun -n 4"
    m = json.loads(a["manifest.json"])
    assert m["sources"]["helm"]["n_samples"] == 20 and m["sources"]["era5"]["n_samples"] == 192


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path, sample_era5_dir):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k in range(48):  # many small units, so the kill lands mid-ingest
        for f in ("ERA5_2020-01-01_u10.nc", "ERA5_2020-01-01_sp.nc"):
            (inputs / f"{k:03d}_{f}").symlink_to(sample_era5_dir / f)
    cfg = _config(tmp_path, [{"name": "era5", "format": "netcdf", "path": str(inputs)}])
    store = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "scigpt",
        "prepare",
        str(cfg),
        "--out",
        str(store),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = store / "units" / "era5"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if records.is_dir() and len(list(records.glob("*.json"))) >= 10:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = len(list(records.glob("*.json")))
    assert 10 <= done_before < 96, "the kill did not land mid-ingest"
    assert not (store / "manifest.json").exists()

    again = subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    clean = subprocess.run(
        [*cmd[:-3], "--out", str(tmp_path / "clean"), "--no-progress"],
        env=job_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert clean.returncode == 0, clean.stderr[-3000:]
    resumed, uninterrupted = _tree(store), _tree(tmp_path / "clean")
    assert resumed.keys() == uninterrupted.keys()
    for rel in resumed:
        assert resumed[rel] == uninterrupted[rel], rel
    m = json.loads((store / "manifest.json").read_text())
    assert m["sources"]["era5"]["n_samples"] == 96 * 24  # nothing duplicated, nothing lost
    assert not list(store.rglob(".*.tmp"))


def _bad_inputs(folder: Path, sample: Path) -> dict[str, str]:
    """Good files plus one broken file per kind of bad input; returns name → expected reason."""
    folder.mkdir()
    shutil.copy(sample / "ERA5_2020-01-01_u10.nc", folder / "a_good_u10.nc")
    shutil.copy(sample / "ERA5_2020-01-01_sp.nc", folder / "b_good_sp.nc")
    data = (sample / "ERA5_2020-01-01_v10.nc").read_bytes()
    (folder / "c_truncated.nc").write_bytes(data[: len(data) // 3])
    (folder / "d_garbage.nc").write_bytes(b"this is not netCDF at all\n" * 10)
    for name, change in [("e_unknown_var.nc", "rename"), ("f_bad_units.nc", "units"),
                         ("g_all_missing.nc", "fill")]:  # fmt: skip
        path = folder / name
        shutil.copy(sample / "ERA5_2020-01-01_d2m.nc", path)
        path.chmod(0o644)
        with netCDF4.Dataset(path, "a") as ds:
            if change == "rename":
                ds.renameVariable("d2m", "zzz_not_a_variable")
            elif change == "units":
                ds["d2m"].units = "furlongs per fortnight"
            else:
                ds["d2m"].set_auto_maskandscale(False)
                ds["d2m"][:] = ds["d2m"]._FillValue
    return {
        "c_truncated.nc": "c_truncated.nc",
        "d_garbage.nc": "d_garbage.nc",
        "e_unknown_var.nc": "zzz_not_a_variable",
        "f_bad_units.nc": "furlongs per fortnight",
        "g_all_missing.nc": "no valid value",
    }


def test_bad_inputs_are_rejected_with_reasons(tmp_path, sample_era5_dir):
    expected = _bad_inputs(tmp_path / "in", sample_era5_dir)
    cfg = _config(tmp_path, [{"name": "mixed", "format": "netcdf", "path": str(tmp_path / "in")}])
    manifest = prepare_from_config(load_config(cfg), tmp_path / "store", progress=False)
    rejects = {Path(r["paths"][0]).name: r["reason"] for r in manifest["rejects"]}
    assert sorted(rejects) == sorted(expected)
    for name, fragment in expected.items():
        assert fragment in rejects[name], (name, rejects[name])
    src = manifest["sources"]["mixed"]
    assert [Path(u["shard"]).name for u in src["units"]] == ["mixed-00000.h5", "mixed-00001.h5"]
    assert {v["name"] for v in src["variables"]} == {"u10", "sp"}
    PatchStore(tmp_path / "store").close()  # the good part verifies
    # A rerun keeps the rejects without re-reading them, and redoes nothing.
    before = _tree(tmp_path / "store")
    again = prepare_from_config(load_config(cfg), tmp_path / "store", progress=False)
    assert again == manifest and _tree(tmp_path / "store") == before


def test_source_option_errors_name_the_key(tmp_path, sample_era5_dir):
    bad_opt = _config(
        tmp_path,
        [{"name": "e", "format": "netcdf", "path": str(sample_era5_dir), "options": {"bogus": 1}}],
        "badopt",
    )
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.options\.bogus: unknown option"):
        source_specs(load_config(bad_opt))
    nothing = _config(tmp_path, [{"name": "e", "path": str(tmp_path / "nowhere/*.nc")}], "nopath")
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.path=.*matches no input files"):
        source_specs(load_config(nothing))
    with pytest.raises(ConfigError, match=r"window=1000 is not a multiple of patch=64"):
        load_config(
            _config(
                tmp_path,
                [{"name": "s", "format": "mseed", "path": "x", "window": 1000, "patch": [64]}],
                "win",
            )
        )


def test_every_format_through_prepare(tmp_path, shared_data, monkeypatch):
    """The shipped all-formats config on the real samples: every source lands, one known reject."""
    from scigpt.config_loader import shipped_config
    from scigpt.data_pipeline.ingest.seisbench import read_seisbench

    monkeypatch.setenv("SCIGPT_SAMPLES", str(shared_data))
    loaded = load_config(shipped_config("runs/ingest-samples.yaml"))
    manifest = prepare_from_config(loaded, tmp_path / "store", progress=False)
    counts = {name: s["n_samples"] for name, s in manifest["sources"].items()}
    assert counts == {
        "era5-netcdf": 24, "era5-grib": 40, "modis": 1, "mseed": 281, "segy-f3": 414,
        "seisbench": 100, "ghcn": 29, "camels": 5, "fluxnet": 53, "poisson": 16,
    }  # fmt: skip
    [reject] = manifest["rejects"]
    assert "h00v08" in reject["paths"][0] and "no valid pixel" in reject["reason"]
    with PatchStore(tmp_path / "store") as store:  # verifies every sha256
        # TA.POKR's three files as one unit: ceil(168001 / 600) = 281 windows of 3 components.
        assert len(store.sources["mseed"]["units"]) == 1
        assert [v.name for v in store.variables("mseed")] == ["vel_z", "vel_n", "vel_e"]
        src = store.sources["seisbench"]
        assert [v.name for v in store.variables("seisbench")] == ["vel_z", "vel_n", "vel_e"]
        shard = store.file(src["units"][0]["shard"])
        patches = shard["a0/patches"][...]  # (N, C, P, K) = (100, 3, 24, 50)
        assert patches.shape == (100, 3, 24, 50)
        ref = read_seisbench([shared_data / "seismic/seisbench_ipoc_pb01/waveforms.hdf5"])[0]
        assert np.array_equal(patches.reshape(100, 3, 1200), ref.values)
        assert np.array_equal(shard["a0/attrs/source_magnitude"][...],
                              ref.record_attrs["source_magnitude"])  # fmt: skip
        grid = store.sources["era5-grib"]["units"][0]["arrays"]
        assert len(grid) == 10 and grid[0]["height"] == 61 and grid[0]["width"] == 120
