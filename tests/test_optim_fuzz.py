"""A fuzz of the optimizer: every path, base and dtype against Algorithms 1 and 2 of METHOD.md,
over memory layouts (contiguous, channels_last, transposed, strided slices, a gradient laid out
unlike its parameter, a layout changed mid-training), empty tensors and exact zeros.

It would have caught the defects of issue 33: the fused AdamW kernel mixing elements of tensors
with different strides (D1), a crash on an empty first parameter (D2), and NaN from exact zeros
(D4, now refused: ``adam_eps`` must be > 0 on the AdamW base).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewa import ReWA

# ---------------------------------------------------------------- the reference


def _abs_pow(t: torch.Tensor, p: float) -> torch.Tensor:
    return torch.ones_like(t) if p == 0 else t.abs() ** p


def reference(x0, grads, *, base, lr, K, M, eps, wd, mu, betas, adam_eps):
    """Algorithms 1 and 2 in float64 on logical (contiguous) tensors; returns x after the steps."""
    y = x0.sign() * x0.abs() ** (1.0 / K)
    b, m, v = torch.zeros_like(y), torch.zeros_like(y), torch.zeros_like(y)
    for t, g in enumerate(grads, start=1):
        s = _abs_pow(y, M)
        if eps > 0:
            u = K * _abs_pow(y, K - 1)
            s = s * u / (u + eps)
        if base == "sgd":
            b = mu * b + s * g + wd * y
            y = y - lr * b
        else:
            gh = s * g
            y = y * (1 - lr * wd)
            m = betas[0] * m + (1 - betas[0]) * gh
            v = betas[1] * v + (1 - betas[1]) * gh * gh
            mhat, vhat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
            y = y - lr * mhat / (vhat.sqrt() + adam_eps)
    return y.sign() * y.abs() ** K


# ---------------------------------------------------------------- layouts

SHAPES = [(0, 4), (5,), (3, 4), (4, 6), (2, 3, 4, 5), (3, 2, 3, 3)]
LAYOUTS = ["contiguous", "channels_last", "transposed", "strided"]


def laid_out(values: torch.Tensor, layout: str) -> torch.Tensor:
    """A tensor equal to ``values`` in ``layout`` (logical content unchanged)."""
    if layout == "channels_last" and values.dim() == 4:
        return values.contiguous(memory_format=torch.channels_last)
    if layout == "transposed" and values.dim() >= 2:
        return values.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "strided" and values.numel():
        wide = torch.zeros(*values.shape[:-1], 2 * values.shape[-1], dtype=values.dtype)
        wide[..., ::2] = values
        return wide[..., ::2]  # not dense: every other element of a wider tensor
    return values.contiguous()


def make_param(values: torch.Tensor, layout: str) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.empty(0, dtype=values.dtype))
    p.data = laid_out(values.clone(), layout)  # never the reference's own tensor
    return p


PATHS = [
    {"foreach": None},
    {"foreach": False},
    {"foreach": True},
    {"foreach": None, "fused": False},
    {"foreach": None, "fused": True},
]
KME = [(1.0, 0.0, 0.0), (3.0, 2.0, 0.0), (9.0, 2.0, 0.0), (3.0, 0.0, 1e-3), (2.5, 1.0, 1e-2)]


@st.composite
def cases(draw):
    base = draw(st.sampled_from(["sgd", "adamw"]))
    path = draw(st.sampled_from(PATHS))
    if path.get("fused") and base != "adamw":
        path = {"foreach": None}
    K, M, eps = draw(st.sampled_from(KME))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n_params = draw(st.integers(1, 3))
    params = []
    for _ in range(n_params):
        shape = draw(st.sampled_from(SHAPES))
        params.append(
            {
                "shape": shape,
                "layout": draw(st.sampled_from(LAYOUTS)),
                "grad_layout": draw(st.sampled_from(LAYOUTS)),
                "relayout_at": draw(st.sampled_from([None, 1, 2])),
                "new_layout": draw(st.sampled_from(LAYOUTS)),
                "zeros": draw(st.booleans()),
            }
        )
    hyper = {
        "lr": draw(st.sampled_from([1e-3, 1e-2])),
        "K": K,
        "M": M,
        "eps": eps,
        "wd": draw(st.sampled_from([0.0, 0.1])),
        "mu": draw(st.sampled_from([0.0, 0.9])),
        "betas": (0.9, 0.999),
        "adam_eps": draw(st.sampled_from([1e-8, 1e-3, 0.0])),
    }
    return base, path, dtype, params, hyper, draw(st.integers(0, 2**16))


STEPS = 3


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_every_path_and_layout_follows_the_algorithms(case):
    base, path, dtype, specs, h, seed = case
    gen = torch.Generator().manual_seed(seed)
    x0s, grads = [], []
    for spec in specs:
        x0 = torch.randn(spec["shape"], generator=gen, dtype=torch.float64) * 0.5
        if spec["zeros"] and x0.numel():
            x0.view(-1)[::3] = 0.0  # exact zeros, which ReWA makes by design
        x0s.append(x0.to(dtype))
        grads.append([torch.randn(spec["shape"], generator=gen, dtype=dtype) for _ in range(STEPS)])
    params = [make_param(x0, spec["layout"]) for x0, spec in zip(x0s, specs, strict=True)]
    if base == "adamw" and h["adam_eps"] == 0.0:  # exact zeros would make Adam's 0/0
        with pytest.raises(ValueError, match="adam_eps"):
            ReWA(params, base=base, adam_eps=0.0)
        return
    opt = ReWA(
        params,
        lr=h["lr"],
        K=h["K"],
        M=h["M"],
        eps=h["eps"],
        weight_decay=h["wd"],
        momentum=h["mu"],
        base=base,
        betas=h["betas"],
        adam_eps=h["adam_eps"],
        **path,
    )
    for step in range(STEPS):
        for p, spec, gs in zip(params, specs, grads, strict=True):
            if spec["relayout_at"] == step:  # model.to(memory_format=...) with state made
                p.data = laid_out(p.detach().clone(), spec["new_layout"])
            p.grad = laid_out(gs[step], spec["grad_layout"])
        opt.step()
    for p, x0, gs in zip(params, x0s, grads, strict=True):
        expected = reference(
            x0.double(),
            [g.double() for g in gs],
            base=base,
            lr=h["lr"],
            K=h["K"],
            M=h["M"],
            eps=h["eps"],
            wd=h["wd"],
            mu=h["mu"],
            betas=h["betas"],
            adam_eps=h["adam_eps"],
        )
        got = p.detach().double()
        assert torch.isfinite(got).all()
        tol = {torch.float32: (2e-4, 1e-6), torch.float64: (1e-9, 1e-12)}[dtype]
        torch.testing.assert_close(got, expected, rtol=tol[0], atol=tol[1])


# ---------------------------------------------------------------- the reproducers of issue 33


def _conv_run(fused):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3)
    opt = ReWA(conv.parameters(), lr=1e-2, base="adamw", K=3, M=2, fused=fused)
    x = torch.randn(4, 8, 10, 10)
    for s in range(4):
        if s == 1:
            conv.to(memory_format=torch.channels_last)
        opt.zero_grad()
        conv(x).square().mean().backward()
        opt.step()
    return conv.weight.detach()


def test_d1_fused_default_follows_a_layout_change_after_the_first_step():
    torch.testing.assert_close(_conv_run(None), _conv_run(False), rtol=1e-5, atol=1e-6)


def test_d1_state_takes_the_parameters_layout_so_the_fused_kernel_keeps_stepping_it():
    conv = torch.nn.Conv2d(8, 16, 3)
    opt = ReWA([conv.weight], lr=1e-2, base="adamw", K=3, M=2)
    conv.weight.grad = torch.randn_like(conv.weight)
    opt.step()
    conv.to(memory_format=torch.channels_last)
    conv.weight.grad = torch.randn_like(conv.weight)
    opt.step()
    for key in ("y", "exp_avg", "exp_avg_sq"):
        assert opt.state[conv.weight][key].stride() == conv.weight.stride()


def test_d2_an_empty_first_parameter_steps():
    empty = torch.zeros(4, 0, requires_grad=True)
    w = torch.randn(4, requires_grad=True)
    before = w.detach().clone()
    opt = ReWA([empty, w], lr=0.1)
    empty.grad, w.grad = torch.zeros(4, 0), torch.ones(4)
    opt.step()
    assert not torch.equal(w.detach(), before)


def test_d3_an_edit_between_load_state_dict_and_the_next_step_is_kept():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64))
    opt = ReWA([w], lr=1e-3, K=3, M=1, momentum=0.0)
    w.grad = torch.randn_like(w)
    opt.step()
    sd = opt.state_dict()
    opt = ReWA([w], lr=1e-3, K=3, M=1, momentum=0.0)
    opt.load_state_dict(sd)
    with torch.no_grad():
        w[:32] = 0.0
    w.grad = torch.randn_like(w)
    opt.step()
    assert int((w[:32] != 0).sum()) == 0


def test_d3_resume_without_an_edit_stays_bit_identical():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, dtype=torch.bfloat16))
    twin = torch.nn.Parameter(w.detach().clone())
    a = ReWA([w], lr=1e-2, K=9, M=2)
    grads = [torch.randn(64, dtype=torch.bfloat16) for _ in range(4)]
    w.grad = grads[0]
    a.step()
    b = ReWA([twin], lr=1e-2, K=9, M=2)
    with torch.no_grad():
        twin.copy_(w)
    b.load_state_dict(a.state_dict())
    for g in grads[1:]:
        w.grad, twin.grad = g.clone(), g.clone()
        a.step()
        b.step()
    assert torch.equal(w.detach(), twin.detach())


def test_d4_adam_eps_zero_is_refused_on_the_adamw_base():
    p = torch.tensor([0.5, 0.0, -0.25], requires_grad=True)
    with pytest.raises(ValueError, match="adam_eps"):
        ReWA([p], lr=1e-3, base="adamw", K=3, M=2, adam_eps=0.0)
    ReWA([p], lr=1e-3, base="sgd", adam_eps=0.0)  # unused by the SGD base


def _saved(shapes, **kw):
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = ReWA(params, lr=1e-2, **kw)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    return opt.state_dict()


def _state_dict_with(sd, key, value):
    sd = {"state": {i: dict(s) for i, s in sd["state"].items()}, "param_groups": sd["param_groups"]}
    if value is None:
        del sd["state"][0][key]
    else:
        sd["state"][0][key] = value
    return sd


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda sd: _state_dict_with(sd, "y", torch.zeros(1)), r"state 'y' has shape \(1,\)"),
        (lambda sd: _state_dict_with(sd, "y", torch.zeros(3, 2)), r"state 'y' has shape"),
        (lambda sd: _state_dict_with(sd, "y", None), "has no 'y'"),
        (lambda sd: _state_dict_with(sd, "y", torch.zeros(2, 3, dtype=torch.int32)), "floating"),
        (lambda sd: {**sd, "param_groups": sd["param_groups"] * 2}, "2 parameter group"),
        (
            lambda sd: {**sd, "param_groups": [{**sd["param_groups"][0], "params": [0]}]},
            "group 0 of the state dict has 1 parameters",
        ),
        (lambda sd: {**sd, "param_groups": [{**sd["param_groups"][0], "K": 0}]}, "K=0"),
    ],
)
def test_d5_a_state_dict_that_does_not_fit_is_a_clear_error(make, message):
    sd = _saved([(2, 3), (4,)], K=9, M=2)
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(2, 3), (4,)]]
    opt = ReWA(params, lr=1e-2, K=9, M=2)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(make(sd))


def test_d5_a_state_for_a_scalar_parameter_must_be_a_scalar():
    sd = _saved([(1,)], K=3, M=2)
    scalar = torch.nn.Parameter(torch.tensor(0.5))
    opt = ReWA([scalar], lr=1e-2, K=3, M=2)
    with pytest.raises(ValueError, match=r"parameter group 0, #0 \(shape \(\)\)"):
        opt.load_state_dict(sd)


# ---------------------------------------------------------------- hyperparameters at every step


@pytest.mark.parametrize(
    "key, value",
    [
        ("lr", float("nan")),
        ("K", 0),
        ("M", -1.0),
        ("eps", -1e-3),
        ("betas", ("0.9", "0.999")),
        ("foreach", "yes"),
        ("detect_writes", "no"),
    ],
)
def test_hyperparameters_changed_after_construction_are_checked_at_the_next_step(key, value):
    p = torch.nn.Parameter(torch.randn(4))
    opt = ReWA([p], lr=1e-2)
    opt.param_groups[0][key] = value
    p.grad = torch.randn_like(p)
    before = p.detach().clone()
    with pytest.raises(ValueError, match=key):
        opt.step()
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize(
    "kw", [{"betas": ("0.9", "0.999")}, {"compile": 1}, {"detect_writes": "no"}, {"foreach": 0}]
)
def test_constructor_refuses_values_of_the_wrong_type(kw):
    with pytest.raises(ValueError):
        ReWA([torch.nn.Parameter(torch.randn(2))], **kw)


def test_m_above_k_minus_1_warns():
    with pytest.warns(UserWarning, match="M=4 > K - 1"):
        ReWA([torch.nn.Parameter(torch.randn(2))], K=3, M=4)
