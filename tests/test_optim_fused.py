"""The AdamW base through torch's fused AdamW kernel (the CPU default) against the eager step."""

from __future__ import annotations

import pytest
import torch

from rewa import ReWA

F64 = torch.float64


def twins(shapes, n, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    first = [torch.randn(*s, generator=gen, dtype=dtype) for s in shapes]
    return [[p.clone().requires_grad_() for p in first] for _ in range(n)]


def step_all(param_sets, opts, steps, seed=1, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=F64) * scale for p in param_sets[0]]
        for params, opt in zip(param_sets, opts, strict=True):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.to(p.dtype)
            opt.step()


def test_fused_is_the_cpu_default_of_the_adamw_base_only():
    p = [torch.zeros(3, requires_grad=True)]

    def fused(**kw):
        opt = ReWA(p, **kw)
        return opt._use_fused(opt.param_groups[0], p)

    assert fused(base="adamw")
    assert not fused(base="sgd")
    assert not fused(base="adamw", foreach=True)
    assert not fused(base="adamw", foreach=False)
    assert not fused(base="adamw", fused=False)
    assert fused(base="adamw", fused=True)


@pytest.mark.parametrize(
    "K,M,eps",
    [(9.0, 2.0, 0.0), (3.0, 2.0, 1e-4), (9.0, 0.0, 0.0), (2.25, 1.25, 1e-3), (1.0, 0.0, 0.0)],
)
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16])
def test_fused_equals_the_eager_step_up_to_rounding(K, M, eps, dtype):
    """Same math as the eager path (float64: to 1e-12; float32/bfloat16 parameters, whose y
    is float32: to a few float32 ulps of y after 20 large steps)."""
    shapes = [(16, 8, 3, 3), (300,), (32, 16), (1,)]
    fused_ps, eager_ps = twins(shapes, 2, dtype)
    kw = dict(lr=0.03, K=K, M=M, eps=eps, weight_decay=1e-2, base="adamw")
    fused, eager = ReWA(fused_ps, fused=True, **kw), ReWA(eager_ps, fused=False, **kw)
    step_all([fused_ps, eager_ps], [fused, eager], 20)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == F64 else dict(rtol=2e-6, atol=1e-7)
    for p, q in zip(fused_ps, eager_ps, strict=True):
        assert not torch.equal(p, q.new_zeros(q.shape))
        for key in ("exp_avg", "exp_avg_sq", "y"):
            if key in eager.state[q]:
                torch.testing.assert_close(fused.state[p][key], eager.state[q][key], **tol)
        torch.testing.assert_close(
            p, q, rtol=K * tol["rtol"] if dtype != torch.bfloat16 else 1e-2, atol=tol["atol"]
        )


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("weight_decay,betas", [(1e-2, (0.9, 0.999)), (0.0, (0.5, 0.9))])
def test_k1_m0_fused_is_torch_fused_adamw_bit_for_bit(dtype, weight_decay, betas):
    ours, theirs = twins([(4, 3), (5,)], 2, dtype)
    kw = dict(lr=0.01, weight_decay=weight_decay, betas=betas)
    a = ReWA(ours, K=1, M=0, eps=0, base="adamw", adam_eps=1e-8, fused=True, **kw)
    b = torch.optim.AdamW(theirs, eps=1e-8, fused=True, **kw)
    for step in range(30):
        step_all([ours, theirs], [a, b], 1, seed=step)
        for p, q in zip(ours, theirs, strict=True):
            assert torch.equal(p, q)


def test_fused_step_with_huge_gradients_stays_finite_and_leaves_the_gradient_alone():
    (p,) = twins([(64,)], 1, F64)[0:1]
    q = p[0]
    opt = ReWA([q], lr=0.1, K=1, M=0, eps=0, base="adamw", fused=True)
    grad = torch.full((64,), 1e300, dtype=F64)
    grad[::2] = -1e300
    q.grad = grad.clone()
    for _ in range(3):
        opt.step()
    assert torch.isfinite(q).all()
    assert torch.isfinite(opt.state[q]["exp_avg_sq"]).all()
    assert torch.equal(q.grad, grad)


def test_fused_follows_outside_writes_like_the_eager_step():
    fused_ps, eager_ps = twins([(40, 30)], 2)
    kw = dict(lr=0.01, K=9.0, M=2.0, weight_decay=1e-2, base="adamw")
    fused, eager = ReWA(fused_ps, fused=True, **kw), ReWA(eager_ps, fused=False, **kw)
    step_all([fused_ps, eager_ps], [fused, eager], 3)
    for p in (fused_ps[0], eager_ps[0]):
        p.data[:10] = 0.0  # bypasses the version counter: found by the write check
    step_all([fused_ps, eager_ps], [fused, eager], 3, seed=2)
    # y followed the write: the edited rows restarted from 0 (their moments move them a little)
    assert fused_ps[0][:10].abs().max() < 1e-10 and eager_ps[0][:10].abs().max() < 1e-10
    torch.testing.assert_close(fused_ps[0], eager_ps[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(base="sgd", fused=True), "base='adamw'"),
        (dict(base="adamw", fused=True, foreach=True), "foreach=True"),
        (dict(base="adamw", fused=True, compile=True), "compile=True"),
        (dict(base="adamw", fused="yes"), "None, False or True"),
    ],
)
def test_fused_with_an_incompatible_setting_is_a_clear_error(kw, message):
    with pytest.raises(ValueError, match="fused") as info:
        ReWA([torch.zeros(2, requires_grad=True)], **kw)
    assert message in str(info.value)
