"""Parallel layer (DESIGN.md §2): ``parallelize`` (the one place a single-device model becomes the
run's layout), ``topology`` (the one layout object and its process groups), ``layout_rules``
(the rules, stated once), tensor/pipeline parallelism, activation checkpointing, resharding,
the DeepSpeed engine, and ``scigpt plan``'s models (``stages``, ``memory_model``,
``step_time``) and search (``planner``)."""
