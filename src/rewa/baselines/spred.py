"""Spred: the Hadamard reparameterization x = u ⊙ v, trained with ordinary weight decay.

At a minimum, weight decay (κ/2)(‖u‖² + ‖v‖²) on the factors equals κ‖x‖₁ on the product (for a
fixed x the cheapest factorization has |u| = |v| = √|x|), so Spred with weight decay κ behaves
like ℓ1 with λ = κ while training is plain SGD/AdamW on (u, v).

Implemented with ``torch.nn.utils.parametrize``: ``module.weight`` is computed as u ⊙ v from
``module.parametrizations.weight.original0`` (u) and ``original1`` (v); :func:`fold_spred` turns the
model back into a plain one holding x.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from rewa.sparsity import weight_modules

INITS = ("sqrt", "independent")


class Hadamard(nn.Module):
    """The parametrization (u, v) ↦ u ⊙ v.

    ``init="sqrt"``: u = sign(w)√|w|, v = √|w|, so u ⊙ v = w at the start, but no weight can
    change sign (u and v would have to cross 0 together). ``init="independent"``, as in the
    authors' code: u = w and v an independent draw from the same default initialization of a
    conv/linear weight (kaiming-uniform, a = √5); the product starts small (~1/fan_in) and either
    factor can change sign.
    """

    def __init__(self, init: str = "sqrt") -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"Spred init must be one of {', '.join(INITS)}, got {init!r}")
        self.init = init

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return u * v

    def right_inverse(self, w: Tensor) -> tuple[Tensor, Tensor]:
        if self.init == "independent":
            v = torch.empty_like(w)
            if v.dim() >= 2:
                nn.init.kaiming_uniform_(v, a=math.sqrt(5))
            else:
                nn.init.uniform_(v, -1.0, 1.0)
            return w, v
        root = w.abs().sqrt()
        return root.copysign(w), root


def is_spred(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, Hadamard) for p in module.parametrizations.weight
    )


def apply_spred(model: nn.Module, init: str = "sqrt") -> list[nn.Parameter]:
    """Reparameterize every conv/linear weight of ``model`` as u ⊙ v; returns the factors.

    With ``init="sqrt"`` the initial forward pass equals the original model's up to rounding
    (u·v = w); see :class:`Hadamard` for ``init="independent"``.
    """
    factors: list[nn.Parameter] = []
    for _, module in weight_modules(model):
        if is_spred(module):
            raise ValueError("the model already has Spred parametrizations")
        parametrize.register_parametrization(module, "weight", Hadamard(init))
        weight = module.parametrizations.weight
        factors += [weight.original0, weight.original1]
    return factors


def spred_factors(model: nn.Module) -> list[nn.Parameter]:
    """The (u, v) parameters of every Spred layer of ``model``."""
    out: list[nn.Parameter] = []
    for _, module in weight_modules(model):
        if is_spred(module):
            out += [
                module.parametrizations.weight.original0,
                module.parametrizations.weight.original1,
            ]
    return out


def fold_spred(model: nn.Module) -> nn.Module:
    """Replace every u ⊙ v by a plain weight parameter holding the product; returns ``model``."""
    for _, module in weight_modules(model):
        if is_spred(module):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
