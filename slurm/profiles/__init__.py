"""Cluster profiles."""
