"""``scigpt prepare CONFIG``: ingest a config's data sources into the store."""

from __future__ import annotations

import argparse

from scigpt.commands import EXIT_FAIL, EXIT_OK
from scigpt.config_loader import load_config
from scigpt.launch.env import discover
from scigpt.prepare import prepare_from_config


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config, args.overrides)
    store = args.out or (
        loaded.resolve_path(loaded.config.data.store) if loaded.config.data.store else None
    )
    if store is None:
        raise ValueError("no store folder: pass --out DIR or set data.store in the config")
    info = discover()  # ranks only: the ingest coordinates through files, not a process group
    manifest = prepare_from_config(
        loaded,
        store.resolve(),
        rank=info.rank,
        world_size=info.world_size,
        progress=not args.no_progress,
    )
    if manifest is None:
        return EXIT_OK  # ranks > 0: rank 0 reports
    print(f"store: {store.resolve()}")
    for name, src in manifest["sources"].items():
        print(
            f"  {name:20s} {src['kind']:6s} {src['n_samples']:8d} samples  "
            f"{len(src['variables']):3d} variables  {len(src['units'])} units"
        )
    for rej in manifest["rejects"]:
        print(f"  rejected {rej['source']}/{rej['unit']}: {rej['reason']}")
    for flag in manifest.get("flagged", []):  # kept, but unlike their siblings (a cut file?)
        print(f"  flagged {flag['source']}/{flag['unit']} ({', '.join(flag['paths'] or [])}): "
              f"{'; '.join(flag['reasons'])}")  # fmt: skip
    skipped = manifest.get("skipped", [])
    if skipped:
        per_source: dict[str, int] = {}
        for entry in skipped:
            per_source[entry["source"]] = per_source.get(entry["source"], 0) + 1
        counts = ", ".join(f"{n} in {name}" for name, n in per_source.items())
        print(f"  skipped {len(skipped)} folder entries ({counts}): not inputs of their "
              "source; listed with the reason under 'skipped' in manifest.json")  # fmt: skip
    logs = sorted((store / "logs").glob("prepare-rank*.log"))
    if logs:
        print(f"  readers' log: {', '.join(str(p) for p in logs)}")
    ok_units = sum(len(s["units"]) for s in manifest["sources"].values())
    return EXIT_OK if ok_units else EXIT_FAIL
