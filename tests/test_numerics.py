"""Property tests: ReWA produces no NaN/inf from finite inputs, whatever K, M, ε."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewa import ReWA

SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1e-38, 1.0, -1.0, 3.0, -50.0]


@st.composite
def hyper(draw):
    K = draw(st.floats(1.0, 15.0))
    M = draw(st.floats(0.0, K - 1.0))
    eps = draw(st.sampled_from([0.0, draw(st.floats(0.0, 1e-2))]))
    return K, M, eps


@settings(max_examples=150, deadline=None)
@given(
    hp=hyper(),
    base=st.sampled_from(["sgd", "adamw"]),
    foreach=st.sampled_from([False, True, None]),  # None: fused on the AdamW base
    dtype=st.sampled_from([torch.float32, torch.float64]),
    grad_scale=st.sampled_from([1e-30, 1.0, 1e10, 1e30]),
    lr=st.sampled_from([1e-3, 0.1, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_no_nan_or_inf_from_finite_inputs(hp, base, foreach, dtype, grad_scale, lr, seed):
    K, M, eps = hp
    gen = torch.Generator().manual_seed(seed)
    values = torch.tensor(SPECIAL, dtype=dtype)
    p = torch.cat([values, torch.randn(16, generator=gen, dtype=dtype)]).requires_grad_()
    opt = ReWA([p], lr=lr, K=K, M=M, eps=eps, weight_decay=1e-2, base=base, foreach=foreach)
    for _ in range(4):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64) * grad_scale
        p.grad = g.to(dtype)
        opt.step()
        assert torch.isfinite(p).all(), p
        for key, value in opt.state[p].items():
            assert torch.isfinite(value).all(), (key, value)
