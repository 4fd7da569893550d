"""Plots of training runs: accuracy–sparsity curves, per-layer sparsity, weight magnitudes,
training curves (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from rewa.sparsity import SparsityReport


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sparsity_axis(ax) -> None:
    """x axis showing sparsity on a log scale of (1 - sparsity), so 90/99/99.9% are spread out."""
    ax.set_xscale("function", functions=(_to_log_density, _from_log_density))
    ticks = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.1%}".replace(".0%", "%") for t in ticks], fontsize=7)
    ax.set_xlabel("sparsity of conv + linear weights (|x| <= τ zeroed)")


def legend_on_fullest(axes: Sequence[Any], **kwargs: Any) -> None:
    """One legend, on the panel with the most labelled curves (none if no panel has any: a
    panel may be empty while a study is partial, and matplotlib warns on an empty legend)."""
    fullest = max(axes, key=lambda ax: len(ax.get_legend_handles_labels()[0]))
    if fullest.get_legend_handles_labels()[0]:
        fullest.legend(**kwargs)


def _to_log_density(s):
    return -np.log10(np.clip(1.0 - np.asarray(s, dtype=float), 1e-5, None))


def _from_log_density(v):
    return 1.0 - 10.0 ** (-np.asarray(v, dtype=float))


def sweep_curve(points: Sequence[Mapping[str, Any]], split: str) -> list[tuple[float, float]]:
    """(sparsity, accuracy) pairs of a threshold sweep for one split ("val", "test")."""
    key = f"{split}_acc"
    return sorted((p["sparsity"], p[key]) for p in points if p.get(key) is not None)


def accuracy_sparsity_plot(
    path: str | Path,
    curves: Mapping[str, Sequence[tuple[float, float]]],
    *,
    ylabel: str = "accuracy",
    title: str = "accuracy vs sparsity (one-shot global threshold)",
) -> None:
    """Accuracy of the pruned model against its sparsity: one line per label."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in curves.items():
        if pts:
            xs, ys = zip(*sorted(pts), strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    _sparsity_axis(ax)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def layer_sparsity_plot(path: str | Path, report: SparsityReport, threshold: float) -> None:
    """Per-layer bars: fraction of exact zeros and of |x| <= ``threshold``."""
    names = [layer.name for layer in report.layers]
    exact = [layer.sparsity for layer in report.layers]
    below = [layer.below[threshold] / max(layer.numel, 1) for layer in report.layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names) + 2), 4.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, exact, width=0.4, label="exact zeros")
    ax.bar(x + 0.2, below, width=0.4, label=f"|x| <= {threshold:g}")
    for i, layer in enumerate(report.layers):
        if layer.numel and layer.zeros == layer.numel:
            ax.text(i, 1.02, "EMPTY", rotation=90, ha="center", color="red", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("fraction of the layer's weights")
    ax.legend(fontsize=8)
    ax.set_title(f"per-layer sparsity (total exact zeros {report.sparsity:.2%})", fontsize=9)
    _save(fig, path)


def weight_histogram(path: str | Path, weights: Sequence[Tensor], bins: int = 120) -> None:
    """Histogram of log10|x| over the nonzero conv/linear weights; exact zeros counted apart."""
    flat = torch.cat([w.detach().flatten().float().cpu() for w in weights])
    zeros = int((flat == 0).sum())
    nonzero = flat[flat != 0].abs()
    fig, ax = plt.subplots(figsize=(7, 4))
    if nonzero.numel():
        ax.hist(np.log10(nonzero.numpy()), bins=bins, color="tab:blue")
    ax.set_xlabel("log10 |x| (nonzero conv + linear weights)")
    ax.set_ylabel("count")
    ax.set_yscale("log")
    ax.set_title(
        f"weight magnitudes: {zeros:,} of {flat.numel():,} exactly zero "
        f"({zeros / max(flat.numel(), 1):.2%}, not shown)",
        fontsize=9,
    )
    _save(fig, path)


def training_curves(path: str | Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Loss, accuracy, sparsity and learning rate per epoch (step records as thin lines)."""
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = [r for r in records if r.get("kind") == "step"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    (loss_ax, acc_ax), (sparse_ax, lr_ax) = axes

    def line(ax, rows, key, label, **kw):
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, label=label, **kw)

    line(loss_ax, steps, "train_loss", "train (steps)", alpha=0.35, linewidth=0.8)
    line(loss_ax, epochs, "train_loss", "train", marker="o", markersize=3)
    line(loss_ax, epochs, "val_loss", "validation", marker="o", markersize=3)
    loss_ax.set_ylabel("loss")
    line(acc_ax, epochs, "train_acc", "train", marker="o", markersize=3)
    line(acc_ax, epochs, "val_acc", "validation", marker="o", markersize=3)
    acc_ax.set_ylabel("accuracy")
    line(sparse_ax, epochs, "sparsity", "exact zeros", marker="o", markersize=3)
    for key in ("below_0.001", "below_0.01"):
        line(sparse_ax, epochs, key, f"|x| <= {key.split('_')[1]}", marker=".", markersize=3)
    sparse_ax.set_ylabel("sparsity")
    sparse_ax.set_ylim(0, 1)
    line(lr_ax, steps or epochs, "lr", "learning rate")
    lr_ax.set_ylabel("learning rate")
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(fig, path)
