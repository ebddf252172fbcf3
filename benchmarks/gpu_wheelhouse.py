"""Build the GPU suite's wheelhouse on this (CPU, networked) machine, and check it offline.

The GPU machine has no network. Everything the suite needs beyond its image
(``benchmarks/gpu_image.txt``) is listed in ``benchmarks/gpu_requirements.txt``; this script puts
a wheel of each into ``--out`` (default ``.whl/gpu``):

* the project itself (``pip wheel --no-deps``: the package-dir mapping means ``scigpt.kernels``
  and ``scigpt.launch`` exist only in an installed package);
* DeepSpeed as a pure-Python wheel (``DS_BUILD_OPS=0``: its ops are built just in time, none of
  which the suite uses);
* every other requirement, pinned to the version in this venv (what the CPU tests ran against),
  downloaded as binary wheels for the image (CPython 3.12, manylinux x86_64) and for this
  machine's Python (the CPU rehearsal of the suite installs from the same folder);
* ``BUILD_INFO.json``: the pins, each wheel's sha256 and a hash of the project's sources, which
  the suite compares with the tree it runs in (a stale wheel is reported, not silently used).

``--check`` (run by ``make gpu-wheelhouse`` and the tests) resolves the requirements as the
image would, with no index: ``pip install --dry-run --no-index -f WHEELHOUSE -f IMAGE_STUBS
--python-version 3.12 --platform manylinux_2_28_x86_64 --only-binary=:all: --target X``, where
IMAGE_STUBS holds metadata-only wheels of the image's packages at the image's versions.

    python benchmarks/gpu_wheelhouse.py             # build + check
    python benchmarks/gpu_wheelhouse.py --check     # check an existing wheelhouse
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "benchmarks" / "gpu_requirements.txt"
IMAGE = ROOT / "benchmarks" / "gpu_image.txt"
TARGET_PYTHON = "3.12"
TARGET_ABI = "cp312"
TARGET_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# The sources whose hash identifies the project wheel (what the installed package is built from).
SOURCE_DIRS = ("scigpt", "data_pipeline", "kernels", "launch", "configs", "slurm")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_list(path: Path) -> list[str]:
    """Non-comment lines of a requirements-style file, inline comments dropped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def image_packages(path: Path = IMAGE) -> dict[str, str | None]:
    """canonical name -> version (None where the list gives no version)."""
    out: dict[str, str | None] = {}
    for line in read_list(path):
        name, _, version = line.partition("==")
        out[canonical(name)] = version.strip() or None
    return out


def source_hash(root: Path = ROOT) -> str:
    """sha256 over the project's package sources (path + bytes, sorted), caches excluded."""
    h = hashlib.sha256()
    for top in SOURCE_DIRS:
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                h.update(str(path.relative_to(root)).encode() + b"\0")
                h.update(path.read_bytes())
    h.update((root / "pyproject.toml").read_bytes())
    return h.hexdigest()


def pins() -> dict[str, str]:
    """The suite's requirements pinned to the versions installed here."""
    out = {}
    for name in read_list(REQUIREMENTS):
        try:
            out[canonical(name)] = md.version(name)
        except md.PackageNotFoundError as e:
            raise SystemExit(
                f"{name} (benchmarks/gpu_requirements.txt) is not installed in this venv: "
                "run `make venv` first (the wheelhouse pins what the CPU tests use)"
            ) from e
    return out


def _pip(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def build(out: Path, force: bool = False) -> dict:
    """Fill ``out`` afresh (unless it already holds these sources and pins); returns BUILD_INFO."""
    pinned = pins()
    info_path = out / "BUILD_INFO.json"
    if not force and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info["source_sha256"] == source_hash() and info["pins"] == pinned:
            return info
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(ROOT))
    env = {**os.environ, "DS_BUILD_OPS": "0"}
    if "deepspeed" in pinned:
        _pip(
            "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp),
            f"deepspeed=={pinned['deepspeed']}", env=env,
        )  # fmt: skip
    others = [f"{n}=={v}" for n, v in pinned.items() if n != "deepspeed"]
    target = ["--python-version", TARGET_PYTHON, "--implementation", "cp", "--abi", TARGET_ABI]
    for plat in TARGET_PLATFORMS:
        target += ["--platform", plat]
    # For the image, then for this Python (the rehearsal): pure-Python wheels are shared.
    _pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(tmp), *target, *others)
    _pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(tmp), *others)
    wheels = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp.glob("*.whl"))}
    for name in pinned:
        if not any(canonical(w.split("-")[0]) == name for w in wheels):
            raise SystemExit(f"no wheel of {name} in {tmp}: see the pip output above")
    info = {
        "source_sha256": source_hash(),
        "target": {"python": TARGET_PYTHON, "abi": TARGET_ABI, "platforms": TARGET_PLATFORMS},
        "pins": pinned,
        "wheels": wheels,
    }
    (tmp / "BUILD_INFO.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def _stub_wheel(folder: Path, name: str, version: str) -> None:
    """A metadata-only wheel: lets pip's resolver see an image package at its version."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: scigpt\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }

    def digest(text: str) -> str:
        raw = hashlib.sha256(text.encode()).digest()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    record = [f"{p},sha256={digest(t)},{len(t.encode())}" for p, t in files.items()]
    files[f"{dist}.dist-info/RECORD"] = "\n".join([*record, f"{dist}.dist-info/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        for p, t in files.items():
            z.writestr(p, t)


def check(wheelhouse: Path) -> str:
    """Resolve the pinned requirements for the image from the wheelhouse and stubs of the image's
    packages, with no index; raises SystemExit naming what does not resolve. Returns pip's
    summary line."""
    info_path = wheelhouse / "BUILD_INFO.json"
    if not info_path.is_file():
        raise SystemExit(f"{info_path} missing: build the wheelhouse with `make gpu-wheelhouse`")
    info = json.loads(info_path.read_text())
    with tempfile.TemporaryDirectory() as d:
        stubs = Path(d) / "image"
        stubs.mkdir()
        for name, version in image_packages().items():
            _stub_wheel(stubs, name, version or "0")
        target = ["--python-version", TARGET_PYTHON, "--implementation", "cp", "--abi", TARGET_ABI]
        for plat in TARGET_PLATFORMS:
            target += ["--platform", plat]
        reqs = [f"{n}=={v}" for n, v in info["pins"].items()]
        project = next(wheelhouse.glob("scigpt-*.whl"), None)
        if project is None:
            raise SystemExit(f"no scigpt wheel in {wheelhouse}: rebuild with `make gpu-wheelhouse`")
        base = [
            sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
            "--find-links", str(wheelhouse), "--find-links", str(stubs),
            "--only-binary=:all:", "--target", str(Path(d) / "target"), *target,
        ]  # fmt: skip
        summary = ""
        for args in (reqs, ["--no-deps", str(project)]):
            proc = subprocess.run([*base, *args], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(
                    "the wheelhouse does not resolve for the GPU image (Python "
                    f"{TARGET_PYTHON}, {TARGET_PLATFORMS[0]}) with no index:\n"
                    f"{proc.stderr.strip()[-3000:]}"
                )
            summary += next(
                (ln for ln in proc.stdout.splitlines() if ln.startswith("Would install")), ""
            )
            summary += "\n"
    return summary.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".whl" / "gpu")
    ap.add_argument("--check", action="store_true", help="only check an existing wheelhouse")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args()
    if not args.check:
        info = build(args.out, args.force)
        print(f"{args.out}: {len(info['wheels'])} wheels, sources {info['source_sha256'][:12]}")
    print(check(args.out))
    print(f"{args.out}: resolves for the GPU image with no index")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
