"""The baselines of METHOD.md against their definitions: ℓ1/ℓp penalties, Spred, STR, GMP."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rewa import ReWA
from rewa.baselines.gmp import GradualPruning, MagnitudePruner, cubic_sparsity
from rewa.baselines.penalties import StabilityMonitor, l1_penalty, lp_penalty
from rewa.baselines.spred import apply_spred, fold_spred, spred_factors
from rewa.baselines.str_ import apply_str, fold_str, str_parameters, str_thresholds
from rewa.sparsity import sparsifiable_parameters, sparsity_report

F64 = torch.float64


def small_net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)
    ).to(dtype)


def inputs(dtype=torch.float32):
    return torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)


# ---------------------------------------------------------------- penalties


def test_l1_penalty_value_and_subgradient():
    x = torch.tensor([-2.0, 0.0, 0.5], dtype=F64, requires_grad=True)
    y = torch.tensor([[3.0]], dtype=F64, requires_grad=True)
    value = l1_penalty([x, y], 0.1)
    value.backward()
    assert float(value.detach()) == pytest.approx(0.1 * 5.5)
    assert x.grad.tolist() == [-0.1, 0.0, 0.1]
    assert y.grad.tolist() == [[0.1]]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=10),
    st.floats(0.1, 1.5),
    st.sampled_from([0.0, 1e-8, 1e-3, 0.1]),
)
def test_lp_penalty_gradient_is_p_times_power_with_delta(values, p, delta):
    x = torch.tensor(values, dtype=F64, requires_grad=True)
    lam = 0.7
    value = lp_penalty([x], lam, p, delta)
    value.backward()
    expected_value = lam * sum((abs(v) + delta) ** p for v in values)
    assert float(value.detach()) == pytest.approx(expected_value, rel=1e-12, abs=1e-300)
    for v, g in zip(values, x.grad.tolist(), strict=True):
        expected = 0.0 if v == 0 else lam * p * (abs(v) + delta) ** (p - 1) * math.copysign(1, v)
        assert g == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_raw_lp_gradient_is_zero_at_zero_and_huge_near_it():
    x = torch.tensor([0.0, 1e-20, -1e-20], dtype=F64, requires_grad=True)
    lp_penalty([x], 1.0, 0.5, 0.0).backward()
    assert x.grad[0] == 0.0  # sign(0) = 0, not 0·inf = NaN
    assert x.grad[1] == pytest.approx(0.5e10) and x.grad[2] == pytest.approx(-0.5e10)


def test_lp_penalty_rejects_bad_arguments():
    with pytest.raises(ValueError, match="p > 0"):
        lp_penalty([torch.ones(2)], 0.1, 0.0)
    with pytest.raises(ValueError, match="delta"):
        lp_penalty([torch.ones(2)], 0.1, 0.5, delta=-1.0)


def test_stability_monitor_counts_updates_nonfinite_and_spikes():
    w = torch.zeros(3)
    mon = StabilityMonitor([w], spike_factor=10.0, warmup=2)
    for step, (update, loss) in enumerate([(0.1, 1.0), (0.2, 1.0), (0.05, 1.0), (3.0, 50.0)]):
        mon.before_step()
        w[step % 3] += update
        mon.after_step(loss)
    r = mon.report
    assert r.steps == 4 and r.max_update == pytest.approx(3.0)
    assert r.max_update_near_zero == pytest.approx(0.2)  # the 3.0 moved a weight already at 0.1
    assert r.loss_spikes == 1 and r.nonfinite_steps == 0 and not mon.diverged
    mon.before_step()
    w[0] = float("nan")
    mon.after_step(float("inf"))
    assert (r.nonfinite_steps, r.nonfinite_values, r.nonfinite_losses) == (1, 1, 1)
    assert mon.diverged
    assert r.max_update == pytest.approx(3.0)  # NaN entries are not counted as updates


def scalar_run(make_opt, penalty, a, x0, steps):
    """Train ½(x − a)² [+ penalty(x)] on a scalar, monitoring every step."""
    x = torch.tensor([x0], requires_grad=True)
    opt = make_opt([x])
    mon = StabilityMonitor([x])
    for _ in range(steps):
        loss = 0.5 * (x - a).pow(2).sum()
        objective = loss if penalty is None else loss + penalty(x)
        opt.zero_grad()
        objective.backward()
        mon.before_step()
        opt.step()
        mon.after_step(float(loss.detach()))
    return x.detach(), mon.report


def test_raw_lp_oscillates_near_zero_where_rewa_is_bounded():
    """The instability of METHOD.md: with δ = 0 the ℓp gradient kicks a weight near 0 far away;
    ReWA at the same p = (K + 1 − M)/K and λ = κ/p moves it smoothly to an exact 0."""
    a, K, M, kappa, lr = 0.05, 3.0, 2.0, 0.2, 0.05  # p = 2/3; the ℓp minimizer is 0
    p, lam = (K + 1 - M) / K, kappa / ((K + 1 - M) / K)
    x_lp, lp_report = scalar_run(
        lambda ps: torch.optim.SGD(ps, lr=lr),
        lambda x: lp_penalty([x], lam, p, 0.0),
        a,
        1e-3,
        400,
    )
    x_rw, rw_report = scalar_run(  # a 10x larger learning rate, and still bounded
        lambda ps: ReWA(ps, lr=10 * lr, K=K, M=M, weight_decay=kappa, momentum=0.0),
        None,
        a,
        1e-3,
        400,
    )
    assert lp_report.max_update > 1e3 * rw_report.max_update
    assert lp_report.max_update_near_zero > 1e3 * rw_report.max_update_near_zero
    assert float(x_lp.abs()) > 1e-3  # still bouncing around 0 after 400 steps
    assert float(x_rw) == 0.0 and rw_report.max_update < 1e-3


# ---------------------------------------------------------------- Spred


def test_spred_factors_are_sqrt_init_and_forward_is_unchanged():
    net = small_net(F64)
    before = [w.detach().clone() for _, w in sparsifiable_parameters(net)]
    x = inputs(F64)
    expected = net(x)
    factors = apply_spred(net)
    assert len(factors) == 4 and sparsifiable_parameters(net) == []
    for (u, v), w in zip(zip(factors[::2], factors[1::2], strict=True), before, strict=True):
        torch.testing.assert_close(u, w.sign() * w.abs().sqrt(), rtol=0, atol=0)
        torch.testing.assert_close(v, w.abs().sqrt(), rtol=0, atol=0)
    torch.testing.assert_close(net(x), expected, rtol=1e-14, atol=1e-14)
    assert spred_factors(net) == factors
    with pytest.raises(ValueError, match="already"):
        apply_spred(net)


def test_spred_fold_gives_plain_weights_equal_to_u_times_v():
    net = small_net()
    apply_spred(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(inputs()).pow(2).mean().backward()
        opt.step()
    u, v = spred_factors(net)[2:]
    product = (u * v).detach().clone()
    out = net(inputs()).detach()
    fold_spred(net)
    linear = net[3]
    assert type(linear) is nn.Linear and isinstance(linear.weight, nn.Parameter)
    assert torch.equal(linear.weight.detach(), product)
    assert torch.equal(net(inputs()), out)
    assert len(sparsifiable_parameters(net)) == 2


def test_spred_with_weight_decay_solves_the_lasso_on_a_scalar():
    """min ½(uv − a)² + (κ/2)(u² + v²) has uv = soft(a, κ): ℓ1 with λ = κ (METHOD.md)."""
    kappa = 0.3
    for a, expected in [(2.0, 1.7), (-1.0, -0.7)]:
        lin = nn.Linear(1, 1, bias=False).double()
        with torch.no_grad():
            lin.weight.fill_(math.copysign(0.5, a))
        apply_spred(lin)
        opt = torch.optim.SGD(lin.parameters(), lr=0.2, weight_decay=kappa)
        for _ in range(400):
            opt.zero_grad()
            (0.5 * (lin.weight - a) ** 2).sum().backward()
            opt.step()
        assert float(lin.weight.detach()) == pytest.approx(expected, abs=1e-10)


def test_spred_independent_init_can_change_sign_where_sqrt_init_cannot():
    """min ½(uv + 1)² + (κ/2)(u² + v²) from w = +0.5: the sqrt init keeps u·v >= 0 (it stalls at
    0), the independent init (v drawn apart from u) reaches the ℓ1 solution −0.7."""
    kappa, a = 0.3, -1.0
    ends = {}
    for init in ("sqrt", "independent"):
        torch.manual_seed(0)
        lin = nn.Linear(1, 1, bias=False).double()
        with torch.no_grad():
            lin.weight.fill_(0.5)
        apply_spred(lin, init)
        u, v = spred_factors(lin)
        if init == "independent":
            u0, v0 = float(u.detach()), float(v.detach())
            assert u0 == 0.5 and v0 != u0 and -1 <= v0 <= 1
        opt = torch.optim.SGD(lin.parameters(), lr=0.2, weight_decay=kappa)
        for _ in range(600):
            opt.zero_grad()
            (0.5 * (lin.weight - a) ** 2).sum().backward()
            opt.step()
        ends[init] = float(lin.weight.detach())
    assert ends["sqrt"] >= 0 and ends["sqrt"] == pytest.approx(0.0, abs=1e-3)
    assert ends["independent"] == pytest.approx(-0.7, abs=1e-8)
    with pytest.raises(ValueError, match="init"):
        apply_spred(small_net(), "orthogonal")


# ---------------------------------------------------------------- STR


def test_str_forward_is_the_soft_threshold_of_the_hidden_weight():
    net = small_net(F64)
    x = inputs(F64)
    expected = net(x)
    thresholds = apply_str(net, s_init=-2.0)
    assert len(thresholds) == 2 and all(float(s.detach()) == -2.0 for s in thresholds)
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)  # init preserves the model
    hidden, ss = str_parameters(net)
    with torch.no_grad():
        hidden[1].copy_(torch.linspace(-1, 1, hidden[1].numel(), dtype=F64).view_as(hidden[1]))
        ss[1].fill_(0.0)  # threshold sigmoid(0) = 0.5
    w = hidden[1].detach()
    torch.testing.assert_close(net[3].weight, w.sign() * (w.abs() - 0.5).clamp_min(0))
    assert str_thresholds(net)["3"] == 0.5


def test_str_threshold_gradient_matches_its_definition():
    lin = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.9, -0.1, 0.5, -0.7]], dtype=F64))
    (s,) = apply_str(lin, s_init=-1.0)
    w = lin.parametrizations.weight.original.detach().clone()
    g = torch.tensor([[1.0, 2.0, -3.0, 0.5]], dtype=F64)
    (lin.weight * g).sum().backward()
    t = torch.sigmoid(torch.tensor(-1.0, dtype=F64))
    alive = (w.abs() > t).to(F64)
    # d/ds Σ g·sign(w)(|w| − σ(s))₊ = −σ'(s)·Σ g·sign(w)·[|w| > σ(s)]
    expected = -(t * (1 - t)) * (g * w.sign() * alive).sum()
    assert float(s.grad) == pytest.approx(float(expected), rel=1e-12)


def test_str_fold_writes_exact_zeros():
    net = small_net()
    apply_str(net, s_init=-3.0)  # the hidden weights are the originals shifted out by σ(−3)
    _, thresholds = str_parameters(net)
    with torch.no_grad():
        for s in thresholds:
            s.fill_(-2.0)  # raise the threshold by σ(−2) − σ(−3) ≈ 0.07: small weights die
    effective = net[3].weight.detach().clone()
    fold_str(net)
    assert isinstance(net[3].weight, nn.Parameter) and not hasattr(net[3], "parametrizations")
    assert torch.equal(net[3].weight.detach(), effective)
    assert int((net[3].weight == 0).sum()) > 0


# ---------------------------------------------------------------- GMP


def test_cubic_schedule_values():
    kw = {"target": 0.9, "initial": 0.1, "start": 0.2, "end": 0.8}
    assert cubic_sparsity(0, 100, **kw) == 0.1
    assert cubic_sparsity(19, 100, **kw) == 0.1
    assert cubic_sparsity(20, 100, **kw) == pytest.approx(0.1)
    assert cubic_sparsity(50, 100, **kw) == pytest.approx(0.9 - 0.8 * 0.5**3)
    assert cubic_sparsity(65, 100, **kw) == pytest.approx(0.9 - 0.8 * 0.25**3)
    assert cubic_sparsity(80, 100, **kw) == 0.9
    assert cubic_sparsity(99, 100, **kw) == 0.9
    values = [cubic_sparsity(t, 100, **kw) for t in range(100)]
    assert values == sorted(values)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruner_reaches_the_exact_count_and_masks_only_grow(scope):
    net = small_net()
    pruner = MagnitudePruner(net, scope=scope)
    pruner.prune_to(0.5)
    weights = dict(sparsifiable_parameters(net))
    sizes = {n: w.numel() for n, w in weights.items()}
    if scope == "layer":
        for n, m in pruner.masks.items():
            assert int((~m).sum()) == math.ceil(0.5 * sizes[n])
    else:
        assert sum(int((~m).sum()) for m in pruner.masks.values()) == math.ceil(
            0.5 * sum(sizes.values())
        )
        kept = torch.cat(
            [
                w.detach().abs().flatten()[m.flatten()]
                for w, m in zip(weights.values(), pruner.masks.values(), strict=True)
            ]
        )
        assert float(kept.min()) > 0
    for n, w in weights.items():
        assert torch.equal(w.detach() == 0, ~pruner.masks[n])
    old = {n: m.clone() for n, m in pruner.masks.items()}
    with torch.no_grad():  # pruned weights regrow large: they must stay pruned
        for w in weights.values():
            w.add_(10.0)
    pruner.prune_to(0.7)
    for n, m in pruner.masks.items():
        assert not bool((m & ~old[n]).any())
    assert pruner.mask_sparsity() == pytest.approx(0.7, abs=0.01)


def train_gmp(net, pruning, opt, steps, total, start=0):
    gen = torch.Generator().manual_seed(start)
    for step in range(start, start + steps):
        x = torch.randn(8, 2, 4, 4, generator=gen)
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
        pruning.after_step(step, total)


def test_gmp_follows_the_schedule_and_masks_survive_a_checkpoint():
    total = 40
    kw = {"target": 0.8, "start": 0.1, "end": 0.6, "frequency": 5}
    net = small_net()
    pruning = GradualPruning(net, **kw)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    train_gmp(net, pruning, opt, 20, total)
    assert pruning.pruner.sparsity == pytest.approx(
        cubic_sparsity(19, total, target=0.8, start=0.1, end=0.6)
    )
    checkpoint = copy.deepcopy(
        {"model": net.state_dict(), "opt": opt.state_dict(), "gmp": pruning.state_dict()}
    )
    train_gmp(net, pruning, opt, 20, total, start=20)
    assert pruning.pruner.sparsity == 0.8
    zeros = sum(int((w == 0).sum()) for _, w in sparsifiable_parameters(net))
    assert zeros == math.ceil(0.8 * sum(w.numel() for _, w in sparsifiable_parameters(net)))

    resumed = small_net(seed=5)  # different weights: everything must come from the checkpoint
    pruning2 = GradualPruning(resumed, **kw)
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
    resumed.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    pruning2.load_state_dict(checkpoint["gmp"])
    train_gmp(resumed, pruning2, opt2, 20, total, start=20)
    for (_, a), (_, b) in zip(
        sparsifiable_parameters(net), sparsifiable_parameters(resumed), strict=True
    ):
        assert torch.equal(a, b)
    for n in pruning.pruner.masks:
        assert torch.equal(pruning.pruner.masks[n], pruning2.pruner.masks[n])


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("end", [0.6, 1.0])
def test_gmp_ends_at_least_at_its_target_as_evaluation_counts_it(scope, end):
    """The last step prunes to the target even when the ramp ends with training (end = 1), and
    the count is ceil(S·n), what an evaluation at sparsity S asks for (it was floor: 0.8958 for
    0.9 on a ResNet-20)."""
    net = small_net()
    total = 30
    pruning = GradualPruning(net, target=0.9, start=0.1, end=end, scope=scope)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    train_gmp(net, pruning, opt, total, total)
    named = sparsifiable_parameters(net)
    zeros = sum(int((w == 0).sum()) for _, w in named)
    n = sum(w.numel() for _, w in named)
    assert zeros >= math.ceil(0.9 * n) and zeros / n >= 0.9
    assert sparsity_report(net, ()).sparsity >= 0.9


def test_gmp_zeroes_the_optimizer_state_of_pruned_weights():
    """Momentum of a pruned weight is zeroed with it: one step without the masks' hook must not
    regrow any pruned weight."""
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    pruning = GradualPruning(net, target=0.7, start=0.0, end=0.5, frequency=1, optimizer=opt)
    train_gmp(net, pruning, opt, 10, 10)
    pruned = {n: ~m for n, m in pruning.pruner.masks.items()}
    named = dict(sparsifiable_parameters(net))
    for n, w in named.items():
        assert not opt.state[w]["momentum_buffer"][pruned[n]].any()
    x = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    opt.zero_grad()
    net(x).pow(2).mean().backward()
    for w in named.values():
        w.grad = None  # no new gradient: only momentum could move a weight
    opt.step()
    for n, w in named.items():
        assert not w.detach()[pruned[n]].any()


def test_gmp_automatic_frequency_spreads_about_100_updates_over_the_ramp():
    net = small_net()
    pruning = GradualPruning(net, target=0.9, start=0.1, end=0.6)
    total = 2000
    updates = [s for s in range(total) if pruning.due(s, total) and s < 0.6 * total - 1]
    assert pruning.every(total) == 10
    assert 95 <= len(updates) <= 101
    assert GradualPruning(net, target=0.9, frequency=7).every(total) == 7


def test_gmp_rejects_bad_settings_and_mismatched_masks():
    net = small_net()
    with pytest.raises(ValueError, match="target"):
        GradualPruning(net, target=1.5)
    with pytest.raises(ValueError, match="start"):
        GradualPruning(net, target=0.5, start=0.9, end=0.1)
    pruning = GradualPruning(net, target=0.5)
    with pytest.raises(ValueError, match="differ"):
        pruning.load_state_dict({"masks": {"nope": torch.ones(1, dtype=torch.bool)}, "sparsity": 0})
