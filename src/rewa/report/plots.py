"""Plots (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor


def coefficient_plot(
    path: str | Path, truth: Tensor, estimates: Mapping[str, Tensor], title: str = ""
) -> None:
    """|β̂_j| per coordinate for each method (log scale), true nonzeros marked."""
    fig, axes = plt.subplots(len(estimates), 1, figsize=(9, 2.2 * len(estimates)), sharex=True)
    axes = [axes] if len(estimates) == 1 else list(axes)
    support = torch.nonzero(truth).flatten()
    floor = 1e-12
    for ax, (name, coef) in zip(axes, estimates.items(), strict=True):
        magnitude = coef.detach().abs().clamp_min(floor).cpu()
        zeros = int((coef == 0).sum())
        ax.scatter(
            support,
            truth[support].abs(),
            s=60,
            facecolors="none",
            edgecolors="tab:red",
            label="|true β|",
            zorder=1,
        )
        ax.scatter(
            range(coef.numel()), magnitude, s=4, color="tab:blue", label="|estimate|", zorder=2
        )
        ax.set_yscale("log")
        ax.set_ylim(floor / 2, max(2.0, float(magnitude.max()) * 2))
        ax.set_ylabel("|coefficient|")
        ax.set_title(
            f"{name}: {zeros}/{coef.numel()} exact zeros (plotted at {floor:g})", fontsize=9
        )
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("coordinate j")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
