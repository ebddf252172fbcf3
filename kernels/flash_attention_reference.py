"""What the flash-attention kernel computes and accepts: the pure-PyTorch reference
(``attention_reference``, the definition the kernel is tested against) and the input checks of
its Triton path.
"""

from __future__ import annotations

import torch

SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    *,
    causal: bool = False,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """softmax(Q Kᵀ·s + mask) V in fp32 (differentiable), cast back to q's dtype.

    The model registry's ``math_attention`` with two additions the kernel shares: ``causal``,
    and a defined result for query rows that see no key (output 0, gradients 0; softmax alone
    would make them NaN).
    """
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    n = q.shape[-2]
    s = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale  # (B, h, N, N)
    keep = torch.ones(n, n, dtype=torch.bool, device=q.device)  # (N, N) query × key
    if causal:
        keep = torch.tril(keep)
    keep = keep.expand(q.shape[0], 1, n, n)  # (B, 1, N, N)
    if key_padding_mask is not None:
        keep = keep & key_padding_mask[:, None, None, :]
    seen = keep.any(dim=-1, keepdim=True)  # (B, 1, N, 1): the row has at least one key
    # Rows without a key get an all-visible softmax (finite) that the 0 factor then discards.
    s = s.masked_fill(~(keep | ~seen), float("-inf"))
    p = torch.softmax(s, dim=-1) * seen
    return torch.einsum("bhqk,bhkd->bhqd", p, v.float()).to(q.dtype)


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    *,
    interpret: bool,
) -> None:
    """Refuse, naming the fix, what the Triton path cannot run (``interpret``: the kernels run
    in Triton's interpreter, so CPU tensors are fine)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"flash_attention: {name} must be a torch.Tensor, got {type(t).__name__}"
            )
        if t.dim() != 4:
            raise ValueError(
                f"flash_attention: {name} must be (B, heads, N, head_dim), got "
                f"shape {tuple(t.shape)}"
            )
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            "flash_attention: q, k and v must have the same shape (self-attention), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"flash_attention: dtype {q.dtype} is not supported; use one of "
            f"{[str(d) for d in SUPPORTED_DTYPES]}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"flash_attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(
            "flash_attention: q, k, v must be on one device, got "
            f"{q.device}, {k.device}, {v.device}"
        )
    head_dim = q.shape[-1]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"flash_attention: head_dim {head_dim} is not supported by the Triton kernel; use one "
            f"of {SUPPORTED_HEAD_DIMS} (or impl='reference')"
        )
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            got = getattr(key_padding_mask, "dtype", type(key_padding_mask).__name__)
            raise TypeError(
                f"flash_attention: key_padding_mask must be a bool tensor (True = keep), got {got}"
            )
        want = (q.shape[0], q.shape[2])
        if tuple(key_padding_mask.shape) != want:
            raise ValueError(
                f"flash_attention: key_padding_mask must be (B, N) = {want}, got "
                f"{tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(
                f"flash_attention: key_padding_mask is on {key_padding_mask.device}, "
                f"q on {q.device}"
            )
    if q.device.type != "cuda" and not interpret:
        raise RuntimeError(
            f"flash_attention: impl='triton' needs CUDA tensors, got {q.device}; use "
            "impl='reference' on CPU (or TRITON_INTERPRET=1 to run the kernels in the interpreter)"
        )
