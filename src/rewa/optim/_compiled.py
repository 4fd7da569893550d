"""The ReWA update compiled with ``torch.compile``: one fused kernel per tensor (or per bucket).

The eager update (:mod:`rewa.optim._functional`) makes one pass over memory per op; here the whole
step of a tensor is one loop that reads y, g and the moment buffers once and writes them and x
once. The math is the eager path's, op for op; the two agree to rounding (the compiler may fuse
multiply-adds, and computes integer powers by multiplications where eager uses ``pow``).

On a CPU each tensor is flattened and passed to one shape-generic kernel (compiled once, reused
for every tensor and model). On a GPU the whole bucket is one compiled graph with static shapes,
so that the compiler can fuse across tensors and the step is a few kernel launches.

Steps that the kernels do not cover go to the eager update: ``lr == 0`` (must be a bit-exact
no-op on x), ``K == 1`` groups without a master copy (bit-identical to torch.optim), small tensors
on a CPU (below :data:`MIN_KERNEL_NUMEL`, where a compiled call's overhead exceeds its gain; the
compiler also specializes size 1) and tensors whose state does not share the parameter's memory
layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rewa.optim import _functional as F


@dataclass(frozen=True)
class Spec:
    """What a compiled kernel is specialized on (everything else is a runtime argument)."""

    base: str
    K: float
    M: float
    use_eps: bool
    momentum: bool
    y_dtype: torch.dtype
    x_dtype: torch.dtype
    per_tensor: bool

    @property
    def big(self) -> float:
        return torch.finfo(self.y_dtype).max

    @property
    def limit(self) -> float:
        h = F.Hyper(lr=0.0, K=self.K, M=self.M, eps=0.0, weight_decay=0.0)
        return F.y_limit(h, self.x_dtype)


def _abs_pow(y: Tensor, p: float) -> Tensor:
    if p == 0.0:
        return torch.ones_like(y)
    if p == 1.0:
        return y.abs()
    if F.is_even_int(p):
        return y.pow(p)
    return y.abs().pow(p)


def _signed_pow(y: Tensor, p: float) -> Tensor:
    if p == 1.0:
        return y
    if F.is_odd_int(p):
        return y.pow(p)
    return y.abs().pow(p).copysign(y)


def _scale(y: Tensor, spec: Spec, eps: float) -> Tensor | None:
    if not spec.use_eps:
        return None if spec.M == 0.0 else _abs_pow(y, spec.M)
    damp = (_abs_pow(y, spec.K - 1.0) * spec.K).reciprocal() * eps + 1.0
    if spec.M == 0.0:
        return damp.reciprocal()
    return _abs_pow(y, spec.M) / damp


def _sgd_math(spec: Spec) -> Callable[..., None]:
    big, limit = spec.big, spec.limit

    def step(x, y, g, b, hp):
        lr, wd, mu, eps = hp[0], hp[1], hp[2], hp[3]
        g = g.to(y.dtype)
        s = _scale(y, spec, eps)
        if s is None:  # the eager update's order of operations, for equal rounding
            d = g + wd * y
            if spec.momentum:
                d = b * mu + d
        else:
            d = s * g if not spec.momentum else b * mu + s * g
            d = d + wd * y
        d = d.clamp(-big, big)
        new_y = (y - lr * d).clamp(-limit, limit)
        if spec.momentum:
            b.copy_(d)
        y.copy_(new_y)
        x.copy_(_signed_pow(new_y, spec.K).to(x.dtype))

    return step


def _adamw_math(spec: Spec) -> Callable[..., None]:
    big, limit = spec.big, spec.limit

    def step(x, y, g, m, v, hp):
        decay, one_minus_beta1, beta2, one_minus_beta2 = hp[0], hp[1], hp[2], hp[3]
        adam_eps, eps, step_size, bias2_sqrt = hp[4], hp[5], hp[6], hp[7]
        g = g.to(y.dtype)
        s = _scale(y, spec, eps)
        ghat = g if s is None else (s * g).clamp(-big, big)
        new_m = torch.lerp(m, ghat, one_minus_beta1).clamp(-big, big)
        new_v = (v * beta2 + one_minus_beta2 * ghat * ghat).clamp(max=big)
        denom = new_v.sqrt() / bias2_sqrt + adam_eps
        new_y = (y * decay + step_size * (new_m / denom)).clamp(-limit, limit)
        m.copy_(new_m)
        v.copy_(new_v)
        y.copy_(new_y)
        x.copy_(_signed_pow(new_y, spec.K).to(x.dtype))

    return step


def _over_lists(math: Callable[..., None]) -> Callable[..., None]:
    """The per-tensor math applied to every tensor of a bucket, as one function to compile."""

    def step(tensor_lists, hp):
        for i in range(len(tensor_lists[0])):
            math(*(ts[i] for ts in tensor_lists), hp)

    return step


_KERNELS: dict[Spec, Callable[..., Any]] = {}


def kernel(spec: Spec) -> Callable[..., Any]:
    """The compiled kernel for ``spec`` (compiled on first use, then cached for the process)."""
    if spec not in _KERNELS:
        math = _sgd_math(spec) if spec.base == "sgd" else _adamw_math(spec)
        # The compiler caches per code object, and a closure shares its code with every other
        # spec's: a fresh code object per spec keeps them from counting as recompilations of
        # one function (and from running into torch._dynamo's recompile limit).
        math.__code__ = math.__code__.replace(co_name=f"rewa_{spec.base}_step_{len(_KERNELS)}")
        if spec.per_tensor:
            _KERNELS[spec] = torch.compile(math, dynamic=True, fullgraph=True)
        else:
            _KERNELS[spec] = torch.compile(_over_lists(math), dynamic=False, fullgraph=True)
    return _KERNELS[spec]


def _flat(t: Tensor | None) -> Tensor | None:
    """A 1-D alias of a dense tensor's memory (contiguous, or permuted like channels_last).

    Detached, so not a view: the compiler guards on a view's base, so views of tensors of
    different ranks would each compile a kernel. It shares ``t``'s version counter, so writes
    through it count as writes to ``t``.
    """
    if t is None:
        return None
    flat = t.view(-1) if t.is_contiguous() else t.as_strided((t.numel(),), (1,))
    return flat.detach()


_dense = F.dense_layout


# On a CPU a compiled call costs ~0.1 ms of Python and guard overhead, which the eager step
# beats for small tensors (measured break-even a few thousand elements, see README
# "Performance"). On a GPU the whole bucket is one call, so every tensor goes to the kernel.
MIN_KERNEL_NUMEL = {"cpu": 8192}


def _kernel_friendly(ts: tuple[Tensor, ...]) -> bool:
    first = ts[0]
    if first.numel() < max(2, MIN_KERNEL_NUMEL.get(first.device.type, 2)) or not _dense(first):
        return False
    return all(t.stride() == first.stride() for t in ts[1:])


def _spec(base: str, h: F.Hyper, xs: list[Tensor], ys: list[Tensor], has_buf: bool) -> Spec:
    return Spec(
        base=base,
        K=h.K,
        M=h.M,
        use_eps=F.eps_in(ys[0].dtype, h.eps) != 0.0,
        momentum=has_buf,
        y_dtype=ys[0].dtype,
        x_dtype=xs[0].dtype,
        per_tensor=ys[0].device.type == "cpu",
    )


def _split(tensor_lists: list[list[Tensor]]) -> tuple[list[int], list[int]]:
    """Indices the kernel takes and indices left to the eager update."""
    fused, eager = [], []
    for i, ts in enumerate(zip(*tensor_lists, strict=True)):
        (fused if _kernel_friendly(ts) else eager).append(i)
    return fused, eager


def _pick(ts: list[Any] | None, idx: list[int]) -> list[Any] | None:
    return None if ts is None else [ts[i] for i in idx]


def _run(spec: Spec, tensor_lists: list[list[Any]], scalars: list[float]) -> None:
    """Run the kernel of ``spec`` over the tensors with the scalar hyperparameters ``scalars``.

    The scalars travel as one float64 tensor rather than as Python floats: a float argument
    costs a tensor conversion per call and per value inside the compiled function's wrapper.
    """
    fn = kernel(spec)
    device = tensor_lists[0][0].device
    hp = torch.tensor(scalars, dtype=torch.float64, device=device)
    if spec.per_tensor:
        for i in range(len(tensor_lists[0])):
            fn(*(_flat(ts[i]) for ts in tensor_lists), hp)
    else:
        fn(tensor_lists, hp)


def sgd_update(
    xs: list[Tensor] | None,
    ys: list[Tensor],
    gs: list[Tensor],
    bufs: list[Tensor] | None,
    h: F.Hyper,
) -> None:
    """:func:`rewa.optim._functional.sgd_update`, compiled where it can be."""
    if xs is None or h.lr == 0.0:
        F.sgd_update(xs, ys, gs, bufs, h)
        return
    lists = [xs, ys, gs] + ([bufs] if bufs is not None else [])
    fused, eager = _split(lists)
    if eager:
        F.sgd_update(_pick(xs, eager), _pick(ys, eager), _pick(gs, eager), _pick(bufs, eager), h)
    if fused:
        spec = _spec("sgd", h, xs, ys, bufs is not None)
        picked = [_pick(ts, fused) for ts in lists]
        if bufs is None:
            picked.append([None] * len(fused))
        _run(spec, picked, [h.lr, h.weight_decay, h.momentum, F.eps_in(ys[0].dtype, h.eps)])


def adamw_update(
    xs: list[Tensor] | None,
    ys: list[Tensor],
    gs: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    steps: list[Tensor],
    h: F.Hyper,
) -> None:
    """:func:`rewa.optim._functional.adamw_update`, compiled where it can be."""
    if xs is None or h.lr == 0.0:
        F.adamw_update(xs, ys, gs, ms, vs, steps, h)
        return
    lists = [xs, ys, gs, ms, vs]
    fused, eager = _split(lists)
    if eager:
        F.adamw_update(*(_pick(ts, eager) for ts in lists), _pick(steps, eager), h)
    if fused:
        spec = _spec("adamw", h, xs, ys, False)
        step_sizes, bias2_sqrt = F.adam_scalars(h, _pick(steps, fused))
        shared = [1.0 - h.lr * h.weight_decay, 1.0 - h.beta1, h.beta2, 1.0 - h.beta2, h.adam_eps]
        shared.append(F.eps_in(ys[0].dtype, h.eps))
        # tensors stepped equally often share their bias corrections: one call (or one group)
        by_step: dict[tuple[float, float], list[int]] = {}
        for i, key in zip(fused, zip(step_sizes, bias2_sqrt, strict=True), strict=True):
            by_step.setdefault(key, []).append(i)
        for (step_size, b2), idx in by_step.items():
            _run(spec, [_pick(ts, idx) for ts in lists], [*shared, step_size, b2])
