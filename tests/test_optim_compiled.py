"""ReWA(compile=True): the torch.compile'd step equals the eager step and keeps its guarantees.

Each distinct (base, K, M, ε on/off, dtype) compiles one kernel (seconds on 2 cores), so these
tests share two configurations between them.
"""

from __future__ import annotations

import pytest
import torch

from rewa import ReWA
from rewa.optim import _compiled

SHAPES = [(16, 8, 3, 3), (10,), (32, 16), (1,), (6, 4, 3, 3)]
SGD = dict(base="sgd", K=9.0, M=2.0, eps=0.0, weight_decay=1e-2, momentum=0.9)
ADAMW = dict(base="adamw", K=2.25, M=1.25, eps=1e-4, weight_decay=1e-2)

pytestmark = pytest.mark.usefixtures("compiler_works")


@pytest.fixture(autouse=True)
def every_tensor_to_the_kernel(monkeypatch):
    """The CPU path leaves small tensors to the eager update; these tests' tensors are small."""
    monkeypatch.setattr(_compiled, "MIN_KERNEL_NUMEL", {"cpu": 2})


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def twin_params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = [torch.randn(*s, generator=gen, dtype=dtype) for s in SHAPES]
    with torch.no_grad():
        a[0][0] = 0.0  # exact zeros stay zero on every path
    b = [t.clone() for t in a]
    # one channels_last parameter: the kernel must follow its memory layout
    a[4], b[4] = (t.contiguous(memory_format=torch.channels_last) for t in (a[4], b[4]))
    return [t.requires_grad_() for t in a], [t.requires_grad_() for t in b]


def step_both(eager, compiled, opt_e, opt_c, gen, scale=1.0):
    for p, q in zip(eager, compiled, strict=True):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
        p.grad = g.to(p.dtype).contiguous(memory_format=torch.preserve_format)
        q.grad = p.grad.clone()
    opt_e.step()
    opt_c.step()


@pytest.mark.parametrize(
    "kw,dtype,rtol,atol",
    [(SGD, torch.float64, 1e-12, 1e-300), (ADAMW, torch.float32, 1e-5, 1e-8)],
    ids=["sgd-float64", "adamw-float32"],
)
def test_compiled_equals_eager(kw, dtype, rtol, atol):
    eager, compiled = twin_params(dtype)
    opt_e = ReWA(eager, lr=0.02, foreach=False, **kw)
    opt_c = ReWA(compiled, lr=0.02, compile=True, **kw)
    gen = torch.Generator().manual_seed(1)
    graphs = unique_graphs()
    step_both(eager, compiled, opt_e, opt_c, gen)
    assert unique_graphs() - graphs <= 1, "tensors of different ranks compiled several kernels"
    graphs = unique_graphs()
    for i in range(15):
        lr = 0.02 * (1 - i / 15)  # a schedule must not recompile
        opt_e.param_groups[0]["lr"] = opt_c.param_groups[0]["lr"] = lr
        step_both(eager, compiled, opt_e, opt_c, gen)
    assert unique_graphs() == graphs, "changing the learning rate recompiled the kernel"
    for p, q in zip(eager, compiled, strict=True):
        torch.testing.assert_close(q, p, rtol=rtol, atol=atol)
        key = "momentum_buffer" if kw["base"] == "sgd" else "exp_avg_sq"
        torch.testing.assert_close(opt_c.state[q][key], opt_e.state[p][key], rtol=rtol, atol=atol)
    assert compiled[0].detach()[0].eq(0).all()
    assert compiled[0]._version > 0  # writes through the kernel's aliases count as writes
    assert compiled[4].is_contiguous(memory_format=torch.channels_last)


def test_compiled_lr_zero_is_bit_exact_noop():
    _, params = twin_params(torch.float64)
    opt = ReWA(params, lr=0.02, compile=True, **SGD)
    gen = torch.Generator().manual_seed(2)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
    opt.step()
    before = [p.detach().clone() for p in params]
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)


@pytest.mark.parametrize(
    "kw,dtype,scale",
    [(SGD, torch.float64, 1e300), (ADAMW, torch.float32, 1e30)],
    ids=["sgd-float64", "adamw-float32"],
)
def test_compiled_state_stays_finite_for_huge_gradients(kw, dtype, scale):
    eager, compiled = twin_params(dtype, seed=3)
    opt_e = ReWA(eager, lr=1.0, foreach=False, **kw)
    opt_c = ReWA(compiled, lr=1.0, compile=True, **kw)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        step_both(eager, compiled, opt_e, opt_c, gen, scale=scale)
        for q in compiled:
            assert torch.isfinite(q).all()
            for value in opt_c.state[q].values():
                assert torch.isfinite(value).all()
