"""Parallel layer: topology, DeepSpeed engine construction (DESIGN.md §2)."""
