"""The error every reader raises for bad input (``base.py`` re-exports it)."""

from __future__ import annotations

from pathlib import Path


class ReaderError(ValueError):
    """Bad input: the file, the variable (if any) and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")
