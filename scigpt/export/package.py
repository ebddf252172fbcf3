"""The names ``scigpt.export.package`` held before it was split, for code that imports them from
here: the writer (``scigpt.export.writer``, which reads DeepSpeed checkpoints) and the loader
(``scigpt.export.loader``, which imports no DeepSpeed). New code imports from those modules."""

from scigpt.export.errors import PackageError
from scigpt.export.loader import (
    PretrainedModel,
    build_from_config,
    export_tensors_equal,
    load_pretrained,
)
from scigpt.export.verify import (
    CARD,
    CHECKSUMS,
    CONFIG,
    FORMAT,
    FORMAT_NAME,
    FORMAT_VERSION,
    PROVENANCE,
    REQUIRED,
    VARIABLES,
    WEIGHTS,
    check_provenance,
    read_json,
    read_package,
)
from scigpt.export.writer import DTYPES, export_run, merge_lora_state, resolve_checkpoint

__all__ = [
    "CARD",
    "CHECKSUMS",
    "CONFIG",
    "DTYPES",
    "FORMAT",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PROVENANCE",
    "REQUIRED",
    "VARIABLES",
    "WEIGHTS",
    "PackageError",
    "PretrainedModel",
    "build_from_config",
    "check_provenance",
    "export_run",
    "export_tensors_equal",
    "load_pretrained",
    "merge_lora_state",
    "read_json",
    "read_package",
    "resolve_checkpoint",
]
