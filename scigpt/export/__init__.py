"""Model packages. ``scigpt.export.writer`` writes one from a run's checkpoint (``scigpt
export``; it reads DeepSpeed checkpoints); ``scigpt.export.loader`` reads one
(``scigpt.load_pretrained``; no DeepSpeed); ``verify`` checks the files and fields, ``signing``
the Ed25519 signature, ``card`` renders MODEL_CARD.md. ``scigpt.export.package`` re-exports the
writer's and the loader's names for code written before the split.

This file imports nothing, so that importing one light module (``errors``, ``verify``,
``signing``) does not import the loader's model code or the writer's checkpoint reader.
"""
