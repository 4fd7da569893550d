"""One-shot pruning of a trained model from calibration activations: Wanda and SparseGPT.

The baselines the LLM-pruning literature applies to a dense model, layer by layer, on the linear
layers :func:`rewa.sparsity.weight_modules` sparsifies. Both read each layer's inputs X (rows:
tokens or examples, columns: input features) on a few calibration batches:

* **Wanda** (Sun et al. 2023): score ``|W_ij| · ‖X_:,j‖₂``; in each output row the fraction
  ``sparsity`` with the lowest scores is zeroed. No weight update.
* **SparseGPT** (Frantar & Alistarh 2023): with ``H = XᵀX`` (dampened by ``damp`` times its mean
  diagonal), columns are visited left to right in blocks; in each block the weights with the
  lowest ``w² / [U]_jj²`` (U the upper Cholesky factor of H⁻¹) are zeroed, and each column's
  error is spread over the columns to its right by the optimal-brain-surgeon update, so that
  ``‖(W − Ŵ) Xᵀ‖`` stays small. Pruning one column's weights before any other is exactly the
  least-squares optimum for that mask (tests/test_posthoc.py checks it).

With ``sequential=True`` (the default, as both papers do) layers are pruned in module order and
each layer's inputs are read from the model with the layers before it already pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from rewa.sparsity import is_weight_layer, weight_modules

CRITERIA = ("wanda", "sparsegpt")


class InputStats:
    """The Gram matrix ``XᵀX`` (float64) and row count of a linear layer's inputs."""

    def __init__(self, features: int) -> None:
        self.gram = torch.zeros(features, features, dtype=torch.float64)
        self.rows = 0

    def add(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64).cpu()
        self.gram += x.T @ x
        self.rows += x.shape[0]

    def column_norms(self) -> Tensor:
        """‖X_:,j‖₂ for every input feature j."""
        return self.gram.diagonal().clamp_min(0).sqrt()


def _linear_weight(module: nn.Module) -> Tensor:
    """The weight as (out, in): transformers' Conv1D stores (in, out)."""
    return module.weight.T if type(module).__name__ == "Conv1D" else module.weight


def _prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = [(n, m) for n, m in weight_modules(model) if is_weight_layer(m)]
    if any(isinstance(m, nn.modules.conv._ConvNd) for _, m in layers):
        raise ValueError("Wanda and SparseGPT prune linear layers; this model has convolutions")
    return layers


@torch.no_grad()
def collect_inputs(
    model: nn.Module, layers: list[tuple[str, nn.Module]], run: Callable[[], None]
) -> dict[str, InputStats]:
    """Statistics of each layer's inputs over the forward passes that ``run()`` makes."""
    stats = {name: InputStats(_linear_weight(m).shape[1]) for name, m in layers}
    hooks = [
        m.register_forward_hook(lambda _m, inputs, _out, s=stats[name]: s.add(inputs[0]))
        for name, m in layers
    ]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return stats


def wanda_mask(weight: Tensor, stats: InputStats, sparsity: float) -> Tensor:
    """Keep-mask (True = kept) of Wanda: per output row, the lowest |W|·‖X_j‖ scores pruned."""
    score = weight.detach().abs().to(torch.float64) * stats.column_norms().to(weight.device)
    k = round(weight.shape[1] * sparsity)
    mask = torch.ones_like(weight, dtype=torch.bool)
    if k:
        lowest = score.topk(k, dim=1, largest=False).indices
        mask.scatter_(1, lowest, False)
    return mask


def _inverse_cholesky(gram: Tensor, damp: float) -> tuple[Tensor, Tensor]:
    """Upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹, and the features never seen (dead)."""
    h = gram.clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * h.diagonal().mean())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True), dead


def sparsegpt_prune(
    weight: Tensor,
    stats: InputStats,
    sparsity: float,
    *,
    block: int = 128,
    damp: float = 0.01,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """SparseGPT on one (out, in) weight: the pruned and updated weight, and its keep-mask.

    ``mask`` (True = kept) fixes which weights are pruned instead of choosing them per block.
    Works in float64 and returns the weight's dtype.
    """
    w = weight.detach().to(torch.float64).cpu().clone()
    cols = w.shape[1]
    u, dead = _inverse_cholesky(stats.gram, damp)
    w[:, dead] = 0.0
    keep = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.cpu().clone()
    for start in range(0, cols, block):
        end = min(start + block, cols)
        u_block = u[start:end, start:end]
        w_block = w[:, start:end].clone()
        errors = torch.zeros_like(w_block)
        if mask is None:
            score = w_block.square() / u_block.diagonal().square()
            k = round(score.numel() * sparsity)
            if k:
                block_keep = torch.ones_like(score, dtype=torch.bool)
                block_keep.view(-1)[score.flatten().topk(k, largest=False).indices] = False
                keep[:, start:end] = block_keep
        for j in range(end - start):
            column = w_block[:, j]
            kept = torch.where(keep[:, start + j], column, torch.zeros_like(column))
            error = (column - kept) / u_block[j, j]
            w_block[:, j:] -= error[:, None] * u_block[j, j:][None, :]
            w_block[:, j] = kept
            errors[:, j] = error
        w[:, start:end] = w_block
        w[:, end:] -= errors @ u[start:end, end:]
    w[~keep] = 0.0
    return w.to(weight.dtype).to(weight.device), keep.to(weight.device)


@torch.no_grad()
def prune_posthoc_(
    model: nn.Module,
    sparsity: float,
    criterion: str,
    calibrate: Callable[[], None],
    *,
    sequential: bool = True,
    **options: Any,
) -> dict[str, Tensor]:
    """Prune ``model``'s linear weights in place to ``sparsity`` (per layer) by ``criterion``
    ("wanda" or "sparsegpt"); ``calibrate()`` runs the calibration forward passes. Returns the
    keep-masks by parameter name (``NAME.weight``), for masked fine-tuning."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    layers = _prunable(model)
    masks: dict[str, Tensor] = {}
    stats = None if sequential else collect_inputs(model, layers, calibrate)
    for name, module in layers:
        layer_stats = (
            collect_inputs(model, [(name, module)], calibrate)[name] if sequential else stats[name]
        )
        weight = _linear_weight(module)
        if criterion == "wanda":
            keep = wanda_mask(weight, layer_stats, sparsity)
            weight.mul_(keep)
        else:
            new, keep = sparsegpt_prune(weight, layer_stats, sparsity, **options)
            weight.copy_(new)
        key = f"{name}.weight" if name else "weight"
        masks[key] = keep.T if type(module).__name__ == "Conv1D" else keep
    return masks


def calibration_runner(model: nn.Module, batches: Iterable[Any], count: int) -> Callable[[], None]:
    """``run()`` for :func:`prune_posthoc_`: the model's forward pass on the inputs of the first
    ``count`` batches (``(inputs, targets)`` pairs), in eval mode."""
    inputs = []
    for i, batch in enumerate(batches):
        if i >= count:
            break
        inputs.append(batch[0])
    if not inputs:
        raise ValueError("no calibration batch")

    def run() -> None:
        was_training = model.training
        model.eval()
        try:
            for x in inputs:
                model(x)
        finally:
            model.train(was_training)

    return run
