"""Which weights are sparsified, how sparse they are, and global magnitude pruning.

The denominator of every sparsity number is the set of weights a method sparsifies: the weights of
convolution and linear layers (biases and normalization parameters are excluded).

Distributed: a sharded tensor (a DTensor, as FSDP2's ``fully_shard`` makes them) is measured and
pruned through its local shard, and its counts are summed over the ranks that hold its shards
(never over its replicas). Plain tensors are taken to be whole: under DDP every rank holds the
same weights, so nothing is reduced and nothing is counted twice. ``sharded=True`` says that
plain tensors are instead this rank's part of tensors split over all ranks.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
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


def is_weight_layer(module: nn.Module) -> bool:
    """A convolution or linear layer: torch's, or transformers' ``Conv1D`` (GPT-2's linear
    layers, a weight of shape (in, out)), recognised by name so that transformers need not be
    installed."""
    if isinstance(module, WEIGHT_LAYERS):
        return True
    weight = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and isinstance(weight, Tensor) and weight.dim() == 2


def _dense_by_default(root: nn.Module) -> set[int]:
    """ids of the weight layers left dense unless marked ``rewa_sparsify = True``: a language
    model's output embeddings (``get_output_embeddings()`` of a transformers model) and any layer
    whose weight is tied to an ``nn.Embedding`` (GPT-2's LM head is the token embedding)."""
    embeddings = {id(m.weight) for m in root.modules() if isinstance(m, nn.Embedding)}
    dense = {
        id(m)
        for m in root.modules()
        if is_weight_layer(m) and id(m._parameters.get("weight")) in embeddings
    }
    output = getattr(root, "get_output_embeddings", None)
    head = output() if callable(output) else None
    if isinstance(head, nn.Module):
        dense.add(id(head))
    return dense


def weight_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every layer whose weight is sparsified: convolution and linear layers
    (transformers' ``Conv1D`` included), except a language model's output embeddings and layers
    tied to an embedding, and except layers marked ``rewa_sparsify = False``; any module with a
    ``weight`` marked ``rewa_sparsify = True`` is included (:func:`rewa.param_groups`'s
    ``include=`` / ``exclude=`` set these marks)."""
    root = unwrap(model)
    dense = _dense_by_default(root)
    out = []
    for name, m in root.named_modules():
        mark = getattr(m, "rewa_sparsify", None)
        marked_in = mark is True and isinstance(getattr(m, "weight", None), Tensor)
        if marked_in or (mark is None and is_weight_layer(m) and id(m) not in dense):
            out.append((name, m))
    return out


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


# ---------------------------------------------------------------- sharded tensors


def dtensor_type() -> type | None:
    """DTensor's class if torch.distributed.tensor was imported (no DTensor exists otherwise)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def is_dtensor(t: Tensor) -> bool:
    cls = dtensor_type()
    return cls is not None and isinstance(t, cls)


def local_part(t: Tensor) -> Tensor:
    """The elements of ``t`` stored on this rank (the tensor itself unless it is a DTensor)."""
    return t.to_local() if is_dtensor(t) else t


def local_parts(ts: Iterable[Tensor]) -> list[Tensor]:
    """:func:`local_part` of each tensor, with one check for DTensor support (an optimizer step
    calls this for hundreds of tensors)."""
    cls = dtensor_type()
    if cls is None:
        return list(ts)
    return [t.to_local() if isinstance(t, cls) else t for t in ts]


def _sum_over_shards(tensors: Sequence[Tensor], counts: Sequence[Tensor], sharded: bool) -> Tensor:
    """Row i: ``counts[i]`` (an int64 vector computed on the local part of ``tensors[i]``) summed
    over the ranks that hold parts of ``tensors[i]``: a DTensor's shard mesh dimensions (not its
    replicas), every rank for a plain tensor when ``sharded``, no rank otherwise. One collective
    per kind of placement; every rank must call it with the same tensors in the same order."""
    rows = [c.reshape(-1) for c in counts]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        if is_dtensor(t):
            if any(p.is_partial() for p in t.placements):
                raise ValueError("sparsity of a DTensor with Partial placement (unreduced)")
            key: tuple[Any, ...] = (
                "dtensor",
                id(t.device_mesh),
                *(p.is_shard() for p in t.placements),
            )
        else:
            key = ("plain", sharded)
        groups.setdefault(key, []).append(i)
    for key, members in groups.items():
        if key == ("plain", False):
            continue
        stacked = torch.stack([rows[i] for i in members])
        if key[0] == "plain":
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(stacked)
        else:
            from torch.distributed.tensor import DTensor, Partial, Replicate

            first = tensors[members[0]]
            placements = [Partial() if p.is_shard() else Replicate() for p in first.placements]
            stacked = DTensor.from_local(stacked, first.device_mesh, placements).full_tensor()
        for row, i in zip(stacked, members, strict=True):
            rows[i] = row
    return torch.stack([r.cpu() for r in rows]) if rows else torch.zeros(0, 0, dtype=torch.int64)


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
    source: Source, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *, sharded: bool = False
) -> SparsityReport:
    """Measure exact zeros and |x| <= τ for each τ, per tensor and in total.

    ``source`` is a model (its conv + linear weights are measured), a mapping name -> tensor, or an
    iterable of tensors. DTensors are counted over all their shards (a collective: call it on
    every rank); ``sharded=True`` also sums plain tensors' counts over all ranks (see the module
    docstring).
    """
    thresholds = tuple(float(t) for t in thresholds)
    named = _named_tensors(source)
    counts = []
    for _, t in named:
        local = local_part(t).detach()
        magnitude = local.abs()
        values = [
            local.numel(),
            (local == 0).sum(),
            *((magnitude <= tau).sum() for tau in thresholds),
        ]
        counts.append(
            torch.stack(
                [torch.as_tensor(v, dtype=torch.int64, device=local.device) for v in values]
            )
        )
    totals = _sum_over_shards([t for _, t in named], counts, sharded).tolist()
    layers = [
        LayerSparsity(name, row[0], row[1], dict(zip(thresholds, row[2:], strict=True)))
        for (name, _), row in zip(named, totals, strict=True)
    ]
    return SparsityReport(layers, thresholds)


# ---------------------------------------------------------------- scale of a layer

# How magnitudes are compared across layers. "none": |x| itself (the paper's global magnitude).
# "rms": |x| / rms(layer). A convolution followed by BatchNorm computes the same function at any
# scale of its weights, so an absolute threshold can be met by shrinking a whole layer without
# making it any sparser (ReWA's decay does exactly that: results/warm_start/scale.md); divided by
# the layer's RMS, a magnitude says how small a weight is next to its own layer.
NORMALIZATIONS: tuple[str, ...] = ("none", "rms")
# What each compares, in the words of reports.
MAGNITUDE_NAMES = {"none": "|x|", "rms": "|x| / rms(layer)"}


def check_normalize(normalize: str) -> str:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    return normalize


@torch.no_grad()
def layer_rms(tensors: Sequence[Tensor], *, sharded: bool = False) -> list[float]:
    """The root mean square of each tensor, over all its shards (see the module docstring)."""
    sums = [
        torch.stack(
            [
                local_part(t).detach().double().square().sum(),
                torch.tensor(float(local_part(t).numel()), dtype=torch.float64, device=t.device),
            ]
        )
        for t in tensors
    ]
    totals = _sum_over_shards(tensors, sums, sharded).tolist()
    return [math.sqrt(sq / n) if n else 0.0 for sq, n in totals]


@torch.no_grad()
def normalized_magnitudes(
    tensors: Sequence[Tensor], normalize: str = "none", *, sharded: bool = False
) -> list[Tensor]:
    """``|t|`` for each tensor, or ``|t| / rms(t)`` (float32, float64 for float64 tensors) when
    ``normalize == "rms"`` (an all-zero tensor stays zero). DTensors stay DTensors, so the
    result can be measured and thresholded like the weights themselves."""
    check_normalize(normalize)
    if normalize == "none":
        return [t.detach().abs() for t in tensors]
    scales = layer_rms(tensors, sharded=sharded)
    # divided in float64: the RMS of a layer that has all but underflowed can be below the
    # smallest float32, where dividing by it would give 0/0; the ratios themselves fit float32
    return [
        (t.detach().double().abs() / (s if s > 0 else 1.0)).to(_ratio_dtype(t.dtype))
        for t, s in zip(tensors, scales, strict=True)
    ]


def _ratio_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- pruning


def pruned_count(sparsity: float, n: int) -> int:
    """How many of ``n`` weights a prune to ``sparsity`` zeros: ceil(S·n), so that the pruned
    fraction is at least S (forgiving the rounding of S·n: 0.7 · 10 is 7, not 8)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    exact = sparsity * n
    return min(math.ceil(exact - 4 * math.ulp(exact)), n)


@torch.no_grad()
def magnitude_threshold(
    tensors: Iterable[Tensor], sparsity: float, *, sharded: bool = False
) -> float:
    """The global threshold τ such that zeroing |x| <= τ zeros at least a ``sparsity`` fraction:
    the k-th smallest magnitude, k = :func:`pruned_count` (ceil(S·n)).

    Ties at τ are all pruned, so the achieved sparsity can exceed the target by the tie count.
    Returns -1.0 when nothing is to be pruned. With DTensors (or ``sharded=True``), τ is the same
    k-th smallest magnitude over all shards, found by collectives (call it on every rank).
    """
    pruned_count(sparsity, 0)  # validates sparsity
    tensors = list(tensors)
    if sharded or any(is_dtensor(t) for t in tensors):
        return _sharded_magnitude_threshold(tensors, sparsity, sharded)
    magnitudes = torch.cat([t.detach().abs().flatten().float() for t in tensors])
    k = pruned_count(sparsity, magnitudes.numel())
    if k == 0:
        return -1.0
    return float(torch.kthvalue(magnitudes.cpu(), k).values)


def _sharded_magnitude_threshold(tensors: list[Tensor], sparsity: float, sharded: bool) -> float:
    """The k-th smallest float32 magnitude over all shards, exactly, without gathering them.

    The bit patterns of non-negative float32 numbers are ordered like the numbers, so a bisection
    over the 31-bit patterns, counting ``bits <= mid`` on every shard and summing the counts over
    ranks, ends on the bit pattern of the k-th smallest magnitude: 31 small all-reduces.
    """
    bits = [
        local_part(t).detach().abs().float().flatten().view(torch.int32).sort().values
        for t in tensors
    ]
    numel = [torch.tensor([b.numel()], dtype=torch.int64, device=b.device) for b in bits]
    total = int(_sum_over_shards(tensors, numel, sharded).sum())
    k = pruned_count(sparsity, total)
    if k == 0:
        return -1.0
    lo, hi = 0, 0x7FFFFFFF
    while lo < hi:
        mid = (lo + hi) // 2
        below = [
            torch.searchsorted(
                b, torch.tensor([mid], dtype=torch.int32, device=b.device), right=True
            )
            for b in bits
        ]
        if int(_sum_over_shards(tensors, below, sharded).sum()) >= k:
            hi = mid
        else:
            lo = mid + 1
    return struct.unpack("<f", struct.pack("<i", lo))[0]


@torch.no_grad()
def prune_(
    model: nn.Module,
    *,
    threshold: float | None = None,
    sparsity: float | None = None,
    sharded: bool = False,
    normalize: str = "none",
) -> float:
    """Zero, in place, every conv/linear weight with |x| <= τ; return τ.

    Give either ``threshold`` (τ itself) or ``sparsity`` (the global-magnitude τ that reaches that
    fraction of zeros across all conv/linear weights; over all shards for DTensor weights or with
    ``sharded=True``, see :func:`magnitude_threshold`). With ``normalize="rms"`` the magnitudes
    compared with τ are |x| / rms(layer) (see :data:`NORMALIZATIONS`).
    """
    if (threshold is None) == (sparsity is None):
        raise ValueError("prune_: give exactly one of threshold= or sparsity=")
    params = [p for _, p in sparsifiable_parameters(model)]
    if len(params) != len(weight_modules(model)):
        raise ValueError("prune_: fold parametrized layers (Spred, STR) into plain weights first")
    magnitudes = normalized_magnitudes(params, normalize, sharded=sharded)
    if sparsity is not None:
        threshold = magnitude_threshold(magnitudes, sparsity, sharded=sharded)
    assert threshold is not None
    for p, m in zip(params, magnitudes, strict=True):
        local_part(p).masked_fill_(local_part(m) <= threshold, 0.0)
    return float(threshold)
