"""Pruning masks: which weights are kept, applied so that pruned weights stay exactly zero.

A :class:`Masks` maps parameter names (as in ``model.named_parameters()`` of the unwrapped model)
to boolean keep-masks. It is made from a model by global magnitude (``sparsity=``) or by a
threshold, and used for masked fine-tuning: after every optimizer step :meth:`Masks.apply_`
zeroes the pruned entries of the weights *and* of every same-shaped optimizer state tensor
(momentum, Adam moments, ReWA's master copy ``y``), so no state can move a pruned weight back.
For ReWA with ``M > 0`` a zero ``y`` with zero momentum is a fixed point, so after the first
application there is nothing to rewrite and the parameter is left untouched (its master copy
stays exact).

Masks live in checkpoints through :meth:`state_dict`. Under DDP every rank holds the same masks
(they are computed from identical replicas or loaded from the same checkpoint) and applies them
after its own identical step, so replicas stay identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from rewa.sparsity import (
    SparsityReport,
    magnitude_threshold,
    normalized_magnitudes,
    sparsifiable_parameters,
    sparsity_report,
    unwrap,
    weight_modules,
)


def zero_masked_state(optimizer: Optimizer, p: Tensor, pruned: Tensor) -> None:
    """Zero the ``pruned`` entries of every state tensor of ``p`` shaped like ``p`` (momentum,
    Adam moments, ReWA's ``y``); a tensor is written only when such an entry is nonzero."""
    for value in optimizer.state.get(p, {}).values():
        if isinstance(value, Tensor) and value.shape == p.shape and bool(value[pruned].any()):
            value.masked_fill_(pruned, 0)


class Masks:
    """Boolean keep-masks (True = kept) for named parameters."""

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self.masks = {name: m.detach().to(torch.bool) for name, m in masks.items()}

    # -- construction
    @classmethod
    @torch.no_grad()
    def from_model(
        cls,
        model: nn.Module,
        *,
        threshold: float | None = None,
        sparsity: float | None = None,
        normalize: str = "none",
    ) -> Masks:
        """Masks over the conv/linear weights: prune ``|x| <= threshold``, or the smallest
        global-magnitude threshold that prunes at least a ``sparsity`` fraction (ceil(S·n)
        weights; ties at the threshold are all pruned). ``normalize="rms"`` compares
        |x| / rms(layer) instead of |x| (see :data:`rewa.sparsity.NORMALIZATIONS`)."""
        if (threshold is None) == (sparsity is None):
            raise ValueError("Masks.from_model: give exactly one of threshold= or sparsity=")
        named = sparsifiable_parameters(model)
        if len(named) != len(weight_modules(model)):
            raise ValueError("Masks.from_model: fold parametrized layers (Spred, STR) first")
        magnitudes = normalized_magnitudes([p for _, p in named], normalize)
        if sparsity is not None:
            threshold = magnitude_threshold(magnitudes, sparsity)
        assert threshold is not None
        if not threshold == threshold or threshold == math.inf:
            raise ValueError(f"Masks.from_model: invalid threshold {threshold!r}")
        return cls({name: m > threshold for (name, _), m in zip(named, magnitudes, strict=True)})

    # -- queries
    def __len__(self) -> int:
        return len(self.masks)

    def __iter__(self):
        return iter(self.masks)

    @property
    def total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def kept(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def sparsity(self) -> float:
        """Fraction of masked-out entries over all masked tensors."""
        return 1.0 - self.kept / self.total if self.total else 0.0

    def parameters(self, model: nn.Module) -> list[tuple[Tensor, Tensor]]:
        """(parameter, mask) pairs; an error names any mask whose parameter is missing."""
        params = dict(unwrap(model).named_parameters())
        pairs = []
        for name, mask in self.masks.items():
            if name not in params:
                raise KeyError(f"mask for {name!r}, which the model does not have")
            p = params[name]
            if p.shape != mask.shape:
                raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, weight {p.shape}")
            if mask.device != p.device:
                mask = self.masks[name] = mask.to(p.device)
            pairs.append((p, mask))
        return pairs

    # -- application
    @torch.no_grad()
    def apply_(self, model: nn.Module, optimizer: Optimizer | None = None) -> int:
        """Zero the pruned entries of the weights and of the optimizer's per-parameter state.

        A tensor is written only when a pruned entry is nonzero. Returns the number of parameter
        tensors that were written.
        """
        written = 0
        for p, mask in self.parameters(model):
            pruned = ~mask
            if optimizer is not None:
                zero_masked_state(optimizer, p, pruned)
            if bool(p[pruned].any()):
                p.masked_fill_(pruned, 0.0)
                written += 1
        return written

    def check(self, model: nn.Module) -> int:
        """Number of pruned entries that are not exactly zero (0 when the masks hold)."""
        return sum(int(p[~mask].ne(0).sum()) for p, mask in self.parameters(model))

    # -- checkpoints
    def state_dict(self) -> dict[str, Tensor]:
        return {name: m.cpu().clone() for name, m in self.masks.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> Masks:
        return cls(state)


class MaskedTraining:
    """The hook a training loop calls after each optimizer step during masked fine-tuning."""

    def __init__(self, model: nn.Module, masks: Masks, optimizer: Optimizer) -> None:
        self.model = model
        self.masks = masks
        self.optimizer = optimizer
        masks.apply_(model, optimizer)

    def after_step(self, step: int, total_steps: int) -> None:
        del step, total_steps
        self.masks.apply_(self.model, self.optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.masks = Masks.from_state_dict(state["masks"])
        self.masks.apply_(self.model, self.optimizer)


# ---------------------------------------------------------------- per-layer allocation


def allocation(
    model: nn.Module | Mapping[str, Tensor], thresholds: Iterable[float] = ()
) -> SparsityReport:
    """Per-layer sparsity (exact zeros) of the conv/linear weights of ``model``."""
    return sparsity_report(model, tuple(thresholds))


def dead_layer_warnings(report: SparsityReport) -> list[str]:
    """One warning per layer whose weights are all zero: the network is cut there."""
    return [
        f"layer {name} is entirely zero: no signal passes through it (a dead network unless a "
        f"residual path bypasses it)"
        for name in report.empty_layers()
    ]


def allocation_rows(report: SparsityReport) -> list[dict[str, Any]]:
    """Rows for a table: layer, weights, nonzeros, sparsity, share of all nonzeros."""
    nonzeros = max(report.nonzeros, 1)
    rows = [
        {
            "layer": layer.name,
            "weights": layer.numel,
            "nonzeros": layer.numel - layer.zeros,
            "sparsity": layer.sparsity,
            "share_of_nonzeros": (layer.numel - layer.zeros) / nonzeros,
            "empty": layer.numel > 0 and layer.zeros == layer.numel,
        }
        for layer in report.layers
    ]
    rows.append(
        {
            "layer": "TOTAL (conv + linear weights)",
            "weights": report.total,
            "nonzeros": report.nonzeros,
            "sparsity": report.sparsity,
            "share_of_nonzeros": 1.0 if report.nonzeros else 0.0,
            "empty": report.nonzeros == 0,
        }
    )
    return rows


__all__ = ["MaskedTraining", "Masks", "allocation", "allocation_rows", "dead_layer_warnings"]
