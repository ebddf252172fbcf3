"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A crash or a signal mid-write never leaves a half-written file under its final name; the old
file (if any) stays until the new one is complete. Used for shards, manifests, configs and
checkpoint pointers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    # The rename itself is only durable once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> str:
    """Run ``write(tmp)`` on a temp file beside ``path``, fsync, rename; return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A dot-prefixed ".tmp" name never matches grid-*.h5 or manifest.json.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        digest = hashlib.sha256()
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shards are meant to be shared read-only
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return digest.hexdigest()


def atomic_dir(out: Path, fill: Callable[[Path], None]) -> Path:
    """Run ``fill(tmp)`` on a temp folder beside ``out``, fsync it, then put it in place of
    ``out``: an existing ``out`` is swapped out only once the new one is complete (a package
    written with --force), and a failure leaves ``out`` as it was. ``fill`` fsyncs its files."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.tmp-"))
    try:
        fill(tmp)
        os.chmod(tmp, 0o755)
        fsync_dir(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.old-"))
            os.rename(out, old / "pkg")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def atomic_write_text(path: Path, text: str) -> str:
    """Atomically write ``text``; returns the sha256 of the bytes written."""
    data = text.encode()
    return atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (shards, manifests, packages)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
