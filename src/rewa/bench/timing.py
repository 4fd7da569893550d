"""Timing helpers: device synchronization, interleaved repetitions, robust summaries."""

from __future__ import annotations

import ctypes
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (0: leave torch's setting), restoring it afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Summary:
    """Median and spread of repeated timings, in seconds."""

    median: float
    p25: float
    p75: float
    min: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Summary:
        q = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else None
        p25, p75 = (q[0], q[2]) if q else (samples[0], samples[0])
        return cls(statistics.median(samples), p25, p75, min(samples), len(samples))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    reps: int,
    on_rep: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Time every function once per repetition, in turn: a slow spell on a shared machine then
    hits all of them alike instead of whichever happened to run during it."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            samples[name].append(time_once(fn, device))
        if on_rep is not None:
            on_rep()
    return samples


def copy_bandwidth(device: torch.device, numel: int = 1 << 25, reps: int = 15) -> Summary:
    """Bytes per second of ``dst.copy_(src)`` (read + write) for float32 tensors of ``numel``."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = [time_once(lambda: dst.copy_(src), device) for _ in range(reps)]
    s = Summary.of(seconds)
    moved = 2 * numel * src.element_size()
    # as bandwidth: the median time gives the median rate; the fastest time the highest rate
    return Summary(moved / s.median, moved / s.p75, moved / s.p25, moved / s.min, s.n)


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS does not tell)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def steady_allocator() -> str | None:
    """Keep glibc's malloc from returning freed memory to the OS between steps: mmap threshold at
    its maximum (32 MiB), trim threshold 1 GiB. torch's multi-tensor optimizers allocate
    temporaries at every step; when glibc serves them by mmap (its threshold adapts at run time,
    differently in each process), every step pays the page faults of fresh memory. Measured on
    the LLaMA shapes, 1 thread: torch AdamW(foreach) took 7.3–7.8 ms per step with this, and
    7.8 or 13.8 ms in different processes without it. Returns what was set, or None where it
    could not be (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        return None
    return "glibc mallopt: mmap threshold 32 MiB, trim threshold 1 GiB" if ok else None
