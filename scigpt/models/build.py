"""Build a model from its config on the ``meta`` device, then materialise (DESIGN.md §8)."""

from __future__ import annotations

import itertools

import torch

from scigpt.config import ModelConfig
from scigpt.models import sizing
from scigpt.models.vit import ModelSpec, SciGPTModel


def build_model(cfg: ModelConfig, spec: ModelSpec, *, device: str | torch.device = "meta"):
    """Construct without allocating: the parallel layer materialises only its local slice.

    The model is single-device PyTorch: ``model.attention`` names an entry of the attention
    registry (``scigpt.models.attention``), into which kernels are put from outside
    (``scigpt.parallel.parallelize.register_kernels``); ``model.patch_embed: triton`` is applied
    by ``scigpt.parallel.parallelize`` too (it swaps the grid patch embedding's forward, with
    the same parameters), so this builds the reference patch embedding either way."""
    with torch.device(device):
        return SciGPTModel(
            spec,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            dropout=cfg.dropout,
            residual=cfg.residual,
            attention=cfg.attention,
            series_patch=cfg.series_patch,
        )


def init_seed(seed: int, step: int) -> int:
    """Seed of init step ``step`` (``SciGPTModel.init_steps`` order) of a run seeded ``seed``.

    Every step draws from its own seed, so any part of the model initialises to the same values
    whether the whole model is built (one process), only one pipeline stage's layers are, or the
    parameters are partitioned (ZeRO-3): no layout has to replay the others' random numbers.
    """
    return (seed * 1_000_003 + step * 7_919 + 1) % 2**63


def _nan_fill(tensors) -> None:
    # to_empty leaves garbage; NaN makes any parameter that init_weights forgets fail loudly.
    with torch.no_grad():
        for t in tensors:
            if t.is_floating_point():
                t.fill_(float("nan"))


def run_init_steps(model: SciGPTModel, seed: int, only: set[int] | None = None) -> None:
    """Run the init steps, each from its own seed; with ``only`` (parameter ids), just the steps
    whose parameters are all in it (steps touching none of them are skipped)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for i, (params, init) in enumerate(model.init_steps()):
            if only is not None:
                mine = [id(p) in only for p in params]
                if not any(mine):
                    continue
                if not all(mine):
                    raise RuntimeError(
                        f"init step {i} touches parameters inside and outside the materialised "
                        "parts: materialise whole modules (materialise_parts)"
                    )
            torch.manual_seed(init_seed(seed, i))
            init()


def _check_finite(named) -> None:
    missed = [n for n, p in named if not torch.isfinite(p).all()]
    if missed:
        raise RuntimeError(f"init_weights left these parameters uninitialised: {missed}")


def materialise(model: SciGPTModel, device: str | torch.device, seed: int) -> SciGPTModel:
    """Allocate storage on ``device`` and initialise deterministically from ``seed``."""
    model = model.to_empty(device=device)
    _nan_fill(itertools.chain(model.parameters(), model.buffers()))
    run_init_steps(model, seed)
    _check_finite(model.named_parameters())
    return model


def materialise_parts(
    model: SciGPTModel, parts: list[str], device: str | torch.device, seed: int
) -> None:
    """Materialise only the submodules/parameters named in ``parts`` (paths such as
    ``"tokenizer"``, ``"blocks.3"``, ``"mask_token"``) of a meta-built model, in place, with
    exactly the values a whole ``materialise`` gives them. The rest stays on ``meta``, costing
    nothing: a pipeline stage allocates only its own layers."""
    new: dict[str, torch.nn.Parameter] = {}
    for path in parts:
        owner_path, _, attr = path.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        if getattr(owner, attr, None) is None:
            continue  # an optional part this model does not have (e.g. no pooled head)
        if attr in owner._parameters:
            p = owner._parameters[attr]
            owner._parameters[attr] = torch.nn.Parameter(
                torch.empty_like(p, device=device), requires_grad=p.requires_grad
            )
            new[path] = owner._parameters[attr]
        else:
            sub = model.get_submodule(path).to_empty(device=device)
            new.update({f"{path}.{n}": p for n, p in sub.named_parameters()})
            _nan_fill(sub.buffers())
    _nan_fill(new.values())
    run_init_steps(model, seed, only={id(p) for p in new.values()})
    _check_finite(new.items())


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops_per_token(model: SciGPTModel, seq_len: int) -> float:
    """Matmul FLOPs of one forward pass per token, for MFU (PaLM appendix B): the tokenizer,
    variable aggregation, blocks, attention and forecast head (scigpt.models.sizing).
    Training (fwd + bwd) is 3x this."""
    return sizing.forward_flops_per_token(model, seq_len)
