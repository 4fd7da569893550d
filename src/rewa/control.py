"""Target-sparsity control: scale a method's sparsity strength (κ, λ) so training ends at S.

A regularization method (ReWA's weight decay κ, the ℓ1 strength λ) does not take "90% sparse" as
an input: the sparsity it reaches depends on κ, on the learning-rate schedule (the decay acts
through Σ_t η_t·κ, see METHOD.md) and on the task. :class:`SparsityController` closes the loop:

* **measured** sparsity ``s`` = fraction of the sparsified weights with ``|x| <= threshold`` (the
  reporting threshold; ``threshold=0`` counts exact zeros);
* **scheduled target** ``s*(t)`` = ``S · (1 − (1 − r)^3)`` with ``r`` the progress through the
  ramp ``[ramp_start, ramp_end]`` (the cubic schedule of gradual magnitude pruning): 0 early, so
  early training is not crippled, S from ``ramp_end`` on, so the last part of training holds S;
* **error** in log-density ``e = log(1 − s + δ) − log(1 − s* + δ)``: density is the natural scale
  of sparsity (99% vs 98% is a factor 2 in nonzeros, 91% vs 90% is 10%), and ``e > 0`` means
  too many nonzeros, i.e. the strength must grow;
* **PI law in log space** on the strength multiplier ``m`` (strength = base · m)::

      I ← clamp(I + k_i · e · Δprogress, log m_min, log m_max)     (no integration before the ramp)
      m = exp(clamp(I + k_p · e, log m_min, log m_max))

  multiplicative, because the right κ for a budget is unknown by orders of magnitude; integral
  over progress (not steps), so the gains do not depend on how often it is called; the integral
  is clamped to the multiplier's range (anti-windup).

The controller knows nothing about models or training loops: ``update(measured, progress)``
returns the multiplier. :class:`TargetSparsity` connects it to a set of weights and to an
optimizer's hyperparameter (a :class:`GroupKnob`) and is what a training loop calls after each
optimizer step. Both have ``state_dict``/``load_state_dict`` for checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

DENSITY_FLOOR = 1e-4  # δ: keeps the log-density finite when every weight is below threshold


def cubic_ramp(progress: float, start: float, end: float, exponent: float = 3.0) -> float:
    """Fraction of the target at ``progress``: 0 before ``start``, ``1 − (1 − r)^exponent`` with
    ``r = (progress − start)/(end − start)`` inside the ramp, 1 after ``end``."""
    if progress <= start:
        return 0.0
    if progress >= end:
        return 1.0
    r = (progress - start) / (end - start)
    return 1.0 - (1.0 - r) ** exponent


def log_density_error(measured: float, target: float, floor: float = DENSITY_FLOOR) -> float:
    """``log(1 − measured + δ) − log(1 − target + δ)``: > 0 when there are too many nonzeros."""
    return math.log(1.0 - measured + floor) - math.log(1.0 - target + floor)


@dataclass
class ControllerSettings:
    """The controller's constants (see the module docstring for the law)."""

    target: float
    threshold: float = 1e-3
    ramp_start: float = 0.05
    ramp_end: float = 0.6
    kp: float = 6.0
    ki: float = 60.0
    min_multiplier: float = 1e-3
    max_multiplier: float = 1e3

    def validate(self) -> None:
        def fail(what: str) -> None:
            raise ValueError(f"SparsityController: {what}")

        if not 0.0 <= self.target < 1.0:
            fail(f"target must be in [0, 1), got {self.target!r}")
        if not 0.0 <= self.threshold < math.inf:
            fail(f"threshold must be >= 0 and finite, got {self.threshold!r}")
        if not 0.0 <= self.ramp_start < self.ramp_end <= 1.0:
            fail(
                f"need 0 <= ramp_start < ramp_end <= 1, got {self.ramp_start!r}, {self.ramp_end!r}"
            )
        if not (self.kp >= 0.0 and self.ki >= 0.0):
            fail(f"gains must be >= 0, got kp={self.kp!r}, ki={self.ki!r}")
        if not 0.0 < self.min_multiplier <= 1.0 <= self.max_multiplier < math.inf:
            fail(
                "need 0 < min_multiplier <= 1 <= max_multiplier < inf, got "
                f"{self.min_multiplier!r}, {self.max_multiplier!r}"
            )


class SparsityController:
    """Log-space PI control of a strength multiplier toward a scheduled target sparsity.

    Example (the loop is the caller's)::

        ctl = SparsityController(0.95, threshold=1e-3)
        for step in range(total):
            ...
            m = ctl.update(measured_sparsity, progress=(step + 1) / total)
            set_strength(base * m)
    """

    def __init__(
        self,
        target: float,
        *,
        threshold: float = 1e-3,
        ramp_start: float = 0.05,
        ramp_end: float = 0.6,
        kp: float = 6.0,
        ki: float = 60.0,
        min_multiplier: float = 1e-3,
        max_multiplier: float = 1e3,
    ) -> None:
        self.settings = ControllerSettings(
            float(target),
            float(threshold),
            float(ramp_start),
            float(ramp_end),
            float(kp),
            float(ki),
            float(min_multiplier),
            float(max_multiplier),
        )
        self.settings.validate()
        self.integral = 0.0  # log of the multiplier's integral part
        self.multiplier = 1.0
        self.progress = 0.0
        self.last_measured: float | None = None
        self.last_target = 0.0

    @property
    def target(self) -> float:
        return self.settings.target

    @property
    def threshold(self) -> float:
        return self.settings.threshold

    def scheduled_target(self, progress: float) -> float:
        """The target sparsity s*(progress): the cubic ramp from 0 to S."""
        s = self.settings
        return s.target * cubic_ramp(progress, s.ramp_start, s.ramp_end)

    def update(self, measured: float, progress: float) -> float:
        """Feed the sparsity measured at ``progress`` ∈ [0, 1]; return the new multiplier."""
        if not 0.0 <= measured <= 1.0:
            raise ValueError(f"measured sparsity must be in [0, 1], got {measured!r}")
        progress = min(max(float(progress), 0.0), 1.0)
        s = self.settings
        dp = max(progress - self.progress, 0.0)
        self.progress = progress
        self.last_measured = float(measured)
        self.last_target = self.scheduled_target(progress)
        if progress <= s.ramp_start:  # hold: early training runs at the base strength
            return self.multiplier
        low, high = math.log(s.min_multiplier), math.log(s.max_multiplier)
        error = log_density_error(measured, self.last_target)
        self.integral = min(max(self.integral + s.ki * error * dp, low), high)
        self.multiplier = math.exp(min(max(self.integral + s.kp * error, low), high))
        return self.multiplier

    def state_dict(self) -> dict[str, Any]:
        return {
            "settings": dict(vars(self.settings)),
            "integral": self.integral,
            "multiplier": self.multiplier,
            "progress": self.progress,
            "last_measured": self.last_measured,
            "last_target": self.last_target,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        settings = ControllerSettings(**state["settings"])
        settings.validate()
        self.settings = settings
        self.integral = float(state["integral"])
        self.multiplier = float(state["multiplier"])
        self.progress = float(state["progress"])
        last = state["last_measured"]
        self.last_measured = None if last is None else float(last)
        self.last_target = float(state["last_target"])


# ---------------------------------------------------------------- what the multiplier scales


class GroupKnob:
    """One hyperparameter (``key``) of some of an optimizer's param_groups, scaled together.

    The base values are read once, when the knob is made (or restored from a state_dict), so that
    a resumed optimizer whose groups already hold scaled values is not scaled twice.
    """

    def __init__(self, optimizer: Optimizer, key: str, groups: Sequence[int]) -> None:
        if not groups:
            raise ValueError(f"GroupKnob: no parameter group to control (key {key!r})")
        self.optimizer = optimizer
        self.key = key
        self.groups = list(groups)
        self.base = [float(optimizer.param_groups[i][key]) for i in self.groups]
        if not any(b > 0 for b in self.base):
            raise ValueError(
                f"target sparsity scales {key!r}, which is 0 in every controlled group; "
                f"give it a positive starting value"
            )

    def set(self, multiplier: float) -> None:
        for i, base in zip(self.groups, self.base, strict=True):
            self.optimizer.param_groups[i][self.key] = base * multiplier

    def parameters(self) -> list[Tensor]:
        return [p for i in self.groups for p in self.optimizer.param_groups[i]["params"]]

    def state_dict(self) -> dict[str, Any]:
        return {"key": self.key, "groups": list(self.groups), "base": list(self.base)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["key"] != self.key or list(state["groups"]) != self.groups:
            raise ValueError(
                f"controller state is for {state['key']!r} of groups {state['groups']}, "
                f"not {self.key!r} of groups {self.groups}"
            )
        self.base = [float(b) for b in state["base"]]


def sparse_group_knob(optimizer: Optimizer) -> GroupKnob:
    """The knob of an optimizer built by :mod:`rewa`: the ℓ1 strength ``l1`` of the groups that
    have a positive one (proximal ℓ1), else ``weight_decay`` of the ReWA group(s) (``name ==
    "rewa"``, or ``K != 1`` when groups are unnamed)."""
    groups = optimizer.param_groups
    l1 = [i for i, g in enumerate(groups) if float(g.get("l1", 0.0)) > 0]
    if l1:
        return GroupKnob(optimizer, "l1", l1)
    named = [i for i, g in enumerate(groups) if g.get("name") == "rewa"]
    if not named:
        named = [i for i, g in enumerate(groups) if "K" in g and float(g["K"]) != 1.0]
    if named:
        return GroupKnob(optimizer, "weight_decay", named)
    raise ValueError(
        "target sparsity: no sparsified parameter group found (expected ReWA groups or "
        "groups with an 'l1' strength)"
    )


# ---------------------------------------------------------------- the hook a loop calls


@torch.no_grad()
def fraction_at_most(tensors: Iterable[Tensor], threshold: float) -> tuple[int, int]:
    """(number of entries with |x| <= threshold, number of entries) over ``tensors``."""
    below = total = 0
    for t in tensors:
        below += int((t.detach().abs() <= threshold).sum())
        total += t.numel()
    return below, total


Reduce = Callable[[int, int], tuple[int, int]]


class TargetSparsity:
    """Measure the sparsity of ``weights`` every ``every`` steps and set the knob's strength.

    ``weights`` are the tensors whose sparsity is controlled (the conv + linear weights: the
    reporting denominator); ``reduce`` sums (below, total) over ranks for sharded parameters
    (replicated DDP parameters need none). Call :meth:`after_step` after every optimizer step.
    """

    def __init__(
        self,
        controller: SparsityController,
        knob: GroupKnob,
        weights: Sequence[Tensor],
        *,
        every: int = 10,
        reduce: Reduce | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"TargetSparsity: every must be >= 1, got {every}")
        if not weights:
            raise ValueError("TargetSparsity: no weights to measure")
        self.controller = controller
        self.knob = knob
        self.weights = list(weights)
        self.every = every
        self.reduce = reduce
        self.knob.set(controller.multiplier)

    def measure(self) -> float:
        below, total = fraction_at_most(self.weights, self.controller.threshold)
        if self.reduce is not None:
            below, total = self.reduce(below, total)
        return below / max(total, 1)

    def after_step(self, step: int, total_steps: int) -> float | None:
        """After optimizer step ``step`` (from 0) of ``total_steps``: every ``every`` steps (and at
        the last one) measure, update and apply; returns the measured sparsity or None."""
        done = step + 1
        if done % self.every and done != total_steps:
            return None
        measured = self.measure()
        self.knob.set(self.controller.update(measured, done / max(total_steps, 1)))
        return measured

    def strength(self) -> list[float]:
        """The current strength of each controlled group."""
        return [self.knob.optimizer.param_groups[i][self.knob.key] for i in self.knob.groups]

    def metrics(self) -> dict[str, float]:
        """Values to log: measured and scheduled sparsity, multiplier, strength."""
        c = self.controller
        out = {"target_sparsity": c.last_target, "control_multiplier": c.multiplier}
        if c.last_measured is not None:
            out["controlled_sparsity"] = c.last_measured
        out[f"control_{self.knob.key}"] = self.strength()[0]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "knob": self.knob.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.knob.load_state_dict(state["knob"])
        self.knob.set(self.controller.multiplier)


__all__ = [
    "ControllerSettings",
    "GroupKnob",
    "SparsityController",
    "TargetSparsity",
    "cubic_ramp",
    "fraction_at_most",
    "log_density_error",
    "sparse_group_knob",
]
