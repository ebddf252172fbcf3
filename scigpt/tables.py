"""The one table writer: a ``Table`` of rows → CSV, Markdown or fixed-width text, and ``fmt``,
the one number formatter every report uses (evaluation tables, the model card, sweep and
transfer reports, ``scigpt plan``).

* CSV keeps values as they are (floats at full precision, ``None`` → empty, lists and dicts as
  JSON), one ``\\n`` per line, so a reader gets every digit back.
* Markdown and text format each cell with ``fmt`` (a per-column format spec where given), so a
  table reads the same wherever it is written.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NOT_FINITE = "—"  # what a NaN or infinity reads as in Markdown and text


def fmt(v: Any, spec: str | None = None, *, none: str = "") -> str:
    """One cell as text. ``None`` → ``none``; booleans → ``true``/``false``; a non-finite
    number → ``—``; with ``spec`` a number is ``format(float(v), spec)``; without, an integer
    (or integer-valued float) below 10⁶ is written whole and any other number with 4
    significant digits; lists and tuples → JSON; anything else → ``str``."""
    if v is None:
        return none
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, float, np.integer, np.floating)):
        x = float(v)
        if not math.isfinite(x):
            return NOT_FINITE
        if spec is not None:
            return format(x, spec)
        if isinstance(v, (int, np.integer)):
            return str(int(v)) if abs(int(v)) < 10**6 else format(x, ".4g")
        return str(int(x)) if x.is_integer() and abs(x) < 10**6 else format(x, ".4g")
    if isinstance(v, (list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str)
    return v


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class Table:
    """Rows (mappings; a missing key is an empty cell) under ``columns``. ``specs``: a format
    spec per column for Markdown and text (``fmt``); ``right``: columns right-aligned in
    Markdown; ``none``: what ``None`` reads as in Markdown and text."""

    columns: list[str]
    rows: list[Mapping[str, Any]] = field(default_factory=list)
    specs: dict[str, str] = field(default_factory=dict)
    right: Sequence[str] = ()
    none: str = ""

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]], **kw: Any) -> Table:
        """A table of ``rows`` whose columns are every key, in order of first appearance."""
        rows = list(rows)
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        return cls(cols, rows, **kw)

    def add(self, row: Mapping[str, Any] | Sequence[Any]) -> None:
        """Append a row: a mapping, or values in column order."""
        if not isinstance(row, Mapping):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"row {row!r} has {len(row)} cells for {len(self.columns)} columns"
                )
            row = dict(zip(self.columns, row, strict=True))
        self.rows.append(row)

    def cell(self, row: Mapping[str, Any], col: str) -> str:
        return fmt(row.get(col), self.specs.get(col), none=self.none)

    def csv(self) -> str:
        """CSV with a header line; values unformatted (full precision)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        w.writerows([_csv_value(r.get(c)) for c in self.columns] for r in self.rows)
        return buf.getvalue()

    def markdown(self) -> str:
        """A GitHub Markdown table (no trailing newline)."""
        sep = "|" + "".join("---:|" if c in self.right else "---|" for c in self.columns)
        lines = ["| " + " | ".join(_md_cell(c) for c in self.columns) + " |", sep]
        lines += [
            "| " + " | ".join(_md_cell(self.cell(r, c)) for c in self.columns) + " |"
            for r in self.rows
        ]
        return "\n".join(lines)

    def text(self, widths: Sequence[int]) -> str:
        """Fixed-width columns, right-aligned, under a dashed rule (no trailing newline)."""
        if len(widths) != len(self.columns):
            raise ValueError(f"{len(widths)} widths for {len(self.columns)} columns")
        pairs = list(zip(self.columns, widths, strict=True))
        lines = [" ".join(f"{c:>{w}}" for c, w in pairs), " ".join("-" * w for w in widths)]
        lines += [" ".join(f"{self.cell(r, c):>{w}}" for c, w in pairs) for r in self.rows]
        return "\n".join(lines)
