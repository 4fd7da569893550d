"""Rank and world-size helpers that work with and without torch.distributed.

Everything here is a no-op on a single process, so the trainer can call these helpers
unconditionally; a torchrun launch only has to initialize the process group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 on a single process)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 on a single process)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on the process that logs and writes checkpoints (rank 0)."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (unchanged on a single process); returns it."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over ranks in place; returns it."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def sum_over_ranks(*values: float) -> list[float]:
    """Sum Python numbers over ranks (counts, losses): one collective for all of them."""
    if not is_initialized():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    return [float(v) for v in all_reduce_sum(t).cpu()]
