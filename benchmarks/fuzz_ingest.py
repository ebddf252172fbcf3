"""Fuzz ``scigpt prepare`` with mutants of the real samples in tests/data.

Each sample (netCDF-4, GRIB 1, MODIS HDF4, miniSEED, SEG-Y) is mutated in ways real archives
break: truncations, flipped bytes in headers and in the data payload, zeroed headers, length
fields set huge, empty files, plus a directory and a wrong suffix in the source folder. Per
format, the original and all its mutants go into one folder that ``scigpt prepare`` (a real
subprocess, per-unit timeout) ingests as one source; every mutant's outcome is then classified:

* ``rejected`` — a reject with a reason; ``crash`` / ``hang`` — the reader died or hung inside
  its worker (isolate.py) and that became the reject; ``skipped`` — listed under ``skipped`` in
  the manifest (directory, wrong suffix);
* ``identical`` — accepted with exactly the original's values (the bytes changed were unused);
* ``flagged`` / ``undetectable`` — a truncation that left a valid, shorter file (a GRIB file cut
  exactly between two time steps: GRIB messages carry no count; a miniSEED file cut exactly
  between two records: records are independent and no header counts them), accepted with
  exactly the original's first k time steps or samples (its store rows, NaN only after the
  last sample for miniSEED, and an independent read of it equal to the start of the
  original's); ``flagged`` when the manifest flags the unit as unlike its siblings
  (``data_pipeline/consistency.py``), ``undetectable`` when nothing could tell;
* ``footprint`` — a flipped byte accepted: the values that changed are exactly those an
  independent read of the mutant (xarray, eccodes, obspy, segyio, pyhdf) shows changed, no more
  than the byte's footprint (one value of a packed field, the samples of one miniSEED record,
  one compressed HDF4 layer, one GRIB message when the byte is in its header);
* ``WRONG`` — anything else accepted: a truncated/zeroed/huge-length mutant ingested with other
  values, values the independent read does not give, changes beyond the footprint.

The run itself must show 0 crashes of ``scigpt prepare``, 0 tracebacks on its terminal and 0
hangs. ``--small`` selects the test suite's subset (tests/test_ingest_isolation.py).

    python benchmarks/fuzz_ingest.py --out benchmarks/results/fuzz_ingest
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fuzz_layouts import LAYOUTS
from _report import report

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
SPLITS = {
    "train": {"start": "1900-01-01T00:00", "end": "2019-12-31T00:00"},
    "test": {"start": "2020-01-01T00:00", "end": "2030-01-01T00:00"},
}
OUTCOMES = ("rejected", "crash", "hang", "skipped", "identical", "footprint", "flagged",
            "undetectable", "WRONG")  # fmt: skip
MUST_REJECT = ("truncation", "empty", "zeroed-header", "huge-length")


@dataclass(frozen=True)
class Sample:
    key: str
    path: str  # under tests/data
    source: dict[str, Any]  # source config without name/path
    values_comparable: bool  # the reference gives the values in the store's units


SAMPLES = {
    s.key: s
    for s in (
        Sample("netcdf", "era5/rhine_2020-01-01_pl/ERA5_2020-01-01_u10.nc", {"format": "netcdf"},
               True),
        Sample("grib", "era5/grib/era5-levels-members.grib",
               {"format": "grib", "options": {"members": "split"}}, True),
        Sample("modis", "modis/MOD09A1.A2017193.h18v04.006.2017202035302.hdf",
               {"format": "modis_hdf4", "patch": [1, 8, 8]}, False),
        Sample("mseed", "seismic/mseed/TA.POKR..BHZ.mseed",  # coordinates: its StationXML
               {"format": "mseed", "window": 600, "patch": [20],
                "options": {"stations": {"TA.POKR": [65.1171, -147.4335, 501.0]}}}, True),
        Sample("segy", "seismic/segy/f3.sgy",
               {"format": "segy", "options": {"crs": "EPSG:23031"}, "window": 75,
                "patch": [25]}, True),
    )
}  # fmt: skip


@dataclass
class Mutant:
    name: str  # file name inside the source folder (sorts after the original)
    kind: str  # truncation, empty, zeroed-header, huge-length, flip-header, flip-payload, ...
    data: bytes | None  # None: a directory
    offset: int | None = None  # the flipped byte
    footprint: int | None = None  # values a flip at ``offset`` may change
    detail: str = ""
    outcome: str = ""
    why: str = ""


def _name(orig: str, i: int, kind: str) -> str:
    stem, _, suffix = orig.rpartition(".")
    return f"{stem}.zz{i:03d}-{kind}.{suffix}"  # sorts after the original, keeps its suffix


def make_mutants(sample: Sample, n_flips: int = 12, seed: int = 0, small: bool = False,
                 extras: bool = True) -> list[Mutant]:  # fmt: skip
    """The mutants of ``sample``: a fixed list (seeded), originals' names kept as a prefix.
    ``small``: 2 truncations, the empty file, one zeroed header, one huge length field and
    ``n_flips`` payload flips (no header flips); ``extras``: a directory and a wrong suffix."""
    path = DATA / sample.path
    data = path.read_bytes()
    lay = LAYOUTS[sample.key](path, data)
    rng = np.random.default_rng([seed, sum(map(ord, sample.key))])
    size = len(data)
    muts: list[Mutant] = []

    def add(kind: str, blob: bytes | None, **kw: Any) -> None:
        muts.append(Mutant(_name(path.name, len(muts), kind), kind, blob, **kw))

    fractions = (0.5, 0.97) if small else (0.001, 0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.97)
    for frac in fractions:
        cut = max(1, int(size * frac))
        add("truncation", data[:cut], detail=f"first {cut} of {size} B")
    if not small:
        add("truncation", data[:-1], detail="last byte cut")
    add("empty", b"")
    for n in (4,) if small else (4, 16, 64, 512):
        add("zeroed-header", bytes(n) + data[n:], detail=f"first {n} B zeroed")
    for off, huge, label in lay.lengths[: 1 if small else None]:
        add("huge-length", data[:off] + huge + data[off + len(huge) :], detail=label)
    payload_bytes = np.concatenate([np.arange(a, b) for a, b, _ in lay.payload])
    in_payload = np.zeros(size, bool)
    in_payload[payload_bytes] = True
    header_bytes = np.flatnonzero(~in_payload)
    for kind, pool, n in (("flip-payload", payload_bytes, n_flips),
                          ("flip-header", header_bytes, 0 if small else n_flips // 2)):  # fmt: skip
        for off in rng.choice(pool, size=min(n, len(pool)), replace=False):
            off = int(off)
            blob = bytearray(data)
            blob[off] ^= 0xFF
            foot = next((f for a, b, f in (*lay.payload, *lay.headers) if a <= off < b),
                        lay.total_values)  # fmt: skip
            add(kind, bytes(blob), offset=off, footprint=foot, detail=f"byte {off}")
    if extras:
        add("directory", None, detail="a folder named like an input")
        muts.append(Mutant(path.stem + ".zzz-wrong-suffix.txt", "wrong-suffix", data))
    return muts


# ---- reading back ---------------------------------------------------------------------------
def store_values(store: Path, shard: str) -> np.ndarray:
    """All patches of a shard, flattened in group order (float64, NaN where missing)."""
    with h5py.File(store / shard, "r") as f:
        groups = sorted(f, key=lambda g: int(g[1:]))
        return np.concatenate([_data(f[g])[...].ravel() for g in groups]).astype(np.float64)


def store_rows(store: Path, shard: str) -> list[np.ndarray]:
    """Each group's patches (float64), group by group: rows are time steps (grids)."""
    with h5py.File(store / shard, "r") as f:
        groups = sorted(f, key=lambda g: int(g[1:]))
        return [_data(f[g])[...].astype(np.float64) for g in groups]


def _data(group: h5py.Group) -> h5py.Dataset:
    """A group's values: grid ``fields`` (store layout 2) or ``patches`` (series, layout 1)."""
    return group["fields"] if "fields" in group else group["patches"]


def _prefix_rows(got: list[np.ndarray], orig: list[np.ndarray]) -> int | None:
    """k when every group of ``got`` is exactly its original group's first k < K rows."""
    if len(got) != len(orig) or not got:
        return None
    k = got[0].shape[0]
    if not 0 < k < orig[0].shape[0]:
        return None
    same = all(g.shape[0] == k and np.array_equal(g, o[:k], equal_nan=True)
               for g, o in zip(got, orig, strict=True))  # fmt: skip
    return k if same else None


def _prefix_samples(got: list[np.ndarray], orig: list[np.ndarray]) -> int | None:
    """Series (N windows, C, P, K): L when every channel of ``got``, windows in time order, is
    exactly the original's first L < total samples and NaN after them (the last window's tail)."""
    if len(got) != 1 or len(orig) != 1 or got[0].shape[1:] != orig[0].shape[1:]:
        return None
    g = got[0].transpose(1, 0, 2, 3).reshape(got[0].shape[1], -1)
    o = orig[0].transpose(1, 0, 2, 3).reshape(orig[0].shape[1], -1)
    finite = np.isfinite(g).any(axis=0)
    if not finite.any() or g.shape[1] > o.shape[1]:
        return None
    n = int(np.flatnonzero(finite)[-1]) + 1
    if not (n < int(np.isfinite(o).any(axis=0).sum()) and np.isnan(g[:, n:]).all()):
        return None
    return n if np.array_equal(g[:, :n], o[:, :n], equal_nan=True) else None


def reference_values(key: str, path: Path) -> np.ndarray:
    """The file's values by the format's own library (independent of SciGPT's reader)."""
    if key == "netcdf":
        import xarray as xr

        with xr.open_dataset(path) as ds:
            return ds["u10"].values.astype(np.float32).astype(np.float64).ravel()
    if key == "grib":
        import eccodes

        out = []
        with path.open("rb") as f:
            while (h := eccodes.codes_grib_new_from_file(f)) is not None:
                try:
                    out.append(eccodes.codes_get_values(h).astype(np.float32))
                finally:
                    eccodes.codes_release(h)
        return np.concatenate(out).astype(np.float64)
    if key == "modis":
        from pyhdf.SD import SD, SDC

        sd = SD(str(path), SDC.READ)
        try:
            return np.concatenate([sd.select(n).get().astype(np.float64).ravel()
                                   for n in sorted(sd.datasets())])  # fmt: skip
        finally:
            sd.end()
    if key == "mseed":
        import obspy

        # On one time axis (gaps NaN), so a record moved in time counts as changed values.
        st = obspy.read(str(path), format="MSEED")
        for tr in st:
            tr.data = tr.data.astype(np.float64)
        st.merge(method=0, fill_value=np.nan)
        return np.concatenate([np.ma.filled(tr.data, np.nan) for tr in st])
    if key == "segy":
        import segyio

        with segyio.open(path, ignore_geometry=True) as f:
            return f.trace.raw[:].astype(np.float32).astype(np.float64).ravel()
    raise ValueError(key)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ~((a == b) | (np.isnan(a) & np.isnan(b)))


def _subprocess_ref(key: str, path: Path) -> np.ndarray | str:
    """The reference read in a child process: a library that crashes on a mutant must not take
    the harness down either (pyhdf on a bad length field does)."""
    out = path.parent.parent / f".ref-{path.name}.npy"
    cmd = [sys.executable, __file__, "--reference-of", key, str(path), str(out)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "reference read hung"
    if r.returncode != 0 or not out.exists():
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return f"reference read failed: {last[:160]}"
    vals = np.load(out)
    out.unlink()
    return vals


def _reference_or_reason(key: str, path: Path) -> np.ndarray | str:
    if key == "modis":  # pyhdf aborts on some damaged files: read in a child process
        return _subprocess_ref(key, path)
    try:
        return reference_values(key, path)
    except Exception as e:  # the reference library refuses the mutant
        return f"reference read failed: {type(e).__name__}: {str(e)[:160]}"


def _shorter_file(sample: Sample, mut: Mutant, rec: dict, store: Path, orig_rows: list,
                  ref_original: np.ndarray, folder: Path, flags: dict) -> bool:  # fmt: skip
    """Classify a truncation accepted as a valid shorter file (see the module docstring)."""
    rows = store_rows(store, rec["shard"])
    series = sample.key == "mseed"
    k = _prefix_samples(rows, orig_rows) if series else _prefix_rows(rows, orig_rows)
    if k is None:
        return False
    ref = _reference_or_reason(sample.key, folder / mut.name)
    if (
        isinstance(ref, str)
        or not (0 < ref.size < ref_original.size)
        or not np.array_equal(ref, ref_original[: ref.size], equal_nan=True)
    ):
        return False
    total = int(np.isfinite(orig_rows[0]).any(axis=1).sum()) if series else orig_rows[0].shape[0]
    what = f"a valid shorter file: the original's first {k} of {total} " + (
        "samples" if series else "time steps"
    )
    if rec["unit"] in flags:
        mut.outcome, mut.why = "flagged", f"{what}, flagged: {flags[rec['unit']][0][:120]}"
    else:
        why = "the sibling checks compare grid units only" if series else "nothing to compare with"
        mut.outcome, mut.why = "undetectable", f"{what}, not flagged ({why})"
    return True


def classify(sample: Sample, mut: Mutant, rec: dict | None, skipped: set[str], store: Path,
             original: np.ndarray, ref_original: np.ndarray, folder: Path,
             orig_rows: list | None = None, flags: dict | None = None) -> None:  # fmt: skip
    """Set ``mut.outcome`` and ``mut.why`` from its unit record."""
    if rec is None:
        mut.outcome, mut.why = (
            ("skipped", "listed in manifest 'skipped'")
            if str(folder / mut.name) in skipped
            else ("WRONG", "neither ingested, rejected nor skipped")
        )
        return
    if rec["status"] == "rejected":
        kind = (rec.get("failure") or {}).get("kind")
        mut.outcome = {"crash": "crash", "timeout": "hang"}.get(kind, "rejected")
        mut.why = rec["reason"]
        if not mut.why.strip():
            mut.outcome, mut.why = "WRONG", "rejected without a reason"
        return
    got = store_values(store, rec["shard"])
    if got.shape == original.shape and not _changed(got, original).any():
        mut.outcome, mut.why = "identical", "accepted with the original's values"
        return
    if mut.kind == "truncation" and _shorter_file(sample, mut, rec, store, orig_rows or [],
                                                  ref_original, folder, flags or {}):  # fmt: skip
        return
    if mut.kind in MUST_REJECT or mut.kind == "wrong-suffix":
        mut.outcome, mut.why = "WRONG", f"{mut.kind} mutant accepted with changed values"
        return
    if got.shape != original.shape:
        mut.outcome, mut.why = "WRONG", f"accepted with {got.size} values, original {original.size}"
        return
    ours = _changed(got, original)
    ref = _reference_or_reason(sample.key, folder / mut.name)
    if isinstance(ref, str):
        mut.outcome, mut.why = "WRONG", f"accepted, but the {ref}"
        return
    if ref.shape != ref_original.shape:
        mut.outcome, mut.why = "WRONG", "accepted, but the reference reads another value count"
        return
    theirs = _changed(ref, ref_original)
    n_ours, n_ref = int(ours.sum()), int(theirs.sum())
    if n_ours != n_ref:
        mut.outcome = "WRONG"
        mut.why = f"{n_ours} values changed, the reference read shows {n_ref}"
        return
    if n_ours > (mut.footprint or 0):
        mut.outcome = "WRONG"
        mut.why = f"{n_ours} values changed, beyond the byte's footprint of {mut.footprint}"
        return
    if sample.values_comparable:
        a, b = np.sort(got[ours]), np.sort(ref[theirs])
        fa, fb = np.isfinite(a), np.isfinite(b)
        if not (np.array_equal(fa, fb) and np.allclose(a[fa], b[fb], rtol=1e-6, atol=0)):
            mut.outcome = "WRONG"
            mut.why = f"changed values {a[:3]} differ from the reference {b[:3]}"
            return
    mut.outcome = "footprint"
    mut.why = f"{n_ours} value(s) changed (footprint {mut.footprint}), as the reference read"


# ---- running --------------------------------------------------------------------------------
def write_inputs(folder: Path, sample: Sample, muts: list[Mutant]) -> None:
    folder.mkdir(parents=True)
    src = DATA / sample.path
    (folder / src.name).write_bytes(src.read_bytes())
    for m in muts:
        if m.data is None:
            (folder / m.name).mkdir()
        else:
            (folder / m.name).write_bytes(m.data)


def run_prepare(cfg: Path, out: Path, timeout_s: float, env: dict[str, str]):
    """``scigpt prepare`` in a subprocess: (exit code or None on a hang, stdout + stderr)."""
    cmd = [sys.executable, "-m", "scigpt", "prepare", str(cfg), "--out", str(out), "--no-progress"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        return None, f"{e.stdout or ''}{e.stderr or ''}"
    return r.returncode, r.stdout + r.stderr


def write_config(path: Path, sources: list[tuple[str, Path, Sample]], unit_timeout_s: float):
    import yaml

    srcs = [{"name": name, "path": str(folder), **sample.source, "unit_timeout_s": unit_timeout_s}
            for name, folder, sample in sources]  # fmt: skip
    path.write_text(yaml.safe_dump({"name": "fuzz", "data": {"sources": srcs, "splits": SPLITS}}))


def fuzz(work: Path, keys: list[str], *, n_flips: int, seed: int, small: bool,
         unit_timeout_s: float, run_timeout_s: float) -> dict[str, Any]:  # fmt: skip
    """Build the inputs under ``work``, run prepare on the originals alone and with their
    mutants, classify every mutant. Returns mutants, run facts and shard comparisons."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    samples = [SAMPLES[k] for k in keys]
    muts = {s.key: make_mutants(s, n_flips=n_flips, seed=seed, small=small,
                                extras=not small or i == 0)
            for i, s in enumerate(samples)}  # fmt: skip
    good, mixed = [], []
    for s in samples:
        (work / "good" / s.key).mkdir(parents=True)
        src = DATA / s.path
        (work / "good" / s.key / src.name).write_bytes(src.read_bytes())
        write_inputs(work / "mixed" / s.key, s, muts[s.key])
        good.append((s.key, work / "good" / s.key, s))
        mixed.append((s.key, work / "mixed" / s.key, s))
    write_config(work / "good.yaml", good, unit_timeout_s)
    write_config(work / "mixed.yaml", mixed, unit_timeout_s)
    t0 = time.perf_counter()
    code_good, out_good = run_prepare(work / "good.yaml", work / "store-good", run_timeout_s, env)
    code, out = run_prepare(work / "mixed.yaml", work / "store-mixed", run_timeout_s, env)
    seconds = time.perf_counter() - t0
    facts = {
        "prepare_exit": code,
        "prepare_hang": code is None or code_good is None,
        "prepare_crash": code not in (0, 1, None),
        "tracebacks": out.count("Traceback") + out_good.count("Traceback"),
        "terminal_output_lines": len(out.splitlines()),
        "seconds": seconds,
    }
    manifest_path = work / "store-mixed" / "manifest.json"
    facts["manifest"] = manifest_path.is_file()
    if not facts["manifest"]:
        facts["output"] = out[-3000:]
        return {"mutants": muts, "facts": facts}
    manifest = json.loads(manifest_path.read_text())
    skipped = {e["path"] for e in manifest.get("skipped", [])}
    flags = {f["unit"]: f["reasons"] for f in manifest.get("flagged", [])}
    facts["good_shards"] = {}
    for s in samples:
        folder = work / "mixed" / s.key
        records = {}
        for rec_path in (work / "store-mixed" / "units" / s.key).glob("*.json"):
            rec = json.loads(rec_path.read_text())
            records[Path(rec["paths"][0]).name] = rec
        orig = records[(DATA / s.path).name]
        original = store_values(work / "store-mixed", orig["shard"])
        alone = work / "store-good" / orig["shard"]
        if alone.read_bytes() == (work / "store-mixed" / orig["shard"]).read_bytes():
            facts["good_shards"][s.key] = "identical bytes"
        elif not _changed(store_values(work / "store-good", orig["shard"]), original).any():
            facts["good_shards"][s.key] = "same values, other bytes"
        else:
            facts["good_shards"][s.key] = "DIFFERENT values"
        ref_original = reference_values(s.key, DATA / s.path)
        orig_rows = store_rows(work / "store-mixed", orig["shard"])
        facts.setdefault("originals_flagged", []).extend([s.key] if orig["unit"] in flags else [])
        for m in muts[s.key]:
            classify(s, m, records.get(m.name), skipped, work / "store-mixed", original,
                     ref_original, folder, orig_rows, flags)  # fmt: skip
    return {"mutants": muts, "facts": facts, "manifest": manifest}


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, muts in result["mutants"].items():
        c = Counter(m.outcome for m in muts)
        rows.append({"format": key, "mutants": len(muts), **{o: c.get(o, 0) for o in OUTCOMES}})
    total = {"format": "all", "mutants": sum(r["mutants"] for r in rows)}
    total.update({o: sum(r[o] for r in rows) for o in OUTCOMES})
    return [*rows, total]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--formats", nargs="*", default=list(SAMPLES))
    ap.add_argument("--flips", type=int, default=16, help="payload flips per sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="the test suite's subset")
    ap.add_argument("--unit-timeout", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fuzz_ingest"))
    ap.add_argument("--work", type=Path, default=None, help="keep the inputs and stores here")
    ap.add_argument(
        "--reference-of", nargs=3, metavar=("KEY", "FILE", "OUT"), help=argparse.SUPPRESS
    )  # one reference read, in a child process
    args = ap.parse_args()
    if args.reference_of:
        key, path, out = args.reference_of
        np.save(out, reference_values(key, Path(path)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        res = fuzz(work, args.formats, n_flips=args.flips, seed=args.seed, small=args.small,
                   unit_timeout_s=args.unit_timeout, run_timeout_s=3600)  # fmt: skip
    rows = summary_rows(res)
    report(rows, [("format", "format", "8s"), ("mutants", "mutants", "d"),
                  *[(o, o, "d") for o in OUTCOMES]], args.out)  # fmt: skip
    facts = {k: v for k, v in res["facts"].items() if k != "output"}
    print(json.dumps(facts, indent=1))
    details = [{"format": k, "name": m.name, "kind": m.kind, "detail": m.detail,
                "outcome": m.outcome, "why": m.why}
               for k, ms in res["mutants"].items() for m in ms]  # fmt: skip
    args.out.with_name(args.out.name + "_mutants.json").write_text(
        json.dumps({"facts": facts, "mutants": details}, indent=1) + "\n"
    )
    for d in details:
        if d["outcome"] == "WRONG":
            print(f"WRONG {d['format']} {d['kind']} {d['detail']}: {d['why']}")


if __name__ == "__main__":
    main()
