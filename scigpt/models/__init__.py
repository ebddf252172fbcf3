"""Single-device model code: tokenizers, ViT backbone, heads (DESIGN.md §1)."""
