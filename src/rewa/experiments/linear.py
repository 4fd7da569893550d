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

from rewa.baselines.penalties import StabilityMonitor
from rewa.data.synthetic import SparseRegression
from rewa.methods import SparseMethod
from rewa.optim.rewa import trust_parameters
from rewa.theory import lr_factor

OptimizerFactory = Callable[[list[nn.Parameter]], Optimizer]
MethodFactory = Callable[[nn.Module], SparseMethod]
Penalty = Callable[[Tensor], Tensor]


@dataclass
class LinearFit:
    coef: Tensor
    losses: list[float] = field(default_factory=list)  # training loss per epoch (mean)
    seconds: float = 0.0
    step_losses: list[float] = field(default_factory=list)  # training loss of every minibatch
    stability: dict[str, Any] = field(default_factory=dict)  # StabilityReport of the coefficients
    diverged: bool = False  # stopped early on a NaN/inf loss or coefficient


def cosine_factor(step: int, total: int) -> float:
    """Cosine decay from 1 to 0 over ``total`` steps."""
    return lr_factor(step, total)


INITS = ("correlation", "random", "uniform")


def initial_coef(
    data: SparseRegression, init: str | Tensor, scale: float, gen: torch.Generator
) -> Tensor:
    if isinstance(init, Tensor):
        if init.shape != (data.d,):
            raise ValueError(f"an initial β must have shape ({data.d},), got {tuple(init.shape)}")
        return init.detach().to(torch.float32).clone()
    if init == "correlation":
        return scale * data.X_train.T @ data.y_train / data.X_train.shape[0]
    if init == "random":
        return scale * torch.randn(data.d, generator=gen)
    if init == "uniform":  # torch.nn.Linear's default: U(±1/√d), whatever ``scale``
        bound = 1.0 / math.sqrt(data.d)
        return torch.empty(data.d).uniform_(-bound, bound, generator=gen)
    raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


LOSSES = ("mse", "mse_mean", "bce")


def data_loss(prediction: Tensor, target: Tensor, loss: str) -> Tensor:
    """½·mean squared error ("mse"), the mean squared error itself ("mse_mean": torch's
    ``MSELoss``, what the method's authors minimize; its gradient is twice the ½·MSE's) or the
    mean binary cross-entropy of logits ("bce")."""
    if loss == "mse":
        return 0.5 * (prediction - target).pow(2).mean()
    if loss == "mse_mean":
        return nn.functional.mse_loss(prediction, target)
    if loss == "bce":
        return nn.functional.binary_cross_entropy_with_logits(prediction, target)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")


def linear_model(coef: Tensor) -> nn.Linear:
    """A bias-free ``nn.Linear(d, 1)`` holding ``coef``, so any :class:`SparseMethod` applies."""
    model = nn.Linear(coef.numel(), 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(coef.reshape(1, -1))
    return model


def fit_linear(
    data: SparseRegression,
    make_optimizer: OptimizerFactory | None = None,
    *,
    method: MethodFactory | None = None,
    epochs: int,
    batch_size: int = 25,
    init_scale: float = 1e-3,
    init: str | Tensor = "correlation",
    penalty: Penalty | None = None,
    seed: int = 0,
    loss: str = "mse",
    on_step: Callable[[], None] | None = None,
    on_coef: Callable[[int, Tensor], None] | None = None,
    stop_on_nonfinite: bool = True,
) -> LinearFit:
    """Minimize ½·mean((Xβ − y)²) (``loss="mse"``; mean((Xβ − y)²) with ``loss="mse_mean"``; or
    the logistic loss of labels y ∈ {0, 1}, ``loss="bce"``) [+ penalty] by minibatches with a
    cosine learning rate.

    The optimizer comes either from ``make_optimizer`` (given ``[β]``, with an optional
    ``penalty(β)`` added to the loss) or from ``method`` (given a bias-free ``nn.Linear`` holding
    β; returns a :class:`SparseMethod`, whose penalty, after-step hook and fold are used — the same
    loop as any model). Exactly one of the two.

    β starts small and nonzero, the same for every method: ``init="correlation"`` is
    init_scale·Xᵀy/n (one gradient step from 0; its signs are right on a strong support, which
    matters for ReWA, whose updates vanish near 0 so that a weight rarely changes sign), and
    ``init="random"`` is N(0, init_scale²), ``init="uniform"`` torch.nn.Linear's U(±1/√d)
    (the published protocol's); a tensor of shape (d,) is used as given.

    Every step's loss and a :class:`StabilityMonitor` of β are recorded; training stops at the
    first NaN/inf loss or coefficient when ``stop_on_nonfinite`` (``fit.diverged``).
    ``on_step()`` is called after every step (progress bars), ``on_coef(step, β)`` too, with the
    current coefficients (detached; do not modify them).
    """
    if (make_optimizer is None) == (method is None):
        raise ValueError("pass exactly one of make_optimizer and method")
    gen = torch.Generator().manual_seed(seed)
    model = linear_model(initial_coef(data, init, init_scale, gen))
    sparse: SparseMethod | None = None
    if method is not None:
        sparse = method(model)
        optimizer = sparse.optimizer
    else:
        optimizer = make_optimizer([model.weight])
    trust_parameters(optimizer)  # this loop writes no parameter through .data

    def coef() -> Tensor:
        return model.weight.reshape(-1)

    n = data.X_train.shape[0]
    total = epochs * math.ceil(n / batch_size)
    schedule = LambdaLR(optimizer, lambda s: cosine_factor(s, total))
    monitor = StabilityMonitor(lambda: [coef()])
    fit = LinearFit(coef().detach())
    # Each epoch's shuffled copy of the data goes into one buffer, so a minibatch is a view
    # (one big gather per epoch is cheaper than a small one per step; same rows, same order).
    X_shuffled = torch.empty_like(data.X_train)
    y_shuffled = torch.empty_like(data.y_train)
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        torch.index_select(data.X_train, 0, order, out=X_shuffled)
        torch.index_select(data.y_train, 0, order, out=y_shuffled)
        epoch_loss = 0.0
        for i in range(0, n, batch_size):
            X_batch, y_batch = X_shuffled[i : i + batch_size], y_shuffled[i : i + batch_size]
            objective_data = data_loss(X_batch @ coef(), y_batch, loss)
            extra = sparse.penalty() if sparse is not None else None
            if penalty is not None:
                extra = penalty(coef()) if extra is None else extra + penalty(coef())
            objective = objective_data if extra is None else objective_data + extra
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            monitor.before_step()
            optimizer.step()
            if sparse is not None:
                sparse.after_step(step, total)
            value = float(objective_data.detach())
            monitor.after_step(value)
            if sparse is not None:
                sparse.observe_loss(value)
            schedule.step()
            step += 1
            fit.step_losses.append(value)
            epoch_loss += value * y_batch.numel()
            if on_step is not None:
                on_step()
            if on_coef is not None:
                on_coef(step - 1, coef().detach())
            if stop_on_nonfinite and monitor.diverged:
                fit.diverged = True
                break
        fit.losses.append(epoch_loss / n)
        if fit.diverged:
            break
    fit.seconds = time.perf_counter() - start
    if sparse is not None:
        sparse.fold()
    fit.coef = coef().detach().clone()
    fit.stability = monitor.report.as_dict()
    return fit


def _mse(coef: Tensor, X: Tensor, y: Tensor) -> float:
    """Mean squared prediction error; inf (not NaN) when huge coefficients overflow."""
    value = float(((X @ coef - y) ** 2).mean())
    return value if math.isfinite(value) else math.inf


def _bce(coef: Tensor, X: Tensor, y: Tensor) -> float:
    value = float(nn.functional.binary_cross_entropy_with_logits(X @ coef, y))
    return value if math.isfinite(value) else math.inf


@torch.no_grad()
def regression_metrics(
    coef: Tensor, data: SparseRegression, support_threshold: float = 1e-3, loss: str = "mse"
) -> dict[str, Any]:
    """Test MSE, ‖β̂ − β‖₂, support precision/recall/F1 (|β̂| > threshold), sparsity, bias.

    With a validation split, ``val_mse`` too (the only number hyperparameters may be chosen by).
    For a logistic problem (``loss="bce"``): test and validation cross-entropy (``test_loss``,
    ``val_loss``) and test accuracy in place of the MSEs.
    """
    coef = coef.detach().float()
    finite = bool(torch.isfinite(coef).all())
    if loss == "bce":
        return _classification(coef, data, support_threshold, finite)
    test_mse = _mse(coef, data.X_test, data.y_test) if finite else math.inf
    val_mse = math.inf
    if data.X_val.shape[0] and finite:
        val_mse = _mse(coef, data.X_val, data.y_val)
    return {
        **({"val_mse": val_mse} if data.X_val.shape[0] else {}),
        "test_mse": test_mse,
        **_support_metrics(coef, data, support_threshold, finite),
    }


def _support_metrics(coef: Tensor, data: SparseRegression, threshold: float, finite: bool):
    """Support recovery (|β̂| > threshold), estimation error, sparsity and bias on the support."""
    true = data.support
    found = coef.abs() > threshold
    tp = int((found & true).sum())
    precision = tp / max(int(found.sum()), 1)
    recall = tp / max(int(true.sum()), 1)
    on_support = coef[true] - data.beta[true]
    return {
        "est_error": float((coef - data.beta).norm()) if finite else math.inf,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "exact_sparsity": float((coef == 0).float().mean()),
        "sparsity_1e-3": float((coef.abs() <= threshold).float().mean()),
        # mean signed shrinkage on the true support, relative to |β|: −0.1 = 10% shrunk to 0
        "support_bias": float(
            (on_support * data.beta[true].sign()).mean() / data.beta[true].abs().mean()
        ),
    }


def _classification(coef: Tensor, data: SparseRegression, threshold: float, finite: bool):
    accuracy = float(((data.X_test @ coef > 0).float() == data.y_test).float().mean())
    return {
        "val_loss": _bce(coef, data.X_val, data.y_val) if finite else math.inf,
        "test_loss": _bce(coef, data.X_test, data.y_test) if finite else math.inf,
        "test_acc": accuracy if finite else 0.0,
        **_support_metrics(coef, data, threshold, finite),
    }
