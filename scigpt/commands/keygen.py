"""``scigpt keygen KEY``: an Ed25519 key pair for signing packages (``export --sign``)."""

from __future__ import annotations

import argparse

from scigpt.commands import EXIT_OK
from scigpt.export.signing import generate_key


def run(args: argparse.Namespace) -> int:
    private, public, kid = generate_key(args.key)
    print(f"private key {private} (keep it secret; sign with: scigpt export --sign {private})")
    print(f"public key  {public} (give it to receivers: --trusted-key {public})")
    print(f"key id      {kid}")
    return EXIT_OK
