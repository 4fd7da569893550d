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
