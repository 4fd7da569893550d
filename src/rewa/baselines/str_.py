"""STR (soft threshold reparameterization): x = sign(w)·ReLU(|w| − sigmoid(s)).

Each conv/linear layer gets one learnable scalar threshold parameter ``s``; weight decay on ``s``
(negative at init) pushes it up, the threshold sigmoid(s) grows, and weights below it become exact
zeros in the forward pass. Implemented with ``torch.nn.utils.parametrize``: the hidden weight is
``module.parametrizations.weight.original`` and ``s`` is ``module.parametrizations.weight[0].s``;
:func:`fold_str` writes x back as a plain weight.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from rewa.sparsity import weight_modules


class SoftThreshold(nn.Module):
    """The parametrization w ↦ sign(w)·ReLU(|w| − sigmoid(s)) with a learnable scalar s."""

    def __init__(self, s_init: float = -5.0) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init)))

    def threshold(self) -> Tensor:
        return torch.sigmoid(self.s)

    def forward(self, w: Tensor) -> Tensor:
        return torch.relu(w.abs() - self.threshold().to(w.dtype)) * w.sign()

    def right_inverse(self, x: Tensor) -> Tensor:
        """A hidden w whose forward is x (up to rounding): w = sign(x)(|x| + sigmoid(s))."""
        with torch.no_grad():
            t = self.threshold().to(x.dtype)
        return (x.abs() + t) * x.sign()


def _str_of(module: nn.Module) -> SoftThreshold | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, SoftThreshold)), None)


def apply_str(model: nn.Module, s_init: float = -5.0) -> list[nn.Parameter]:
    """Reparameterize every conv/linear weight with STR; returns the threshold parameters ``s``.

    The initial forward pass equals the original model's up to rounding.
    """
    thresholds: list[nn.Parameter] = []
    for _, module in weight_modules(model):
        if _str_of(module) is not None:
            raise ValueError("the model already has STR parametrizations")
        soft = SoftThreshold(s_init).to(device=module.weight.device, dtype=module.weight.dtype)
        parametrize.register_parametrization(module, "weight", soft)
        thresholds.append(soft.s)
    return thresholds


def str_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden weights w, thresholds s) of every STR layer of ``model``."""
    hidden, thresholds = [], []
    for _, module in weight_modules(model):
        soft = _str_of(module)
        if soft is not None:
            hidden.append(module.parametrizations.weight.original)
            thresholds.append(soft.s)
    return hidden, thresholds


def str_thresholds(model: nn.Module) -> dict[str, float]:
    """Layer name -> current threshold sigmoid(s)."""
    return {
        name: float(soft.threshold().detach())
        for name, module in weight_modules(model)
        if (soft := _str_of(module)) is not None
    }


def fold_str(model: nn.Module) -> nn.Module:
    """Replace every STR weight by a plain parameter holding sign(w)·ReLU(|w| − sigmoid(s))."""
    for _, module in weight_modules(model):
        if _str_of(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
