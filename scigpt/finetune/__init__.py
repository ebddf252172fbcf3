"""Fine-tuning building blocks (LoRA, freezing, new variables, heads), applied from outside.

Typical order on a loaded package (see the module docstrings):
``extend_variables`` → ``add_pooled_head``/``add_lead_head`` → ``apply_lora`` (optional) →
``freeze_backbone`` → ``train_new_variable_rows`` (optional) → optimizer over trainable params;
after training ``merge_lora`` gives a plain model with the original parameter names.
"""

from scigpt.finetune.adapt import (
    POOLED_KINDS,
    add_lead_head,
    add_pooled_head,
    extend_variables,
    forecast_with,
    freeze_backbone,
    modality_parameters,
    train_new_variable_rows,
    trainable_names,
    unfreeze,
    use_lead_head,
)
from scigpt.finetune.lora import (
    DEFAULT_TARGETS,
    LoRALinear,
    apply_lora,
    base_state_dict,
    load_base_state_dict,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)

__all__ = [
    "DEFAULT_TARGETS",
    "POOLED_KINDS",
    "LoRALinear",
    "add_lead_head",
    "add_pooled_head",
    "apply_lora",
    "base_state_dict",
    "extend_variables",
    "forecast_with",
    "freeze_backbone",
    "load_base_state_dict",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "modality_parameters",
    "train_new_variable_rows",
    "trainable_names",
    "unfreeze",
    "use_lead_head",
]
