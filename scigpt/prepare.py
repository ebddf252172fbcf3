"""From a run config to an ingested patch store: the glue behind ``scigpt prepare`` and the
store that ``scigpt train`` makes when it has none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scigpt import __version__
from scigpt.config_loader import ConfigError, LoadedConfig
from scigpt.data_pipeline.ingest.base import format_kind
from scigpt.data_pipeline.isolate import UnitWorker, log_path
from scigpt.data_pipeline.prepare import SourceSpec, check_options, expand_paths, prepare_store
from scigpt.data_pipeline.shards import PatchSpec

# Suffixes taken from a folder per format (a folder may also hold sidecars and READMEs).
SUFFIXES: dict[str, tuple[str, ...]] = {
    "netcdf": (".nc", ".nc4", ".cdf"),
    "grib": (".grib", ".grb", ".grib2", ".grb2"),
    "geotiff": (".tif", ".tiff"),
    "modis_hdf4": (".hdf",),
    "hdf5_grid": (".h5", ".hdf5", ".he5"),
    "mseed": (".mseed", ".miniseed", ".seed"),
    "sac": (".sac",),
    "segy": (".sgy", ".segy"),
    "seisbench": (".hdf5",),
    "ghcn": (".dly",),
    "camels": (".txt",),
    "fluxnet": (".txt", ".csv"),
}


class IngestRejected(RuntimeError):
    """Inputs a run needs were rejected at ingest (bad files, or variables they do not hold);
    the message lists each with its source, unit, path and reason. Exit code 1."""

    @classmethod
    def of(cls, rejects: list[dict[str, Any]]) -> IngestRejected:
        lines = [
            f"  - source {r['source']}, unit {r['unit']} ({', '.join(r.get('paths') or []) or '-'})"
            f": {r['reason']}"
            for r in rejects
        ]
        return cls(
            f"ingest rejected {len(rejects)} unit(s); fix or remove those inputs (or the "
            "source's variables/options) and run again:\n" + "\n".join(lines)
        )


def source_specs(loaded: LoadedConfig) -> list:
    """Resolve every configured source: paths expanded, reader options checked."""
    specs = []
    for i, src in enumerate(loaded.config.data.sources):
        where = f"data.sources.{i}"
        options: dict[str, Any] = dict(src.options)
        if src.variables is not None:
            options["variables"] = list(src.variables)
        if src.units is not None:
            options["units"] = dict(src.units)
        try:
            check_options(src.format, options, where)
        except ImportError as e:
            raise ConfigError(
                str(loaded.path),
                [f"{where}.format={src.format!r} needs {e.name}: pip install 'scigpt[formats]'"],
            ) from None
        except ValueError as e:
            raise ConfigError(str(loaded.path), [str(e)]) from None
        paths: list[Path] = []
        skipped: list[dict[str, str]] = []  # folder entries not read, recorded in the manifest
        if src.path is not None:
            root = loaded.resolve_path(src.path)
            if src.format == "zarr":
                paths = [root]  # a Zarr store is a folder, not a folder of inputs
            else:
                paths = expand_paths(root, SUFFIXES.get(src.format, ()), skipped)
            if not paths:
                raise ConfigError(
                    str(loaded.path),
                    [f"{where}.path={src.path!r} ({root}) matches no input files"],
                )
        if format_kind(src.format) == "grid":
            patch = PatchSpec(
                grid=tuple(src.patch or (1, 4, 4)),  # type: ignore[arg-type]
                compression=src.compression,
            )
        else:
            patch = PatchSpec(
                window=src.window or 1200,
                patch=(src.patch or [50])[0],
                stride=src.stride,
                partial=src.partial,
                compression=src.compression,
            )
        specs.append(
            SourceSpec(
                name=src.name,
                format=src.format,
                paths=paths,
                options=options,
                unit=src.unit,
                patch=patch,
                require_coordinates=src.require_coordinates,
                samples_per_unit=src.samples_per_unit,
                stats_time_range=src.splits.train.bounds() if src.splits else None,
                plausibility=src.plausibility,
                unit_timeout_s=src.unit_timeout_s,
                skipped=skipped,
            )
        )
    return specs


def stats_range(loaded: LoadedConfig) -> tuple[np.datetime64, np.datetime64]:
    """Normalisation statistics come from the training block only (no test leakage)."""
    return loaded.config.data.splits.train.bounds()


def prepare_from_config(
    loaded: LoadedConfig, out: Path, *, rank: int = 0, world_size: int = 1, progress: bool = True
) -> dict[str, Any] | None:
    # The reader worker boots (and imports the readers) while this process resolves the
    # sources, which imports the same reader modules to check their options.
    formats = sorted({s.format for s in loaded.config.data.sources if s.path is not None})
    worker = UnitWorker(log_path(Path(out), rank), preload=formats)
    if formats:
        worker.boot()
    try:
        specs = source_specs(loaded)
        producer = {"config": loaded.resolved_dict()["data"], "scigpt": _version()}
        return prepare_store(
            specs,
            out,
            rank=rank,
            world_size=world_size,
            stats_time_range=stats_range(loaded),
            producer=producer,
            progress=progress,
            worker=worker,
        )
    finally:
        worker.close()


def _version() -> str:
    return __version__
