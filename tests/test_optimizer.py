"""ReWA against its definition (METHOD.md, Algorithms 1 and 2) and torch.optim's conventions."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import rewa
from rewa import ReWA
from rewa.optim._functional import signed_pow_into

F64 = torch.float64


def make_params(dtype=F64, seed=0, shapes=((4, 3), (5,))):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=dtype) for s in shapes]


def quadratic_grads(params, seed=1):
    """g = A x − b per tensor: a gradient that depends on the current x."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in params:
        a = torch.rand(p.numel(), generator=gen, dtype=F64) + 0.5
        b = torch.randn(p.numel(), generator=gen, dtype=F64)
        out.append((a, b))
    return out


def set_grads(params, coeffs):
    for p, (a, b) in zip(params, coeffs, strict=True):
        p.grad = (a * p.detach().to(F64).flatten() - b).view_as(p).to(p.dtype)


def run(opt_params, opt, coeffs, steps):
    for _ in range(steps):
        set_grads(opt_params, coeffs)
        opt.step()


# ---------------------------------------------------------------- reductions to torch.optim


@pytest.mark.parametrize("foreach", [False, True, None])
@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 1e-2), (0.0, 0.0), (0.5, 0.3)])
def test_k1_m0_is_torch_sgd(foreach, momentum, weight_decay):
    ours, theirs = make_params(), make_params()
    for p in ours + theirs:
        p.requires_grad_()
    coeffs = quadratic_grads(ours)
    a = ReWA(
        ours,
        lr=0.05,
        K=1,
        M=0,
        eps=0,
        weight_decay=weight_decay,
        momentum=momentum,
        foreach=foreach,
    )
    b = torch.optim.SGD(theirs, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    for _ in range(30):
        run(ours, a, coeffs, 1)
        run(theirs, b, coeffs, 1)
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True, None])
@pytest.mark.parametrize("weight_decay,betas", [(1e-2, (0.9, 0.999)), (0.0, (0.5, 0.9))])
def test_k1_m0_is_torch_adamw(foreach, weight_decay, betas):
    ours, theirs = make_params(), make_params()
    for p in ours + theirs:
        p.requires_grad_()
    coeffs = quadratic_grads(ours)
    a = ReWA(
        ours,
        lr=0.01,
        K=1,
        M=0,
        eps=0,
        weight_decay=weight_decay,
        base="adamw",
        betas=betas,
        adam_eps=1e-8,
        foreach=foreach,
    )
    b = torch.optim.AdamW(theirs, lr=0.01, weight_decay=weight_decay, betas=betas, eps=1e-8)
    for _ in range(30):
        run(ours, a, coeffs, 1)
        run(theirs, b, coeffs, 1)
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- float64 reference


def ref_signed_pow(v: float, p: float) -> float:
    return math.copysign(abs(v) ** p, v)


def ref_scale(y: float, K: float, M: float, eps: float) -> float:
    s = abs(y) ** M
    if eps > 0:
        u = K * abs(y) ** (K - 1)
        s = s * u / (u + eps)
    return s


class ReferenceReWA:
    """Algorithms 1 and 2 of METHOD.md, elementwise, in plain Python floats."""

    def __init__(
        self, x, *, lr, K, M, eps, wd, mu=0.9, base="sgd", betas=(0.9, 0.999), adam_eps=1e-8
    ):
        self.K, self.M, self.eps, self.wd, self.mu, self.lr = K, M, eps, wd, mu, lr
        self.base, self.betas, self.adam_eps = base, betas, adam_eps
        self.y = [ref_signed_pow(v, 1.0 / K) for v in x]
        self.b = [0.0] * len(x)
        self.m = [0.0] * len(x)
        self.v = [0.0] * len(x)
        self.t = 0

    @property
    def x(self):
        return [ref_signed_pow(y, self.K) for y in self.y]

    def step(self, g):
        self.t += 1
        b1, b2 = self.betas
        for i, gi in enumerate(g):
            y = self.y[i]
            s = ref_scale(y, self.K, self.M, self.eps)
            if self.base == "sgd":
                d = s * gi + self.wd * y
                self.b[i] = self.mu * self.b[i] + d
                self.y[i] = y - self.lr * self.b[i]
            else:
                gh = s * gi
                y = y * (1 - self.lr * self.wd)
                self.m[i] = b1 * self.m[i] + (1 - b1) * gh
                self.v[i] = b2 * self.v[i] + (1 - b2) * gh * gh
                mhat = self.m[i] / (1 - b1**self.t)
                vhat = self.v[i] / (1 - b2**self.t)
                self.y[i] = y - self.lr * mhat / (math.sqrt(vhat) + self.adam_eps)


KME = [
    (9, 2, 0.0),
    (3, 2, 1e-3),
    (2.25, 1.25, 0.0),
    (2.25, 1.25, 1e-2),
    (5, 3, 0.0),
    (4, 1, 1e-4),
    (1, 0, 0.0),
    (7, 0.5, 0.0),
]


@pytest.mark.parametrize("foreach", [False, True, None])
@pytest.mark.parametrize("base", ["sgd", "adamw"])
@pytest.mark.parametrize("K,M,eps", KME)
def test_matches_float64_reference(K, M, eps, base, foreach):
    x0 = make_params(shapes=((7,),))[0]
    x0[3] = 0.0
    p = x0.clone().requires_grad_()
    a, b = torch.linspace(0.5, 1.5, 7, dtype=F64), torch.linspace(-1, 1, 7, dtype=F64)
    lr = 0.02 if base == "sgd" else 0.01
    opt = ReWA(
        [p], lr=lr, K=K, M=M, eps=eps, weight_decay=0.05, momentum=0.9, base=base, foreach=foreach
    )
    ref = ReferenceReWA(x0.tolist(), lr=lr, K=K, M=M, eps=eps, wd=0.05, base=base)
    for _ in range(50):
        g = a * p.detach() - b
        p.grad = g.clone()
        opt.step()
        ref.step((a * torch.tensor(ref.x, dtype=F64) - b).tolist())
    torch.testing.assert_close(p.detach(), torch.tensor(ref.x, dtype=F64), rtol=1e-10, atol=1e-12)
    y = opt.state[p].get("y", p.detach())  # K = 1 keeps no master copy: y is x
    torch.testing.assert_close(y, torch.tensor(ref.y, dtype=F64), rtol=1e-10, atol=1e-12)


def test_plain_reparameterization_when_m_is_k_minus_1():
    """M = K−1, ε = 0: SGD on y for f(y^K) + (κ/2)y² with the loss gradient divided by K."""
    K, wd, lr = 3.0, 0.1, 0.05
    x = torch.tensor([0.8, -0.5, 1.3], dtype=F64, requires_grad=True)
    y = (x.detach().abs() ** (1 / K) * x.detach().sign()).requires_grad_()
    opt = ReWA([x], lr=lr, K=K, M=K - 1, weight_decay=wd, momentum=0.0)
    target = torch.tensor([0.2, 0.4, -1.0], dtype=F64)
    for _ in range(20):
        x.grad = None
        (0.5 * (x - target).pow(2).sum()).backward()
        opt.step()
        yk = y.sign() * y.abs() ** K
        (0.5 * (yk - target).pow(2).sum() / K).backward()
        with torch.no_grad():
            y -= lr * (y.grad + wd * y)
            y.grad = None
    torch.testing.assert_close(
        x.detach(), y.detach().sign() * y.detach().abs() ** K, rtol=1e-12, atol=1e-14
    )


# ---------------------------------------------------------------- implicit lp


@pytest.mark.parametrize("K,M", [(9, 2), (3, 2), (2.25, 1.25), (5, 1)])
def test_lp_fixed_point(K, M):
    """f = ½(x − a)², no momentum: converges to the nonzero ℓp stationary point of rewa.theory."""
    a, wd = 1.0, 0.05
    x = torch.tensor([a], dtype=F64, requires_grad=True)
    opt = ReWA([x], lr=0.05, K=K, M=M, weight_decay=wd, momentum=0.0)
    for _ in range(20000):
        x.grad = x.detach() - a
        opt.step()
    p = rewa.theory.lp_exponent(K, M)
    expected = rewa.theory.lp_stationary_point(a, rewa.theory.lp_lambda(wd, K, M), p)
    assert expected > 0.5
    assert abs(float(x.detach()) - expected) < 1e-10


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("foreach", [False, True, None])
@pytest.mark.parametrize("base", ["sgd", "adamw"])
@pytest.mark.parametrize("M,eps", [(2.0, 0.0), (0.5, 0.0), (0.0, 1e-3)])
def test_exact_zeros_stay_zero(M, eps, base, foreach):
    torch.manual_seed(0)
    p = torch.randn(50, requires_grad=True)
    with torch.no_grad():
        p[::3] = 0.0
    zero = p.detach() == 0
    opt = ReWA([p], lr=0.1, K=3, M=M, eps=eps, weight_decay=1e-2, base=base, foreach=foreach)
    for _ in range(20):
        p.grad = torch.randn(50) * 10
        opt.step()
    assert (p.detach()[zero] == 0).all()
    assert (p.detach()[~zero] != 0).any()


@pytest.mark.parametrize("foreach", [False, True, None])
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_lr_zero_is_bit_exact_noop(base, foreach):
    torch.manual_seed(0)
    p = torch.randn(100, requires_grad=True)
    opt = ReWA([p], lr=0.0, K=9, M=2, weight_decay=0.1, base=base, foreach=foreach)
    before = p.detach().clone()
    for _ in range(3):
        p.grad = torch.randn(100)
        opt.step()
    assert torch.equal(p.detach(), before)
    # and after some real steps, too
    opt.param_groups[0]["lr"] = 0.05
    for _ in range(3):
        p.grad = torch.randn(100)
        opt.step()
    opt.param_groups[0]["lr"] = 0.0
    before = p.detach().clone()
    p.grad = torch.randn(100)
    opt.step()
    assert torch.equal(p.detach(), before)


def test_zero_grad_zero_decay_is_bit_exact_after_first_step():
    torch.manual_seed(0)
    p = torch.randn(100, requires_grad=True)
    opt = ReWA([p], lr=0.1, K=9, M=2, weight_decay=0.0, momentum=0.0)
    p.grad = torch.randn(100)
    opt.step()
    before = p.detach().clone()
    p.grad = torch.zeros(100)
    opt.step()
    assert torch.equal(p.detach(), before)


def test_x_is_exactly_the_kth_power_of_state_y():
    torch.manual_seed(0)
    p = torch.randn(64, requires_grad=True)
    opt = ReWA([p], lr=0.05, K=9, M=2, weight_decay=1e-2)
    for _ in range(5):
        p.grad = torch.randn(64)
        opt.step()
    y = opt.state[p]["y"]
    assert y.dtype == torch.float32
    x = torch.empty_like(y)
    signed_pow_into([x], [y], 9.0)
    assert torch.equal(p.detach(), x)  # x is exactly the library's power of the stored y
    torch.testing.assert_close(p.detach(), y.abs().pow(9.0).copysign(y), rtol=1e-6, atol=0)


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_foreach_equals_single_tensor(base):
    torch.manual_seed(0)
    shapes = [(16, 8, 3, 3), (10,), (32, 16), (1,)]
    p1 = [torch.randn(*s, requires_grad=True) for s in shapes]
    p2 = [p.detach().clone().requires_grad_() for p in p1]
    kw = dict(lr=0.03, K=2.25, M=1.25, eps=1e-4, weight_decay=1e-2, base=base)
    o1, o2 = ReWA(p1, foreach=False, **kw), ReWA(p2, foreach=True, **kw)
    for _ in range(20):
        grads = [torch.randn(*s) for s in shapes]
        for p, q, g in zip(p1, p2, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    for p, q in zip(p1, p2, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_state_dict_round_trip_continues_identically(base):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    data = torch.randn(32, 6), torch.randn(32, 2)

    def train(m, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(m(data[0]), data[1]).backward()
            opt.step()

    opt = ReWA(rewa.param_groups(model), lr=0.05, base=base, weight_decay=1e-2)
    train(model, opt, 5)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    train(model, opt, 5)

    clone = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    clone.load_state_dict(saved_model)
    opt2 = ReWA(rewa.param_groups(clone), lr=0.05, base=base, weight_decay=1e-2)
    opt2.load_state_dict(saved_opt)
    train(clone, opt2, 5)
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p, q)


def test_bfloat16_params_keep_float32_state_through_state_dict():
    p = torch.randn(10, dtype=torch.bfloat16, requires_grad=True)
    opt = ReWA([p], lr=0.01, K=3, M=2)
    p.grad = torch.randn(10, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[p]["y"].dtype == torch.float32
    assert opt.state[p]["momentum_buffer"].dtype == torch.float32
    y = opt.state[p]["y"].clone()
    opt2 = ReWA([p], lr=0.01, K=3, M=2)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[p]["y"].dtype == torch.float32
    assert torch.equal(opt2.state[p]["y"], y)


def test_closure_returns_loss():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = ReWA([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == 5.0
    assert (p.detach().abs() < torch.tensor([1.0, 2.0])).all()


def test_params_without_grad_are_skipped():
    p, q = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = ReWA([p, q], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(q.detach(), torch.ones(3))
    assert len(opt.state[q]) == 0


def test_external_write_resyncs_y():
    """Pruning a parameter in place must not be undone by the stale y in the state."""
    torch.manual_seed(0)
    p = torch.randn(100, requires_grad=True)
    opt = ReWA([p], lr=0.01, K=3, M=2, weight_decay=0.0, momentum=0.0)
    p.grad = torch.randn(100)
    opt.step()
    with torch.no_grad():
        p[:50] = 0.0
    p.grad = torch.randn(100)
    opt.step()
    assert (p.detach()[:50] == 0).all()


def test_scheduler_drives_group_lr():
    p = torch.ones(2, requires_grad=True)
    opt = ReWA([p], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    p.grad = torch.ones(2)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(K=0.5), "K"),
        (dict(M=-1.0), "M"),
        (dict(lr=-0.1), "lr"),
        (dict(eps=-1e-3), "eps"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.1), "momentum"),
        (dict(base="adam"), "base"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(K=float("nan")), "K"),
    ],
)
def test_invalid_hyperparameters_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name) as err:
        ReWA([torch.ones(2, requires_grad=True)], **kwargs)
    assert "valid" in str(err.value) or "must be" in str(err.value)


def test_invalid_group_hyperparameter_raises():
    opt = ReWA([torch.ones(2, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="K"):
        opt.add_param_group({"params": [torch.ones(2, requires_grad=True)], "K": 0.0})


# ---------------------------------------------------------------- param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_param_groups_split_weights_from_bias_and_norm():
    net = Net()
    groups = rewa.param_groups(net, weight_decay=3e-4, other_weight_decay=0.0, M=1.5)
    sparse, plain = groups
    assert [id(p) for p in sparse["params"]] == [id(net.conv.weight), id(net.fc.weight)]
    assert sparse["weight_decay"] == 3e-4 and sparse["M"] == 1.5
    assert {id(p) for p in plain["params"]} == {
        id(net.conv.bias),
        id(net.bn.weight),
        id(net.bn.bias),
        id(net.fc.bias),
    }
    assert (plain["K"], plain["M"], plain["eps"], plain["weight_decay"]) == (1.0, 0.0, 0.0, 0.0)
    all_groups = rewa.param_groups(net, all_params=True)
    assert len(all_groups) == 1 and len(all_groups[0]["params"]) == 6


def test_plain_group_moves_zero_initialized_bias():
    net = Net()
    nn.init.zeros_(net.fc.bias)
    opt = ReWA(rewa.param_groups(net), lr=0.1)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    assert (net.fc.bias != 0).all()


def test_param_groups_on_ddp_wrapped_model():
    class Wrapper(nn.Module):  # the attribute layout of DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

    net = Net()
    groups = rewa.param_groups(Wrapper(net))
    assert [id(p) for p in groups[0]["params"]] == [id(net.conv.weight), id(net.fc.weight)]
