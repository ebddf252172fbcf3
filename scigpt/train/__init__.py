"""Training loop, metrics, checkpoints."""
