"""The ReWA update over lists of tensors that share device and dtype.

One implementation serves both of the optimizer's eager paths: the multi-tensor path passes a
whole bucket (each ``torch._foreach_*`` op runs over every tensor before the next op: few kernel
launches, what a GPU wants) and the single-tensor path passes one tensor at a time (every op of
the step runs on a tensor while it is still in cache: what a CPU wants). Both run the same ops in
the same order, so they agree bit for bit on the same kernels.

Memory traffic is what a step costs on a CPU, so the update avoids passes and allocations:
the parameter ``x`` (overwritten at the end of the step anyway) is the scratch tensor for the
adaptive scale and the Adam denominator, the decay and the scaled gradient go straight into the
momentum buffer (``addcmul_``), and the integer powers of the scale are chains of multiplications.
The parameter itself is ``signed_pow_into(y, K)`` (multiplications for an integer K), a fixed
function of y, so an update that leaves y unchanged leaves x bit-for-bit unchanged.

``xs=None`` means ``y`` *is* the parameter (K = 1 with a float32/float64 parameter): then the SGD
base runs the ops torch.optim.SGD runs, in its order, so K = 1, M = 0 is bit-identical to it; the
AdamW base folds the bias correction into the denominator (one pass fewer), so it matches
torch.optim.AdamW's eager step to about one ulp per step, and its fused path
(:func:`fused_adamw_update`) is bit-identical to ``AdamW(fused=True)``.

A compiled variant of the same math lives in :mod:`rewa.optim._compiled`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Integer exponents up to this use multiplication chains instead of pow.
_MAX_CHAIN_EXPONENT = 64


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


def is_even_int(v: float) -> bool:
    return float(v).is_integer() and int(v) % 2 == 0


def is_odd_int(v: float) -> bool:
    return float(v).is_integer() and int(v) % 2 == 1


def y_limit(h: Hyper, dtype: torch.dtype) -> float:
    """Bound on |y| keeping its K-th power (x) and M-th power (the scale) below half the largest
    finite value of ``dtype``; the margin absorbs the rounding of the bound and of pow."""
    return (0.5 * torch.finfo(dtype).max) ** (1.0 / max(h.K, h.M, 1.0))


@functools.lru_cache(maxsize=64)
def eps_in(dtype: torch.dtype, eps: float) -> float:
    """ε as the kernels see it: an ε that rounds to 0 in ``dtype`` is 0 (no 0·inf at y = 0)."""
    return float(torch.tensor(eps, dtype=dtype))


def signed_pow(t: Tensor, p: float) -> Tensor:
    """sign(t)|t|^p as a new tensor; an odd integer p is a plain power."""
    if p == 1.0:
        return t.clone()
    if is_odd_int(p):
        return t.pow(p)
    return t.abs().pow_(p).copysign_(t)


def y_from_x(x: Tensor, K: float, dtype: torch.dtype) -> Tensor:
    """The hidden variable y = sign(x)|x|^(1/K), computed in ``dtype`` (the master precision)."""
    return signed_pow(x.detach().to(dtype), 1.0 / K)


# ---------------------------------------------------------------- list helpers
#
# ``out`` arguments are lists of scratch tensors or None (allocate). A one-element list takes the
# tensor method directly: the same kernel as the _foreach op without its dispatch overhead.


# On a CPU, tensors of at least this many elements are clamped one by one (one pass each) and
# smaller ones by the two foreach ops (two passes over little memory, but one call each).
_CLAMP_ALONE_NUMEL = 1 << 14


def _clamp_(ts: list[Tensor], bound: float) -> None:
    """Clamp to [-bound, bound]. foreach has min and max as two ops (two passes), so on a CPU a
    large tensor takes one ``clamp_`` of its own; on a GPU the two foreach ops (two launches,
    not two per tensor)."""
    if len(ts) == 1:
        ts[0].clamp_(-bound, bound)
        return
    if ts[0].device.type == "cpu":
        small = []
        for t in ts:
            if t.numel() >= _CLAMP_ALONE_NUMEL:
                t.clamp_(-bound, bound)
            else:
                small.append(t)
        ts = small
    if ts:
        torch._foreach_clamp_min_(ts, -bound)
        torch._foreach_clamp_max_(ts, bound)


def _mul(a: list[Tensor], b: list[Tensor], out: list[Tensor] | None) -> list[Tensor]:
    if out is None:
        return torch._foreach_mul(a, b)
    for o, u, v in zip(out, a, b, strict=True):
        torch.mul(u, v, out=o)
    return out


def _abs(ts: list[Tensor], out: list[Tensor] | None) -> list[Tensor]:
    if out is None:
        return torch._foreach_abs(ts)
    for o, t in zip(out, ts, strict=True):
        torch.abs(t, out=o)
    return out


def _int_pow(ts: list[Tensor], n: int, out: list[Tensor] | None) -> list[Tensor]:
    """t^n for an integer n >= 2 by left-to-right binary exponentiation, in place in ``out``."""
    bits = bin(n)[3:]  # the bits after the leading 1
    acc = _mul(ts, ts, out)  # (t^1)^2: the leading bit, squared for the first remaining bit
    if bits[0] == "1":
        torch._foreach_mul_(acc, ts)
    for bit in bits[1:]:
        torch._foreach_mul_(acc, acc)
        if bit == "1":
            torch._foreach_mul_(acc, ts)
    return acc


def abs_pow(ts: list[Tensor], p: float, out: list[Tensor] | None = None) -> list[Tensor]:
    """|t|^p for each t (into ``out`` when given); integer p by multiplications."""
    if p == 0.0:
        if out is None:
            return [torch.ones_like(t) for t in ts]
        for o in out:
            o.fill_(1.0)
        return out
    if p == 1.0:
        return _abs(ts, out)
    if float(p).is_integer() and p <= _MAX_CHAIN_EXPONENT:
        result = _int_pow(ts, int(p), out)
        if is_odd_int(p):
            torch._foreach_abs_(result)
        return result
    result = _abs(ts, out)
    torch._foreach_pow_(result, p)
    return result


def signed_pow_into(out: list[Tensor], ys: list[Tensor], K: float) -> None:
    """out = sign(y)|y|^K. An integer K uses a chain of multiplications: within a few ulps of
    torch's pow and several times faster on a CPU (pow was 65% of the step); other K use pow."""
    if K == 1.0:
        torch._foreach_copy_(out, ys)
        return
    same = out[0].dtype == ys[0].dtype
    if float(K).is_integer() and K <= _MAX_CHAIN_EXPONENT:
        result = _int_pow(ys, int(K), out if same else None)  # an odd power keeps the sign
        if is_even_int(K):
            for r, y in zip(result, ys, strict=True):
                r.copysign_(y)
    else:
        result = _abs(ys, out if same else None)
        torch._foreach_pow_(result, K)
        for r, y in zip(result, ys, strict=True):
            r.copysign_(y)
    if not same:
        torch._foreach_copy_(out, result)


def scale(ys: list[Tensor], h: Hyper, out: list[Tensor] | None = None) -> list[Tensor] | None:
    """The adaptive scale s of METHOD.md (into ``out`` when given), or None when s is 1."""
    eps = eps_in(ys[0].dtype, h.eps)
    if eps == 0.0:
        return None if h.M == 0.0 else abs_pow(ys, h.M, out)
    # s = |y|^M * u / (u + eps) with u = K|y|^(K-1), written as |y|^M / (1 + eps/u) so that u = 0
    # gives s = 0 (eps/0 = inf) instead of 0/0.
    damp = abs_pow(ys, h.K - 1.0)
    torch._foreach_mul_(damp, h.K)
    torch._foreach_reciprocal_(damp)
    torch._foreach_mul_(damp, eps)
    torch._foreach_add_(damp, 1.0)
    if h.M == 0.0:
        torch._foreach_reciprocal_(damp)
        return damp
    s = abs_pow(ys, h.M, out)
    torch._foreach_div_(s, damp)
    return s


def update_x(xs: list[Tensor] | None, ys: list[Tensor], h: Hyper) -> None:
    """Clamp y so that its powers stay finite in x's dtype, then set x = sign(y)|y|^K."""
    _clamp_(ys, y_limit(h, ys[0].dtype if xs is None else xs[0].dtype))
    if xs is not None:
        signed_pow_into(xs, ys, h.K)


def dense_layout(t: Tensor) -> bool:
    """Contiguous, or a dense permutation of it that torch names (channels_last)."""
    if t.is_contiguous():
        return True
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    return t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)


def _as_dtype(gs: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    return gs if gs[0].dtype == dtype else [g.to(dtype) for g in gs]


def _scratch(xs: list[Tensor] | None, ys: list[Tensor], h: Hyper) -> list[Tensor] | None:
    """The parameters as scratch space, when the step will overwrite them anyway.

    On a CPU this saves an allocation (and, for tensors too large for malloc's free lists, the
    page faults of fresh memory) per temporary; a GPU's caching allocator makes them free, and
    the out= loop would cost one launch per tensor, so there the foreach ops allocate.
    """
    if xs is None or h.lr == 0.0 or xs[0].dtype != ys[0].dtype or ys[0].device.type != "cpu":
        return None
    return xs


def sgd_update(
    xs: list[Tensor] | None,
    ys: list[Tensor],
    gs: list[Tensor],
    bufs: list[Tensor] | None,
    h: Hyper,
) -> None:
    """Algorithm 1: d = s*g + wd*y; b = mu*b + d; y -= lr*b; x = sign(y)|y|^K."""
    gs = _as_dtype(gs, ys[0].dtype)
    s = scale(ys, h, _scratch(xs, ys, h))
    if s is None:  # torch.optim.SGD's order: d = g + wd*y first
        d = torch._foreach_add(gs, ys, alpha=h.weight_decay) if h.weight_decay != 0.0 else gs
        if bufs is not None:
            torch._foreach_mul_(bufs, h.momentum)
            torch._foreach_add_(bufs, d)
            d = bufs
    elif bufs is not None:
        torch._foreach_mul_(bufs, h.momentum)
        torch._foreach_addcmul_(bufs, s, gs)
        if h.weight_decay != 0.0:
            torch._foreach_add_(bufs, ys, alpha=h.weight_decay)
        d = bufs
    else:
        torch._foreach_mul_(s, gs)
        if h.weight_decay != 0.0:
            torch._foreach_add_(s, ys, alpha=h.weight_decay)
        d = s
    if d is not gs:  # a finite gradient needs no guard; sums and products of finite values do
        _clamp_(d, torch.finfo(ys[0].dtype).max)
    if h.lr == 0.0:
        return
    torch._foreach_add_(ys, d, alpha=-h.lr)
    update_x(xs, ys, h)


def adam_scalars(h: Hyper, steps: list[Tensor]) -> tuple[list[float], list[float]]:
    """Per-tensor step sizes -lr/(1-β1^t) and sqrt(1-β2^t), as torch.optim.AdamW computes them."""
    ts = [float(t) for t in steps]
    step_sizes = [(h.lr / (1.0 - h.beta1**t)) * -1 for t in ts]
    bias2_sqrt = [(1.0 - h.beta2**t) ** 0.5 for t in ts]
    return step_sizes, bias2_sqrt


def _scaled_gradient(
    ys: list[Tensor], gs: list[Tensor], h: Hyper, scratch: list[Tensor] | None
) -> list[Tensor] | None:
    """ĝ = s*g clamped to ±√max/2 of its dtype (into ``scratch`` when given), or None when s is
    1 and ĝ is the gradient itself (which must not be clamped in place)."""
    ghat = scale(ys, h, scratch)
    if ghat is not None:
        torch._foreach_mul_(ghat, gs)
        _clamp_(ghat, 0.5 * math.sqrt(torch.finfo(ys[0].dtype).max))
    return ghat


def adamw_update(
    xs: list[Tensor] | None,
    ys: list[Tensor],
    gs: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    steps: list[Tensor],
    h: Hyper,
) -> None:
    """Algorithm 2 (``steps`` already incremented): Adam on ĝ = s*g, decoupled decay on y.

    Overflow guard: ĝ is clamped to ±√max/2 of its dtype, so that m (a mean of such values) and
    v (of their squares) stay finite without clamps of their own; it acts only on gradients
    beyond 1e19 in float32, where Adam's normalized step is the same anyway.
    """
    gs = _as_dtype(gs, ys[0].dtype)
    scratch = _scratch(xs, ys, h)
    ghat = _scaled_gradient(ys, gs, h, scratch)
    if ghat is None:  # no scale: ĝ is the gradient itself, which must not be clamped in place
        ghat = gs
        torch._foreach_lerp_(ms, ghat, 1.0 - h.beta1)
        _clamp_(ms, torch.finfo(ys[0].dtype).max)  # lerp forms g - m, which can overflow
        torch._foreach_mul_(vs, h.beta2)
        torch._foreach_addcmul_(vs, ghat, ghat, value=1.0 - h.beta2)
        torch._foreach_clamp_max_(vs, torch.finfo(ys[0].dtype).max)
    else:
        torch._foreach_lerp_(ms, ghat, 1.0 - h.beta1)
        torch._foreach_mul_(vs, h.beta2)
        torch._foreach_addcmul_(vs, ghat, ghat, value=1.0 - h.beta2)
    if h.lr == 0.0:
        return
    if h.weight_decay != 0.0:
        torch._foreach_mul_(ys, 1.0 - h.lr * h.weight_decay)
    step_sizes, bias2_sqrt = adam_scalars(h, steps)
    if scratch is None:
        denom = torch._foreach_sqrt(vs)
    else:
        denom = scratch
        for o, v in zip(denom, vs, strict=True):
            torch.sqrt(v, out=o)
    # torch's AdamW: y += step · m / (√v / b + eps) with b = √(1 − β2^t); the same as
    # y += (step · b) · m / (√v + eps · b), one pass fewer
    torch._foreach_add_(denom, [h.adam_eps * b for b in bias2_sqrt])
    torch._foreach_addcdiv_(
        ys, ms, denom, [a * b for a, b in zip(step_sizes, bias2_sqrt, strict=True)]
    )
    update_x(xs, ys, h)


def _one_layout(tensors: tuple[Tensor, ...]) -> bool:
    """The same strides and a dense layout: what a kernel that walks raw memory needs."""
    if all([t.is_contiguous() for t in tensors]):  # the common case, without building strides
        return True
    first = tensors[0]
    return dense_layout(first) and all(t.stride() == first.stride() for t in tensors[1:])


def fused_adamw_update(
    xs: list[Tensor] | None,
    ys: list[Tensor],
    gs: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    steps: list[Tensor],
    h: Hyper,
) -> None:
    """Algorithm 2 through torch's fused AdamW kernel: steps 3-5 are exactly AdamW on y with
    the gradient ĝ = s*g, so the kernel does them in one pass over y, ĝ, m and v instead of the
    seven of :func:`adamw_update`. Equal to it up to rounding (the kernel orders its arithmetic
    its own way); with K = 1, M = 0 it is bit for bit ``torch.optim.AdamW(fused=True)``.

    The kernel reads raw memory, so it steps only tensors whose y, m, v (and x, the scratch for
    ĝ) share one dense layout; any other (a strided slice, state laid out unlike its parameter)
    takes :func:`adamw_update`. The same overflow guard: ĝ is clamped to ±√max/2 (a ĝ that is the
    gradient itself is clamped into a fresh tensor laid out like y, never in place).
    """
    if h.lr == 0.0:  # the kernel would still multiply y by 1 - 0 and subtract 0 (a -0 turns +0)
        adamw_update(xs, ys, gs, ms, vs, steps, h)
        return
    lists = [ys, ms, vs] if xs is None else [ys, ms, vs, xs]
    aligned = [_one_layout(ts) for ts in zip(*lists, strict=True)]
    if not all(aligned):
        apart = [i for i, ok in enumerate(aligned) if not ok]
        pick = [i for i, ok in enumerate(aligned) if ok]
        for keep, update in ((apart, adamw_update), (pick, fused_adamw_update)):
            if keep:
                sub = [None if ts is None else [ts[i] for i in keep] for ts in (xs, ys, gs, ms, vs)]
                update(*sub, [steps[i] for i in keep], h)
        return
    gs = _as_dtype(gs, ys[0].dtype)
    scratch = _scratch(xs, ys, h)
    ghat = _scaled_gradient(ys, gs, h, scratch)
    if ghat is None:  # the same bound, into a tensor laid out like y
        bound = 0.5 * math.sqrt(torch.finfo(ys[0].dtype).max)
        outs = scratch if scratch is not None else [torch.empty_like(y) for y in ys]
        ghat = [torch.clamp(g, -bound, bound, out=o) for g, o in zip(gs, outs, strict=True)]
    torch._fused_adamw_(
        ys,
        ghat,
        ms,
        vs,
        [],
        steps,
        lr=h.lr,
        beta1=h.beta1,
        beta2=h.beta2,
        weight_decay=h.weight_decay,
        eps=h.adam_eps,
        amsgrad=False,
        maximize=False,
    )
    update_x(xs, ys, h)
