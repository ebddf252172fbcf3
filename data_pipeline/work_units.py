"""The units of work of an ingest (``prepare.py`` plans and runs them): the resolved source
spec, one unit of it, and the records every unit's outcome carries (its inputs and spec; a
reject's reason).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .shards import PatchSpec, write_record


@dataclass
class SourceSpec:
    """One source to ingest (resolved: absolute paths, options checked against the reader)."""

    name: str
    format: str
    paths: list[Path]
    options: dict[str, Any] = field(default_factory=dict)
    unit: str = "file"  # "file": one unit per path; "all": every path in one unit
    patch: PatchSpec = field(default_factory=PatchSpec)
    require_coordinates: bool = True
    samples_per_unit: int = 64  # generated sources (pde): samples per unit
    # this source's statistics block when it has its own splits (default: the store's)
    stats_time_range: tuple[Any, Any] | None = None
    plausibility: str = "reject"  # out-of-range values: "reject" the unit, "warn" or "off"
    # a unit whose read gives no result within this many seconds is stopped and rejected
    unit_timeout_s: float = 3600.0
    # entries of the source folder that are not read, with the reason ({"path", "reason"})
    skipped: list[dict[str, str]] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Hash of everything that shapes this source's output (a changed spec redoes units)."""
        d = {
            "format": self.format,
            "options": self.options,
            "unit": self.unit,
            "patch": self.patch.to_dict(),
            "require_coordinates": self.require_coordinates,
            "samples_per_unit": self.samples_per_unit,
        }
        if self.stats_time_range is not None:
            d["stats_time_range"] = [str(t) for t in self.stats_time_range]
        if self.plausibility != "reject":
            d["plausibility"] = self.plausibility
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Unit:
    source: SourceSpec
    name: str  # "<source>-<index>"
    index: int
    paths: tuple[Path, ...]
    options: dict[str, Any]  # reader options of this unit (ranges for generated sources)


def input_stamp(unit: Unit) -> list[list[int]]:
    """(size, mtime in ns) of each input: a reject is retried once its input changes."""
    out = []
    for p in unit.paths:
        try:
            st = p.stat()
            out.append([st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([-1, -1])
    return out


def unit_meta(unit: Unit) -> dict[str, Any]:
    """What every record of ``unit`` carries: its inputs and the spec it was made with."""
    stamp = input_stamp(unit)
    return {
        "index": unit.index,
        "paths": [str(p) for p in unit.paths],
        "fingerprint": unit.source.fingerprint(),
        "input_bytes": sum(max(size, 0) for size, _ in stamp),
        "input_stamp": stamp,
    }


def reject_unit(store: Path, unit: Unit, reason: str, **extra: Any) -> dict[str, Any]:
    """Write ``unit``'s reject record (and drop a shard of an earlier ingest); returns it."""
    rec = {"unit": unit.name, "source": unit.source.name, "status": "rejected",
           "reason": reason, **unit_meta(unit), **extra}  # fmt: skip
    (store / "shards" / unit.source.name / f"{unit.name}.h5").unlink(missing_ok=True)
    write_record(store, unit.source.name, unit.name, rec)
    return rec
