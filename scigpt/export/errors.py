"""The one error a model package raises (``scigpt.export``): the CLI prints it without a
traceback, with exit code 2."""

from __future__ import annotations


class PackageError(ValueError):
    """A model package is invalid: a missing file, a checksum mismatch, an unknown format, bad
    weights, a malformed field, a signature that does not verify. The message names the file
    (and the field)."""
