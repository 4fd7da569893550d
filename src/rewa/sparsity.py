"""Which weights are sparsified, how sparse they are, and global magnitude pruning.

The denominator of every sparsity number is the set of weights a method sparsifies: the weights of
convolution and linear layers (biases and normalization parameters are excluded).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

DEFAULT_THRESHOLDS: tuple[float, ...] = (1e-8, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5)
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def weight_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every convolution and linear layer of ``model``."""
    return [(name, m) for name, m in unwrap(model).named_modules() if isinstance(m, WEIGHT_LAYERS)]


def sparsifiable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the conv/linear weights that are plain parameters.

    Layers whose weight is parametrized (Spred, STR) are skipped: their weight is computed.
    """
    return [
        (f"{name}.weight" if name else "weight", m.weight)
        for name, m in weight_modules(model)
        if isinstance(m.weight, nn.Parameter) and not parametrize.is_parametrized(m, "weight")
    ]


@torch.no_grad()
def effective_weights(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(name, weight) of every conv/linear layer, as the forward pass sees it."""
    return [
        (f"{name}.weight" if name else "weight", m.weight.detach())
        for name, m in weight_modules(model)
    ]


# ---------------------------------------------------------------- measurement


@dataclass
class LayerSparsity:
    """Counts for one weight tensor."""

    name: str
    numel: int
    zeros: int
    below: dict[float, int] = field(default_factory=dict)  # τ -> number of |x| <= τ

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Global and per-layer sparsity of a set of weights.

    ``sparsity`` counts exact zeros; ``fraction_below(τ)`` counts |x| <= τ. The denominator is
    ``total``: the conv + linear weights (or the tensors passed in).
    """

    layers: list[LayerSparsity]
    thresholds: tuple[float, ...]

    @property
    def total(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def zeros(self) -> int:
        return sum(layer.zeros for layer in self.layers)

    @property
    def nonzeros(self) -> int:
        return self.total - self.zeros

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0

    @property
    def compression(self) -> float:
        """total / nonzero weights (inf when every weight is zero)."""
        return self.total / self.nonzeros if self.nonzeros else math.inf

    def fraction_below(self, threshold: float) -> float:
        if threshold not in self.thresholds:
            raise KeyError(f"threshold {threshold} was not measured; have {self.thresholds}")
        return sum(layer.below[threshold] for layer in self.layers) / max(self.total, 1)

    def empty_layers(self) -> list[str]:
        """Layers whose weights are all exactly zero (the network is cut there)."""
        return [layer.name for layer in self.layers if layer.numel and layer.zeros == layer.numel]

    def to_dict(self) -> dict[str, Any]:
        return {
            "denominator": "conv + linear weights",
            "total": self.total,
            "zeros": self.zeros,
            "sparsity": self.sparsity,
            "compression": self.compression,
            "fraction_below": {str(t): self.fraction_below(t) for t in self.thresholds},
            "layers": [
                {
                    "name": layer.name,
                    "numel": layer.numel,
                    "zeros": layer.zeros,
                    "sparsity": layer.sparsity,
                    "fraction_below": {
                        str(t): layer.below[t] / max(layer.numel, 1) for t in self.thresholds
                    },
                }
                for layer in self.layers
            ],
        }

    def format(self, per_layer: bool = True) -> str:
        """A plain-text table: one row per layer and a total row."""
        taus = [t for t in self.thresholds]
        head = f"{'layer':<40} {'weights':>10} {'zeros':>8}" + "".join(
            f" {'<=' + format(t, 'g'):>8}" for t in taus
        )
        rows = [head, "-" * len(head)]

        def row(name: str, numel: int, zeros: int, below: Mapping[float, int]) -> str:
            frac = [below[t] / max(numel, 1) for t in taus]
            return f"{name[-40:]:<40} {numel:>10} {zeros / max(numel, 1):>8.2%}" + "".join(
                f" {f:>8.2%}" for f in frac
            )

        if per_layer:
            rows += [row(la.name, la.numel, la.zeros, la.below) for la in self.layers]
        totals = {t: sum(la.below[t] for la in self.layers) for t in taus}
        rows.append(row("TOTAL (conv + linear weights)", self.total, self.zeros, totals))
        return "\n".join(rows)


Source = nn.Module | Mapping[str, Tensor] | Iterable[Tensor]


def _named_tensors(source: Source) -> list[tuple[str, Tensor]]:
    if isinstance(source, nn.Module):
        return effective_weights(source)
    if isinstance(source, Mapping):
        return [(str(k), v) for k, v in source.items()]
    return [(f"tensor{i}", t) for i, t in enumerate(source)]


@torch.no_grad()
def sparsity_report(
    source: Source, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> SparsityReport:
    """Measure exact zeros and |x| <= τ for each τ, per tensor and in total.

    ``source`` is a model (its conv + linear weights are measured), a mapping name -> tensor, or an
    iterable of tensors.
    """
    thresholds = tuple(float(t) for t in thresholds)
    layers = []
    for name, t in _named_tensors(source):
        magnitude = t.detach().abs()
        below = {tau: int((magnitude <= tau).sum()) for tau in thresholds}
        layers.append(LayerSparsity(name, t.numel(), int((t == 0).sum()), below))
    return SparsityReport(layers, thresholds)


# ---------------------------------------------------------------- pruning


@torch.no_grad()
def magnitude_threshold(tensors: Iterable[Tensor], sparsity: float) -> float:
    """The global threshold τ such that zeroing |x| <= τ zeros a ``sparsity`` fraction.

    Ties at τ are all pruned, so the achieved sparsity can exceed the target by the tie count.
    Returns -1.0 when nothing is to be pruned.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    magnitudes = torch.cat([t.detach().abs().flatten().float() for t in tensors])
    k = math.floor(sparsity * magnitudes.numel())
    if k == 0:
        return -1.0
    return float(torch.kthvalue(magnitudes.cpu(), k).values)


@torch.no_grad()
def prune_(
    model: nn.Module, *, threshold: float | None = None, sparsity: float | None = None
) -> float:
    """Zero, in place, every conv/linear weight with |x| <= τ; return τ.

    Give either ``threshold`` (τ itself) or ``sparsity`` (the global-magnitude τ that reaches that
    fraction of zeros across all conv/linear weights).
    """
    if (threshold is None) == (sparsity is None):
        raise ValueError("prune_: give exactly one of threshold= or sparsity=")
    params = [p for _, p in sparsifiable_parameters(model)]
    if len(params) != len(weight_modules(model)):
        raise ValueError("prune_: fold parametrized layers (Spred, STR) into plain weights first")
    if sparsity is not None:
        threshold = magnitude_threshold(params, sparsity)
    assert threshold is not None
    for p in params:
        p.masked_fill_(p.abs() <= threshold, 0.0)
    return float(threshold)
