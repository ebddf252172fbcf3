"""Shipped model presets."""
