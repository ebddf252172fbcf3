"""Variable aggregation: fold the V variable tokens at one location into one token.

Cross-attention from a learned query over the variables (ClimaX, Nguyen et al. 2023), so the
sequence length does not grow with the variable count. Each variable has a gate γ_v that scales
its share of the softmax:

    w_v = γ_v · exp(s_v) / Σ_u γ_u · exp(s_u),   out = W_o Σ_v w_v · W_v x_v

Pretrained variables have γ = 1 (plain softmax). A variable added at fine-tune time starts at
γ = 0, which removes it exactly — the outputs equal the pretrained model's — while
∂w_v/∂γ_v = exp(s_v)/Z ≠ 0 lets training open the gate. γ is left unconstrained; a gate trained
slightly negative is a small signed contribution, and Z stays dominated by the open gates.
Where every gate is 0 (all variables new) Z would be 0: it is replaced by the plain softmax
denominator, so the weights are 0 (not NaN) and the gates still receive gradients.
"""

from __future__ import annotations

import torch
from torch import nn


class VariableAggregation(nn.Module):
    def __init__(self, num_vars: int, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.empty(1, dim))
        # No key bias: it shifts every variable's score by the same q·b, which softmax ignores —
        # its gradient is pure rounding noise that AdamW would amplify into drift.
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.empty(num_vars))

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.query, std=0.02)
        # Xavier for the projections (as nn.MultiheadAttention): the aggregated token keeps the
        # scale of the variable tokens; 0.02-std projections would shrink it ~50x.
        for lin in (self.k, self.v, self.o):
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        nn.init.ones_(self.gate)

    def forward(self, tokens: torch.Tensor, var_ids: torch.Tensor) -> torch.Tensor:
        """tokens (B, V, N, D), var_ids (V,) → (B, N, D)."""
        b, v, n, d = tokens.shape
        h, hd = self.heads, d // self.heads
        k = self.k(tokens).reshape(b, v, n, h, hd)
        val = self.v(tokens).reshape(b, v, n, h, hd)
        q = self.query.reshape(h, hd)
        s = torch.einsum("bvnhd,hd->bnhv", k, q) * hd**-0.5  # (B, N, h, V)
        gate = self.gate[var_ids].to(s.dtype)  # (V,)
        e = torch.exp(s - s.amax(-1, keepdim=True))
        ge = e * gate
        z = ge.sum(-1, keepdim=True)
        # Every variable here is new (all gates 0: e.g. a modality the model never saw): the
        # weights are 0 (the token is o's bias) and ∂w_v/∂γ_v = exp(s_v)/Σexp(s) opens the gates.
        z = torch.where(z != 0, z, e.sum(-1, keepdim=True))
        w = ge / z  # (B, N, h, V)
        out = torch.einsum("bnhv,bvnhd->bnhd", w, val).reshape(b, n, d)
        return self.o(out)
