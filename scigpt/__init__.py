"""SciGPT: one transformer trained on many kinds of Earth data.

The package keeps heavy imports (torch, deepspeed, xarray) out of this module so that
``scigpt --help`` starts fast and ``import scigpt`` costs nothing (``scigpt validate`` imports
torch: it sizes the model's memory with the planner).
"""

__version__ = "0.1.0"


def load_pretrained(path, **kwargs):
    """Load a model package written by ``scigpt export`` (``scigpt.export.loader``; imported
    here, not at the top, so that ``import scigpt`` stays free of torch)."""
    from scigpt.export.loader import load_pretrained as f

    return f(path, **kwargs)
