"""Fitting a linear model by minibatch SGD-type training, and the metrics of a sparse estimate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from rewa.data.synthetic import SparseRegression

OptimizerFactory = Callable[[list[nn.Parameter]], Optimizer]
Penalty = Callable[[Tensor], Tensor]


@dataclass
class LinearFit:
    coef: Tensor
    losses: list[float] = field(default_factory=list)  # training loss per epoch (mean)
    seconds: float = 0.0


def cosine_factor(step: int, total: int) -> float:
    """Cosine decay from 1 to 0 over ``total`` steps."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def initial_coef(data: SparseRegression, init: str, scale: float, gen: torch.Generator) -> Tensor:
    if init == "correlation":
        return scale * data.X_train.T @ data.y_train / data.X_train.shape[0]
    if init == "random":
        return scale * torch.randn(data.d, generator=gen)
    raise ValueError(f"init must be 'correlation' or 'random', got {init!r}")


def fit_linear(
    data: SparseRegression,
    make_optimizer: OptimizerFactory,
    *,
    epochs: int,
    batch_size: int = 25,
    init_scale: float = 1e-3,
    init: str = "correlation",
    penalty: Penalty | None = None,
    seed: int = 0,
    on_step: Callable[[], None] | None = None,
) -> LinearFit:
    """Minimize ½·mean((Xβ − y)²) [+ penalty(β)] by minibatches with a cosine learning rate.

    β starts small and nonzero, the same for every method: ``init="correlation"`` is
    init_scale·Xᵀy/n (one gradient step from 0; its signs are right on a strong support, which
    matters for ReWA, whose updates vanish near 0 so that a weight rarely changes sign), and
    ``init="random"`` is N(0, init_scale²).
    """
    gen = torch.Generator().manual_seed(seed)
    coef = nn.Parameter(initial_coef(data, init, init_scale, gen))
    optimizer = make_optimizer([coef])
    n = data.X_train.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    schedule = LambdaLR(optimizer, lambda s: cosine_factor(s, total))
    fit = LinearFit(coef.detach())
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        epoch_loss = 0.0
        for i in range(0, n, batch_size):
            rows = order[i : i + batch_size]
            residual = data.X_train[rows] @ coef - data.y_train[rows]
            loss = 0.5 * residual.pow(2).mean()
            objective = loss if penalty is None else loss + penalty(coef)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            schedule.step()
            epoch_loss += float(loss.detach()) * rows.numel()
            if on_step is not None:
                on_step()
        fit.losses.append(epoch_loss / n)
    fit.seconds = time.perf_counter() - start
    fit.coef = coef.detach().clone()
    return fit


@torch.no_grad()
def regression_metrics(
    coef: Tensor, data: SparseRegression, support_threshold: float = 1e-3
) -> dict[str, Any]:
    """Test MSE, ‖β̂ − β‖₂, support precision/recall/F1 (|β̂| > threshold), sparsity, bias."""
    coef = coef.detach().float()
    finite = bool(torch.isfinite(coef).all())
    test_mse = float(((data.X_test @ coef - data.y_test) ** 2).mean()) if finite else math.inf
    true = data.support
    found = coef.abs() > support_threshold
    tp = int((found & true).sum())
    precision = tp / max(int(found.sum()), 1)
    recall = tp / max(int(true.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    on_support = coef[true] - data.beta[true]
    return {
        "test_mse": test_mse,
        "est_error": float((coef - data.beta).norm()) if finite else math.inf,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "exact_sparsity": float((coef == 0).float().mean()),
        "sparsity_1e-3": float((coef.abs() <= 1e-3).float().mean()),
        # mean signed shrinkage on the true support, relative to |β|: −0.1 = 10% shrunk to 0
        "support_bias": float(
            (on_support * data.beta[true].sign()).mean() / data.beta[true].abs().mean()
        ),
    }
