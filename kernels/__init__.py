"""Triton kernels, each beside a pure-PyTorch reference (DESIGN.md §4).

Installed as ``scigpt.kernels``. Kernels import no model code; they are swapped in from outside
(the attention registry in ``scigpt.models.attention``).
"""
