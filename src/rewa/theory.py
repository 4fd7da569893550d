"""The ℓp problem ReWA solves implicitly, and exact scalar solutions for tests and plots.

With ε = 0 and no momentum, a nonzero fixed point of ReWA satisfies the stationarity condition of
f(x) + λ‖x‖_p^p with p = (K + 1 − M)/K and λ = κ/p (METHOD.md, "Implicit ℓp").

The decay acts through Σ_t lr_t·κ over a run (METHOD.md, "Practical note"):
:func:`decay_budget` and :func:`weight_decay_for` turn a schedule into that sum and back.
"""

from __future__ import annotations

import math


def lp_exponent(K: float, M: float) -> float:
    """p = (K + 1 − M)/K: the ℓp exponent ReWA(K, M) behaves like."""
    if K < 1 or M < 0:
        raise ValueError(f"need K >= 1 and M >= 0, got K={K}, M={M}")
    return (K + 1.0 - M) / K


def lp_lambda(weight_decay: float, K: float, M: float) -> float:
    """λ = κ/p: the ℓp penalty strength equivalent to weight decay κ under ReWA(K, M)."""
    p = lp_exponent(K, M)
    if p <= 0:
        raise ValueError(f"M < K + 1 is needed for a positive exponent, got K={K}, M={M}")
    return weight_decay / p


def lp_objective(x: float, a: float, lam: float, p: float) -> float:
    """½(x − a)² + λ|x|^p."""
    return 0.5 * (x - a) ** 2 + lam * abs(x) ** p


def lp_stationary_point(a: float, lam: float, p: float) -> float:
    """The largest-magnitude nonzero stationary point of ½(x − a)² + λ|x|^p, or 0 if none.

    It is the root of x − a + λ·p·x^(p−1) = 0 (for a > 0) that gradient descent started at a
    reaches; for p ≤ 1 it is the nonzero local minimizer. Solved by bisection to float64 accuracy.
    """
    if lam < 0 or p <= 0:
        raise ValueError(f"need lam >= 0 and p > 0, got lam={lam}, p={p}")
    if a == 0 or lam == 0:
        return a
    sign, a = math.copysign(1.0, a), abs(a)

    def h(x: float) -> float:
        return x - a + lam * p * x ** (p - 1.0)

    if p == 1.0:
        return sign * max(a - lam, 0.0)
    if p < 1.0:
        # h is convex on x > 0 with its minimum at x_min; the largest root lies in [x_min, a].
        x_min = (lam * p * (1.0 - p)) ** (1.0 / (2.0 - p))
        if x_min >= a or h(x_min) > 0:
            return 0.0
        lo, hi = x_min, a
    else:
        lo, hi = 0.0, a  # h is increasing from h(0) = −a to h(a) > 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if h(mid) > 0:
            hi = mid
        else:
            lo = mid
    return sign * (hi if abs(h(hi)) < abs(h(lo)) else lo)


def lp_prox(a: float, lam: float, p: float) -> float:
    """The global minimizer of ½(x − a)² + λ|x|^p (the scalar ℓp proximal map)."""
    x = lp_stationary_point(a, lam, p)
    if x != 0 and lp_objective(x, a, lam, p) > lp_objective(0.0, a, lam, p):
        return 0.0
    return x


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, cosine: bool = True) -> float:
    """Linear warmup over ``warmup_steps`` then cosine decay to 0 at ``total_steps`` (per step):
    the schedule of ``rewa train`` and of the linear studies."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def decay_budget(lr: float, total_steps: int, warmup_steps: int = 0, cosine: bool = True) -> float:
    """Σ_t lr_t over a run of ``total_steps`` with peak ``lr`` (the schedule of :func:`lr_factor`):
    multiplied by the weight decay κ it is the cumulative shrinkage of y, which is what sets how
    sparse ReWA ends (y shrinks by about exp(−Σ lr_t·κ) where the gradient is silent)."""
    factors = (lr_factor(t, total_steps, warmup_steps, cosine) for t in range(total_steps))
    return lr * math.fsum(factors)


def weight_decay_for(
    target: float, lr: float, total_steps: int, warmup_steps: int = 0, cosine: bool = True
) -> float:
    """The weight decay κ that gives Σ_t lr_t·κ = ``target`` on this schedule: carry a recipe to
    another budget (the published CIFAR recipe accumulates about 0.25) by keeping the sum."""
    budget = decay_budget(lr, total_steps, warmup_steps, cosine)
    if not budget > 0:
        raise ValueError("the schedule has no learning rate to decay with (Σ lr_t = 0)")
    return target / budget


def cubic_ramp(progress: float, start: float, end: float, exponent: float = 3.0) -> float:
    """Fraction of a target at ``progress`` (0 … 1 of training) by the cubic schedule of gradual
    magnitude pruning: 0 before ``start``, ``1 − (1 − r)^exponent`` with ``r = (progress −
    start)/(end − start)`` inside the ramp, 1 from ``end`` on. GMP's sparsity and the
    target-sparsity controller's scheduled target both follow it."""
    if progress <= start:
        return 0.0
    if progress >= end:
        return 1.0
    r = (progress - start) / (end - start)
    return 1.0 - (1.0 - r) ** exponent
