"""Penalties added to the loss: ℓ1 (subgradient) and direct ℓp, and a stability monitor.

Direct ℓp with 0 < p < 1 is the method ReWA replaces: its gradient ``λ·p·|x|^(p−1)`` is unbounded
at 0, so a weight near 0 gets kicked far away (oscillation), and in float32 the kick can overflow.
:class:`StabilityMonitor` records what that looks like (largest update, non-finite values, loss
spikes) for any method, so the comparison is visible in numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def l1_penalty(params: Iterable[Tensor], lam: float) -> Tensor:
    """λ·Σ|x| over ``params``; autograd gives the subgradient λ·sign(x) (0 at x = 0)."""
    params = list(params)
    total = sum((p.abs().sum() for p in params), torch.zeros((), device=_device(params)))
    return lam * total


class _LpSum(torch.autograd.Function):
    """Σ(|x| + δ)^p with gradient p·(|x| + δ)^(p−1)·sign(x), and 0 at x = 0.

    Autograd of ``(x.abs() + δ) ** p`` would give 0·inf = NaN at x = 0 when δ = 0; this is the
    subgradient the raw method is meant to use (sign(0) = 0), nothing more.
    """

    @staticmethod
    def forward(ctx, x: Tensor, p: float, delta: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.p, ctx.delta = p, delta
        return (x.abs() + delta).pow(p).sum()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        slope = (x.abs() + ctx.delta).pow(ctx.p - 1.0).mul_(ctx.p)
        grad = torch.where(x == 0, torch.zeros_like(slope), slope.copysign_(x))
        return grad * grad_out, None, None


def lp_penalty(params: Iterable[Tensor], lam: float, p: float, delta: float = 0.0) -> Tensor:
    """λ·Σ(|x| + δ)^p over ``params``; δ = 0 is the raw (unbounded-gradient) ℓp penalty.

    The gradient is λ·p·(|x| + δ)^(p−1)·sign(x), with 0 at x = 0.
    """
    if not p > 0 or delta < 0 or lam < 0:
        raise ValueError(f"need p > 0, delta >= 0, lam >= 0; got p={p}, delta={delta}, lam={lam}")
    params = list(params)
    total = sum(
        (_LpSum.apply(x, p, delta) for x in params), torch.zeros((), device=_device(params))
    )
    return lam * total


def _device(params: Sequence[Tensor]) -> torch.device:
    return params[0].device if params else torch.device("cpu")


@dataclass
class StabilityReport:
    """What a training run looked like from the weights' point of view."""

    steps: int = 0
    max_update: float = 0.0  # largest |x_{t+1} − x_t| over every weight and step
    # the same over weights that were near 0 (|x_t| <= near_zero): the kicks that ℓp's unbounded
    # gradient gives, as opposed to a large weight moving fast
    max_update_near_zero: float = 0.0
    nonfinite_steps: int = 0  # steps after which some weight was NaN/inf
    nonfinite_values: int = 0  # NaN/inf weights summed over those steps
    nonfinite_losses: int = 0  # NaN/inf losses observed
    loss_spikes: int = 0  # steps whose loss exceeded spike_factor × the running average

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


class StabilityMonitor:
    """Records the largest update, non-finite weights and loss spikes of a training run.

    Call :meth:`before_step` just before ``optimizer.step()`` and :meth:`after_step` right after
    (with the step's loss, if known). A loss spike is a loss above ``spike_factor`` times an
    exponential moving average of the previous losses (after ``warmup`` steps). Updates of
    weights with ``|x| <= near_zero`` before the step are also tracked on their own.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Callable[[], Sequence[Tensor]],
        *,
        spike_factor: float = 10.0,
        ema: float = 0.9,
        warmup: int = 20,
        near_zero: float = 1e-3,
    ) -> None:
        # A callable gives the tensors afresh at every call (e.g. parametrized weights).
        self._source = params if callable(params) else (lambda fixed=list(params): fixed)
        self.spike_factor = spike_factor
        self.ema = ema
        self.warmup = warmup
        self.near_zero = near_zero
        self.report = StabilityReport()
        self._before: list[Tensor] = []
        self._average: float | None = None

    @torch.no_grad()
    def before_step(self) -> None:
        self._before = [p.detach().clone() for p in self._source()]

    @property
    def armed(self) -> bool:
        """Whether :meth:`before_step` has taken a snapshot to compare against."""
        return bool(self._before)

    @torch.no_grad()
    def after_step(self, loss: float | None = None) -> None:
        """Record the update since :meth:`before_step` (and the step's loss, if given)."""
        r = self.report
        r.steps += 1
        bad = 0
        for old, p in zip(self._before, self._source(), strict=True):
            if not p.numel():
                continue
            delta = (p.detach() - old).abs_()
            largest = float(delta.max())
            if not math.isfinite(largest):  # rare: count the bad entries, skip them in the max
                finite = torch.isfinite(p)
                bad += int((~finite).sum())
                delta.masked_fill_(~(finite & torch.isfinite(old)), 0.0)
                largest = float(delta.max())
            r.max_update = max(r.max_update, largest)
            near = float(delta.masked_fill_(old.abs() > self.near_zero, 0.0).max())
            r.max_update_near_zero = max(r.max_update_near_zero, near)
        if bad:
            r.nonfinite_steps += 1
            r.nonfinite_values += bad
        if loss is not None:
            self.observe_loss(loss)

    def observe_loss(self, loss: float) -> None:
        """Count a non-finite loss, or a spike above ``spike_factor`` × the running average."""
        if not math.isfinite(loss):
            self.report.nonfinite_losses += 1
            return
        avg = self._average
        if avg is not None and self.report.steps > self.warmup and loss > self.spike_factor * avg:
            self.report.loss_spikes += 1
        self._average = loss if avg is None else self.ema * avg + (1.0 - self.ema) * loss

    @property
    def diverged(self) -> bool:
        return self.report.nonfinite_steps > 0 or self.report.nonfinite_losses > 0
