"""Accuracy of a model, and the threshold sweep of METHOD.md (accuracy of the pruned model).

The sweep always uses the weights it is given (the trainer passes the last epoch's weights, never
a "best test" epoch): for each τ every conv/linear weight with |x| <= τ is zeroed on a copy of the
model, and the copy's sparsity and accuracy on each split are recorded.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rewa.masks import Masks
from rewa.provenance import cpu_features
from rewa.sparsity import magnitude_threshold, prune_, sparsifiable_parameters, sparsity_report
from rewa.train.distributed import sum_over_ranks


@dataclass
class Accuracy:
    loss: float
    accuracy: float
    n: int


def _cpu_native_bf16() -> bool:
    # AVX512-BF16 or AMX, from the CPU's own flags. oneDNN's _is_mkldnn_bf16_supported() is not
    # this test: it is also true on AVX512 CPUs without BF16, where bf16 is emulated and trains
    # 3x slower than float32 (238 against 708 img/s, results/bench/cpu_precision_avx512).
    return bool({"avx512_bf16", "amx"} & set(cpu_features()))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (not emulated, which is slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_native_bf16()


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    """The ``model.bf16`` setting (true, false or "auto") resolved for ``device``."""
    return native_bf16(device) if setting == "auto" else bool(setting)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast for the forward pass on ``device`` (parameters stay float32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def per_example(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, classes) logits and (N,) labels: a sequence model's (B, T, vocab) logits and (B, T)
    targets become one example per token."""
    if logits.dim() > 2:
        return logits.flatten(0, -2), labels.flatten()
    return logits, labels


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    bf16: bool = False,
) -> Accuracy:
    """Mean cross-entropy and top-1 accuracy of ``model`` over ``batches`` (eval mode).

    Counts are summed over ranks, so under DDP each rank may evaluate its own shard.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    for inputs, labels in batches:
        with autocast(device, bf16):
            logits = model(inputs)
        logits, labels = per_example(logits, labels)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
        n += labels.numel()
    model.train(was_training)
    loss, hits, count = sum_over_ranks(float(loss_sum), float(correct), n)
    if count == 0:
        return Accuracy(math.nan, math.nan, 0)
    return Accuracy(loss / count, hits / count, int(count))


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], images: int
) -> int:
    """Re-estimate every BatchNorm's running statistics from about ``images`` training images.

    Pruning changes every layer's output statistics, so the running mean and variance kept from
    training no longer fit. The statistics are reset and averaged over train-mode forward passes
    (cumulative average, ``momentum=None``); nothing else changes. Returns the images used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or images <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    seen = 0
    for inputs, _ in batches:
        model(inputs)
        seen += len(inputs)
        if seen >= images:
            break
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return seen


def sweep_thresholds(
    model: nn.Module, thresholds: Sequence[float], target_sparsities: Sequence[float]
) -> list[tuple[float, str]]:
    """(τ, why) pairs, ascending: τ = 0 (the model as trained), the fixed ``thresholds`` and the
    global-magnitude τ that reaches each target sparsity."""
    magnitudes = torch.cat(
        [p.detach().abs().flatten().float().cpu() for _, p in sparsifiable_parameters(model)]
    )
    points = {0.0: "as trained"}
    for tau in thresholds:
        points.setdefault(float(tau), "fixed")
    for target in target_sparsities:
        tau = magnitude_threshold([magnitudes], target)  # the smallest τ reaching target
        if tau >= 0.0:
            points.setdefault(tau, f"target {target:g}")
    return sorted(points.items())


@torch.no_grad()
def threshold_sweep(
    model: nn.Module,
    splits: Mapping[str, Any],
    *,
    thresholds: Sequence[float],
    target_sparsities: Sequence[float] = (),
    device: torch.device,
    bf16: bool = False,
    progress=None,
) -> list[dict[str, Any]]:
    """For each τ: zero |x| <= τ on a copy of ``model`` (a plain, folded model), then record
    sparsity and accuracy on every split (``splits``: name -> iterable of batches).

    A τ that zeroes no more weights than the previous one reuses its accuracies.
    """
    if len(sparsifiable_parameters(model)) == 0:
        raise ValueError("threshold_sweep: the model has no plain conv/linear weights")
    points = []
    previous: dict[str, Any] | None = None
    for tau, why in sweep_thresholds(model, thresholds, target_sparsities):
        pruned = copy.deepcopy(model)
        if tau > 0:
            prune_(pruned, threshold=tau)
        report = sparsity_report(pruned, ())
        point: dict[str, Any] = {
            "threshold": tau,
            "source": why,
            "sparsity": report.sparsity,
            "zeros": report.zeros,
            "total": report.total,
        }
        if previous is not None and previous["zeros"] == report.zeros:
            point.update({k: previous[k] for k in previous if k.endswith(("_acc", "_loss"))})
        else:
            for name, batches in splits.items():
                result = evaluate(pruned, batches, device=device, bf16=bf16)
                point[f"{name}_acc"] = result.accuracy
                point[f"{name}_loss"] = result.loss
        points.append(point)
        previous = point
        if progress is not None:
            progress(point)
    return points


@torch.no_grad()
def normalized_prunes(
    model: nn.Module,
    splits: Mapping[str, Any],
    *,
    target_sparsities: Sequence[float],
    normalize: str,
    device: torch.device,
    bf16: bool = False,
) -> list[dict[str, Any]]:
    """For each target: prune a copy of ``model`` by the global magnitude of |x| normalized per
    layer (``normalize``, see :func:`rewa.sparsity.normalized_magnitudes`) to that sparsity and
    record its sparsity and accuracy on every split: what a run steered on that magnitude is
    read at (the threshold sweep compares |x| itself). The masks are `rewa prune`'s: at least
    ceil(S·n) weights pruned."""
    points = []
    for target in target_sparsities:
        pruned = copy.deepcopy(model)
        Masks.from_model(pruned, sparsity=target, normalize=normalize).apply_(pruned)
        report = sparsity_report(pruned, ())
        point: dict[str, Any] = {
            "target": float(target),
            "sparsity": report.sparsity,
            "zeros": report.zeros,
            "total": report.total,
        }
        for name, batches in splits.items():
            result = evaluate(pruned, batches, device=device, bf16=bf16)
            point[f"{name}_acc"] = result.accuracy
            point[f"{name}_loss"] = result.loss
        points.append(point)
    return points


def accuracy_at_sparsity(
    points: Sequence[Mapping[str, Any]], target: float, split: str
) -> dict[str, Any] | None:
    """The measured point with the smallest threshold whose sparsity is >= ``target``.

    Not interpolated: the sweep includes the global-magnitude τ of each target sparsity, so the
    returned point's sparsity is the target or (ties, exact zeros) slightly above. None when no
    point reaches the target.
    """
    key = f"{split}_acc"
    reached = [p for p in points if p["sparsity"] >= target and key in p]
    if not reached:
        return None
    best = min(reached, key=lambda p: p["threshold"])
    return {"sparsity": best["sparsity"], "accuracy": best[key], "threshold": best["threshold"]}
