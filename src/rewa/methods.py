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
        method.observe_loss(loss.item())  # optional: only lp's stability monitor uses it
    method.fold()  # model now holds plain dense weights with exact zeros where pruned
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from rewa.baselines.gmp import SCOPES, GradualPruning
from rewa.baselines.penalties import StabilityMonitor, l1_penalty, lp_penalty
from rewa.baselines.rigl import RigL
from rewa.baselines.spred import INITS as SPRED_INITS
from rewa.baselines.spred import apply_spred, fold_spred, spred_factors
from rewa.baselines.str_ import apply_str, fold_str, str_parameters
from rewa.errors import UsageError
from rewa.optim import ReWA, param_groups
from rewa.optim.groups import PLAIN
from rewa.optim.prox import ProxL1
from rewa.sparsity import sparsifiable_parameters


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

    def observe_loss(self, loss: float) -> None:
        """Optional: the step's training loss, for methods that monitor it (``lp``)."""
        del loss

    def diagnostics(self) -> dict[str, Any]:
        """Optional numbers about the run so far (e.g. ``lp``'s stability report)."""
        return {}

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


def _defaults_of(cls: type, *names: str) -> dict[str, Any]:
    parameters = inspect.signature(cls.__init__).parameters
    return {name: parameters[name].default for name in names}


class ReWAMethod(SparseMethod):
    """ReWA on conv/linear weights; biases and norm layers in a plain group."""

    name = "rewa"
    OPTIONS: ClassVar[dict[str, Any]] = {
        **_defaults_of(ReWA, "K", "M", "eps", "weight_decay"),  # one place: ReWA's signature
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


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(conv/linear weights that are plain parameters, every other trainable parameter)."""
    sparse = [p for _, p in sparsifiable_parameters(model) if p.requires_grad]
    ids = {id(p) for p in sparse}
    other, seen = [], set(ids)
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            other.append(p)
    return sparse, other


def _groups(*pairs: tuple[list[nn.Parameter], dict[str, Any]]) -> list[dict[str, Any]]:
    """Parameter groups from (params, settings) pairs, leaving out empty ones."""
    return [{"params": params, **settings} for params, settings in pairs if params]


class _TorchBaseMethod(SparseMethod):
    """Helpers for methods that train with torch's SGD/AdamW: weight decay per group."""

    sparse: list[nn.Parameter]
    other: list[nn.Parameter]

    def make_optimizer(self) -> Optimizer:
        """torch's SGD/AdamW with ``weight_decay`` on ``self.sparse`` (the weights the method
        sparsifies, set by :meth:`prepare_model`) and ``other_weight_decay`` on ``self.other``."""
        o = self.options
        groups = _groups(
            (self.sparse, {"weight_decay": o["weight_decay"]}),
            (self.other, {"weight_decay": o["other_weight_decay"]}),
        )
        return self.torch_optimizer(groups, o["weight_decay"])

    def _require(self, ok: bool, message: str) -> None:
        if not ok:
            raise UsageError(f"method {self.name!r}: {message}")

    def _nonneg(self, *names: str) -> None:
        for name in names:
            value = self.options[name]
            self._require(
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and 0 <= value < float("inf"),
                f"option {name} must be a number >= 0, got {value!r}",
            )


class L1Method(_TorchBaseMethod):
    """ℓ1 by subgradient: ``lam·Σ|x|`` over the conv/linear weights added to the loss (no exact
    zeros: the iterates oscillate around 0)."""

    name = "l1"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "lam": 1e-4,
        "weight_decay": 0.0,
        "other_weight_decay": 0.0,
    }

    def prepare_model(self) -> None:
        self._nonneg("lam", "weight_decay", "other_weight_decay")
        self.sparse, self.other = split_parameters(self.model)

    def penalty(self) -> Tensor | None:
        return l1_penalty(self.sparse, self.options["lam"])


class L1ProxMethod(_TorchBaseMethod):
    """ℓ1 by a proximal step (:class:`rewa.optim.prox.ProxL1`): SGD/AdamW, then a soft threshold
    of the conv/linear weights (by ``lr·lam/(1 − momentum)`` on SGD, ``lr·lam/(√v̂ + eps)`` on
    AdamW: the fixed points are those of ``loss + lam·‖x‖₁``), which gives exact zeros."""

    name = "l1-prox"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "lam": 1e-4,
        "weight_decay": 0.0,
        "other_weight_decay": 0.0,
        "precondition": True,
    }

    def prepare_model(self) -> None:
        self._nonneg("lam", "weight_decay", "other_weight_decay")
        self.sparse, self.other = split_parameters(self.model)

    def make_optimizer(self) -> Optimizer:
        o = self.options
        groups = _groups(
            (self.sparse, {"l1": o["lam"], "weight_decay": o["weight_decay"]}),
            (self.other, {"l1": 0.0, "weight_decay": o["other_weight_decay"]}),
        )
        if self.base not in ("sgd", "adamw"):
            raise UsageError(f"base must be 'sgd' or 'adamw', got {self.base!r}")
        return ProxL1(
            groups,
            lr=self.lr,
            base=self.base,
            momentum=self.momentum,
            precondition=bool(o["precondition"]),
        )


class LpMethod(_TorchBaseMethod):
    """Direct ℓp: ``lam·Σ(|x| + delta)^p`` over the conv/linear weights added to the loss.

    ``delta = 0`` is the raw penalty with an unbounded gradient at 0 — the instability ReWA
    avoids; :meth:`diagnostics` reports it (largest update, non-finite values, loss spikes).
    """

    name = "lp"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "lam": 1e-4,
        "p": 8.0 / 9.0,
        "delta": 1e-6,
        "weight_decay": 0.0,
        "other_weight_decay": 0.0,
    }

    def prepare_model(self) -> None:
        self._nonneg("lam", "delta", "weight_decay", "other_weight_decay")
        p = self.options["p"]
        self._require(
            isinstance(p, (int, float)) and 0 < p <= 2, f"option p must be in (0, 2], got {p!r}"
        )
        self.sparse, self.other = split_parameters(self.model)
        self.monitor = StabilityMonitor(self.sparse)

    def penalty(self) -> Tensor | None:
        self.monitor.before_step()
        o = self.options
        return lp_penalty(self.sparse, o["lam"], o["p"], o["delta"])

    def after_step(self, step: int, total_steps: int) -> None:
        if self.monitor.armed:
            self.monitor.after_step()

    def observe_loss(self, loss: float) -> None:
        self.monitor.observe_loss(loss)

    def diagnostics(self) -> dict[str, Any]:
        return self.monitor.report.as_dict()


class SpredMethod(_TorchBaseMethod):
    """Spred: every conv/linear weight reparameterized as u ⊙ v and trained with ordinary weight
    decay on u and v — ℓ1 with λ = weight_decay at minima. ``init``: ``sqrt`` (u ⊙ v = w, signs
    frozen) or ``independent`` (the authors' code; see :class:`rewa.baselines.spred.Hadamard`).
    :meth:`fold` writes x = u ⊙ v back as plain weights."""

    name = "spred"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "weight_decay": 1e-4,
        "other_weight_decay": 0.0,
        "init": "sqrt",
    }

    def prepare_model(self) -> None:
        self._nonneg("weight_decay", "other_weight_decay")
        init = self.options["init"]
        self._require(init in SPRED_INITS, f"option init must be one of {', '.join(SPRED_INITS)}")
        apply_spred(self.model, init)

    def make_optimizer(self) -> Optimizer:
        o = self.options
        factors = spred_factors(self.model)
        ids = {id(p) for p in factors}
        other = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        groups = _groups(
            (factors, {"weight_decay": o["weight_decay"]}),
            (other, {"weight_decay": o["other_weight_decay"]}),
        )
        return self.torch_optimizer(groups, o["weight_decay"])

    def fold(self) -> nn.Module:
        return fold_spred(self.model)


class STRMethod(_TorchBaseMethod):
    """STR: x = sign(w)·ReLU(|w| − sigmoid(s)) with one learnable ``s`` per conv/linear layer
    (initialized to ``s_init``); ``weight_decay`` applies to w and s, which raises the thresholds.
    :meth:`fold` writes x back as plain weights (exact zeros)."""

    name = "str"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "weight_decay": 1e-4,
        "s_init": -5.0,
        "other_weight_decay": 0.0,
    }

    def prepare_model(self) -> None:
        self._nonneg("weight_decay", "other_weight_decay")
        apply_str(self.model, float(self.options["s_init"]))

    def make_optimizer(self) -> Optimizer:
        o = self.options
        hidden, thresholds = str_parameters(self.model)
        ids = {id(p) for p in hidden + thresholds}
        other = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        groups = _groups(
            (hidden + thresholds, {"weight_decay": o["weight_decay"]}),
            (other, {"weight_decay": o["other_weight_decay"]}),
        )
        return self.torch_optimizer(groups, o["weight_decay"])

    def fold(self) -> nn.Module:
        return fold_str(self.model)


class GMPMethod(_TorchBaseMethod):
    """Gradual magnitude pruning: SGD/AdamW with weight decay; sparsity ramped from ``initial`` to
    ``target`` by the cubic schedule between ``start`` and ``end`` (fractions of training; by
    default the ramp of the target-sparsity controller, after a short warmup), masks updated every
    ``frequency`` steps (0: about 100 updates over the ramp) by magnitude over all layers
    (``scope: global``) or the same fraction of every layer (``scope: layer``, Zhu & Gupta). The
    run ends at ``target`` (ceil(target·n) weights pruned); pruned entries of the optimizer state
    are zeroed with the weights. Masks are in :meth:`state_dict`."""

    name = "gmp"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "target": 0.9,
        "initial": 0.0,
        "start": 0.05,
        "end": 0.6,
        "frequency": 0,
        "scope": "global",
        "weight_decay": 5e-4,
        "other_weight_decay": 0.0,
    }

    def prepare_model(self) -> None:
        o = self.options
        self._nonneg("weight_decay", "other_weight_decay", "target", "initial", "start", "end")
        self._nonneg("frequency")
        self._require(o["scope"] in SCOPES, f"option scope must be one of {', '.join(SCOPES)}")
        try:
            self.pruning = GradualPruning(
                self.model,
                target=float(o["target"]),
                initial=float(o["initial"]),
                start=float(o["start"]),
                end=float(o["end"]),
                frequency=int(o["frequency"]),
                scope=o["scope"],
            )
        except ValueError as err:
            raise UsageError(f"method 'gmp': {err}") from None
        self.sparse, self.other = split_parameters(self.model)

    def make_optimizer(self) -> Optimizer:
        optimizer = super().make_optimizer()
        self.pruning.optimizer = optimizer  # pruned entries of its state are zeroed too
        return optimizer

    def after_step(self, step: int, total_steps: int) -> None:
        self.pruning.after_step(step, total_steps)

    def fold(self) -> nn.Module:
        self.pruning.pruner.apply()
        return self.model

    def state_dict(self) -> dict[str, Any]:
        return {"gmp": self.pruning.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pruning.load_state_dict(state["gmp"])


class RigLMethod(_TorchBaseMethod):
    """RigL (:mod:`rewa.baselines.rigl`): sparse from the first step at ``sparsity`` (ERK layer
    densities), masks updated every ``interval`` steps until ``end`` by dropping the smallest
    active weights and growing the inactive ones of largest gradient, the fraction ``alpha``
    decayed by a cosine; SGD/AdamW with weight decay. Masks are in :meth:`state_dict`."""

    name = "rigl"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "sparsity": 0.9,
        "alpha": 0.3,
        "interval": 100,
        "end": 0.75,
        "seed": 0,
        "weight_decay": 5e-4,
        "other_weight_decay": 0.0,
    }

    def prepare_model(self) -> None:
        o = self.options
        self._nonneg("weight_decay", "other_weight_decay", "sparsity", "alpha", "end", "seed")
        self._require(int(o["interval"]) >= 1, "option interval must be >= 1 step")
        try:
            self.rigl = RigL(
                self.model,
                sparsity=float(o["sparsity"]),
                alpha=float(o["alpha"]),
                interval=int(o["interval"]),
                end=float(o["end"]),
                seed=int(o["seed"]),
            )
        except ValueError as err:
            raise UsageError(f"method 'rigl': {err}") from None
        self.sparse, self.other = split_parameters(self.model)

    def make_optimizer(self) -> Optimizer:
        optimizer = super().make_optimizer()
        self.rigl.optimizer = optimizer
        return optimizer

    def after_step(self, step: int, total_steps: int) -> None:
        self.rigl.after_step(step, total_steps)

    def fold(self) -> nn.Module:
        self.rigl.apply()
        return self.model

    def state_dict(self) -> dict[str, Any]:
        return {"rigl": self.rigl.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rigl.load_state_dict(state["rigl"])


class PowerpropMethod(SparseMethod):
    """Powerprop (Schwarz et al. 2021): w = v|v|^(α−1), trained by plain gradient descent on v
    (SGD with momentum, or AdamW), then magnitude pruning. It is ReWA with K = α, M = α − 1
    (s·g is ∂L/∂v divided by α, so the SGD base's lr is α times the lr given here) and, for
    ``weight_decay`` > 0, ordinary weight decay on v (the ablation "Powerprop + decay"; ReWA
    differs from it only in M < K − 1). Biases and norm layers train in a plain group."""

    name = "powerprop"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "alpha": 9.0,
        "weight_decay": 0.0,
        "other_weight_decay": 0.0,
    }

    def make_optimizer(self) -> Optimizer:
        o = self.options
        alpha = float(o["alpha"])
        if not alpha >= 1.0:
            raise UsageError(f"method 'powerprop': option alpha must be >= 1, got {alpha!r}")
        # SGD base: ReWA's step lr·(|v|^(α−1)·g + κv) is GD on v at lr/α with decay α·κ on v
        scale = alpha if self.base == "sgd" else 1.0
        decay = float(o["weight_decay"]) / scale
        groups = param_groups(
            self.model, weight_decay=decay, other_weight_decay=o["other_weight_decay"]
        )
        for group in groups:
            if group["name"] == "plain":
                group["lr"] = self.lr  # the plain group is plain GD at the given lr
        return ReWA(
            groups,
            lr=self.lr * scale,
            K=alpha,
            M=alpha - 1.0,
            eps=0.0,
            weight_decay=decay,
            momentum=self.momentum,
            base=self.base,
        )


METHODS: dict[str, type[SparseMethod]] = {}


def register(cls: type[SparseMethod]) -> type[SparseMethod]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


for _cls in (
    ReWAMethod,
    DenseMethod,
    L1Method,
    L1ProxMethod,
    LpMethod,
    SpredMethod,
    STRMethod,
    GMPMethod,
    RigLMethod,
    PowerpropMethod,
):
    register(_cls)


def check_method(
    name: str,
    *,
    lr: float,
    momentum: float = 0.9,
    base: str = "sgd",
    options: Mapping[str, Any] | None = None,
) -> None:
    """Raise a one-line UsageError if method ``name`` cannot be built with these settings (an
    unknown option, a value of the wrong type or out of range), by building it on a tiny model."""
    probe = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(2, 2))
    try:
        build_method(name, probe, lr=lr, momentum=momentum, base=base, options=options)
    except (ValueError, TypeError) as err:
        raise UsageError(f"config key 'method.options': {err}") from None


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
