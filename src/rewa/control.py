"""Target-sparsity control: scale a method's sparsity strength (κ, λ) so training ends at S.

A regularization method (ReWA's weight decay κ, the ℓ1 strength λ) does not take "90% sparse" as
an input: the sparsity it reaches depends on κ, on the learning-rate schedule (the decay acts
through Σ_t η_t·κ, see METHOD.md) and on the task. :class:`SparsityController` closes the loop:

* **measured** sparsity ``s`` = fraction of the sparsified weights with ``|x| <= τ`` (the
  reporting threshold τ, 1e-3 by default); with ``normalize="rms"`` each magnitude is first
  divided by its layer's RMS, so τ is relative (0.01: a hundredth of the layer's typical weight).
  A layer that feeds BatchNorm computes the same function at any scale, and ReWA's decay can meet
  an absolute τ by shrinking such layers whole without making them sparser
  (results/warm_start/scale.md); the relative measure cannot be met that way;
* **scheduled target** ``s*(t)`` = ``S · (1 − (1 − r)^3)`` with ``r`` the progress through the
  ramp ``[ramp_start, ramp_end]`` (the cubic schedule of gradual magnitude pruning): 0 early, so
  early training is not crippled, S from ``ramp_end`` on, so the last part of training holds S;
* **error** (``signal="quantile"``, the default): ``e = log10(q / τ)`` clipped to ±1 decade, where
  ``q`` is the magnitude of the weight at the quantile ``s*`` (the global-magnitude threshold that
  would prune a fraction ``s*``). ``e > 0``: the ``s*`` smallest weights are not yet below τ, the
  strength must grow. Why not the sparsity itself: under weight decay all weights shrink together,
  and with ReWA's ``x = y^K`` the bulk of a freshly initialized layer sits within one decade of τ;
  the fraction below τ stays flat, then jumps when the bulk crosses τ, so a controller that
  watches it sees nothing, raises κ a hundredfold and empties the network (our first version did
  exactly that to a short CIFAR-10 ResNet-20 run). The quantile moves smoothly from the first
  step. For exact zeros (τ = 0) the error is the log-density ``log(1 − s + δ) − log(1 − s* + δ)``
  (``signal="density"``, pure integral action);
* **lookahead**: a change of strength keeps acting after it is undone — SGD momentum carries it
  for ``1/(1 − μ)`` steps, and with ``x = y^K`` a small change of ``y`` is a large one of ``x`` — so
  the error is taken where it will be ``lookahead`` loop delays from now: ``e + lookahead · D · v``,
  ``v`` the averaged velocity of log10 of the magnitude at a fixed quantile (the weights' own
  motion) and ``D = (1/(1 − μ) + every) / total_steps`` the loop delay. Without it the bulk of a
  CIFAR ResNet-20 kept falling after κ was cut and the run ended far too sparse;
* **asymmetry**: over-sparsification is slow to undo (ReWA with ``M > 0``: a tiny weight regrows
  slowly, an exact zero never), so during the ramp being ahead of the schedule does not lower the
  integral (the strength is held), and once the target is S, errors toward "too sparse" count
  ``backoff`` (3) times. Proximal ℓ1 needs neither (:data:`PROXIMAL`): its soft threshold acts
  outside the momentum and its zeros come back as soon as λ drops; its small weights being exact
  zeros, it is steered by the density signal;
* **PI law in log space** on the strength multiplier ``m`` (strength = base · m)::

      I ← clamp(I + k_i · e · Δprogress · w_t, log m_min, log m_max)   (none before the ramp)
      m = exp(clamp(I + k_p · e, log m_min, log m_max))

  multiplicative, because the right κ for a budget is unknown by orders of magnitude; integral
  over progress (not steps), so the gains do not depend on how often it is called; ``w_t`` = the
  learning rate over its peak during a warmup (1 after), because the strength acts through
  Σ_t η_t·κ (METHOD.md): while η is small the weights barely respond, and an unweighted integral
  would wind up and overshoot when the learning rate arrives; the integral is clamped to the
  multiplier's range (anti-windup).

Gains, lookahead and backoff were chosen on the sparse regression (ReWA and proximal ℓ1) and a
short CIFAR-10 ResNet-20 run (results/target_sparsity/); other problems may need
``sparsity.controller`` overrides — the trainer logs the controller's state to check.

The controller knows nothing about models or training loops: ``update(measured, progress)``
returns the multiplier. :class:`TargetSparsity` connects it to the weights it measures and to the
strength it scales (a :class:`GroupKnob` on param_groups, an :class:`OptionKnob` on a penalty's
``lam``); it is what a training loop calls after each optimizer step, and :func:`for_method` builds
one for a :mod:`rewa.methods` method. Both have ``state_dict``/``load_state_dict`` for
checkpoints.

What it cannot do: undo over-sparsification quickly. With ReWA (M > 0) an exact zero is
absorbing and a tiny weight regrows slowly, so a base strength that empties the model in the
first steps cannot be rescued; start from a moderate strength and let the controller raise it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from rewa.sparsity import (
    check_normalize,
    effective_weights,
    magnitude_threshold,
    normalized_magnitudes,
    sparsity_report,
)
from rewa.theory import cubic_ramp

DENSITY_FLOOR = 1e-4  # δ: keeps the log-density finite when every weight is below threshold


def log_density_error(measured: float, target: float, floor: float = DENSITY_FLOOR) -> float:
    """``log(1 − measured + δ) − log(1 − target + δ)``: > 0 when there are too many nonzeros."""
    return math.log(1.0 - measured + floor) - math.log(1.0 - target + floor)


# Gains per error signal, tuned on the sparse regression (ReWA and proximal ℓ1) and a small CNN
# on CIFAR-10 (results/target_sparsity/). The quantile error moves smoothly with the strength for
# every method tried, so one PI pair serves them all; the density error (exact zeros, τ = 0) is
# used with pure integral action, which is stable when the sparsity follows the strength at once
# (proximal ℓ1) and only slow otherwise.
GAINS: dict[str, dict[str, float]] = {
    "quantile": {"kp": 3.0, "ki": 20.0},
    "density": {"kp": 0.0, "ki": 60.0},
}
SIGNALS = ("quantile", "density")


def quantile_error(magnitude: float, threshold: float, clip: float = 1.0) -> float:
    """``log10(magnitude / threshold)`` clipped to ±clip decades: > 0 when the weight at the
    scheduled quantile is still above the threshold (too few zeros); 0 when ``magnitude < 0``
    (nothing to prune: the target is 0)."""
    if magnitude < 0:
        return 0.0
    ratio = max(magnitude, threshold * 10.0**-clip) / threshold
    return min(max(math.log10(ratio), -clip), clip)


@dataclass
class ControllerSettings:
    """The controller's constants (see the module docstring for the law)."""

    target: float
    threshold: float = 1e-3
    ramp_start: float = 0.05
    ramp_end: float = 0.6
    kp: float = 3.0
    ki: float = 20.0
    min_multiplier: float = 1e-3
    max_multiplier: float = 1e3
    signal: str = "quantile"
    quantile_clip: float = 1.0
    lookahead: float = 2.0
    backoff: float = 3.0
    hold_ahead: bool = True

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
        if self.signal not in SIGNALS:
            fail(f"signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if self.signal == "quantile" and self.threshold == 0.0:
            fail("the quantile signal needs threshold > 0 (use signal='density' for exact zeros)")
        if not 0.0 < self.quantile_clip < math.inf:
            fail(f"quantile_clip must be > 0, got {self.quantile_clip!r}")
        if not 0.0 <= self.lookahead < math.inf:
            fail(f"lookahead must be >= 0, got {self.lookahead!r}")
        if not 1.0 <= self.backoff < math.inf:
            fail(f"backoff must be >= 1, got {self.backoff!r}")


class SparsityController:
    """Log-space PI control of a strength multiplier toward a scheduled target sparsity.

    ``signal="quantile"`` (the default when ``threshold > 0``) needs, at each update, the
    magnitude of the weight at the scheduled target's quantile (the global-magnitude threshold
    that would prune a fraction ``scheduled_target(progress)``); ``signal="density"`` needs only
    the measured sparsity. Example (the loop is the caller's)::

        ctl = SparsityController(0.95, threshold=1e-3)
        for step in range(total):
            ...
            p = (step + 1) / total
            q = rewa.sparsity.magnitude_threshold(weights, ctl.scheduled_target(p))
            m = ctl.update(measured_sparsity, p, magnitude=q)
            set_strength(base * m)
    """

    def __init__(
        self,
        target: float,
        *,
        threshold: float = 1e-3,
        ramp_start: float = 0.05,
        ramp_end: float = 0.6,
        kp: float | None = None,
        ki: float | None = None,
        min_multiplier: float = 1e-3,
        max_multiplier: float = 1e3,
        signal: str = "auto",
        quantile_clip: float = 1.0,
        lookahead: float = 2.0,
        backoff: float = 3.0,
        hold_ahead: bool = True,
    ) -> None:
        if signal == "auto":
            signal = "quantile" if threshold > 0 else "density"
        gains = GAINS.get(signal, GAINS["quantile"])
        self.settings = ControllerSettings(
            float(target),
            float(threshold),
            float(ramp_start),
            float(ramp_end),
            float(gains["kp"] if kp is None else kp),
            float(gains["ki"] if ki is None else ki),
            float(min_multiplier),
            float(max_multiplier),
            str(signal),
            float(quantile_clip),
            float(lookahead),
            float(backoff),
            bool(hold_ahead),
        )
        self.settings.validate()
        self.integral = 0.0  # log of the multiplier's integral part
        self.multiplier = 1.0
        self.progress = 0.0
        self.last_measured: float | None = None
        self.last_target = 0.0
        self.last_error = 0.0

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

    def update(
        self,
        measured: float,
        progress: float,
        *,
        magnitude: float | None = None,
        trend: float = 0.0,
        rate: float = 1.0,
    ) -> float:
        """Feed the sparsity measured at ``progress`` ∈ [0, 1] (and, for the quantile signal,
        the magnitude at the scheduled target's quantile); return the new multiplier.

        ``rate`` ∈ [0, 1] scales the integral's advance (``k_i · e · Δprogress · rate``);
        :class:`TargetSparsity` passes the learning rate over its peak during a warmup, when the
        weights barely respond to the strength and an unscaled integral would wind up.
        """
        if not 0.0 <= measured <= 1.0:
            raise ValueError(f"measured sparsity must be in [0, 1], got {measured!r}")
        if magnitude is not None and not math.isfinite(magnitude):
            return self.multiplier  # non-finite weights: no signal; a NaN must not poison I
        s = self.settings
        progress = min(max(float(progress), 0.0), 1.0)
        dp = max(progress - self.progress, 0.0)
        self.progress = progress
        self.last_measured = float(measured)
        self.last_target = self.scheduled_target(progress)
        if s.signal == "quantile":
            if magnitude is None:
                raise ValueError("the quantile signal needs magnitude= at every update")
            error = quantile_error(float(magnitude), s.threshold, s.quantile_clip)
            clip = s.quantile_clip
            error = min(max(error + float(trend), -clip), clip)
        else:
            error = log_density_error(measured, self.last_target)
        if error < 0 and progress >= s.ramp_end:
            # sparser than S: over-sparsification is slow to undo, so back off faster
            error *= s.backoff
        self.last_error = error
        if progress <= s.ramp_start:  # hold: early training runs at the base strength
            return self.multiplier
        low, high = math.log(s.min_multiplier), math.log(s.max_multiplier)
        rate = min(max(float(rate), 0.0), 1.0)
        # during the ramp, being ahead of the schedule is no reason to lower the strength
        integrand = max(error, 0.0) if s.hold_ahead and progress < s.ramp_end else error
        self.integral = min(max(self.integral + s.ki * integrand * dp * rate, low), high)
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
            "last_error": self.last_error,
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
        self.last_error = float(state.get("last_error", 0.0))


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

    def value(self) -> float:
        """The current strength of the first controlled group."""
        return float(self.optimizer.param_groups[self.groups[0]][self.key])

    def state_dict(self) -> dict[str, Any]:
        return {"key": self.key, "groups": list(self.groups), "base": list(self.base)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["key"] != self.key or list(state["groups"]) != self.groups:
            raise ValueError(
                f"controller state is for {state['key']!r} of groups {state['groups']}, "
                f"not {self.key!r} of groups {self.groups}"
            )
        self.base = [float(b) for b in state["base"]]


class OptionKnob:
    """A strength kept in a mapping that is read at every step (a penalty's ``lam``)."""

    def __init__(self, options: MutableMapping[str, Any], key: str) -> None:
        self.options = options
        self.key = key
        self.base = float(options[key])
        if not self.base > 0:
            raise ValueError(
                f"target sparsity scales {key!r}, which is {self.base!r}; give it a positive "
                "starting value"
            )

    def set(self, multiplier: float) -> None:
        self.options[self.key] = self.base * multiplier

    def value(self) -> float:
        return float(self.options[self.key])

    def state_dict(self) -> dict[str, Any]:
        return {"key": self.key, "base": self.base}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["key"] != self.key:
            raise ValueError(f"controller state is for {state['key']!r}, not {self.key!r}")
        self.base = float(state["base"])


Knob = GroupKnob | OptionKnob


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


# method name -> the strength that target sparsity scales (found on the built method)
METHOD_KNOBS: dict[str, str] = {
    "rewa": "weight_decay of the ReWA group",
    "spred": "weight_decay of the u, v factors",
    "str": "weight_decay of the hidden weights and thresholds",
    "l1-prox": "l1 (lam) of the conv/linear group",
    "l1": "lam of the l1 penalty",
    "lp": "lam of the lp penalty",
}
# Penalties applied by subgradient never settle at 0: their weights chatter around it with an
# amplitude of about lr·λ/(1 − momentum), which a strong λ lifts above the threshold, so a higher
# λ can *lower* the measured sparsity and the controller winds up (measured on CIFAR-10
# ResNet-20 in results/target_sparsity/cifar10_resnet20: ℓ1 ended 2.6–11.8 points short).
SUBGRADIENT_CAUTION: dict[str, str] = {
    name: f"{name!r} is a penalty applied by subgradient: its weights oscillate around 0 with an "
    "amplitude of about lr·λ/(1 − momentum), so a strong λ can lower the sparsity measured at "
    f"the threshold and target sparsity may end short of S{hint}"
    for name, hint in (("l1", "; method 'l1-prox' reaches it"), ("lp", ""))
}


def caution(method_name: str) -> str | None:
    """A warning for methods whose sparsity the controller is known to steer poorly."""
    return SUBGRADIENT_CAUTION.get(method_name)


# Proximal ℓ1 acts outside the momentum buffer (the soft threshold comes after the step) and its
# zeros come back when λ drops: nothing of an old strength is in flight and over-sparsification is
# undone at once, so the controller neither looks ahead nor treats the two directions differently.
# Its small weights are exact zeros, so the quantile at s* sits either in the zeros (error clipped
# at −1 decade) or above τ: a bang-bang signal that swung λ by two decades between epochs of a
# CIFAR-10 ResNet-20; the density signal (pure integral) follows the target there (95.03% and
# 99.02% for 95 and 99%, against 95.04% and 98.95% with swings) and on the sparse regression.
PROXIMAL: dict[str, Any] = {
    "lookahead": 0.0,
    "backoff": 1.0,
    "hold_ahead": False,
    "signal": "density",
}
NO_LOOKAHEAD = ("l1-prox",)


def method_knob(method: Any) -> GroupKnob | OptionKnob:
    """The strength knob of a :mod:`rewa.methods` method (duck-typed on ``method.name``)."""
    name = getattr(method, "name", None)
    if name not in METHOD_KNOBS:
        valid = ", ".join(sorted(METHOD_KNOBS))
        why = " (it prunes to its own target)" if name == "gmp" else ""
        raise ValueError(
            f"target sparsity cannot control method {name!r}{why}; it works with: {valid}"
        )
    optimizer = method.optimizer
    if name in ("rewa", "l1-prox"):
        return sparse_group_knob(optimizer)
    if name in ("spred", "str"):  # the first group holds the sparsified factors
        return GroupKnob(optimizer, "weight_decay", [0])
    return OptionKnob(method.options, "lam")


# ---------------------------------------------------------------- the hook a loop calls


Source = nn.Module | Sequence[Tensor]


class TargetSparsity:
    """Measure the sparsity of ``source`` every ``every`` steps and set the knob's strength.

    ``source`` is a model (its conv + linear weights as the forward pass sees them: the
    reporting denominator) or a list of tensors; ``normalize="rms"`` measures |x| / rms(layer)
    against the controller's threshold instead of |x|. Measurement goes through
    :func:`rewa.sparsity.sparsity_report`, so sharded (DTensor) weights are counted over all
    shards (call it on every rank); DDP replicas are identical and need nothing. Call
    :meth:`after_step` after every optimizer step.
    """

    def __init__(
        self,
        controller: SparsityController,
        knob: Knob,
        source: Source,
        *,
        every: int = 10,
        optimizer: Optimizer | None = None,
        normalize: str = "none",
    ) -> None:
        if every < 1:
            raise ValueError(f"TargetSparsity: every must be >= 1, got {every}")
        self.controller = controller
        self.knob = knob
        if optimizer is None and isinstance(knob, GroupKnob):
            optimizer = knob.optimizer
        self.optimizer = optimizer
        self.warmed_up = False
        self.last_lr: float | None = None
        self.previous: tuple[float, float, float] | None = None  # (progress, target, magnitude)
        self.velocity = 0.0  # decades of magnitude per unit progress, averaged
        self.source = source if isinstance(source, nn.Module) else list(source)
        if not isinstance(self.source, nn.Module) and not self.source:
            raise ValueError("TargetSparsity: no weights to measure")
        self.every = every
        self.normalize = check_normalize(normalize)
        self.knob.set(controller.multiplier)

    def measure(self, magnitudes: list[Tensor] | None = None) -> float:
        """Fraction of the weights with |x| (or |x| / rms(layer)) <= the controller's threshold;
        ``magnitudes``: :meth:`weights`, if the caller has them already."""
        tau = self.controller.threshold
        if self.normalize == "none":
            source: Source = self.source
        else:
            source = self.weights() if magnitudes is None else magnitudes
        return sparsity_report(source, (tau,)).fraction_below(tau)

    def after_step(self, step: int, total_steps: int) -> float | None:
        """After optimizer step ``step`` (from 0) of ``total_steps``: every ``every`` steps (and at
        the last one) measure, update and apply; returns the measured sparsity or None."""
        done = step + 1
        if done % self.every and done != total_steps:
            return None
        c = self.controller
        quantile = c.settings.signal == "quantile"
        weights = self.weights() if quantile or self.normalize != "none" else None
        measured = self.measure(weights)
        progress = done / max(total_steps, 1)
        magnitude, trend = None, 0.0
        if weights is not None and quantile:
            target = c.scheduled_target(progress)
            magnitude = magnitude_threshold(weights, target) if target > 0 else -1.0
            trend = self.trend(weights, progress, total_steps, target, magnitude)
        rate = self.lr_rate()
        self.knob.set(c.update(measured, progress, magnitude=magnitude, trend=trend, rate=rate))
        return measured

    def trend(
        self, weights: list[Tensor], progress: float, total_steps: int, target: float, q: float
    ) -> float:
        """The change of the error expected over the next ``lookahead`` loop delays: the
        velocity of log10 of the magnitude at the previous update's quantile (the weights' own
        motion, not the schedule's), times the delay. The delay is how long a change of strength
        keeps acting after it is undone: ``1/(1 − momentum)`` steps, plus ``every``."""
        previous, self.previous = self.previous, (progress, target, q)
        if previous is None or previous[1] <= 0 or previous[2] <= 0 or progress <= previous[0]:
            return 0.0
        p0, target0, q0 = previous
        same = q if target0 == target else magnitude_threshold(weights, target0)
        if same <= 0:  # exact zeros at that quantile now: no magnitude to follow
            return 0.0
        velocity = (math.log10(same) - math.log10(q0)) / (progress - p0)
        delay = (1.0 / (1.0 - self.momentum()) + self.every) / max(total_steps, 1)
        # average the velocity over about one delay: single measurements are noisy
        weight = (progress - p0) / (progress - p0 + delay)
        self.velocity += weight * (velocity - self.velocity)
        return self.velocity * delay * self.controller.settings.lookahead

    def momentum(self) -> float:
        """The first moment's decay of the optimizer (SGD momentum or Adam's beta1), 0 if none."""
        if self.optimizer is None:
            return 0.0
        group = self.optimizer.param_groups[0]
        if group.get("base") == "adamw" or "momentum" not in group:
            betas = group.get("betas")
            return float(betas[0]) if betas else 0.0
        return min(float(group["momentum"]), 0.999)

    def lr_rate(self) -> float:
        """While the learning rate is still rising (a warmup), the learning rate over its peak
        (``initial_lr``, as schedulers and the trainer store it); 1 from the first update where
        it reaches 99% of the peak or stops rising, and without an optimizer."""
        if self.optimizer is None or self.warmed_up:
            return 1.0
        group = self.optimizer.param_groups[0]
        lr, peak = float(group["lr"]), float(group.get("initial_lr", 0.0))
        previous, self.last_lr = self.last_lr, lr
        if peak <= 0 or lr >= 0.99 * peak or (previous is not None and lr <= previous):
            self.warmed_up = True
            return 1.0
        return lr / peak

    def weights(self) -> list[Tensor]:
        """What the controller thresholds: the weights themselves (their magnitudes are taken
        by :func:`magnitude_threshold`), or |x| / rms(layer)."""
        if isinstance(self.source, nn.Module):
            raw = [w for _, w in effective_weights(self.source)]
        else:
            raw = list(self.source)
        return raw if self.normalize == "none" else normalized_magnitudes(raw, self.normalize)

    def metrics(self) -> dict[str, float]:
        """Values to log: measured and scheduled sparsity, multiplier, strength."""
        c = self.controller
        out = {
            "control_target": c.last_target,
            "control_multiplier": c.multiplier,
            "control_strength": self.knob.value(),
        }
        if c.last_measured is not None:
            out["control_measured"] = c.last_measured
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "controller": self.controller.state_dict(),
            "knob": self.knob.state_dict(),
            "warmed_up": self.warmed_up,
            "last_lr": self.last_lr,
            "previous": None if self.previous is None else list(self.previous),
            "velocity": self.velocity,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.knob.load_state_dict(state["knob"])
        self.warmed_up = bool(state.get("warmed_up", False))
        self.last_lr = state.get("last_lr")
        previous = state.get("previous")
        self.previous = None if previous is None else tuple(float(v) for v in previous)
        self.velocity = float(state.get("velocity", 0.0))
        self.knob.set(self.controller.multiplier)


CONTROLLER_OPTIONS = (
    "kp",
    "ki",
    "min_multiplier",
    "max_multiplier",
    "signal",
    "quantile_clip",
    "lookahead",
    "backoff",
    "hold_ahead",
)


def _target_sparsity(
    knob: Knob,
    source: Source,
    optimizer: Optimizer | None,
    target: float,
    proximal: bool,
    *,
    threshold: float = 1e-3,
    every: int = 10,
    ramp_start: float = 0.05,
    ramp_end: float = 0.6,
    normalize: str = "none",
    **options: Any,
) -> TargetSparsity:
    unknown = sorted(set(options) - set(CONTROLLER_OPTIONS))
    if unknown:
        valid = ", ".join(CONTROLLER_OPTIONS)
        raise ValueError(f"unknown controller option {unknown[0]!r}; valid: {valid}")
    if proximal:
        options = {**PROXIMAL, **options}
    controller = SparsityController(
        target, threshold=threshold, ramp_start=ramp_start, ramp_end=ramp_end, **options
    )
    return TargetSparsity(
        controller, knob, source, every=every, optimizer=optimizer, normalize=normalize
    )


def for_method(method: Any, source: Source, target: float, **settings: Any) -> TargetSparsity:
    """A :class:`TargetSparsity` for a built :mod:`rewa.methods` method. ``settings``:
    ``threshold`` (1e-3), ``every`` (10), ``ramp_start`` (0.05), ``ramp_end`` (0.6), ``normalize``
    (what the threshold is compared with, see :class:`TargetSparsity`) and the
    :data:`CONTROLLER_OPTIONS` of :class:`SparsityController`."""
    knob = method_knob(method)
    proximal = method.name in NO_LOOKAHEAD
    return _target_sparsity(knob, source, method.optimizer, target, proximal, **settings)


def for_optimizer(
    optimizer: Optimizer, model: nn.Module, target: float, **settings: Any
) -> TargetSparsity:
    """A :class:`TargetSparsity` for an optimizer built with :func:`rewa.param_groups` (ReWA's
    weight decay, or proximal ℓ1's ``l1``, see :func:`sparse_group_knob`) measuring ``model``'s
    sparsified weights: the controller ``rewa train --target-sparsity`` uses, for other training
    loops (:mod:`rewa.integrations` wraps it as transformers and Lightning callbacks). Call its
    ``after_step(step, total_steps)`` after every optimizer step; ``settings`` as
    :func:`for_method`'s."""
    knob = sparse_group_knob(optimizer)
    return _target_sparsity(knob, model, optimizer, target, knob.key == "l1", **settings)


__all__ = [
    "CONTROLLER_OPTIONS",
    "GAINS",
    "METHOD_KNOBS",
    "NO_LOOKAHEAD",
    "PROXIMAL",
    "SIGNALS",
    "SUBGRADIENT_CAUTION",
    "ControllerSettings",
    "GroupKnob",
    "OptionKnob",
    "SparsityController",
    "TargetSparsity",
    "caution",
    "cubic_ramp",
    "for_method",
    "for_optimizer",
    "log_density_error",
    "method_knob",
    "quantile_error",
    "sparse_group_knob",
]
