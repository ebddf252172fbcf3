"""Ingest, shards, statistics and loaders. Knows ranks only as integers (DESIGN.md §3)."""
