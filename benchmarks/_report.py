"""Shared output of the benchmarks: a console table plus CSV and JSON files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def save(rows: list[dict[str, Any]], out: Path) -> None:
    """Write out.csv and out.json (each replaced whole, so a run killed between two calls keeps
    the rows of the last one)."""
    if not rows:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    tmp = out.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields)
        wr.writeheader()
        wr.writerows(rows)
    tmp.replace(out.with_suffix(".csv"))
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    tmp.replace(out.with_suffix(".json"))


def report(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]], out: Path) -> None:
    """Print ``rows`` as a table of ``(key, header, format)`` columns; write out.csv/out.json."""
    table = [[format(r[k], f).strip() for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, (_, h, _) in enumerate(columns)]
    print(" ".join(h.rjust(w) if i else h.ljust(w) for i, ((_, h, _), w) in
                   enumerate(zip(columns, widths, strict=True))))  # fmt: skip
    for cells in table:
        print(" ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(cells, widths, strict=True))))  # fmt: skip
    save(rows, out)
