"""The trainer's sparsity hooks, built from the ``sparsity:`` config section.

- ``sparsity.target = S`` (``rewa train --target-sparsity S``): a :class:`rewa.control.
  TargetSparsity` scales the method's strength (ReWA's κ, ℓ1's λ, ...) so that training ends
  with a fraction S of the conv/linear weights at ``|x| <= sparsity.threshold``.
- ``sparsity.finetune_from = PATH`` (written by ``rewa prune``): the run starts from the pruned
  weights of PATH and keeps its masks after every optimizer step (masked fine-tuning).

Each hook has ``after_step(step, total_steps)``, ``state_dict()``/``load_state_dict()`` (stored
in the trainer's checkpoints under ``"hooks"``, so masks and controller state survive resume)
and ``metrics()`` (added to every epoch record).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewa.control import for_method
from rewa.errors import UsageError
from rewa.masks import MaskedTraining, Masks
from rewa.methods import SparseMethod
from rewa.sparsity import unwrap
from rewa.train import checkpoint

PRUNED_FORMAT = "rewa-pruned"


class MaskHook(MaskedTraining):
    """Masked fine-tuning with a metrics() entry."""

    def metrics(self) -> dict[str, float]:
        return {"mask_sparsity": self.masks.sparsity}


def load_pruned(path: str | Path) -> dict[str, Any]:
    """The payload of a pruned checkpoint written by ``rewa prune`` (weights, masks, facts)."""
    payload = checkpoint.load(path)
    if payload.get("kind") != PRUNED_FORMAT:
        raise UsageError(f"{path} is not a pruned checkpoint (write one with `rewa prune`)")
    return payload


def build(config: Any, model: nn.Module, method: SparseMethod) -> dict[str, Any]:
    """The hooks the config asks for (an empty dict when it asks for none)."""
    s = config.sparsity
    hooks: dict[str, Any] = {}
    if s.finetune_from:
        pruned = load_pruned(s.finetune_from)
        try:
            unwrap(model).load_state_dict(pruned["model"])
        except RuntimeError as err:
            raise UsageError(
                f"sparsity.finetune_from={s.finetune_from}: its weights do not fit model "
                f"{config.model.name!r} with method {method.name!r} ({str(err).splitlines()[0]})"
            ) from None
        hooks["masks"] = MaskHook(model, Masks.from_state_dict(pruned["masks"]), method.optimizer)
    if s.target > 0:
        if not 0 <= s.ramp_start < s.ramp_end <= 1:
            raise UsageError(
                "need 0 <= sparsity.ramp_start < sparsity.ramp_end <= 1, got "
                f"{s.ramp_start:g}, {s.ramp_end:g}"
            )
        try:
            hooks["control"] = for_method(
                method,
                model,
                s.target,
                threshold=s.threshold,
                every=s.every,
                ramp_start=s.ramp_start,
                ramp_end=s.ramp_end,
                normalize=s.normalize,
                **s.controller,
            )
        except (ValueError, TypeError) as err:
            raise UsageError(f"sparsity.target: {err}") from None
    return hooks


def after_step(hooks: Mapping[str, Any], step: int, total_steps: int) -> None:
    for hook in hooks.values():
        hook.after_step(step, total_steps)


def state_dict(hooks: Mapping[str, Any]) -> dict[str, Any]:
    return {name: hook.state_dict() for name, hook in hooks.items()}


def load_state_dict(hooks: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    for name, hook in hooks.items():
        if name in state:
            hook.load_state_dict(state[name])


def metrics(hooks: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for hook in hooks.values():
        out.update(hook.metrics())
    return out


@torch.no_grad()
def pruned_payload(
    model: nn.Module, masks: Masks, config: Mapping[str, Any], facts: Mapping[str, Any]
) -> dict[str, Any]:
    """What ``rewa prune`` writes: the pruned plain model, its masks, the source run's config."""
    return {
        "kind": PRUNED_FORMAT,
        "config": dict(config),
        "model": {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()},
        "masks": masks.state_dict(),
        "facts": dict(facts),
    }


__all__ = [
    "PRUNED_FORMAT",
    "MaskHook",
    "after_step",
    "build",
    "load_pruned",
    "load_state_dict",
    "metrics",
    "pruned_payload",
    "state_dict",
]
