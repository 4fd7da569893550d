"""The ReWA optimizer: a drop-in ``torch.optim.Optimizer``."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rewa.optim import _compiled, _writes
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


_REAL = ("lr", "K", "M", "eps", "weight_decay", "momentum")
_ADAM_KEYS = ("betas", "adam_eps")


def validate_hyperparameters(group: dict[str, Any]) -> None:
    """Raise ValueError naming the first invalid hyperparameter of ``group`` and its valid range.

    Cheap enough to run at every step (a few µs per group), so that values changed in
    ``param_groups`` after construction (by a scheduler or by hand) are checked too."""

    def fail(name: str, value: Any, valid: str) -> None:
        raise ValueError(f"ReWA: invalid {name}={value!r}; valid range: {valid}")

    values = {}
    for name in _REAL:
        value = group[name]
        if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"ReWA: {name} must be a real number, got {value!r}")
        if not math.isfinite(value):
            fail(name, value, "a finite number")
        values[name] = float(value)
    if group["base"] not in BASES:
        fail("base", group["base"], f"one of {', '.join(BASES)}")
    for name, ok, valid in (
        ("lr", values["lr"] >= 0.0, "lr >= 0"),
        ("K", values["K"] >= 1.0, "K >= 1 (any real)"),
        ("M", values["M"] >= 0.0, "M >= 0 (any real; sensible M < K - 1)"),
        ("eps", values["eps"] >= 0.0, "eps >= 0"),
        ("weight_decay", values["weight_decay"] >= 0.0, "weight_decay >= 0"),
        ("momentum", 0.0 <= values["momentum"] < 1.0, "0 <= momentum < 1"),
    ):
        if not ok:
            fail(name, group[name], valid)
    if group["base"] == "adamw" or "betas" in group or "adam_eps" in group:
        _validate_adam(group)
    for name in ("foreach", "fused"):
        if not any(group.get(name) is v for v in (None, False, True)):
            fail(name, group[name], "None, False or True")
    for name in ("compile", "detect_writes"):
        if not isinstance(group.get(name, False), bool):
            fail(name, group[name], "False or True")
    if group.get("fused"):
        if group["base"] != "adamw":
            fail("fused", True, "True only with base='adamw' (None: automatic)")
        if group.get("foreach") or group.get("compile"):
            fail("fused", True, "not True together with foreach=True or compile=True")


def _validate_adam(group: dict[str, Any]) -> None:
    betas = group.get("betas")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"ReWA: invalid betas={betas!r}; valid range: a pair (beta1, beta2)")
    for i, beta in enumerate(betas):
        if isinstance(beta, Tensor) and beta.numel() == 1:
            beta = beta.item()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
            raise ValueError(f"ReWA: invalid betas[{i}]={beta!r}; valid range: 0 <= beta < 1")
    if group["base"] != "adamw":
        return  # Adam's coefficients are not used
    adam_eps = group.get("adam_eps")
    if isinstance(adam_eps, Tensor) and adam_eps.numel() == 1:
        adam_eps = adam_eps.item()
    if isinstance(adam_eps, bool) or not isinstance(adam_eps, (int, float)):
        raise ValueError(f"ReWA: adam_eps must be a real number, got {adam_eps!r}")
    if not (adam_eps > 0.0 and math.isfinite(adam_eps)):
        # ReWA makes exact zeros, where ĝ = m = v = 0 and Adam's m / (√v + 0) is 0/0
        raise ValueError(f"ReWA: invalid adam_eps={adam_eps!r}; valid range: a finite adam_eps > 0")


def absorbing_zero(group: dict[str, Any]) -> bool:
    """Whether 0 is absorbing in ``group``: the scale s(0) is 0 (M > 0, or ε > 0 with K > 1),
    so a weight at exactly 0 never moves."""
    return float(group["M"]) > 0.0 or (float(group["eps"]) > 0.0 and float(group["K"]) > 1.0)


def _warn_vectors_under_absorbing_zero(group: dict[str, Any]) -> None:
    if group.get("warn_traps", True) is False or not absorbing_zero(group):
        return
    vectors = sum(1 for p in group["params"] if p.dim() <= 1)
    if vectors:
        warnings.warn(
            f"ReWA: {vectors} parameter(s) of at most one dimension (biases, norm weights) are "
            f"under ReWA with M={float(group['M']):g}, eps={float(group['eps']):g}: a bias at 0 "
            "never moves and norm weights decay toward 0. Use rewa.param_groups(model), which "
            "gives them a plain group (or set warn_traps=False in the group to mean it).",
            stacklevel=4,
        )


def _warn_if_stuck_at_zero(p: Tensor, group: dict[str, Any]) -> None:
    """At a parameter's first step: an all-zero tensor under an absorbing zero never moves."""
    if group.get("warn_traps", True) is False or not absorbing_zero(group) or not p.numel():
        return
    if not bool(local_part(p).detach().any()):
        warnings.warn(
            f"ReWA: a parameter of shape {tuple(p.shape)} is all zeros under M="
            f"{float(group['M']):g}, eps={float(group['eps']):g}: 0 is absorbing there, so it "
            "will never move (LoRA's B, a zero-initialised projection). Initialise it nonzero or "
            "give it a plain group (K=1, M=0, eps=0; rewa.param_groups does).",
            stacklevel=5,
        )


def _warn_outside_sensible_range(group: dict[str, Any]) -> None:
    K, M = float(group["K"]), float(group["M"])
    if M > K - 1.0:
        warnings.warn(
            f"ReWA: M={M:g} > K - 1 = {K - 1:g}: the adaptive scale |y|^M then shrinks faster "
            "near 0 than plain reparameterization's, outside the sensible range 0 <= M < K - 1 "
            "of METHOD.md",
            stacklevel=3,
        )


def trust_parameters(optimizer: Optimizer) -> None:
    """Turn off ReWA's check for writes through ``p.data`` in every group of ``optimizer`` (a
    no-op for other optimizers): for training loops that never write parameters that way, it
    spares reading about 1,024 + max(shape) entries of each tensor twice per step and, on a GPU,
    a host sync."""
    for group in optimizer.param_groups:
        if "detect_writes" in group:
            group["detect_writes"] = False


def _needed_state(group: dict[str, Any], p: Tensor) -> tuple[str, ...]:
    """The state a parameter of ``group`` has after its first step."""
    keys = ["y"] if float(group["K"]) != 1.0 or p.dtype != master_dtype(p.dtype) else []
    if group["base"] == "adamw":
        keys += ["exp_avg", "exp_avg_sq"]
    elif float(group["momentum"]) != 0.0:
        keys.append("momentum_buffer")
    return tuple(keys)


def check_state_dict(
    state_dict: dict[str, Any], groups: list[dict[str, Any]]
) -> list[tuple[Any, Tensor]]:
    """(saved id, parameter) pairs of ``state_dict`` for ``groups``, or a ValueError that says
    what does not fit."""
    saved_groups = state_dict.get("param_groups")
    if not isinstance(saved_groups, list) or not isinstance(state_dict.get("state"), dict):
        raise ValueError("ReWA.load_state_dict: not an optimizer state dict (state, param_groups)")
    if len(saved_groups) != len(groups):
        raise ValueError(
            f"ReWA.load_state_dict: the state dict has {len(saved_groups)} parameter group(s), "
            f"this optimizer {len(groups)}"
        )
    pairs = []
    for g, (saved, group) in enumerate(zip(saved_groups, groups, strict=True)):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"ReWA.load_state_dict: group {g} of the state dict has {len(saved['params'])} "
                f"parameters, this optimizer's {len(group['params'])}"
            )
        hyper = {**group, **{k: v for k, v in saved.items() if k != "params"}}
        try:
            validate_hyperparameters(hyper)
        except ValueError as e:
            raise ValueError(f"ReWA.load_state_dict: group {g}: {e}") from None
        for i, (saved_id, p) in enumerate(zip(saved["params"], group["params"], strict=True)):
            _check_param_state(state_dict["state"].get(saved_id), p, hyper, f"group {g}, #{i}")
            pairs.append((saved_id, p))
    return pairs


def _check_param_state(state: Any, p: Tensor, group: dict[str, Any], where: str) -> None:
    if not state:
        return  # never stepped: the next step makes its state
    where = f"ReWA.load_state_dict: parameter {where} (shape {tuple(p.shape)})"
    for key in _needed_state(group, p):
        if key not in state and "step" in state:
            raise ValueError(
                f"{where}: its state has no {key!r}, which this group keeps (base "
                f"{group['base']!r}, K={group['K']:g}); the state dict is from another optimizer "
                "or other settings"
            )
    for key in _MASTER_KEYS:
        value = state.get(key)
        if value is None:
            continue
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{where}: state {key!r} must be a floating-point tensor, not {kind}")
        if value.shape != p.shape:
            raise ValueError(f"{where}: state {key!r} has shape {tuple(value.shape)}")


def _match_layout(p: Tensor, state: dict[str, Any]) -> None:
    """Lay the state out in memory as the parameter is (after ``model.to(channels_last)`` with
    state already made, or a state dict saved from another layout): the fused and compiled
    kernels step only tensors of equal strides (others take the slower eager ops). One state
    tensor is checked per step; the rest were laid out with it."""
    t = state.get("y", state.get("exp_avg", state.get("momentum_buffer")))
    if t is None or (p.is_contiguous() and t.is_contiguous()):
        return
    if is_dtensor(p) or t.stride() == p.stride():
        return
    if not F.dense_layout(p):
        return
    for k in _MASTER_KEYS:
        t = state.get(k)
        if isinstance(t, Tensor) and t.shape == p.shape and t.stride() != p.stride():
            state[k] = torch.empty_like(p, dtype=t.dtype).copy_(t)


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
    not see and which are found by comparing a fixed sample of each tensor with what the optimizer
    wrote there (``detect_writes``; :mod:`rewa.optim._writes`): the sample holds every index of
    every dimension, so an edit that changes a whole row, column or channel is always found; an
    edit of a few isolated entries of a large tensor can fall between the samples: after such an
    edit call :meth:`resync`. After :meth:`load_state_dict`, y is merged with the parameters at
    the next step, so an edit made between the load and the step is kept.

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
        detect_writes: notice in-place writes through ``p.data`` (a sample of about
            1,024 + max(shape) entries per tensor read twice per step and, on a GPU, one host
            sync). A training loop that never writes through ``.data`` can turn it off.
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
        # Adam's coefficients live only in groups on the AdamW base: torch's cycling schedulers
        # (OneCycleLR, CyclicLR) cycle betas[0] instead of momentum wherever "betas" is a default.
        self._adam_defaults = {key: defaults[key] for key in _ADAM_KEYS}
        if base != "adamw":
            for key in _ADAM_KEYS:
                del defaults[key]
        # Each parameter right after our last write (its shard's, for a DTensor: the DTensor's own
        # counter does not see writes to the shard): anything else seen at the next step means
        # someone else wrote into the parameter, and y must follow.
        self._written: dict[Tensor, _writes.Written] = {}
        # Parameters whose y came from a state dict or a pickle and has not been stepped since.
        self._loaded: set[Tensor] = set()
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if param_group.get("base", self.defaults["base"]) == "adamw":
            for key, value in self._adam_defaults.items():
                param_group.setdefault(key, value)
        super().add_param_group(param_group)
        validate_hyperparameters(self.param_groups[-1])
        group = self.param_groups[-1]
        _warn_outside_sensible_range(group)
        _warn_vectors_under_absorbing_zero(group)
        for p in group["params"]:
            if p.is_complex() or not p.is_floating_point():
                raise ValueError("ReWA: parameters must be real floating-point tensors")
            if group.get("fused") and local_part(p).device.type != "cpu":
                raise ValueError(f"ReWA: fused=True needs CPU parameters, got one on {p.device}")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_written", {})
        self.__dict__.setdefault("_loaded", set())
        self.__dict__.setdefault("_adam_defaults", {"betas": (0.9, 0.999), "adam_eps": 1e-8})
        self._loaded.update(p for group in self.param_groups for p in group["params"])

    # ------------------------------------------------------------------ state

    def _needs_master(self, p: Tensor, group: dict[str, Any]) -> bool:
        return "y" in self.state[p] or float(group["K"]) != 1.0 or p.dtype != master_dtype(p.dtype)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> None:
        """Create whatever state this parameter's group needs and it does not have yet."""
        state = self.state[p]
        dtype = master_dtype(p.dtype)
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            _warn_if_stuck_at_zero(p, group)
        if "y" not in state and self._needs_master(p, group):
            state["y"] = F.y_from_x(p, float(group["K"]), dtype)
        if group["base"] == "sgd":
            needed = ("momentum_buffer",) if float(group["momentum"]) != 0.0 else ()
        else:
            needed = ("exp_avg", "exp_avg_sq")
        for key in needed:
            if key not in state:
                state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        _match_layout(p, state)

    def _written_elsewhere(self, params: list[Tensor], group: dict[str, Any]) -> list[Tensor]:
        """The parameters (with a master y) that were written outside the optimizer since its
        last write (see :mod:`rewa.optim._writes`), and those whose y was loaded from a state
        dict or a pickle since: the parameter may have been edited after the load (a resume,
        then a prune), and y must follow what it holds now."""
        mastered = [p for p in params if "y" in self.state[p]]
        if not mastered:
            return []
        records = [self._written.get(p) for p in mastered]
        detect = bool(group.get("detect_writes", True))
        seen = _writes.written_since(local_parts(mastered), records, detect)
        return [
            p
            for p, record, changed in zip(mastered, records, seen, strict=True)
            if changed or (record is None and p in self._loaded)
        ]

    def _remember_writes(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """Record what each parameter looks like right after this step's write."""
        mastered = [p for p in params if "y" in self.state[p]]
        detect = bool(group.get("detect_writes", True))
        for p, local in zip(mastered, local_parts(mastered), strict=True):
            self._written[p] = _writes.record(local, detect)
            self._loaded.discard(p)

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
        """torch's ``load_state_dict``, checked first: the same number of groups and parameters,
        valid hyperparameters, and for each parameter the state its group keeps (y, momentum
        or Adam's moments), floating point and of the parameter's shape; else a ValueError
        naming the parameter. Master copies keep their float32/float64 precision. Each y is
        merged with its parameter at the next step, so an edit made between the load and the
        step (resume, then prune) is kept."""
        pairs = check_state_dict(state_dict, self.param_groups)
        saved_state = state_dict["state"]
        super().load_state_dict(state_dict)
        # torch casts every floating state tensor to the parameter's dtype; master copies of a
        # bfloat16/float16 parameter must keep their float32 precision, so restore them after.
        for saved_id, p in pairs:
            for key in _MASTER_KEYS:
                value = saved_state.get(saved_id, {}).get(key)
                if isinstance(value, Tensor):
                    self.state[p][key] = value.to(
                        device=p.device, dtype=master_dtype(p.dtype), copy=True
                    )
        self._written = {}
        self._loaded = {p for _, p in pairs}

    # ------------------------------------------------------------------ step

    @staticmethod
    def _hyper(group: dict[str, Any]) -> F.Hyper:
        def f(name: str) -> float:
            value = group[name]
            return float(value.item() if isinstance(value, Tensor) else value)

        beta1, beta2 = (float(b) for b in group.get("betas", (0.9, 0.999)))
        return F.Hyper(
            lr=f("lr"),
            K=f("K"),
            M=f("M"),
            eps=f("eps"),
            weight_decay=f("weight_decay"),
            momentum=f("momentum"),
            beta1=beta1,
            beta2=beta2,
            adam_eps=f("adam_eps") if "adam_eps" in group else 1e-8,
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
        size = 0
        for p in params:
            nbytes = p.numel() * p.element_size()
            if not groups or size + nbytes > CPU_GROUP_BYTES:
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
        validate_hyperparameters(group)  # a scheduler or a user may have changed them
        if any(p.grad.is_sparse for p in params):
            self._step_sparse([p for p in params if p.grad.is_sparse], group)
            params = [p for p in params if not p.grad.is_sparse]
            if not params:
                return
        for p in params:
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

    def _step_sparse(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """Sparse gradients (``nn.Embedding(sparse=True)``), as torch.optim.SGD steps them
        without momentum or decay: only in a plain group (K=1, M=0, eps=0 on the SGD base)."""
        plain = (
            group["base"] == "sgd"
            and float(group["K"]) == 1.0
            and float(group["M"]) == 0.0
            and float(group["eps"]) == 0.0
            and float(group["momentum"]) == 0.0
            and float(group["weight_decay"]) == 0.0
        )
        for p in params:
            if not plain or p.dtype != master_dtype(p.dtype) or "y" in self.state[p]:
                raise RuntimeError(
                    "ReWA: sparse gradients are stepped only in a plain group (K=1, M=0, eps=0, "
                    "base='sgd', momentum=0, weight_decay=0, a float32/float64 parameter), as "
                    f"torch.optim.SGD steps them; a parameter of shape {tuple(p.shape)} with a "
                    "sparse gradient is in a group that is not (rewa.param_groups puts embeddings "
                    "in its plain group: set momentum=0 and weight_decay=0 there)"
                )
            self.state[p].setdefault("step", torch.tensor(0.0, dtype=torch.float32))
            self.state[p]["step"] += 1
            p.add_(p.grad, alpha=-float(group["lr"]))

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
