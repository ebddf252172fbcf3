"""Shared output of the benchmarks: a console table plus CSV and JSON files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def report(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]], out: Path) -> None:
    """Print ``rows`` as a table of ``(key, header, format)`` columns; write out.csv/out.json."""
    table = [[format(r[k], f).strip() for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, (_, h, _) in enumerate(columns)]
    print(" ".join(h.rjust(w) if i else h.ljust(w) for i, ((_, h, _), w) in
                   enumerate(zip(columns, widths, strict=True))))  # fmt: skip
    for cells in table:
        print(" ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(cells, widths, strict=True))))  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
