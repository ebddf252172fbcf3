"""Shipped run configs."""
