"""RigL (Evci et al. 2020): dynamic sparse training at a fixed sparsity from the first step.

Each sparsified layer holds a mask with the density the Erdős–Rényi-kernel rule gives it
(:func:`erk_densities`), drawn at random at the start. Every ``interval`` steps until
``end`` (a fraction of training), each layer drops the fraction ``f(t) = α/2 · (1 + cos(π t /
T_end))`` of its active weights with the smallest magnitudes and grows as many inactive ones with
the largest gradient magnitudes (the dense gradient of the step just taken; a dropped weight may
be grown back at once, as in the authors' code). Grown weights start at 0, and the optimizer
state of every inactive weight is zeroed. The number of active weights of each layer never
changes, so the sparsity is exact at every step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from rewa.masks import zero_masked_state
from rewa.sparsity import sparsifiable_parameters


def erk_densities(shapes: Mapping[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Per-layer densities whose weighted total is ``density``: each layer's proportional to
    (sum of its dimensions) / (product of its dimensions), layers that would exceed 1 kept dense
    and the rest scaled up to make up for it."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        divisor = sum(raw[n] * sizes[n] for n in shapes if n not in dense)
        scale = budget / divisor if divisor > 0 else 0.0
        over = {n for n in shapes if n not in dense and scale * raw[n] > 1.0}
        if not over:
            return {n: 1.0 if n in dense else scale * raw[n] for n in shapes}
        dense |= over


def drop_fraction(step: int, end_step: int, alpha: float) -> float:
    """The cosine-decayed update fraction α/2·(1 + cos(π t/T_end)); 0 from T_end on."""
    if step >= end_step:
        return 0.0
    return 0.5 * alpha * (1.0 + math.cos(math.pi * step / end_step))


class RigL:
    """Masks, their updates and their application (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float,
        alpha: float = 0.3,
        interval: int = 100,
        end: float = 0.75,
        seed: int = 0,
        optimizer: Optimizer | None = None,
    ) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        if not 0.0 <= alpha <= 1.0 or interval < 1 or not 0.0 <= end <= 1.0:
            raise ValueError("need 0 <= alpha <= 1, interval >= 1 and 0 <= end <= 1")
        self.sparsity, self.alpha, self.interval, self.end = sparsity, alpha, interval, end
        self.optimizer = optimizer
        self.weights: dict[str, nn.Parameter] = dict(sparsifiable_parameters(model))
        shapes = {n: tuple(w.shape) for n, w in self.weights.items()}
        densities = erk_densities(shapes, 1.0 - sparsity)
        gen = torch.Generator().manual_seed(seed)
        self.masks: dict[str, Tensor] = {}
        for name, w in self.weights.items():
            active = round(densities[name] * w.numel())
            keep = torch.zeros(w.numel(), dtype=torch.bool)
            keep[torch.randperm(w.numel(), generator=gen)[:active]] = True
            self.masks[name] = keep.view(w.shape).to(w.device)
        self.updates: list[dict[str, Any]] = []  # (step, fraction, moved) of every update
        self.apply()

    def due(self, step: int, total_steps: int) -> bool:
        done = step + 1
        return done % self.interval == 0 and done < self.end * total_steps

    @torch.no_grad()
    def update(self, step: int, total_steps: int) -> int:
        """Drop and grow in every layer after step ``step``; returns how many weights moved."""
        fraction = drop_fraction(step + 1, math.floor(self.end * total_steps), self.alpha)
        moved = 0
        for name, w in self.weights.items():
            if w.grad is None:
                continue
            mask = self.masks[name]
            count = round(fraction * int(mask.sum()))
            count = min(count, int((~mask).sum()), int(mask.sum()))
            if count == 0:
                continue
            flat_mask = mask.view(-1)
            drop_score = w.detach().abs().flatten().float().masked_fill(~flat_mask, math.inf)
            dropped = drop_score.topk(count, largest=False).indices
            flat_mask[dropped] = False
            grow_score = w.grad.detach().abs().flatten().float().masked_fill(flat_mask, -1.0)
            grown = grow_score.topk(count).indices
            flat_mask[grown] = True
            born = torch.zeros_like(flat_mask)
            born[grown] = True
            w.masked_fill_(born.view(w.shape), 0.0)  # new connections start at 0
            moved += count
        self.updates.append({"step": step, "fraction": fraction, "moved": moved})
        return moved

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the inactive weights and their optimizer state."""
        for name, w in self.weights.items():
            w.mul_(self.masks[name].to(w.dtype))
            if self.optimizer is not None:
                zero_masked_state(self.optimizer, w, ~self.masks[name])

    def after_step(self, step: int, total_steps: int) -> None:
        if self.due(step, total_steps):
            self.update(step, total_steps)
        self.apply()

    def density(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / max(total, 1)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {n: m.clone() for n, m in self.masks.items()}, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        masks = state["masks"]
        if set(masks) != set(self.masks):
            raise ValueError(f"mask names differ: {sorted(set(masks) ^ set(self.masks))}")
        for name, mask in masks.items():
            if mask.shape != self.masks[name].shape:
                raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}")
            self.masks[name] = mask.to(self.masks[name].device, torch.bool).clone()
        self.updates = list(state.get("updates", []))
        self.apply()
