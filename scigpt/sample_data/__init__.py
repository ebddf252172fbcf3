"""Curated real sample data shipped with SciGPT (see PROVENANCE.md)."""
