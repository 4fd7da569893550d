"""The ReWA update, written twice: per tensor and over lists of tensors (``torch._foreach_*``).

Both paths compute the same formulas of METHOD.md in the same order, so they agree to rounding.
Everything here works on the hidden variable ``y`` (the master copy) and writes ``x = sign(y)|y|^K``
back into the parameter; callers pass ``xs=None`` when ``y`` *is* the parameter (K = 1, no master).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Hyper:
    """The scalar hyperparameters of one parameter group, read once per step."""

    lr: float
    K: float
    M: float
    eps: float
    weight_decay: float
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8


def _is_even_int(v: float) -> bool:
    return float(v).is_integer() and int(v) % 2 == 0


def _is_odd_int(v: float) -> bool:
    return float(v).is_integer() and int(v) % 2 == 1


def y_limit(h: Hyper, dtype: torch.dtype) -> float:
    """Bound on |y| keeping its K-th power (x) and M-th power (the scale) below half the largest
    finite value of ``dtype``; the margin absorbs the rounding of the bound and of pow."""
    return (0.5 * torch.finfo(dtype).max) ** (1.0 / max(h.K, h.M, 1.0))


# Overflow guards. With finite gradients, the only ways to a non-finite value are a product s*g
# or a sum that exceeds the dtype's range; clamping those few tensors to ±max keeps every state
# finite (a clamp is the identity on in-range values, so K = 1 stays exactly torch's SGD/AdamW).
def _finite_(t: Tensor) -> Tensor:
    big = torch.finfo(t.dtype).max
    return t.clamp_(-big, big)


# ---------------------------------------------------------------- single tensor


def abs_pow(t: Tensor, p: float) -> Tensor:
    """|t|^p as a new tensor; an even integer p needs no abs."""
    if p == 1.0:
        return t.abs()
    if p == 2.0:
        return t * t
    if _is_even_int(p):
        return t.pow(p)
    return t.abs().pow_(p)


def signed_pow(t: Tensor, p: float) -> Tensor:
    """sign(t)|t|^p as a new tensor; an odd integer p is a plain power."""
    if p == 1.0:
        return t.clone()
    if _is_odd_int(p):
        return t.pow(p)
    return t.abs().pow_(p).copysign_(t)


def y_from_x(x: Tensor, K: float, dtype: torch.dtype) -> Tensor:
    """The hidden variable y = sign(x)|x|^(1/K), computed in ``dtype`` (the master precision)."""
    return signed_pow(x.detach().to(dtype), 1.0 / K)


def _eps_in(dtype: torch.dtype, eps: float) -> float:
    """ε as the kernels see it: an ε that rounds to 0 in ``dtype`` is 0 (no 0·inf at y = 0)."""
    return float(torch.tensor(eps, dtype=dtype))


def scale(y: Tensor, h: Hyper) -> Tensor | None:
    """The adaptive scale s of METHOD.md, or None when s is identically 1."""
    if _eps_in(y.dtype, h.eps) == 0.0:
        return None if h.M == 0.0 else abs_pow(y, h.M)
    # s = |y|^M * u / (u + eps) with u = K|y|^(K-1), written as |y|^M / (1 + eps/u) so that u = 0
    # gives s = 0 (eps/0 = inf) instead of 0/0.
    u = abs_pow(y, h.K - 1.0).mul_(h.K)
    damp = u.reciprocal_().mul_(h.eps).add_(1.0)
    s = abs_pow(y, h.M) if h.M != 0.0 else torch.ones_like(y)
    return s.div_(damp)


def update_x(x: Tensor | None, y: Tensor, h: Hyper) -> None:
    """Clamp y so that its powers stay finite in x's dtype, then set x = sign(y)|y|^K."""
    limit = y_limit(h, y.dtype if x is None else x.dtype)
    y.clamp_(-limit, limit)
    if x is not None:
        x.copy_(signed_pow(y, h.K))


def sgd_step(x: Tensor | None, y: Tensor, g: Tensor, buf: Tensor | None, h: Hyper) -> None:
    """Algorithm 1 for one tensor: d = s*g + wd*y; b = mu*b + d; y -= lr*b; x = y^K."""
    g = g.to(y.dtype)
    s = scale(y, h)
    d = g.clone() if s is None else g * s
    if h.weight_decay != 0.0:
        d.add_(y, alpha=h.weight_decay)
    if buf is not None:
        buf.mul_(h.momentum).add_(d)
        d = buf
    _finite_(d)
    if h.lr == 0.0:
        return
    y.add_(d, alpha=-h.lr)
    update_x(x, y, h)


def adamw_step(
    x: Tensor | None, y: Tensor, g: Tensor, m: Tensor, v: Tensor, step: Tensor, h: Hyper
) -> None:
    """Algorithm 2 for one tensor (``step`` is the count after this step)."""
    g = g.to(y.dtype)
    s = scale(y, h)
    ghat = g if s is None else _finite_(g * s)
    _finite_(m.lerp_(ghat, 1.0 - h.beta1))  # lerp forms ghat - m, which can overflow
    v.mul_(h.beta2).addcmul_(ghat, ghat, value=1.0 - h.beta2)
    v.clamp_max_(torch.finfo(v.dtype).max)
    if h.lr == 0.0:
        return
    t = float(step)
    bias1 = 1.0 - h.beta1**t
    bias2_sqrt = math.sqrt(1.0 - h.beta2**t)
    y.mul_(1.0 - h.lr * h.weight_decay)
    denom = (v.sqrt() / bias2_sqrt).add_(h.adam_eps)
    y.addcdiv_(m, denom, value=-h.lr / bias1)
    update_x(x, y, h)


# ---------------------------------------------------------------- lists of tensors


def foreach_abs_pow(ts: list[Tensor], p: float) -> list[Tensor]:
    if p == 1.0:
        return torch._foreach_abs(ts)
    if p == 2.0:
        return torch._foreach_mul(ts, ts)
    if _is_even_int(p):
        return torch._foreach_pow(ts, p)
    out = torch._foreach_abs(ts)
    torch._foreach_pow_(out, p)
    return out


def foreach_signed_pow(ts: list[Tensor], p: float) -> list[Tensor]:
    if p == 1.0:
        return torch._foreach_mul(ts, 1.0)
    if _is_odd_int(p):
        return torch._foreach_pow(ts, p)
    out = torch._foreach_abs(ts)
    torch._foreach_pow_(out, p)
    for o, t in zip(out, ts, strict=True):
        o.copysign_(t)
    return out


def foreach_scale(ys: list[Tensor], h: Hyper) -> list[Tensor] | None:
    if _eps_in(ys[0].dtype, h.eps) == 0.0:
        return None if h.M == 0.0 else foreach_abs_pow(ys, h.M)
    damp = foreach_abs_pow(ys, h.K - 1.0)
    torch._foreach_mul_(damp, h.K)
    torch._foreach_reciprocal_(damp)
    torch._foreach_mul_(damp, h.eps)
    torch._foreach_add_(damp, 1.0)
    s = foreach_abs_pow(ys, h.M) if h.M != 0.0 else [torch.ones_like(y) for y in ys]
    torch._foreach_div_(s, damp)
    return s


def _foreach_clamp_(ts: list[Tensor], limit: float) -> None:
    torch._foreach_clamp_min_(ts, -limit)
    torch._foreach_clamp_max_(ts, limit)


def foreach_update_x(xs: list[Tensor] | None, ys: list[Tensor], h: Hyper) -> None:
    _foreach_clamp_(ys, y_limit(h, ys[0].dtype if xs is None else xs[0].dtype))
    if xs is not None:
        torch._foreach_copy_(xs, foreach_signed_pow(ys, h.K))


def _as_dtype(gs: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    return gs if gs[0].dtype == dtype else [g.to(dtype) for g in gs]


def foreach_sgd_step(
    xs: list[Tensor] | None,
    ys: list[Tensor],
    gs: list[Tensor],
    bufs: list[Tensor] | None,
    h: Hyper,
) -> None:
    """Algorithm 1 over lists that share device and dtype."""
    gs = _as_dtype(gs, ys[0].dtype)
    s = foreach_scale(ys, h)
    d = torch._foreach_mul(gs, 1.0) if s is None else torch._foreach_mul(gs, s)
    if h.weight_decay != 0.0:
        torch._foreach_add_(d, ys, alpha=h.weight_decay)
    if bufs is not None:
        torch._foreach_mul_(bufs, h.momentum)
        torch._foreach_add_(bufs, d)
        d = bufs
    _foreach_clamp_(d, torch.finfo(d[0].dtype).max)
    if h.lr == 0.0:
        return
    torch._foreach_add_(ys, d, alpha=-h.lr)
    foreach_update_x(xs, ys, h)


def foreach_adamw_step(
    xs: list[Tensor] | None,
    ys: list[Tensor],
    gs: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    steps: list[Tensor],
    h: Hyper,
) -> None:
    """Algorithm 2 over lists that share device and dtype (``steps`` already incremented)."""
    gs = _as_dtype(gs, ys[0].dtype)
    s = foreach_scale(ys, h)
    big = torch.finfo(ys[0].dtype).max
    if s is None:
        ghat = gs
    else:
        ghat = torch._foreach_mul(gs, s)
        _foreach_clamp_(ghat, big)
    torch._foreach_lerp_(ms, ghat, 1.0 - h.beta1)
    _foreach_clamp_(ms, big)  # lerp forms ghat - m, which can overflow
    torch._foreach_mul_(vs, h.beta2)
    torch._foreach_addcmul_(vs, ghat, ghat, value=1.0 - h.beta2)
    torch._foreach_clamp_max_(vs, big)
    if h.lr == 0.0:
        return
    torch._foreach_mul_(ys, 1.0 - h.lr * h.weight_decay)
    ts = [float(t) for t in steps]
    bias2_sqrt = [math.sqrt(1.0 - h.beta2**t) for t in ts]
    step_sizes = [-h.lr / (1.0 - h.beta1**t) for t in ts]
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, bias2_sqrt)
    torch._foreach_add_(denom, h.adam_eps)
    torch._foreach_addcdiv_(ys, ms, denom, step_sizes)
    foreach_update_x(xs, ys, h)
