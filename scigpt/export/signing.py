"""Ed25519 signatures for model packages (``scigpt keygen``, ``scigpt export --sign``,
``load_pretrained(..., trusted_keys=...)``).

``checksums.sha256`` detects accidents — a truncated copy, a flipped bit — and nothing more:
whoever can edit a file can rewrite its checksum too. Groups that exchange packages across sites
sign them: the exporter signs ``checksums.sha256`` (which names every other file with its
sha256) with a private Ed25519 key (RFC 8032, through the ``cryptography`` package), and a
receiver that holds the matching public key, obtained out of band, accepts the package only if
the signature verifies, every checksum matches and the folder holds no file the signature does
not cover. A one-byte change anywhere fails one of these.

``signature.json``: ``{"algorithm": "ed25519", "key_id": ..., "public_key": <base64, 32 bytes>,
"signature": <base64, 64 bytes>, "signed": "checksums.sha256"}``. The signed message is
``b"scigpt-model-package-v1\\n"`` followed by the bytes of ``checksums.sha256``. The embedded
public key only says which key signed; trust comes from the receiver's own list of keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from scigpt.export.errors import PackageError

SIGNATURE = "signature.json"
SIGNED = "checksums.sha256"
CONTEXT = b"scigpt-model-package-v1\n"


def key_id(public_raw: bytes) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def generate_key(path: str | Path) -> tuple[Path, Path, str]:
    """Write a new private key to ``path`` (PEM, PKCS#8, readable by its owner only) and its
    public key to ``path.pub`` (PEM); returns both paths and the key id. Never overwrites."""
    path = Path(path)
    pub = path.with_name(path.name + ".pub")
    for p in (path, pub):
        if p.exists():
            raise FileExistsError(f"{p} already exists: choose another name (keys are never "
                                  "overwritten)")  # fmt: skip
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    pub.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return path, pub, key_id(raw)


def load_private_key(path: str | Path):
    """An Ed25519 private key from a PEM file written by ``scigpt keygen``."""
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise FileNotFoundError(f"--sign {path}: no such key file (make one: scigpt keygen "
                                f"{path})") from None  # fmt: skip
    except (ValueError, TypeError) as e:
        raise ValueError(f"--sign {path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"--sign {path}: an {type(key).__name__}, not an Ed25519 key")
    return key


def public_raw(key: Any) -> bytes:
    """The 32 raw bytes of a trusted public key given as a ``.pub`` PEM file path, PEM text or
    bytes, 32 raw bytes, or an ``Ed25519PublicKey``."""
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, bytes) and len(key) == 32:
        return key
    if isinstance(key, (str, os.PathLike)) and not str(key).lstrip().startswith("-----BEGIN"):
        path = Path(key)
        try:
            key = path.read_bytes()
        except OSError as e:
            raise ValueError(f"trusted key {path}: cannot read it ({e.strerror})") from None
    data = key.encode() if isinstance(key, str) else key
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"trusted key: not a PEM public key ({e})") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise ValueError(f"trusted key: an {type(loaded).__name__}, not an Ed25519 key")
    return loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_package(pkg: Path, key: Any) -> Path:
    """Write ``signature.json`` into the package folder ``pkg`` (its checksums file complete):
    ``key`` is a private key or the path of one."""
    if isinstance(key, (str, os.PathLike)):
        key = load_private_key(key)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = key.sign(CONTEXT + (pkg / SIGNED).read_bytes())
    record = {
        "algorithm": "ed25519",
        "key_id": key_id(raw),
        "public_key": base64.b64encode(raw).decode(),
        "signature": base64.b64encode(signature).decode(),
        "signed": SIGNED,
    }
    out = pkg / SIGNATURE
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out


def is_signed(pkg: Path) -> bool:
    return (Path(pkg) / SIGNATURE).is_file()


def verify_signature(pkg: Path, trusted: Iterable[Any] | None) -> str:
    """Check ``signature.json`` over ``checksums.sha256``; returns the signing key's id. With
    ``trusted`` keys the signer must be one of them (without, the package's own key is used:
    that finds damage, not forgery). Raises ``PackageError``."""
    path = Path(pkg) / SIGNATURE
    try:
        rec = json.loads(path.read_text())
        raw = base64.b64decode(rec["public_key"], validate=True)
        signature = base64.b64decode(rec["signature"], validate=True)
        if rec.get("algorithm") != "ed25519" or rec.get("signed") != SIGNED or len(raw) != 32:
            raise ValueError("not an ed25519 signature of checksums.sha256")
    except FileNotFoundError:
        raise PackageError(
            f"{pkg}: the package is not signed (no {SIGNATURE}) but trusted keys were given: "
            "ask its author for a signed export (scigpt export --sign KEY)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSON and base64 errors included
        raise PackageError(f"{path}: not a valid signature record ({e})") from None
    kid = key_id(raw)
    if trusted is not None:
        keys = {public_raw(k) for k in trusted}
        if raw not in keys:
            raise PackageError(
                f"{path}: signed by key {kid}, which is not one of the trusted keys "
                f"({', '.join(sorted(key_id(k) for k in keys)) or 'none given'})"
            )
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(
            signature, CONTEXT + (pkg / SIGNED).read_bytes()
        )
    except InvalidSignature:
        raise PackageError(
            f"{path}: the signature of key {kid} does not match {SIGNED}: the package was "
            "changed after it was signed"
        ) from None
    return kid
