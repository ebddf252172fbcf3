"""Slurm sbatch templates and cluster profiles (package data)."""
