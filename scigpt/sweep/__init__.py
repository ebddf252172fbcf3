"""Scaling sweeps: many training runs from one sweep file, their fits and their report."""
