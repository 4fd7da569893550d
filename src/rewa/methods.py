"""One entry point for every sparsification method, so experiments take ``--method NAME``.

A :class:`SparseMethod` owns what a training loop needs from a method: the optimizer, an optional
penalty added to the loss, a hook after each optimizer step (pruning masks, proximal steps,
controllers) and a way to fold reparameterizations back into a plain model. The loop itself stays
generic::

    method = build_method("rewa", model, lr=0.1, options={"K": 9, "M": 2, "weight_decay": 1e-4})
    for step, (x, t) in enumerate(batches):
        loss = criterion(model(x), t)
        penalty = method.penalty()
        if penalty is not None:
            loss = loss + penalty
        method.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.optimizer.step()
        method.after_step(step, total_steps)
    method.fold()  # model now holds plain dense weights with exact zeros where pruned
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from rewa.errors import UsageError
from rewa.optim import ReWA, param_groups
from rewa.optim.groups import PLAIN


class SparseMethod:
    """Base class: plain training with the optimizer built by :meth:`make_optimizer`.

    Subclasses declare their options (name -> default) in ``OPTIONS``; unknown options are an
    error that lists the valid ones.
    """

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        momentum: float = 0.9,
        base: str = "sgd",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.lr = lr
        self.momentum = momentum
        self.base = base
        self.options = self.resolve_options(options or {})
        self.prepare_model()
        self.optimizer = self.make_optimizer()

    @classmethod
    def resolve_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            valid = ", ".join(sorted(cls.OPTIONS)) or "(none)"
            raise UsageError(f"method {cls.name!r} has no option {unknown[0]!r}; valid: {valid}")
        return {**cls.OPTIONS, **options}

    # -- hooks a subclass may override
    def prepare_model(self) -> None:
        """Change the model before the optimizer is built (parametrizations, masks)."""

    def make_optimizer(self) -> Optimizer:
        raise NotImplementedError

    def penalty(self) -> Tensor | None:
        """A term to add to the loss, or None."""
        return None

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after every optimizer step; ``step`` counts from 0."""

    def fold(self) -> nn.Module:
        """Turn the model into a plain model with its effective weights; returns it."""
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """Method state beyond the optimizer's (masks, controller state) for checkpoints."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state

    # -- helpers
    def torch_optimizer(self, groups: list[dict[str, Any]], weight_decay: float) -> Optimizer:
        """torch's own SGD (momentum) or AdamW over ``groups``."""
        if self.base == "sgd":
            return torch.optim.SGD(
                groups, lr=self.lr, momentum=self.momentum, weight_decay=weight_decay
            )
        if self.base == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr, weight_decay=weight_decay)
        raise UsageError(f"base must be 'sgd' or 'adamw', got {self.base!r}")


class ReWAMethod(SparseMethod):
    """ReWA on conv/linear weights; biases and norm layers in a plain group."""

    name = "rewa"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "K": 9.0,
        "M": 2.0,
        "eps": 0.0,
        "weight_decay": 1e-4,
        "other_weight_decay": 0.0,
        "all_params": False,
    }

    def make_optimizer(self) -> Optimizer:
        o = self.options
        groups = param_groups(
            self.model,
            weight_decay=o["weight_decay"],
            other_weight_decay=o["other_weight_decay"],
            all_params=o["all_params"],
        )
        return ReWA(
            groups,
            lr=self.lr,
            K=o["K"],
            M=o["M"],
            eps=o["eps"],
            weight_decay=o["weight_decay"],
            momentum=self.momentum,
            base=self.base,
        )


class DenseMethod(SparseMethod):
    """The dense baseline: torch's SGD/AdamW with ordinary weight decay on every parameter
    (``other_weight_decay`` for biases and norm layers)."""

    name = "dense"
    OPTIONS: ClassVar[dict[str, Any]] = {"weight_decay": 5e-4, "other_weight_decay": None}

    def make_optimizer(self) -> Optimizer:
        o = self.options
        other = o["weight_decay"] if o["other_weight_decay"] is None else o["other_weight_decay"]
        groups = param_groups(self.model, weight_decay=o["weight_decay"])
        for group in groups:
            for key in PLAIN:
                group.pop(key, None)
            if group.pop("name") == "plain":
                group["weight_decay"] = other
        return self.torch_optimizer(groups, o["weight_decay"])


METHODS: dict[str, type[SparseMethod]] = {}


def register(cls: type[SparseMethod]) -> type[SparseMethod]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


register(ReWAMethod)
register(DenseMethod)


def build_method(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    momentum: float = 0.9,
    base: str = "sgd",
    options: Mapping[str, Any] | None = None,
) -> SparseMethod:
    """The method called ``name`` (see :data:`METHODS`), set up on ``model``."""
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name](model, lr=lr, momentum=momentum, base=base, options=options)
