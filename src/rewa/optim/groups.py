"""Split a model's parameters into a ReWA group (conv/linear weights) and a plain group."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

from rewa.sparsity import is_weight_layer, local_part, unwrap, weight_modules

# Hyperparameters that turn ReWA into plain SGD/AdamW (x = y, scale 1).
PLAIN = {"K": 1.0, "M": 0.0, "eps": 0.0}


Selector = str | type[nn.Module]
# 2-D weights at least this large left out of ReWA (not embeddings) are named in a warning.
LARGE_WEIGHT = 1 << 14


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float | None = None,
    other_weight_decay: float = 0.0,
    all_params: bool = False,
    include: Sequence[Selector] = (),
    exclude: Sequence[Selector] = (),
    **rewa_options: Any,
) -> list[dict[str, Any]]:
    """Parameter groups for :class:`rewa.ReWA`.

    Conv and linear weights (transformers' ``Conv1D`` included) get ReWA (the optimizer's
    defaults, updated by ``rewa_options`` and ``weight_decay``). Biases, norm-layer parameters
    and embeddings go to a second group that behaves as plain SGD/AdamW (``K=1, M=0, eps=0``) with
    ``other_weight_decay``: under ReWA with ``M > 0`` a zero-initialized bias would never move.
    A language model's output head and any layer tied to an embedding (GPT-2's LM head) stay
    dense by default, as do all-zero weights (LoRA's B, zero-initialised projections: 0 is
    absorbing under ``M > 0``, so they could never move), with a warning naming them.

    ``include`` / ``exclude`` select modules by type or by an ``fnmatch`` pattern of their
    names (``"*.lm_head"``, ``"transformer.h.*.attn.*"``, ``nn.Embedding``): their weights go
    under ReWA, or stay out of it. The matched modules are marked ``rewa_sparsify`` so that
    sparsity measurement and pruning (:mod:`rewa.sparsity`) count the same weights.
    ``all_params=True`` puts every parameter under ReWA, as the published runs did. Works on
    DDP-wrapped models. Empty groups are omitted.

    Example::

        opt = rewa.ReWA(rewa.param_groups(model, weight_decay=1e-4), lr=0.1, K=9, M=2)
    """
    sparse_options = dict(rewa_options)
    if weight_decay is not None:
        sparse_options["weight_decay"] = weight_decay
    if all_params:
        params = _unique(p for p in model.parameters() if p.requires_grad)
        group = {"params": params, "name": "rewa", "warn_traps": False, **sparse_options}
        return [group] if params else []
    _mark(model, include, True)
    _mark(model, exclude, False)
    candidates = _unique(p for p in weight_sources(model) if p.requires_grad)
    zero = [p for p in candidates if p.numel() and not bool(local_part(p).detach().any())]
    _warn_left_out(model, zero, "all-zero weight(s) left in the plain group (0 is absorbing "
                   "under M > 0, they could never move): initialise them nonzero or pass "
                   "include= to put them under ReWA anyway")  # fmt: skip
    zero_ids = {id(p) for p in zero}
    sparse = [p for p in candidates if id(p) not in zero_ids]
    sparse_ids = {id(p) for p in sparse}
    other = _unique(p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids)
    _warn_large_left_out(model, other)
    groups = []
    if sparse:
        groups.append({"params": sparse, "name": "rewa", **sparse_options})
    if other:
        groups.append(
            {"params": other, "name": "plain", **PLAIN, "weight_decay": other_weight_decay}
        )
    return groups


def _matches(name: str, module: nn.Module, selector: Selector) -> bool:
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(name, selector)
    if isinstance(selector, type):
        return isinstance(module, selector)
    raise TypeError(
        f"param_groups: a selector is a name pattern or a module type, not {selector!r}"
    )


def _mark(model: nn.Module, selectors: Sequence[Selector], sparsify: bool) -> None:
    if isinstance(selectors, (str, type)):
        selectors = [selectors]
    for selector in selectors:
        found = False
        for name, module in unwrap(model).named_modules():
            if _matches(name, module, selector) and isinstance(
                getattr(module, "weight", None), Tensor
            ):
                module.rewa_sparsify = sparsify
                found = True
        if not found:
            raise ValueError(
                f"param_groups: {'include' if sparsify else 'exclude'}={selector!r} matches no "
                "module with a weight"
            )


def _names(model: nn.Module, params: Sequence[Tensor]) -> list[str]:
    ids = {id(p) for p in params}
    return [name for name, p in unwrap(model).named_parameters() if id(p) in ids]


def _warn_left_out(model: nn.Module, params: Sequence[Tensor], what: str) -> None:
    if params:
        names = _names(model, params)
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        warnings.warn(f"rewa.param_groups: {len(names)} {what}: {shown}", stacklevel=3)


def _warn_large_left_out(model: nn.Module, other: Sequence[Tensor]) -> None:
    """Name large matrices that no rule put in either group on purpose: weights of module types
    rewa does not know (a custom layer holding a matrix), not embeddings or dense-by-default
    heads."""
    deliberate = {id(m.weight) for m in unwrap(model).modules() if _deliberately_dense(m)}
    large = [
        p for p in other if p.dim() >= 2 and p.numel() >= LARGE_WEIGHT and id(p) not in deliberate
    ]
    _warn_left_out(
        model, large, "large weight(s) left out of ReWA (pass include= to sparsify them)"
    )


def _deliberately_dense(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        return False
    return (
        isinstance(module, nn.Embedding)
        or getattr(module, "rewa_sparsify", None) is False
        or is_weight_layer(module)
    )


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
