"""Parallel layer (DESIGN.md §2): ``parallelize`` (the one place a single-device model becomes the
run's layout), ``topology`` (the one layout object and its process groups), tensor/pipeline
parallelism, activation checkpointing, resharding, the DeepSpeed engine, and ``scigpt plan``'s
models (``stages``, ``memory_model``, ``step_time``) and search (``planner``). The layout rules
they all ask live beside the config, in ``scigpt.layout_rules`` (pure: the config and the
DeepSpeed-free package loader import them without this package)."""
