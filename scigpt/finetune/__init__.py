"""Fine-tuning building blocks (LoRA, freezing, new variables, heads), applied from outside.

Typical order on a loaded package (see the module docstrings):
``extend_variables`` → ``add_pooled_head``/``add_lead_head`` → ``apply_lora`` (optional) →
``freeze_backbone`` → ``train_new_variable_rows`` (optional) → optimizer over trainable params;
after training ``merge_lora`` gives a plain model with the original parameter names.

The package imports nothing itself: ``finetune.adapt`` (heads, freezing, new variables) sits on
the models layer and the DeepSpeed-free package loader uses it; ``finetune.lora`` (which wraps
tensor-parallel layers) and ``finetune.recipe`` (the trainer's fine-tune steps) are imported by
name where they are needed.
"""
