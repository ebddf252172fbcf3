"""Reader isolation, recorded skips and fuzzed inputs (issue 17, defects 9 and 12, fuzzing).

The bad inputs are real: an HDF4 file whose version-record length field was raised to 4000
bytes makes the HDF4 library overrun a 92-byte stack buffer (glibc aborts: "stack smashing
detected", SIGABRT); a SEG-Y file given a geostationary CRS its coordinates lie outside makes
rasterio raise CPLE_AppDefinedError; a FIFO is a file whose read never returns (a stalled
network mount). ``scigpt prepare`` runs as a real subprocess (serial and under mpirun)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import job_env

MODIS = "modis/MOD09A1.A2017193.h18v04.006.2017202035302.hdf"
DAMAGED = "MOD09A1.A2017193.h18v04.006.2017202035302.zz-damaged.hdf"  # sorts after MODIS
U10 = "era5/rhine_2020-01-01_pl/ERA5_2020-01-01_u10.nc"
SPLITS = {
    "train": {"start": "1900-01-01T00:00", "end": "2019-12-31T00:00"},
    "test": {"start": "2020-01-01T00:00", "end": "2030-01-01T00:00"},
}
GEOS = "+proj=geos +h=35785831 +lon_0=0 +datum=WGS84 +units=m"  # F3 lies off its disk


def smashing_hdf4(shared_data: Path) -> bytes:
    """A real MODIS HDF4 file with the length of its version record (DD tag 30) set to 4000."""
    data = bytearray((shared_data / "modis/MCD15A2.A2002185.h00v08.005.2007172150237.hdf")
                     .read_bytes())  # fmt: skip
    ndds = struct.unpack(">H", data[4:6])[0]
    for i in range(ndds):
        p = 10 + 12 * i
        if struct.unpack(">H", data[p : p + 2])[0] == 30:  # DFTAG_VERSION
            data[p + 8 : p + 12] = struct.pack(">I", 4000)
            return bytes(data)
    raise AssertionError("no version record in the first DD block")


def _config(path: Path, sources: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"name": "iso", "data": {"sources": sources, "splits": SPLITS}}))
    return path


def _prepare(cfg: Path, out: Path, *launcher: str, timeout: float = 300):
    cmd = [*launcher, sys.executable, "-m", "scigpt", "prepare", str(cfg), "--out", str(out),
           "--no-progress"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=job_env())


def _tree(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.relative_to(store).parts[0] not in ("units", "logs")
    }


@pytest.fixture(scope="module")
def case(tmp_path_factory, shared_data) -> dict[str, Path]:
    """Good inputs alone, and the same beside a crashing HDF4 file, a SEG-Y file rasterio
    cannot project, a folder, a README and a FIFO; one serial `scigpt prepare` of each."""
    root = tmp_path_factory.mktemp("isolation")
    for kind in ("good", "mixed"):
        for sub, rel in (("modis", MODIS), ("era5", U10)):
            (root / kind / sub).mkdir(parents=True)
            shutil.copy(shared_data / rel, root / kind / sub)
    mixed = root / "mixed"
    (mixed / "modis" / DAMAGED).write_bytes(smashing_hdf4(shared_data))
    (mixed / "modis" / "README.txt").write_text("tiles of 2017\n")
    (mixed / "modis" / "2016").mkdir()
    (mixed / "segy").mkdir()
    shutil.copy(shared_data / "seismic/segy/f3.sgy", mixed / "segy")
    os.mkfifo(mixed / "era5" / "zz_stalled.nc")  # a folder entry that is not a regular file
    sources = [
        {"name": "era5", "format": "netcdf", "path": "{}/era5"},
        {"name": "modis", "format": "modis_hdf4", "path": "{}/modis", "patch": [1, 8, 8]},
    ]
    fill = [{**s, "path": s["path"].format(root / "good")} for s in sources]
    cfg_good = _config(root / "good.yaml", fill)
    bad = [{**s, "path": s["path"].format(mixed)} for s in sources]
    bad.append({"name": "segy", "format": "segy", "path": str(mixed / "segy" / "f3.sgy"),
                "options": {"crs": GEOS}, "window": 75, "patch": [25]})  # fmt: skip
    cfg_mixed = _config(root / "mixed.yaml", bad)
    out = {"root": root, "mixed": mixed, "cfg_mixed": cfg_mixed}
    for name, cfg in (("good", cfg_good), ("serial", cfg_mixed)):
        run = _prepare(cfg, root / f"store-{name}")
        out[f"{name}_run"] = run  # type: ignore[assignment]
        out[f"store_{name}"] = root / f"store-{name}"
    return out


def test_native_crash_and_library_errors_become_rejects(case):
    """The crash and the rasterio error are rejects with their reasons, the good files' shards
    are byte-identical to an ingest without the bad files, the terminal shows no library
    output (it is in the store's log), and the folder's other entries are listed as skipped."""
    run, store = case["serial_run"], case["store_serial"]
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    terminal = run.stdout + run.stderr
    assert "Traceback" not in terminal and "ECCODES" not in terminal
    assert "\n*** stack smashing" not in terminal and not terminal.startswith("***")
    manifest = json.loads((store / "manifest.json").read_text())
    rejects = {r["unit"]: r for r in manifest["rejects"]}
    assert sorted(rejects) == ["modis-00001", "segy-00000"]
    crash = rejects["modis-00001"]
    assert crash["paths"] == [str(case["mixed"] / "modis" / DAMAGED)]
    assert crash["failure"] == {"kind": "crash", "exit_status": -6}
    assert "killed by SIGABRT (exit status 134)" in crash["reason"]
    assert "stack smashing detected" in crash["reason"] and "re-download" in crash["reason"]
    assert rejects["segy-00000"]["reason"].startswith("CPLE_AppDefinedError: Reprojection failed")
    log = (store / "logs" / "prepare-rank0.log").read_text()
    assert "*** stack smashing detected ***" in log
    assert "Traceback" in log and "CPLE_AppDefinedError" in log  # the library's traceback
    assert "readers' log:" in run.stdout

    good = case["good_run"]
    assert good.returncode == 0, good.stderr[-3000:]
    for rel in ("shards/era5/era5-00000.h5", "shards/modis/modis-00000.h5"):
        assert (store / rel).read_bytes() == (case["store_good"] / rel).read_bytes(), rel
    good_manifest = json.loads((case["store_good"] / "manifest.json").read_text())
    for name in ("era5", "modis"):
        assert manifest["sources"][name]["stats"] == good_manifest["sources"][name]["stats"]

    skipped = {Path(e["path"]).name: e for e in manifest["skipped"]}
    assert sorted(skipped) == ["2016", "README.txt", "zz_stalled.nc"]
    assert skipped["2016"]["source"] == "modis" and "a folder" in skipped["2016"]["reason"]
    assert "suffix '.txt'" in skipped["README.txt"]["reason"]
    assert "not a regular file" in skipped["zz_stalled.nc"]["reason"]
    assert "skipped 3 folder entries" in run.stdout


def test_a_crash_is_not_retried_until_its_file_changes(case, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(case["store_serial"], store)
    log = store / "logs" / "prepare-rank0.log"
    before = log.read_text()
    again = _prepare(case["cfg_mixed"], store)
    assert again.returncode == 0, again.stderr[-3000:]
    assert log.read_text() == before  # nothing was read again
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest == json.loads((case["store_serial"] / "manifest.json").read_text())
    damaged = case["mixed"] / "modis" / DAMAGED
    st = damaged.stat()
    os.utime(damaged, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "re-downloaded"
    third = _prepare(case["cfg_mixed"], store)
    assert third.returncode == 0, third.stderr[-3000:]
    added = log.read_text()[len(before) :]
    assert "modis-00001" in added and added.count("=== unit") == 1  # only the changed file
    assert "stack smashing detected" in added


def test_a_hung_read_is_stopped_and_rejected(case, tmp_path):
    """A FIFO given by a glob blocks the netCDF open forever: after its source's unit_timeout_s
    the worker is killed and the unit rejected; the other source's unit lands."""
    era5 = case["mixed"] / "era5"
    cfg = _config(tmp_path / "hang.yaml", [
        {"name": "era5", "format": "netcdf", "path": str(era5)},  # the default timeout
        {"name": "stalled", "format": "netcdf", "path": str(era5 / "zz_*.nc"),
         "unit_timeout_s": 4},
    ])  # fmt: skip
    run = _prepare(cfg, tmp_path / "store")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    [reject] = manifest["rejects"]
    assert reject["unit"] == "stalled-00000"
    assert reject["failure"] == {"kind": "timeout", "timeout_s": 4.0}
    assert "no result within unit_timeout_s=4 s" in reject["reason"]
    assert manifest["sources"]["era5"]["n_samples"] == 24


def test_library_messages_go_to_the_store_log(tmp_path, shared_data):
    """eccodes prints "ECCODES ERROR" lines for a GRIB message whose data-section length is
    damaged; on a run that succeeds they belong in the store's log, not on the terminal."""
    _fuzz_module()
    layouts = sys.modules["_fuzz_layouts"]  # the fuzz script's byte layouts, imported by it
    data = bytearray((shared_data / "era5/grib/era5-levels-members.grib").read_bytes())
    bds = next(layouts._grib1_messages(bytes(data)))[3]  # message 0's data section
    data[bds : bds + 3] = b"\xff\xff\xff"
    (tmp_path / "grib").mkdir()
    (tmp_path / "grib" / "damaged.grib").write_bytes(bytes(data))
    cfg = _config(tmp_path / "noise.yaml", [
        {"name": "era5", "format": "netcdf", "path": str(shared_data / U10)},
        {"name": "grib", "format": "grib", "path": str(tmp_path / "grib"),
         "options": {"members": "split"}},
    ])  # fmt: skip
    run = _prepare(cfg, tmp_path / "store")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "ECCODES" not in run.stdout + run.stderr
    assert "rejected grib/grib-00000" in run.stdout
    log = (tmp_path / "store" / "logs" / "prepare-rank0.log").read_text()
    assert "ECCODES ERROR" in log


@pytest.mark.slow
def test_isolation_under_mpirun(case, tmp_path):
    """Two ranks (each with its own worker, started without fork after MPI_Init) write the same
    shards and manifest as one process; the crash lands in the log of the rank that read it."""
    run = _prepare(case["cfg_mixed"], tmp_path / "mpi", "mpirun", "-n", "2", "--oversubscribe")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    a, b = _tree(case["store_serial"]), _tree(tmp_path / "mpi")
    assert a.keys() == b.keys()
    for rel in a:
        assert a[rel] == b[rel], f"{rel} differs between one process and mpirun -n 2"
    logs = sorted((tmp_path / "mpi" / "logs").glob("*.log"))
    assert [p.name for p in logs] == ["prepare-rank0.log", "prepare-rank1.log"]
    assert sum("stack smashing detected" in p.read_text() for p in logs) == 1


def _fuzz_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_ingest.py"
    spec = importlib.util.spec_from_file_location("fuzz_ingest", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_ingest"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_fuzzed_samples(tmp_path):
    """The fuzz script's small form: 29 mutants of netCDF-4, miniSEED and SEG-Y samples.
    Truncated, emptied, zeroed-header and huge-length mutants are rejected with a reason (or,
    where the bytes hit carried nothing, give the original's values exactly); a flipped payload
    byte is rejected or changes only the values its footprint holds, as xarray/obspy/segyio read
    the mutant. A miniSEED cut exactly between two records (the 50 % cut of TA.POKR BHZ's 492
    records) is a valid, shorter file: accepted only as exactly the original's first samples,
    by the store and by obspy ("undetectable": no sibling check for series). The good files'
    shards are the same bytes with and without the mutants beside them; prepare neither
    crashes, nor hangs, nor prints a traceback."""
    fz = _fuzz_module()
    res = fz.fuzz(tmp_path, ["netcdf", "mseed", "segy"], n_flips=4, seed=0, small=True,
                  unit_timeout_s=60, run_timeout_s=90)  # fmt: skip
    facts = res["facts"]
    assert facts["manifest"] and facts["prepare_exit"] == 0, facts.get("output")
    assert not facts["prepare_hang"] and not facts["prepare_crash"] and facts["tracebacks"] == 0
    assert facts["good_shards"] == dict.fromkeys(["netcdf", "mseed", "segy"], "identical bytes")
    muts = [m for ms in res["mutants"].values() for m in ms]
    assert len(muts) <= 30
    wrong = [(m.name, m.why) for m in muts if m.outcome == "WRONG"]
    assert not wrong
    boundary_cuts = {m.name for m in res["mutants"]["mseed"]
                     if m.kind == "truncation" and len(m.data) % 512 == 0}  # fmt: skip
    assert len(boundary_cuts) == 1
    for m in muts:
        if m.name in boundary_cuts:
            assert m.outcome == "undetectable" and "original's first" in m.why, (m.name, m.why)
        elif m.kind in fz.MUST_REJECT:
            assert m.outcome in ("rejected", "crash", "hang", "identical"), (m.name, m.outcome)
        elif m.kind == "flip-payload":
            assert m.outcome in ("rejected", "footprint", "identical"), (m.name, m.outcome)
        else:
            assert m.outcome == "skipped", (m.name, m.outcome)
        if m.outcome in ("rejected", "crash", "hang"):
            assert m.why.strip(), m.name
    outcomes = {m.outcome for m in muts}
    assert {"rejected", "footprint", "skipped"} <= outcomes  # every check was exercised
