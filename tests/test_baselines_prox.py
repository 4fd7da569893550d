"""ProxL1 against its definition: base step, then soft threshold by lr·λ (METHOD.md, ℓ1 prox)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewa.optim.prox import ProxL1, soft_threshold, soft_threshold_

F64 = torch.float64


def soft(a: float, t: float) -> float:
    return math.copysign(max(abs(a) - t, 0.0), a)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20),
    st.floats(0, 1e3, allow_nan=False),
)
def test_soft_threshold_is_the_formula(values, t):
    x = torch.tensor(values, dtype=F64)
    expected = torch.tensor([soft(v, t) for v in values], dtype=F64)
    assert torch.equal(soft_threshold(x, t), expected)
    assert torch.equal(soft_threshold_(x.clone(), t), expected)


def test_soft_threshold_gives_exact_zeros_and_keeps_signs():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5])
    out = soft_threshold_(x, 0.5)
    assert out.tolist() == [-1.5, 0.0, 0.0, 0.0, 1.0]
    assert out is x


def grads_of_quadratic(params, a, b):
    for p, ai, bi in zip(params, a, b, strict=True):
        p.grad = ai * p.detach() - bi


def problem(seed=0, shapes=((3, 4), (5,))):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(*s, generator=gen, dtype=F64) for s in shapes]
    a = [torch.rand(*s, generator=gen, dtype=F64) + 0.5 for s in shapes]
    b = [torch.randn(*s, generator=gen, dtype=F64) for s in shapes]
    return params, a, b


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_l1_zero_is_torch_optimizer_step_for_step(base):
    params, a, b = problem()
    ours = [p.clone().requires_grad_() for p in params]
    ref = [p.clone().requires_grad_() for p in params]
    if base == "sgd":
        opt = ProxL1(ours, lr=0.05, l1=0.0, momentum=0.9, weight_decay=1e-2)
        torch_opt = torch.optim.SGD(ref, lr=0.05, momentum=0.9, weight_decay=1e-2)
    else:
        opt = ProxL1(ours, lr=0.05, l1=0.0, base="adamw", weight_decay=1e-2)
        torch_opt = torch.optim.AdamW(ref, lr=0.05, weight_decay=1e-2)
    for _ in range(30):
        grads_of_quadratic(ours, a, b)
        grads_of_quadratic(ref, a, b)
        opt.step()
        torch_opt.step()
    for p, q in zip(ours, ref, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_sgd_prox_step_is_base_step_then_soft_threshold():
    """Reference loop: b = μb + (g + wd·x); x = soft(x − lr·b, lr·λ/(1 − μ))."""
    params, a, b = problem(seed=1)
    lr, mu, wd, lam = 0.1, 0.8, 0.01, 0.3
    ours = [p.clone() for p in params]
    opt = ProxL1(ours, lr=lr, l1=lam, momentum=mu, weight_decay=wd)
    xs = [p.clone() for p in params]
    bufs = [None] * len(xs)
    for _ in range(25):
        grads_of_quadratic(ours, a, b)
        opt.step()
        for i, x in enumerate(xs):
            d = a[i] * x - b[i] + wd * x
            bufs[i] = d.clone() if bufs[i] is None else mu * bufs[i] + d
            xs[i] = soft_threshold(x - lr * bufs[i], lr * lam / (1 - mu))
    for p, x in zip(ours, xs, strict=True):
        torch.testing.assert_close(p, x, rtol=1e-12, atol=1e-14)
    assert any(int((p == 0).sum()) > 0 for p in ours)


@pytest.mark.parametrize("precondition", [True, False])
def test_adamw_prox_step_matches_reference(precondition):
    params, a, b = problem(seed=2)
    lr, wd, lam, (b1, b2), eps = 0.05, 0.01, 0.2, (0.9, 0.99), 1e-8
    ours = [p.clone() for p in params]
    opt = ProxL1(
        ours,
        lr=lr,
        l1=lam,
        base="adamw",
        weight_decay=wd,
        betas=(b1, b2),
        precondition=precondition,
    )
    xs = [p.clone() for p in params]
    ms = [torch.zeros_like(x) for x in xs]
    vs = [torch.zeros_like(x) for x in xs]
    for t in range(1, 21):
        grads_of_quadratic(ours, a, b)
        opt.step()
        for i, x in enumerate(xs):
            g = a[i] * x - b[i]
            x = x * (1 - lr * wd)
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            denom = (vs[i] / (1 - b2**t)).sqrt() + eps
            x = x - lr * (ms[i] / (1 - b1**t)) / denom
            xs[i] = soft_threshold(x, lr * lam / denom if precondition else lr * lam)
    for p, x in zip(ours, xs, strict=True):
        torch.testing.assert_close(p, x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("a", [2.0, -1.3, 0.5, 0.2, -0.1, 0.0])
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_scalar_quadratic_converges_to_soft_threshold(a, base):
    """min ½(x − a)² + λ|x| has the solution soft(a, λ); the prox iteration must reach it."""
    lam = 0.3
    x = torch.tensor([1.0], dtype=F64)
    if base == "sgd":
        opt = ProxL1([x], lr=0.1, l1=lam, momentum=0.5)
        sched = None
    else:
        opt = ProxL1([x], lr=0.05, l1=lam, base="adamw")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + s / 50.0))
    for _ in range(1500 if base == "adamw" else 600):
        x.grad = x.detach() - a
        opt.step()
        if sched is not None:
            sched.step()
    expected = soft(a, lam)
    tol = 1e-12 if base == "sgd" else 2e-3  # Adam's iterates settle within ~lr of the solution
    assert abs(float(x) - expected) <= tol
    if expected == 0.0 and base == "sgd":
        assert float(x) == 0.0


def test_state_dict_round_trip_continues_identically():
    params, a, b = problem(seed=3)
    one = [p.clone() for p in params]
    opt = ProxL1(one, lr=0.05, l1=0.1, base="adamw")
    for _ in range(5):
        grads_of_quadratic(one, a, b)
        opt.step()
    two = [p.clone() for p in one]
    opt2 = ProxL1(two, lr=0.05, l1=0.1, base="adamw")
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(5):
        for ps, o in ((one, opt), (two, opt2)):
            grads_of_quadratic(ps, a, b)
            o.step()
    for p, q in zip(one, two, strict=True):
        assert torch.equal(p, q)


def test_closure_and_param_groups():
    x = torch.tensor([1.0, -1.0], requires_grad=True)
    y = torch.tensor([1.0], requires_grad=True)
    opt = ProxL1([{"params": [x], "l1": 0.5}, {"params": [y], "l1": 0.0}], lr=0.1, momentum=0.0)

    def closure():
        opt.zero_grad()
        loss = (x**2).sum() * 0 + (y**2).sum() * 0
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 0.0
    assert x.tolist() == pytest.approx([0.95, -0.95])  # thresholded by lr·λ = 0.05
    assert y.tolist() == [1.0]  # λ = 0: untouched by a zero gradient


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": -1.0}, "lr"),
        ({"l1": -0.1}, "l1"),
        ({"momentum": 1.0}, "momentum"),
        ({"base": "rmsprop"}, "base"),
        ({"weight_decay": float("inf")}, "weight_decay"),
        ({"betas": (0.9, 1.0)}, "betas"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ProxL1([torch.zeros(2, requires_grad=True)], **{"lr": 0.1, **kwargs})
