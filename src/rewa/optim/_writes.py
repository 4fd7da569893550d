"""Noticing writes into a parameter that the optimizer did not make.

ReWA keeps a hidden variable y with ``p = sign(y)|y|^K``; when someone else writes into ``p`` (a
pruning mask, ``model.load_state_dict``), y must follow or the next step writes the old weights
back. Writes under ``torch.no_grad()`` bump the tensor's version counter and new storage changes
its data pointer; writes through ``p.data`` do neither, so they are found by comparing a fixed
sample of positions with what the optimizer wrote there.

The sample of a tensor of two or more dimensions covers every index of every dimension at least
once (for a matrix: every row and every column; for a conv weight: every output channel, input
channel and kernel position), plus 1,024 positions spread over the whole tensor (a vector's
sample is those 1,024). So an edit that changes the value at every entry of
a slice along one dimension (a pruned row, column or channel whose entries were not already what
the edit writes) is always found, and an edit of a fraction f of scattered entries is missed with
probability about (1 − f)^1024. A tensor of at most 1,024 entries is compared whole.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from itertools import accumulate
from typing import Any, NamedTuple

import torch
from torch import Tensor

# Positions spread over the whole tensor (a 32 x 32 grid, see _spread), besides the slice cover.
SPREAD_SAMPLES = 32 * 32


def _spread(n: int) -> list[int]:
    """SPREAD_SAMPLES positions among ``n``: 32 runs spaced evenly over the tensor, each of 32
    samples ``step`` apart, with ``step`` prime to 2 and 3 (so a run crosses odd and even columns
    and every position of a 3x3 kernel)."""
    step = n // SPREAD_SAMPLES
    while step > 1 and math.gcd(step, 6) != 1:
        step -= 1
    run_stride = (n - 1 - 31 * step) // 31  # > 31 * step: runs do not overlap; the last ends < n
    return [r * run_stride + c * step for r in range(32) for c in range(32)]


def _slice_cover(shape: tuple[int, ...]) -> Tensor:
    """max(shape) positions (row-major) whose index along every dimension d takes every value
    0 … shape[d] − 1: the i-th has index i mod shape[d] in dimension d."""
    i = torch.arange(max(shape), dtype=torch.int64)
    position = torch.zeros_like(i)
    stride = 1
    for size in reversed(shape):
        position += (i % size) * stride
        stride *= size
    return position


@functools.lru_cache(maxsize=1024)
def sample_positions(shape: tuple[int, ...], device: torch.device) -> Tensor:
    """The sampled positions of a tensor of ``shape``, as row-major (logical) indices, sorted."""
    n = math.prod(shape)
    if n <= SPREAD_SAMPLES:
        return torch.arange(n, device=device)
    spread = torch.tensor(_spread(n), dtype=torch.int64)
    if len(shape) < 2:  # a slice of a vector is one entry: the spread is its sample
        return spread.to(device)
    return torch.cat([spread, _slice_cover(shape)]).unique().to(device)


def read_sample(t: Tensor) -> Tensor:
    """The entries of ``t`` at its sampled positions (whatever its memory layout)."""
    return torch.take(t, sample_positions(tuple(t.shape), t.device))


_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: Tensor, b: Tensor) -> bool:
    bits = _BITS.get(a.dtype.itemsize)
    return bits is not None and torch.equal(a.view(bits), b.view(bits))


def _concat(ts: list[Tensor]) -> list[Tensor]:
    """``ts`` concatenated: one tensor for each device and dtype."""
    kinds: dict[tuple[Any, ...], list[Tensor]] = defaultdict(list)
    for t in ts:
        kinds[(t.device, t.dtype)].append(t)
    return [torch.cat(k) for k in kinds.values()]


def differ(now: list[Tensor], then: list[Tensor]) -> list[bool]:
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


class Written(NamedTuple):
    """A tensor (a parameter's local shard) as the optimizer left it."""

    version: int
    data_ptr: int
    sample: Tensor | None  # the values at its sampled positions (None: not detecting)


def record(t: Tensor, detect: bool) -> Written:
    """What ``t`` looks like right after the optimizer wrote it."""
    return Written(t._version, t.data_ptr(), read_sample(t) if detect else None)


def written_since(tensors: list[Tensor], records: list[Written | None], detect: bool) -> list[bool]:
    """Whether each tensor was written by someone else since its record (None: no record, False):
    a new version counter or data pointer, or, with ``detect``, a sampled entry that changed."""
    changed = [False] * len(tensors)
    suspects, now, then = [], [], []
    for i, (t, seen) in enumerate(zip(tensors, records, strict=True)):
        if seen is None:
            continue
        if t._version != seen.version or t.data_ptr() != seen.data_ptr:
            changed[i] = True
        elif detect and seen.sample is not None:
            suspects.append(i)
            now.append(read_sample(t))
            then.append(seen.sample)
    if suspects and not all(map(_same_bits, _concat(now), _concat(then))):
        for i, d in zip(suspects, differ(now, then), strict=True):
            changed[i] = d
    return changed
