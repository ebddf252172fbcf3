"""Model packages. ``scigpt.export.writer`` writes one from a run's checkpoint (``scigpt
export``; it reads DeepSpeed checkpoints); ``scigpt.export.loader`` reads one
(``scigpt.load_pretrained``; no DeepSpeed); ``verify`` checks the files and fields, ``signing``
the Ed25519 signature, ``card`` renders MODEL_CARD.md.

This package's namespace re-exports the loader's names only, so that ``import scigpt.export``
stays free of DeepSpeed; ``export_run`` is ``scigpt.export.writer.export_run`` (also still
importable from ``scigpt.export.package``).
"""

from scigpt.export.errors import PackageError
from scigpt.export.loader import (
    PretrainedModel,
    build_from_config,
    export_tensors_equal,
    load_pretrained,
)

__all__ = [
    "PackageError",
    "PretrainedModel",
    "build_from_config",
    "export_tensors_equal",
    "load_pretrained",
]
