"""The building blocks of the fast ReWA update, against their definitions (float64)."""

from __future__ import annotations

import pytest
import torch

from rewa import ReWA
from rewa.optim import _functional as F
from rewa.optim.rewa import CPU_GROUP_BYTES

F64 = torch.float64


def values():
    return [torch.tensor([0.0, -0.0, 1e-30, -2.5, 0.7, -1.3, 3.0], dtype=F64), torch.randn(9, 4)]


@pytest.mark.parametrize("p", [0.0, 1.0, 2.0, 3.0, 4.0, 9.0, 13.0, 2.25, 0.5])
@pytest.mark.parametrize("into", [False, True])
def test_abs_pow_is_abs_to_the_p(p, into):
    ts = values()
    out = [torch.full_like(t, float("nan")) for t in ts] if into else None
    got = F.abs_pow(ts, p, out)
    assert got is out or out is None
    for g, t in zip(got, ts, strict=True):
        torch.testing.assert_close(g, t.abs().to(F64).pow(p).to(t.dtype), rtol=1e-6, atol=0)


@pytest.mark.parametrize("K", [1.0, 2.0, 3.0, 9.0, 13.0, 2.25])
def test_signed_pow_into_is_sign_times_power(K):
    """x = sign(y)|y|^K to a few ulps of the float64 power (integer K: multiplications)."""
    ys = values()
    out = [torch.empty_like(y) for y in ys]
    F.signed_pow_into(out, ys, K)
    for o, y in zip(out, ys, strict=True):
        exact = y.to(torch.float64).abs().pow(K).copysign(y.to(torch.float64))
        torch.testing.assert_close(
            o.to(torch.float64), exact, rtol=8 * torch.finfo(y.dtype).eps, atol=0
        )


def test_signed_pow_into_is_a_fixed_function_of_y():
    """The same y gives bit-for-bit the same x (the lr = 0 contract)."""
    ys = values()
    a, b = [torch.empty_like(y) for y in ys], [torch.empty_like(y) for y in ys]
    F.signed_pow_into(a, ys, 9.0)
    F.signed_pow_into(b, [y.clone() for y in ys], 9.0)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_signed_pow_into_a_lower_precision_parameter():
    ys = [torch.randn(50)]
    out = [torch.empty(50, dtype=torch.bfloat16)]
    F.signed_pow_into(out, ys, 3.0)
    assert torch.equal(out[0], (ys[0] * ys[0] * ys[0]).to(torch.bfloat16))


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_single_tensor_path_equals_foreach_bit_for_bit_on_cpu(base):
    """Both eager paths run the same ops in the same order on the same kernels."""
    torch.manual_seed(0)
    shapes = [(16, 8, 3, 3), (300,), (32, 16)]
    p1 = [torch.randn(*s, requires_grad=True) for s in shapes]
    p2 = [p.detach().clone().requires_grad_() for p in p1]
    kw = dict(lr=0.03, K=9.0, M=2.0, weight_decay=1e-2, base=base)
    o1, o2 = ReWA(p1, foreach=False, **kw), ReWA(p2, foreach=True, **kw)
    for _ in range(5):
        for p, q in zip(p1, p2, strict=True):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
        o1.step()
        o2.step()
    for p, q in zip(p1, p2, strict=True):
        assert torch.equal(p, q)
        assert torch.equal(o1.state[p]["y"], o2.state[q]["y"])


def test_cpu_default_steps_consecutive_tensors_in_cache_sized_groups():
    quarter = CPU_GROUP_BYTES // 4 // 4  # float32 elements in a quarter of a group
    a, b, c, d = (torch.ones(quarter, requires_grad=True) for _ in range(4))
    small, huge = torch.ones(3, requires_grad=True), torch.ones(2 * 4 * quarter + 1)
    params = [small, a, b, c, huge.requires_grad_(), d]
    opt = ReWA(params, lr=0.1)
    groups = opt._eager_groups(opt.param_groups[0], params)
    assert groups == [[small, a, b, c], [huge], [d]]
    explicit = ReWA(params, lr=0.1, foreach=False)
    assert explicit._eager_groups(explicit.param_groups[0], params) == [[p] for p in params]
    together = ReWA(params, lr=0.1, foreach=True)
    assert together._eager_groups(together.param_groups[0], params) == [params]


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_cpu_default_path_equals_foreach_and_one_by_one_bit_for_bit(base):
    torch.manual_seed(1)
    # tensors grouped together, one larger than a group, and one after it
    shapes = [(64, 32, 3, 3), (64,), (20, 30), (CPU_GROUP_BYTES // 4 + 1,), (9000,)]
    p1 = [torch.randn(*s, requires_grad=True) for s in shapes]
    p2 = [p.detach().clone().requires_grad_() for p in p1]
    p3 = [p.detach().clone().requires_grad_() for p in p1]
    kw = dict(lr=0.03, K=3.0, M=2.0, eps=1e-4, weight_decay=1e-2, base=base)
    # fused=False: the default grouping of the eager step (the AdamW base's default is fused)
    opts = [
        ReWA(p1, fused=False, **kw),
        ReWA(p2, foreach=True, **kw),
        ReWA(p3, foreach=False, **kw),
    ]
    assert len(opts[0]._eager_groups(opts[0].param_groups[0], p1)) == 3
    for _ in range(3):
        for p, q, r in zip(p1, p2, p3, strict=True):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
            r.grad = p.grad.clone()
        for opt in opts:
            opt.step()
    for p, q, r in zip(p1, p2, p3, strict=True):
        assert torch.equal(p, q) and torch.equal(p, r)
        assert torch.equal(opts[0].state[p]["y"], opts[1].state[q]["y"])
        assert torch.equal(opts[0].state[p]["y"], opts[2].state[r]["y"])


def test_clamp_of_a_mixed_list_equals_clamp_of_each_tensor():
    """Large CPU tensors are clamped one by one and small ones by foreach ops: the same values,
    infinities included (and NaN stays NaN)."""
    gen = torch.Generator().manual_seed(0)
    sizes = [7, F._CLAMP_ALONE_NUMEL, 3, F._CLAMP_ALONE_NUMEL + 5, 1]
    ts = [torch.randn(n, generator=gen) * 10 for n in sizes]
    for t in ts:
        t[0] = float("inf")
        t[-1] = float("nan") if t.numel() > 1 else -float("inf")
    expected = [t.clamp(-2.5, 2.5) for t in ts]
    F._clamp_(ts, 2.5)
    for got, want in zip(ts, expected, strict=True):
        assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
