"""Proximal ℓ1 optimizers: an SGD-momentum or Adam(W) step, then a soft threshold (exact zeros).

The soft threshold is the proximal map of ``lr·λ·|x|``::

    x ← sign(x) · max(|x| − lr·λ, 0)

applied after the base step, so the iteration minimizes ``f(x) + λ‖x‖₁`` (a fixed point x
satisfies ``0 ∈ ∇f(x) + λ ∂|x|``, the Lasso optimality condition) and produces exact zeros,
unlike the subgradient of ``λ‖x‖₁`` added to the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

BASES = ("sgd", "adamw")


def soft_threshold(x: Tensor, threshold: Tensor | float) -> Tensor:
    """sign(x)·max(|x| − threshold, 0), elementwise (``threshold`` ≥ 0, scalar or tensor)."""
    return x.sign() * (x.abs() - threshold).clamp_min(0.0)


def soft_threshold_(x: Tensor, threshold: Tensor | float) -> Tensor:
    """In-place :func:`soft_threshold`; keeps exact zeros and the sign of the survivors."""
    magnitude = (x.abs() - threshold).clamp_min_(0.0)
    return x.copy_(magnitude.copysign_(x))


class ProxL1(Optimizer):
    r"""SGD-momentum or AdamW followed by the ℓ1 proximal step (soft threshold).

    Per parameter, with ``l1`` = λ of its group:

    - ``base="sgd"`` (torch's SGD convention, coupled L2 ``weight_decay``):
      ``b ← μ·b + (g + wd·x)``; ``x ← x − lr·b``; ``x ← soft(x, lr·λ/(1 − μ))``.
      The buffer sums gradients, so the step on g is effectively lr/(1 − μ); thresholding by the
      same effective rate makes the fixed points those of ``f + λ‖x‖₁`` for every μ (with
      ``lr·λ`` they would be those of λ(1 − μ)). With μ = 0 it is METHOD.md's ``soft(x, lr·λ)``.
    - ``base="adamw"`` (torch's AdamW, decoupled ``weight_decay``):
      ``x ← x(1 − lr·wd)``; Adam moments of g; ``x ← x − lr·m̂/(√v̂ + adam_eps)``; then
      ``x ← soft(x, lr·λ/(√v̂ + adam_eps))`` when ``precondition=True`` (the prox in Adam's
      metric, whose fixed points are exactly the Lasso's) or ``soft(x, lr·λ)`` when False.

    Every hyperparameter lives in ``param_groups`` (``l1=0`` turns a group into the plain base
    optimizer); state is in ``self.state[p]``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        *,
        l1: float = 1e-4,
        base: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        precondition: bool = True,
    ) -> None:
        defaults = {
            "lr": lr,
            "l1": l1,
            "base": base,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "betas": betas,
            "adam_eps": adam_eps,
            "precondition": precondition,
        }
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _validate(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One base step and soft threshold; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("ProxL1 does not support sparse gradients")
                if group["base"] == "sgd":
                    self._sgd(p, group)
                else:
                    self._adamw(p, group)
        return loss

    def _sgd(self, p: Tensor, group: dict[str, Any]) -> None:
        lr, mu, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        d = p.grad.add(p, alpha=wd) if wd != 0.0 else p.grad.clone()
        if mu != 0.0:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = d.clone()
            else:
                state["momentum_buffer"].mul_(mu).add_(d)
            d = state["momentum_buffer"]
        p.add_(d, alpha=-lr)
        if group["l1"] != 0.0:
            soft_threshold_(p, lr * float(group["l1"]) / (1.0 - mu))

    def _adamw(self, p: Tensor, group: dict[str, Any]) -> None:
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        p.mul_(1.0 - lr * wd)
        m.lerp_(p.grad, 1.0 - beta1)
        v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
        denom = (v.sqrt() / math.sqrt(1.0 - beta2**t)).add_(float(group["adam_eps"]))
        p.addcdiv_(m, denom, value=-lr / (1.0 - beta1**t))
        if group["l1"] != 0.0:
            threshold = lr * float(group["l1"])
            soft_threshold_(
                p, denom.reciprocal_().mul_(threshold) if group["precondition"] else threshold
            )


def _validate(group: dict[str, Any]) -> None:
    def check(name: str, ok: bool, valid: str) -> None:
        if not ok:
            raise ValueError(f"ProxL1: invalid {name}={group[name]!r}; valid range: {valid}")

    check("base", group["base"] in BASES, f"one of {', '.join(BASES)}")
    for name in ("lr", "l1", "weight_decay", "adam_eps"):
        value = float(group[name])
        check(name, 0.0 <= value < math.inf, f"{name} >= 0 and finite")
    check("momentum", 0.0 <= float(group["momentum"]) < 1.0, "0 <= momentum < 1")
    betas = group["betas"]
    check("betas", len(betas) == 2 and all(0.0 <= float(b) < 1.0 for b in betas), "0 <= beta < 1")
