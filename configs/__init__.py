"""Shipped run and model configs (package data)."""
