"""Export a pruned model: a dense state_dict with exact zeros, and a compact sparse file.

The sparse file is a ``torch.save`` of plain tensors (loadable with ``weights_only=True``)::

    {"format": "rewa-sparse", "version": 1,
     "tensors": {name: {"shape": [...], "encoding": E, ...}}}

with one encoding per tensor, whichever is smallest:

* ``"dense"``: ``values`` is the tensor itself (biases, norm layers, dense weights);
* ``"coo"``: ``indices`` (sorted flat positions of the nonzeros, int16 when the tensor has at
  most 32,767 entries, else int32 or int64) and ``values`` (the nonzeros, original dtype);
* ``"bitmap"``: ``bits`` (the nonzero pattern, 8 entries per uint8, row-major) and ``values``.

:func:`load_sparse` rebuilds the exact dense tensors, so ``model.load_state_dict`` of the result
gives bit-for-bit the pruned model. :func:`sparse_inference_model` is a separate path for
inference with torch's sparse CSR kernels (linear layers and ungrouped convolutions through an
unfold), for measuring whether sparsity buys speed on a CPU; it is usually slower than dense
kernels below ~99% sparsity — measure, do not assume.
"""

from __future__ import annotations

import copy
import io
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rewa.sparsity import unwrap

FORMAT = "rewa-sparse"
VERSION = 1
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


class ExportError(ValueError):
    """A file is not a rewa sparse export, or does not fit the model."""


# ---------------------------------------------------------------- encodings


def index_dtype(numel: int) -> torch.dtype:
    """The smallest signed integer dtype that holds every flat index of ``numel`` entries."""
    if numel <= 2**15:
        return torch.int16
    if numel <= 2**31:
        return torch.int32
    return torch.int64


def pack_bits(mask: Tensor) -> Tensor:
    """A flat bool tensor as uint8, 8 entries per byte (least significant bit first)."""
    flat = mask.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(1, dtype=torch.uint8)


def unpack_bits(bits: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` entries as a flat bool tensor."""
    expanded = bits.view(-1, 1).bitwise_and(_BIT_WEIGHTS).ne(0)
    return expanded.flatten()[:numel]


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def encode_tensor(t: Tensor) -> dict[str, Any]:
    """The smallest of the dense, coo and bitmap encodings of ``t`` (on the CPU)."""
    t = t.detach().cpu()
    shape = list(t.shape)
    if not t.is_floating_point() or t.numel() == 0:
        return {"shape": shape, "encoding": "dense", "values": t.clone()}
    nonzero = t.ne(0).flatten()
    values = t.flatten()[nonzero].clone()
    kind = index_dtype(t.numel())
    sizes = {
        "dense": _nbytes(t),
        "coo": _nbytes(values) + values.numel() * torch.empty((), dtype=kind).element_size(),
        "bitmap": _nbytes(values) + math.ceil(t.numel() / 8),
    }
    best = min(sizes, key=lambda k: (sizes[k], k != "dense"))
    if best == "dense":
        return {"shape": shape, "encoding": "dense", "values": t.clone()}
    if best == "coo":
        indices = nonzero.nonzero().flatten().to(kind)
        return {"shape": shape, "encoding": "coo", "indices": indices, "values": values}
    return {"shape": shape, "encoding": "bitmap", "bits": pack_bits(nonzero), "values": values}


def decode_tensor(entry: Mapping[str, Any], name: str = "tensor") -> Tensor:
    """The dense tensor of one :func:`encode_tensor` entry."""
    try:
        shape = torch.Size(entry["shape"])
        encoding = entry["encoding"]
        values = entry["values"]
    except (KeyError, TypeError) as err:
        raise ExportError(f"{name}: malformed sparse entry ({err})") from None
    numel = shape.numel()
    if encoding == "dense":
        return values.reshape(shape).clone()
    out = torch.zeros(numel, dtype=values.dtype)
    if encoding == "coo":
        out[entry["indices"].long()] = values
    elif encoding == "bitmap":
        out[unpack_bits(entry["bits"], numel)] = values
    else:
        raise ExportError(f"{name}: unknown encoding {encoding!r}")
    return out.reshape(shape)


# ---------------------------------------------------------------- files


def dense_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state_dict on the CPU (pruned weights are exact zeros already)."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def sparse_payload(state: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None) -> dict:
    """The sparse-file payload of a state_dict (``meta``: JSON-able facts kept with it)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "meta": dict(meta or {}),
        "tensors": {name: encode_tensor(t) for name, t in state.items()},
    }


def save_dense(model_or_state: nn.Module | Mapping[str, Tensor], path: str | Path) -> int:
    """Write a dense state_dict; returns the file size in bytes."""
    state = _state(model_or_state)
    torch.save(state, path)
    return Path(path).stat().st_size


def save_sparse(
    model_or_state: nn.Module | Mapping[str, Tensor],
    path: str | Path,
    meta: Mapping[str, Any] | None = None,
) -> int:
    """Write the compact sparse file; returns its size in bytes. A path ending in
    ``.safetensors`` is written with safetensors (no pickle; tensors tied to another, like GPT-2's
    LM head and token embedding, stored once), any other with ``torch.save``."""
    if str(path).endswith(".safetensors"):  # the state as it is: tied tensors share memory
        raw = (
            unwrap(model_or_state).state_dict()
            if isinstance(model_or_state, nn.Module)
            else model_or_state
        )
        return _save_safetensors(raw, path, meta)
    torch.save(sparse_payload(_state(model_or_state), meta), path)
    return Path(path).stat().st_size


def load_sparse(path: str | Path | io.BytesIO) -> dict[str, Tensor]:
    """The dense state_dict stored in a sparse file (exact values), ready for
    ``model.load_state_dict`` (a transformers model built from its config included)."""
    if isinstance(path, (str, Path)) and str(path).endswith(".safetensors"):
        return _load_safetensors(path)[0]
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ExportError(f"{path}: cannot read a sparse export ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ExportError(f"{path}: not a rewa sparse export (no format={FORMAT!r} marker)")
    if payload.get("version") != VERSION:
        raise ExportError(f"{path}: sparse export version {payload.get('version')}, need {VERSION}")
    return {name: decode_tensor(e, name) for name, e in payload["tensors"].items()}


def load_sparse_meta(path: str | Path) -> dict[str, Any]:
    if str(path).endswith(".safetensors"):
        return _load_safetensors(path)[1]
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return dict(payload.get("meta", {}))


# ---------------------------------------------------------------- safetensors

_SEP = "::"  # name::values, name::indices, name::bits: a tensor's parts in the file


def _storage_key(t: Tensor) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def _save_safetensors(
    state: Mapping[str, Tensor], path: str | Path, meta: Mapping[str, Any] | None
) -> int:
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    first_of: dict[tuple, str] = {}
    for name, t in state.items():
        key = _storage_key(t) if t.numel() else None
        if key is not None and key in first_of:  # tied: the same memory as an earlier tensor
            layout[name] = {"alias": first_of[key]}
            continue
        if key is not None:
            first_of[key] = name
        entry = encode_tensor(t)
        layout[name] = {"shape": entry["shape"], "encoding": entry["encoding"]}
        for part in ("values", "indices", "bits"):
            if part in entry:
                tensors[f"{name}{_SEP}{part}"] = entry[part].contiguous()
    header = {
        "format": FORMAT,
        "version": str(VERSION),
        "meta": json.dumps(dict(meta or {})),
        "tensors": json.dumps(layout),
    }
    save_file(tensors, str(path), metadata=header)
    return Path(path).stat().st_size


def _load_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            parts = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, SafetensorError) as err:
        raise ExportError(f"{path}: cannot read a sparse export ({err})") from None
    if header.get("format") != FORMAT:
        raise ExportError(f"{path}: not a rewa sparse export (no format={FORMAT!r} marker)")
    if header.get("version") != str(VERSION):
        raise ExportError(f"{path}: sparse export version {header.get('version')}, need {VERSION}")
    layout = json.loads(header["tensors"])
    state: dict[str, Tensor] = {}
    for name, entry in layout.items():
        if "alias" in entry:
            continue
        fields = {p: parts[f"{name}{_SEP}{p}"] for p in ("values", "indices", "bits")
                  if f"{name}{_SEP}{p}" in parts}  # fmt: skip
        state[name] = decode_tensor({**entry, **fields}, name)
    for name, entry in layout.items():
        if "alias" in entry:
            state[name] = state[entry["alias"]]
    ordered = {name: state[name] for name in layout}
    return ordered, json.loads(header.get("meta", "{}"))


def _state(model_or_state: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(model_or_state, nn.Module):
        return dense_state_dict(model_or_state)
    return {k: v.detach().cpu() for k, v in model_or_state.items()}


def payload_bytes(state: Mapping[str, Tensor]) -> dict[str, int]:
    """Raw tensor bytes of the dense and the sparse encodings (no file-format overhead)."""
    dense = sum(_nbytes(t) for t in state.values())
    sparse = 0
    for t in state.values():
        entry = encode_tensor(t)
        sparse += sum(_nbytes(v) for k, v in entry.items() if isinstance(v, Tensor))
    return {"dense": dense, "sparse": sparse}


# ---------------------------------------------------------------- sparse-kernel inference


def to_csr(weight: Tensor) -> Tensor:
    """A 2-d weight as a CSR tensor (silencing torch's "CSR support is in beta" warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return weight.detach().to_sparse_csr()


class SparseLinear(nn.Module):
    """``F.linear`` with the weight as a CSR tensor (torch.sparse.mm)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = to_csr(linear.weight)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], -1)


class SparseConv2d(nn.Module):
    """A 2-d convolution (groups = 1) as CSR weight × unfolded input (im2col)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("SparseConv2d: only groups=1, zero, explicit padding")
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.weight = to_csr(conv.weight.reshape(conv.out_channels, -1))
        self.bias = None if conv.bias is None else conv.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        out_h = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // (
            self.stride[0]
        ) + 1
        out_w = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // (
            self.stride[1]
        ) + 1
        # (C·k·k, N·L): one sparse × dense product for the whole batch
        flat = cols.transpose(0, 1).reshape(cols.shape[1], -1)
        out = torch.sparse.mm(self.weight, flat).reshape(self.out_channels, n, out_h * out_w)
        out = out.transpose(0, 1).reshape(n, self.out_channels, out_h, out_w)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out


def sparse_inference_model(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` (eval) whose Linear and ungrouped Conv2d layers run on CSR weights;
    returns it and the names of the layers that stayed dense."""
    sparse = copy.deepcopy(unwrap(model)).eval()
    dense_left = []
    for name, module in list(sparse.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear:
                setattr(module, child_name, SparseLinear(child))
            elif type(child) is nn.Conv2d:
                try:
                    setattr(module, child_name, SparseConv2d(child))
                except ValueError:
                    dense_left.append(full)
            elif isinstance(child, nn.modules.conv._ConvNd | nn.Bilinear):
                dense_left.append(full)
    return sparse, dense_left


@torch.inference_mode()
def latency(
    fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 20, min_seconds: float = 0.0
) -> dict[str, float]:
    """Median and spread (ms) of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    deciles = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
    return {
        "median_ms": statistics.median(times),
        "p10_ms": deciles[0],
        "p90_ms": deciles[-1],
        "repeats": float(len(times)),
    }


__all__ = [
    "ExportError",
    "SparseConv2d",
    "SparseLinear",
    "decode_tensor",
    "dense_state_dict",
    "encode_tensor",
    "latency",
    "load_sparse",
    "pack_bits",
    "payload_bytes",
    "save_dense",
    "save_sparse",
    "sparse_inference_model",
    "unpack_bits",
]
