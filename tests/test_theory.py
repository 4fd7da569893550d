import math

import pytest

from rewa import theory


def test_exponent_and_lambda():
    assert theory.lp_exponent(9, 2) == pytest.approx(8 / 9)
    assert theory.lp_exponent(7, 1) == 1.0
    assert theory.lp_exponent(3, 2) == pytest.approx(2 / 3)  # M = K − 1 → p = 2/K
    assert theory.lp_lambda(1e-4, 9, 2) == pytest.approx(1e-4 * 9 / 8)
    with pytest.raises(ValueError):
        theory.lp_exponent(0.5, 0)


@pytest.mark.parametrize(
    "a,lam,p", [(1.0, 0.05, 8 / 9), (2.0, 0.3, 0.5), (1.0, 0.1, 1.5), (-1.5, 0.2, 2 / 3)]
)
def test_stationary_point_solves_the_equation(a, lam, p):
    x = theory.lp_stationary_point(a, lam, p)
    assert x != 0 and math.copysign(1, x) == math.copysign(1, a)
    residual = x - a + lam * p * math.copysign(abs(x) ** (p - 1), x)
    assert abs(residual) < 1e-12


def test_soft_threshold_at_p1():
    assert theory.lp_stationary_point(1.0, 0.3, 1.0) == pytest.approx(0.7)
    assert theory.lp_stationary_point(0.2, 0.3, 1.0) == 0.0


def test_no_nonzero_point_when_lambda_dominates():
    assert theory.lp_stationary_point(0.1, 1.0, 0.5) == 0.0


def test_prox_is_the_global_minimizer():
    for a in [0.3, 0.6, 1.0, 2.0]:
        lam, p = 0.2, 0.5
        best = theory.lp_prox(a, lam, p)
        grid = [i * a / 20000 for i in range(20001)]
        brute = min(grid, key=lambda x: theory.lp_objective(x, a, lam, p))
        assert abs(best - brute) <= a / 20000 + 1e-12


# ---------------------------------------------------------------- Σ lr·κ


def test_the_published_cifar_recipe_accumulates_a_quarter():
    """METHOD.md: ~20k steps at lr up to 0.256 (cosine, 5 warmup epochs), κ = 1e-4 → about 0.25."""
    from rewa.theory import decay_budget, weight_decay_for

    steps, warmup = 100 * 196, 5 * 196
    total = decay_budget(0.256, steps, warmup) * 1e-4
    assert total == pytest.approx(0.256 * (warmup / 2 + (steps - warmup) / 2) * 1e-4, rel=1e-3)
    assert 0.24 < total < 0.26
    # the same sum on a short run needs a far larger decay
    short = weight_decay_for(total, 0.1, 4 * 352)
    assert short == pytest.approx(total / decay_budget(0.1, 4 * 352))
    assert 30 < short / 1e-4 < 60


def test_the_budget_is_the_decay_rewa_applies_when_the_gradient_is_silent():
    """With g = 0 and no momentum, ReWA-SGD multiplies y by (1 − lr_t κ) each step: over the
    run y shrinks by Π(1 − lr_t κ) ≈ exp(−Σ lr_t κ), the sum decay_budget gives."""
    import torch

    from rewa import ReWA
    from rewa.theory import decay_budget, lr_factor, weight_decay_for

    steps, warmup, lr = 200, 20, 0.5
    kappa = weight_decay_for(0.3, lr, steps, warmup)
    p = torch.nn.Parameter(torch.tensor([0.7], dtype=torch.float64))
    opt = ReWA([p], lr=lr, K=3, M=2, weight_decay=kappa, momentum=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_factor(t, steps, warmup))
    for _ in range(steps):
        p.grad = torch.zeros_like(p)
        opt.step()
        sched.step()
    y0 = 0.7 ** (1 / 3)
    assert float(opt.state[p]["y"]) == pytest.approx(y0 * math.exp(-0.3), rel=2e-3)
    assert decay_budget(lr, steps, warmup) * kappa == pytest.approx(0.3)
    with pytest.raises(ValueError, match="no learning rate"):
        weight_decay_for(0.3, 0.0, steps)
