"""Model packages: ``scigpt export`` and ``scigpt.load_pretrained`` (see package.py)."""
