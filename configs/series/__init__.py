"""Shipped series-forecasting configs (CAMELS discharge; docs/series.md)."""
