"""Split a model's parameters into a ReWA group (conv/linear weights) and a plain group."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from rewa.sparsity import weight_modules

# Hyperparameters that turn ReWA into plain SGD/AdamW (x = y, scale 1).
PLAIN = {"K": 1.0, "M": 0.0, "eps": 0.0}


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float | None = None,
    other_weight_decay: float = 0.0,
    all_params: bool = False,
    **rewa_options: Any,
) -> list[dict[str, Any]]:
    """Parameter groups for :class:`rewa.ReWA`.

    Conv and linear weights get ReWA (the optimizer's defaults, updated by ``rewa_options`` and
    ``weight_decay``). Biases and norm-layer parameters go to a second group that behaves as plain
    SGD/AdamW (``K=1, M=0, eps=0``) with ``other_weight_decay`` — under ReWA with ``M > 0`` a
    zero-initialized bias would never move. ``all_params=True`` puts every parameter under ReWA,
    as the published runs did. Works on DDP-wrapped models. Empty groups are omitted.

    Example::

        opt = rewa.ReWA(rewa.param_groups(model, weight_decay=1e-4), lr=0.1, K=9, M=2)
    """
    sparse_options = dict(rewa_options)
    if weight_decay is not None:
        sparse_options["weight_decay"] = weight_decay
    if all_params:
        params = _unique(p for p in model.parameters() if p.requires_grad)
        return [{"params": params, "name": "rewa", **sparse_options}] if params else []
    sparse = _unique(p for p in weight_sources(model) if p.requires_grad)
    sparse_ids = {id(p) for p in sparse}
    other = _unique(p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids)
    groups = []
    if sparse:
        groups.append({"params": sparse, "name": "rewa", **sparse_options})
    if other:
        groups.append(
            {"params": other, "name": "plain", **PLAIN, "weight_decay": other_weight_decay}
        )
    return groups


def weight_sources(model: nn.Module) -> list[nn.Parameter]:
    """The parameter behind each conv/linear weight: the weight itself, or, when the weight is
    computed from one parameter by a mask, the parameter it is computed from —
    ``weight_orig`` under ``torch.nn.utils.prune``, ``parametrizations.weight.original`` under a
    single-input ``torch.nn.utils.parametrize`` parametrization. ReWA trains that parameter and
    the mask keeps the pruned weights at zero. (Spred's two factors are not such a parameter.)"""
    out = []
    for _, m in weight_modules(model):
        if parametrize.is_parametrized(m, "weight"):
            original = getattr(m.parametrizations.weight, "original", None)
            if isinstance(original, nn.Parameter):
                out.append(original)
        elif isinstance(getattr(m, "weight_orig", None), nn.Parameter):
            out.append(m.weight_orig)
        elif isinstance(m.weight, nn.Parameter):
            out.append(m.weight)
    return out


def _unique(params):
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
