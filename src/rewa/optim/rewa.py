"""The ReWA optimizer: a drop-in ``torch.optim.Optimizer``."""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import accumulate, chain
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from rewa.optim import _compiled
from rewa.optim import _functional as F
from rewa.sparsity import dtensor_type, is_dtensor, local_part, local_parts

BASES = ("sgd", "adamw")
# On a CPU the default steps consecutive tensors in groups of about this many bytes (a larger
# tensor alone), one multi-tensor call per group: the Python and dispatch overhead of a step's
# ~15 ops (about 70 µs per call) is paid once per group, while the group's x, y, gradient and
# moment buffers (~10 MiB) stay in the last-level cache between the ops. Measured with 1 thread on
# a 32 MiB-L3 CPU: 9.8 ms per AdamW-base step on the LLaMA shapes against 11.5 tensor by tensor
# and 11.6 all together (ResNet-18 shapes: 38.5, 42.2, 55.1 ms).
CPU_GROUP_BYTES = 2 << 20
# Positions per tensor compared with what the optimizer last wrote, to notice writes through
# p.data (the version counter does not see them): a 32 x 32 grid (see _sample_grid).
WRITE_SAMPLES = 32 * 32
# State that is kept in the master precision, not in the parameter's dtype.
_MASTER_KEYS = ("y", "momentum_buffer", "exp_avg", "exp_avg_sq")


def master_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of ReWA's state for a parameter of ``dtype``: float64 stays, others use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _local_grad(p: Tensor) -> Tensor:
    """This rank's part of ``p.grad``, laid out like this rank's part of ``p`` (FSDP2's DTensor
    gradients already are; any other placement is redistributed to the parameter's)."""
    g = p.grad
    if is_dtensor(g) and g.placements != p.placements:
        g = g.redistribute(p.device_mesh, p.placements)
    return local_part(g)


def _local_grads(params: list[Tensor]) -> list[Tensor]:
    grads = [p.grad for p in params]
    cls = dtensor_type()
    if cls is None or not any(isinstance(g, cls) for g in grads):
        return grads
    return [_local_grad(p) for p in params]


def validate_hyperparameters(group: dict[str, Any]) -> None:
    """Raise ValueError naming the first invalid hyperparameter of ``group`` and its valid range."""

    def check(name: str, ok: bool, valid: str) -> None:
        if not ok:
            raise ValueError(f"ReWA: invalid {name}={group[name]!r}; valid range: {valid}")

    def real(name: str) -> float:
        value = group[name]
        if isinstance(value, Tensor):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"ReWA: {name} must be a real number, got {value!r}")
        return float(value)

    check("base", group["base"] in BASES, f"one of {', '.join(BASES)}")
    check("lr", real("lr") >= 0.0, "lr >= 0")
    check("K", real("K") >= 1.0, "K >= 1 (any real)")
    check("M", real("M") >= 0.0, "M >= 0 (any real; sensible M <= K - 1)")
    check("eps", real("eps") >= 0.0, "eps >= 0")
    check("weight_decay", real("weight_decay") >= 0.0, "weight_decay >= 0")
    check("momentum", 0.0 <= real("momentum") < 1.0, "0 <= momentum < 1")
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"ReWA: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"ReWA: invalid betas[{i}]={beta!r}; valid range: 0 <= beta < 1")
    check("adam_eps", real("adam_eps") >= 0.0, "adam_eps >= 0")
    fused = group.get("fused")
    check("fused", fused in (None, False, True), "None, False or True")
    if fused:
        check("fused", group["base"] == "adamw", "True only with base='adamw' (None: automatic)")
        check("fused", not group.get("foreach"), "not True together with foreach=True")
        check("fused", not group.get("compile"), "not True together with compile=True")
    for name in ("lr", "K", "M", "eps", "weight_decay", "momentum", "adam_eps"):
        check(name, abs(real(name)) != float("inf") and real(name) == real(name), "a finite number")


def _sample_grid(n: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Where the write check looks among ``n`` elements (in storage order): None for every
    element (a small tensor), else the size and strides of a 32 x 32 view of WRITE_SAMPLES
    positions: 32 runs spread evenly over the whole tensor, each of 32 samples ``step`` apart.
    ``step`` (at most n / 1024) is prime to 2 and 3, so that the samples of a run fall in turn on
    every position of a 3x3 kernel and on odd and even columns; and since the runs start at
    spacings unrelated to the row length, a single edited row or column of a matrix meets some
    sample (every row and at least half of the columns of the shapes in tests/test_idioms.py)."""
    if n <= WRITE_SAMPLES:
        return None
    step = n // WRITE_SAMPLES
    while step > 1 and math.gcd(step, 6) != 1:
        step -= 1
    run_stride = (n - 1 - 31 * step) // 31  # > 31 * step: runs do not overlap; the last ends < n
    return (32, 32), (run_stride, step)


@functools.lru_cache(maxsize=1024)
def _sample_positions(n: int, device: torch.device) -> Tensor:
    """The positions of :func:`_sample_grid` as indices (for tensors that are not dense)."""
    grid = _sample_grid(n)
    if grid is None:
        return torch.arange(n, device=device)
    (rows, cols), (row_stride, col_stride) = grid
    a = torch.arange(rows, device=device).view(-1, 1)
    b = torch.arange(cols, device=device).view(1, -1)
    return (a * row_stride + b * col_stride).view(-1)


def _probe(t: Tensor) -> Tensor | None:
    """A view of ``t`` at the sampled positions (storage order), made once and read at every
    step without a gather; None when its elements do not fill a dense block."""
    if not _compiled._dense(t):
        return None
    flat = _compiled._flat(t)  # detached: no autograd view of the parameter (it outlives the step)
    grid = _sample_grid(flat.numel())
    return flat if grid is None else flat.as_strided(*grid, flat.storage_offset())


def _read(t: Tensor, probe: Tensor | None) -> Tensor:
    """The sampled entries of ``t``: its probe (a view), or a gather for a tensor without one."""
    return probe if probe is not None else torch.take(t, _sample_positions(t.numel(), t.device))


def _concat(ts: list[Tensor]) -> list[Tensor]:
    """``ts`` concatenated: one tensor for each device, dtype and kind of sample (32 x 32 grids,
    whole small tensors)."""
    kinds: dict[tuple[Any, ...], list[Tensor]] = defaultdict(list)
    for t in ts:
        kinds[(t.device, t.dtype, t.dim())].append(t)
    return [torch.cat(k) for k in kinds.values()]


def _same_bits(a: Tensor, b: Tensor) -> bool:
    bits = _BITS.get(a.dtype.itemsize)
    return bits is not None and torch.equal(a.view(bits), b.view(bits))


_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _differ(now: list[Tensor], then: list[Tensor]) -> list[bool]:
    """Whether each now[i] differs from then[i] bit for bit (so a NaN equals itself), read with
    one host sync per device and dtype; a few ops in all, not a few per tensor."""
    out = [False] * len(now)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(now):
        groups[(t.device, t.dtype)].append(i)
    for (device, dtype), rows in groups.items():
        bits = _BITS.get(dtype.itemsize)
        a = torch.cat([now[i] for i in rows])
        b = torch.cat([then[i] for i in rows])
        unequal = (a.view(bits) != b.view(bits)) if bits else ~((a == b) | (a.isnan() & b.isnan()))
        # differences up to the end of each tensor's samples: a running count read at the ends
        ends = [0, *accumulate(now[i].numel() for i in rows)]
        running = torch.cat([unequal.new_zeros(1, dtype=torch.int64), unequal.cumsum(0)])
        at = running[torch.tensor(ends, device=device)].tolist()
        for i, before, after in zip(rows, at, at[1:], strict=False):
            out[i] = after > before
    return out


def trust_parameters(optimizer: Optimizer) -> None:
    """Turn off ReWA's check for writes through ``p.data`` in every group of ``optimizer`` (a
    no-op for other optimizers): for training loops that never write parameters that way, it
    spares reading 1,024 entries of each tensor twice per step and, on a GPU, a host sync."""
    for group in optimizer.param_groups:
        if "detect_writes" in group:
            group["detect_writes"] = False


class _Written(NamedTuple):
    """A parameter (its local shard) as the optimizer left it."""

    version: int
    data_ptr: int
    probe: Tensor | None  # a view of the sampled positions (None: gathered, or not detecting)
    sample: Tensor | None  # the values the optimizer wrote there (None: not detecting)


class ReWA(Optimizer):
    r"""ReWA: train ``x = sign(y)|y|^K`` with weight decay on ``y``, gradient scaled by ``|y|^M``.

    Behaves like an ℓp penalty with ``p = (K + 1 - M) / K`` (see :mod:`rewa.theory`) and produces
    exact zeros in float32. ``base="sgd"`` is Algorithm 1 of METHOD.md (coupled weight decay,
    heavy-ball momentum), ``base="adamw"`` is Algorithm 2 (decoupled weight decay on ``y``).

    With ``K=1, M=0, eps=0`` it is exactly ``torch.optim.SGD(momentum, weight_decay)`` or
    ``torch.optim.AdamW``; :func:`rewa.param_groups` uses this for biases and norm layers.

    The hidden variable ``y`` is kept in ``self.state[p]["y"]`` (float32, or float64 for float64
    parameters) so that ``p`` is always exactly ``sign(y)|y|^K`` and a step with ``lr=0`` leaves
    ``p`` bit-for-bit unchanged. If a parameter is changed outside the optimizer, ``y`` follows it
    at the next step wherever ``p`` no longer equals ``sign(y)|y|^K``: in-place writes under
    ``torch.no_grad()`` (pruning, ``model.load_state_dict``), rebinding ``p.data = t``, and
    in-place writes through ``p.data`` (``p.data[mask] = 0``), which torch's version counter does
    not see and which are found by comparing a fixed sample of 1,024 positions of each tensor with
    what the optimizer wrote there (``detect_writes``). An edit of a few isolated entries of a
    large tensor can fall between the samples (an edit of 0.5% of the entries is found with
    probability 99.4%, one of 2% with certainty for practical purposes): after such an edit call
    :meth:`resync`.

    Args:
        params: parameters or parameter groups (every argument below may be set per group).
        lr: learning rate η.
        K: reparameterization order, any real ``K >= 1``.
        M: exponent of the adaptive scale ``|y|^M``, any real ``M >= 0``.
        eps: stabilizer ε of the adaptive scale, ``>= 0``.
        weight_decay: κ, the decay on ``y``.
        momentum: heavy-ball momentum μ (``base="sgd"``).
        base: ``"sgd"`` or ``"adamw"``.
        betas, adam_eps: Adam's coefficients (``base="adamw"``).
        foreach: use the multi-tensor path, one ``torch._foreach_*`` op over all tensors of a
            device and dtype at a time (True), or step tensors one by one (False). Default: the
            multi-tensor path on CUDA; on a CPU, groups of consecutive tensors of about 2 MiB
            (:data:`CPU_GROUP_BYTES`; every op of a group's step then runs while the group is
            still in cache). On a CPU these eager paths give bit-identical results.
        fused: ``base="adamw"`` only: run the Adam part of the step (decay, moments, update of
            y) as torch's fused AdamW kernel, one pass over memory instead of seven; equal to
            the eager step up to rounding. Default (None): fused for CPU parameters unless
            ``foreach`` or ``compile`` is set; True needs CPU parameters.
        compile: run each step as ``torch.compile``d kernels, one fused pass over memory per
            tensor (CPU) or per device and dtype (GPU). Equal to the eager step up to rounding;
            the first step compiles (seconds to a minute), later ones reuse the kernels.
        detect_writes: notice in-place writes through ``p.data`` (a sample of 1,024 entries
            per tensor read twice per step and, on a GPU, one host sync). A training loop that
            never writes through ``.data`` can turn it off.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        *,
        K: float = 9.0,
        M: float = 2.0,
        eps: float = 0.0,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        base: str = "sgd",
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        foreach: bool | None = None,
        fused: bool | None = None,
        compile: bool = False,
        detect_writes: bool = True,
    ) -> None:
        defaults = {
            "lr": lr,
            "K": K,
            "M": M,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "base": base,
            "betas": betas,
            "adam_eps": adam_eps,
            "foreach": foreach,
            "fused": fused,
            "compile": compile,
            "detect_writes": detect_writes,
        }
        validate_hyperparameters(defaults)
        # Each parameter right after our last write (its shard's, for a DTensor: the DTensor's own
        # counter does not see writes to the shard): anything else seen at the next step means
        # someone else wrote into the parameter, and y must follow.
        self._written: dict[Tensor, _Written] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        validate_hyperparameters(self.param_groups[-1])
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.is_complex() or not p.is_floating_point():
                raise ValueError("ReWA: parameters must be real floating-point tensors")
            if group.get("fused") and local_part(p).device.type != "cpu":
                raise ValueError(f"ReWA: fused=True needs CPU parameters, got one on {p.device}")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_written", {})

    # ------------------------------------------------------------------ state

    def _needs_master(self, p: Tensor, group: dict[str, Any]) -> bool:
        return "y" in self.state[p] or float(group["K"]) != 1.0 or p.dtype != master_dtype(p.dtype)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> None:
        """Create whatever state this parameter's group needs and it does not have yet."""
        state = self.state[p]
        dtype = master_dtype(p.dtype)
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
        if "y" not in state and self._needs_master(p, group):
            state["y"] = F.y_from_x(p, float(group["K"]), dtype)
        if group["base"] == "sgd":
            needed = ("momentum_buffer",) if float(group["momentum"]) != 0.0 else ()
        else:
            needed = ("exp_avg", "exp_avg_sq")
        for key in needed:
            if key not in state:
                state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)

    def _written_elsewhere(self, params: list[Tensor], group: dict[str, Any]) -> list[Tensor]:
        """The parameters (with a master y) that were written outside the optimizer since its
        last write: a new version counter (in-place writes under ``torch.no_grad()``, e.g.
        ``load_state_dict``), new storage (``p.data = t``), or, with ``detect_writes``, a sampled
        position that no longer holds what the optimizer wrote (in-place writes through
        ``p.data``, which bypass the version counter)."""
        changed, suspects, now, then = [], [], [], []
        detect = group.get("detect_writes", True)
        for p, local in zip(params, local_parts(params), strict=True):
            seen = self._written.get(p)
            if seen is None or "y" not in self.state[p]:
                continue
            if local._version != seen.version or local.data_ptr() != seen.data_ptr:
                changed.append(p)
            elif seen.sample is not None and detect:
                suspects.append(p)
                now.append(_read(local, seen.probe))
                then.append(seen.sample)
        if suspects and not all(map(_same_bits, _concat(now), _concat(then))):
            flat_now = [t.reshape(-1) for t in now]
            flat_then = [t.reshape(-1) for t in then]
            changed += [p for p, d in zip(suspects, _differ(flat_now, flat_then), strict=True) if d]
        return changed

    def _remember_writes(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """Record what each parameter looks like right after this step's write."""
        mastered = [p for p in params if "y" in self.state[p]]
        if not mastered:
            return
        locals_ = local_parts(mastered)
        detect = group.get("detect_writes", True)
        for p, local in zip(mastered, locals_, strict=True):
            seen = self._written.get(p)
            probe, sample = None, None
            if detect:
                same_storage = seen is not None and seen.data_ptr == local.data_ptr()
                probe = seen.probe if same_storage and seen.probe is not None else _probe(local)
                sample = _read(local, probe).clone()
            self._written[p] = _Written(local._version, local.data_ptr(), probe, sample)

    def _merge_y(self, p: Tensor, group: dict[str, Any]) -> None:
        """Follow an outside write to ``p``: y is re-derived from p where p no longer equals
        sign(y)|y|^K, and kept elsewhere, so untouched weights keep their exact y (including a
        y too small for x to be nonzero in p's dtype)."""
        y = local_part(self.state[p]["y"])
        x = local_part(p).detach()
        K = float(group["K"])
        from_y = torch.empty_like(x)
        F.signed_pow_into([from_y], [y], K)
        y.copy_(torch.where(x == from_y, y, F.y_from_x(x, K, y.dtype)))

    @torch.no_grad()
    def resync(self) -> None:
        """Re-derive y from every parameter where it differs from sign(y)|y|^K (after an edit
        the optimizer may not see, e.g. of a few isolated entries of a large tensor)."""
        for group in self.param_groups:
            for p in group["params"]:
                if "y" in self.state[p]:
                    self._merge_y(p, group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts every floating state tensor to the parameter's dtype; master copies of a
        # bfloat16/float16 parameter must keep their float32 precision, so restore them after.
        saved_state = state_dict["state"]
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        pairs = list(zip(saved_ids, params, strict=True))
        super().load_state_dict(state_dict)
        for saved_id, p in pairs:
            for key in _MASTER_KEYS:
                value = saved_state.get(saved_id, {}).get(key)
                if isinstance(value, Tensor):
                    self.state[p][key] = value.to(
                        device=p.device, dtype=master_dtype(p.dtype), copy=True
                    )
        self._written = {}

    # ------------------------------------------------------------------ step

    @staticmethod
    def _hyper(group: dict[str, Any]) -> F.Hyper:
        def f(name: str) -> float:
            value = group[name]
            return float(value.item() if isinstance(value, Tensor) else value)

        beta1, beta2 = (float(b) for b in group["betas"])
        return F.Hyper(
            lr=f("lr"),
            K=f("K"),
            M=f("M"),
            eps=f("eps"),
            weight_decay=f("weight_decay"),
            momentum=f("momentum"),
            beta1=beta1,
            beta2=beta2,
            adam_eps=f("adam_eps"),
        )

    @staticmethod
    def _use_fused(group: dict[str, Any], params: list[Tensor]) -> bool:
        fused = group.get("fused")
        if fused is not None:
            return bool(fused)
        return (
            group["base"] == "adamw"
            and group.get("foreach") is None
            and all(local.device.type == "cpu" for local in local_parts(params))
        )

    def _use_foreach(self, group: dict[str, Any], params: list[Tensor]) -> bool:
        if group.get("foreach") is not None:
            return bool(group["foreach"])
        return all(p.device.type == "cuda" for p in params)

    def _eager_groups(self, group: dict[str, Any], params: list[Tensor]) -> list[list[Tensor]]:
        """The parameters stepped together by each call of the eager update: all of them
        (``foreach=True``), one at a time (``foreach=False``), or by default on a CPU
        consecutive runs of about :data:`CPU_GROUP_BYTES` (a larger tensor alone). All give
        bit-identical results, so this is only a matter of speed."""
        if group.get("foreach") is not None or any(p.device.type != "cpu" for p in params):
            return [params] if self._use_foreach(group, params) else [[p] for p in params]
        groups: list[list[Tensor]] = []
        size = CPU_GROUP_BYTES
        for p in params:
            nbytes = p.numel() * p.element_size()
            if size + nbytes > CPU_GROUP_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(p)
            size += nbytes
        return groups

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("ReWA does not support sparse gradients")
            self._init_state(p, group)
        h = self._hyper(group)
        if group.get("compile", False):
            kernels, together = (_compiled.sgd_update, _compiled.adamw_update), [params]
        else:
            adamw = F.fused_adamw_update if self._use_fused(group, params) else F.adamw_update
            kernels, together = (F.sgd_update, adamw), self._eager_groups(group, params)
        # Check and record outside writes group by group, next to the group's update: the sampled
        # positions are then read while the update has (or is about to have) them in cache.
        for ps in together:
            for p in self._written_elsewhere(ps, group):
                self._merge_y(p, group)
            for bucket in self._buckets(ps):
                self._update(bucket, group, h, *kernels)
            if h.lr != 0.0:
                self._remember_writes(ps, group)

    def _buckets(self, params: list[Tensor]) -> list[list[Tensor]]:
        """Group parameters by (device, dtype, has master y) for the multi-tensor kernels."""
        buckets: dict[tuple[Any, ...], list[Tensor]] = defaultdict(list)
        for p in params:
            buckets[(p.device, p.dtype, "y" in self.state[p])].append(p)
        return list(buckets.values())

    def _update(
        self,
        params: list[Tensor],
        group: dict[str, Any],
        h: F.Hyper,
        sgd_update: Callable[..., None],
        adamw_update: Callable[..., None],
    ) -> None:
        """One step of ``params`` (same device, dtype and kind of state) with the given kernels.

        Sharded (DTensor, FSDP2) parameters and their state are updated through their local
        shards: the update is elementwise, so it needs no communication.
        """
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        if len(steps) == 1:
            steps[0] += 1
        else:
            torch._foreach_add_(steps, 1.0)
        has_master = "y" in states[0]
        local = local_parts(params)
        xs = local if has_master else None
        ys = local_parts(s["y"] for s in states) if has_master else local
        grads = _local_grads(params)
        if group["base"] == "sgd":
            bufs = local_parts(s["momentum_buffer"] for s in states) if h.momentum != 0.0 else None
            sgd_update(xs, ys, grads, bufs, h)
        else:
            ms = local_parts(s["exp_avg"] for s in states)
            vs = local_parts(s["exp_avg_sq"] for s in states)
            adamw_update(xs, ys, grads, ms, vs, steps, h)
