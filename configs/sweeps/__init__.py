"""Shipped sweep files."""
