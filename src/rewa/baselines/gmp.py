"""GMP: gradual magnitude pruning with the cubic sparsity schedule (Zhu & Gupta, 2017).

Between ``start`` and ``end`` (fractions of the training steps) the target sparsity rises as

    s(t) = s_f + (s_i − s_f)·(1 − (t − t₀)/(t₁ − t₀))³    (t₀ ≤ t < t₁)

with t the number of steps done, and every ``frequency`` steps the smallest-magnitude weights
(globally, or per layer as in Zhu & Gupta) are masked to reach s(t): ceil(s·n) weights, the count
an evaluation at sparsity s asks for. The last step always prunes to s_f, so a run ends at its
target even with ``end = 1``. ``frequency = 0`` spreads about :data:`AUTO_UPDATES` mask updates
over the ramp, whatever the run's length.

Masks only grow (a pruned weight stays pruned) and are re-applied after every step together with
the pruned entries of the optimizer's state (momentum, Adam moments): the model always holds exact
zeros where it is pruned and no state can regrow a pruned weight. The masks are part of
:meth:`state_dict`, so a resumed run continues with the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from rewa.masks import zero_masked_state
from rewa.sparsity import pruned_count, sparsifiable_parameters
from rewa.theory import cubic_ramp

SCOPES = ("global", "layer")
AUTO_UPDATES = 100  # mask updates over the ramp when frequency = 0


def cubic_sparsity(
    step: int,
    total_steps: int,
    *,
    target: float,
    initial: float = 0.0,
    start: float = 0.0,
    end: float = 0.75,
) -> float:
    """The scheduled sparsity after ``step`` steps: ``initial`` before ``start``, ``target``
    from ``end`` on. ``start`` and ``end`` are fractions of ``total_steps``.
    """
    progress = step / total_steps if total_steps > 0 else 1.0
    return initial + (target - initial) * cubic_ramp(progress, start, end)


class MagnitudePruner:
    """Holds one boolean mask per weight tensor (True = kept) and updates them by magnitude."""

    def __init__(self, model: nn.Module, *, scope: str = "global") -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.scope = scope
        self.weights: dict[str, nn.Parameter] = dict(sparsifiable_parameters(model))
        self.masks: dict[str, Tensor] = {
            name: torch.ones_like(w, dtype=torch.bool) for name, w in self.weights.items()
        }
        self.sparsity = 0.0  # the last sparsity pruned to

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Grow the masks so that a fraction ``sparsity`` of the weights is pruned."""
        if self.scope == "global":
            self._prune_group(list(self.weights), sparsity)
        else:
            for name in self.weights:
                self._prune_group([name], sparsity)
        self.sparsity = sparsity
        self.apply()

    def _prune_group(self, names: list[str], sparsity: float) -> None:
        # Already-pruned weights rank first (score −1), so the masks only grow.
        scores = torch.cat(
            [
                self.weights[n]
                .detach()
                .abs()
                .flatten()
                .float()
                .masked_fill(~self.masks[n].flatten(), -1.0)
                for n in names
            ]
        )
        count = pruned_count(sparsity, scores.numel())
        if count == 0:
            return
        keep = torch.ones_like(scores, dtype=torch.bool)
        keep[torch.topk(scores, count, largest=False, sorted=False).indices] = False
        offset = 0
        for n in names:
            size = self.masks[n].numel()
            self.masks[n] &= keep[offset : offset + size].view_as(self.masks[n])
            offset += size

    @torch.no_grad()
    def apply(self, optimizer: Optimizer | None = None) -> None:
        """Zero every pruned weight, and its entries of ``optimizer``'s state if given."""
        for name, w in self.weights.items():
            w.mul_(self.masks[name].to(w.dtype))
            if optimizer is not None:
                zero_masked_state(optimizer, w, ~self.masks[name])

    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": {n: m.clone() for n, m in self.masks.items()},
            "sparsity": self.sparsity,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        masks = state["masks"]
        if set(masks) != set(self.masks):
            differ = sorted(set(masks) ^ set(self.masks))
            raise ValueError(f"mask names differ from the model's weights: {differ}")
        for name, mask in masks.items():
            if mask.shape != self.masks[name].shape:
                raise ValueError(
                    f"mask {name!r} has shape {tuple(mask.shape)}, weight has "
                    f"{tuple(self.masks[name].shape)}"
                )
            self.masks[name] = mask.to(device=self.masks[name].device, dtype=torch.bool).clone()
        self.sparsity = float(state["sparsity"])
        self.apply()

    def mask_sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return sum(int((~m).sum()) for m in self.masks.values()) / max(total, 1)


class GradualPruning:
    """A :class:`MagnitudePruner` driven by :func:`cubic_sparsity`: call :meth:`after_step` after
    every optimizer step (``step`` counts from 0)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        target: float,
        initial: float = 0.0,
        start: float = 0.0,
        end: float = 0.75,
        frequency: int = 0,
        scope: str = "global",
        optimizer: Optimizer | None = None,
    ) -> None:
        if not (0.0 <= initial <= target < 1.0):
            raise ValueError(f"need 0 <= initial <= target < 1, got {initial}, {target}")
        if not (0.0 <= start <= end <= 1.0):
            raise ValueError(
                f"need 0 <= start <= end <= 1 (fractions of training), got {start}, {end}"
            )
        if frequency < 0:
            raise ValueError(f"frequency must be >= 1 step, or 0 for automatic, got {frequency}")
        self.target, self.initial = target, initial
        self.start, self.end, self.frequency = start, end, frequency
        self.optimizer = optimizer
        self.pruner = MagnitudePruner(model, scope=scope)

    def every(self, total_steps: int) -> int:
        """Steps between mask updates (``frequency``, or automatic when it is 0)."""
        if self.frequency:
            return self.frequency
        return max(1, round((self.end - self.start) * total_steps / AUTO_UPDATES))

    def scheduled(self, step: int, total_steps: int) -> float:
        """The sparsity due once step ``step`` (counted from 0) is done."""
        return cubic_sparsity(
            step + 1,
            total_steps,
            target=self.target,
            initial=self.initial,
            start=self.start,
            end=self.end,
        )

    def due(self, step: int, total_steps: int) -> bool:
        """Whether the masks are updated after ``step``: every :meth:`every` steps from the start
        of the ramp, from its end on, and at the last step."""
        done = step + 1
        t0 = math.ceil(self.start * total_steps)
        if done <= t0:
            return False
        on_beat = (done - t0) % self.every(total_steps) == 0
        return on_beat or done >= self.end * total_steps or done >= total_steps

    def after_step(self, step: int, total_steps: int) -> None:
        if self.due(step, total_steps):
            sparsity = self.scheduled(step, total_steps)
            if sparsity > self.pruner.sparsity:
                self.pruner.prune_to(sparsity)
        self.pruner.apply(self.optimizer)

    def state_dict(self) -> dict[str, Any]:
        return self.pruner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pruner.load_state_dict(state)
