"""torchrun support: process group, device, DDP wrapping, and rank helpers.

Everything here is a no-op on a single process, so the trainer calls these helpers
unconditionally. Under ``torchrun --nproc_per_node N`` (and multi-node launches) the process group
is initialized from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``): gloo for CPU training, NCCL for CUDA, one GPU per process.

Conventions the trainer relies on:

- the config's ``data.batch_size`` is the *global* batch; each rank takes
  ``batch_size // world_size`` (:func:`per_rank_batch`), so a run's data order, learning rate
  and number of steps do not depend on the number of processes;
- rank 0 alone reads and writes the run directory; decisions it takes (resume or not, the
  checkpoint it loaded, an error) reach the other ranks through :func:`on_main`.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from rewa.errors import UsageError

T = TypeVar("T")

# A collective that waits longer than this (a rank died, or is stuck) raises instead of hanging.
TIMEOUT = datetime.timedelta(minutes=30)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 on a single process)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 on a single process)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the process that logs and writes checkpoints (rank 0)."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def _collective_device() -> torch.device:
    """Where tensors must live for this process group's collectives (NCCL: the local GPU)."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    return [float(v) for v in all_reduce_sum(t).cpu()]


# ---------------------------------------------------------------- process group


def launched_world_size() -> int:
    """The world size torchrun announced in the environment (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def backend_for(device_name: str) -> str:
    """NCCL when training on CUDA (``train.device`` cuda, or auto with a GPU), gloo otherwise."""
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def init_from_env(device_name: str = "auto") -> bool:
    """Join the process group torchrun set up; returns True if this call initialized it.

    Does nothing on a single process or when a process group already exists. ``device_name`` is
    the config's ``train.device``: it picks NCCL (one GPU per process, ``cuda:LOCAL_RANK``) or gloo.
    """
    if is_initialized() or launched_world_size() <= 1:
        return False
    if not dist.is_available():
        raise UsageError("launched with WORLD_SIZE > 1 but this torch has no torch.distributed")
    backend = backend_for(device_name)
    device = None
    if backend == "nccl":
        if local_rank() >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {local_rank()} but only {torch.cuda.device_count()} GPUs on this "
                "node: use --nproc_per_node <= the number of GPUs"
            )
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=device)
    return True


@contextmanager
def process_group(device_name: str = "auto") -> Iterator[None]:
    """Initialize the torchrun process group for the duration of the block (if launched so)."""
    created = init_from_env(device_name)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """``device`` for this process: under a process group, CUDA means this rank's own GPU."""
    if device.type == "cuda" and is_initialized():
        return torch.device("cuda", local_rank())
    return device


def wrap_model(model: nn.Module, device: torch.device, *, compile: bool = False) -> nn.Module:
    """The module the training step calls: ``model`` itself, or DistributedDataParallel around it
    on several processes (gradients averaged over ranks in backward), compiled if asked.

    The optimizer and everything else keep using ``model``: DDP shares its parameters.
    """
    wrapped: nn.Module = model
    if world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)  # buffers follow rank 0
    return torch.compile(wrapped) if compile else wrapped


# ---------------------------------------------------------------- rank 0 decides


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` from rank ``src`` on every rank; tensors inside arrive on the CPU.

    Serialized with ``torch.save`` (``broadcast_object_list``'s pickling fails on checkpoint
    payloads in torch 2.13); the bytes come from a rank of this same job, so loading them with
    ``weights_only=False`` trusts nothing from outside.
    """
    if not is_initialized():
        return obj
    device = _collective_device()
    if rank() == src:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8).to(device)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    else:
        size = torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    if rank() != src:
        data = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(data, src)
    if rank() == src:
        return obj
    return torch.load(
        io.BytesIO(data.cpu().numpy().tobytes()), map_location="cpu", weights_only=False
    )


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank.

    An exception on rank 0 is raised on every rank (a UsageError with the same message), so the
    others do not wait forever in the next collective.
    """
    if not is_initialized():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    error: Exception | None = None
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as err:  # re-raised below, on every rank
            error = err
            usage = isinstance(err, UsageError)
            outcome = ("error", str(err) if usage else f"{type(err).__name__}: {err}")
    kind, value = broadcast_object(outcome)
    if error is not None:
        raise error
    if kind == "error":
        raise UsageError(f"rank 0: {value}")
    return value


# ---------------------------------------------------------------- replicas


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them before each training forward, but the last forward of an epoch updates
    them on every rank with its own batch: without this, evaluation and checkpoints would see a
    different model on each rank.
    """
    if world_size() < 2:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, 0)


def fingerprint(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 of the bytes of ``tensors`` (in order): equal iff bit-identical (shapes included)."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach()
        digest.update(f"{tuple(t.shape)}{t.dtype};".encode())
        digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _state_tensors(state: Any) -> Iterator[torch.Tensor]:
    """The tensors of a (nested) state dict, in a deterministic order."""
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for key in sorted(state, key=str):
            yield from _state_tensors(state[key])
    elif isinstance(state, list | tuple):
        for item in state:
            yield from _state_tensors(item)


def replica_check(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Under data parallelism, check that every rank holds bit-identical weights, buffers and
    optimizer state (DDP averages gradients, ReWA's update is deterministic and per-parameter,
    so they must be). ``{}`` on one process; else ``replicas_identical`` and the weights'
    ``replica_sha256`` (the model's state_dict tensors, in order), or one hash per rank."""
    if world_size() < 2:
        return {}
    local = (
        fingerprint(model.state_dict().values()),
        fingerprint(_state_tensors(optimizer.state_dict())),
    )
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, local)
    identical = all(g == gathered[0] for g in gathered)
    return {
        "replicas_identical": identical,
        "replica_sha256": gathered[0][0] if identical else [g[0] for g in gathered],
    }


# ---------------------------------------------------------------- splitting work


def per_rank_batch(global_batch: int, what: str = "data.batch_size") -> int:
    """The per-rank share of a global batch; an error when it does not divide evenly."""
    w = world_size()
    if global_batch % w:
        raise UsageError(
            f"{what} ({global_batch}) is the global batch and must be divisible by the number "
            f"of processes ({w}); e.g. {what}={global_batch // w * w or w}"
        )
    return global_batch // w


def shard_range(n: int) -> tuple[int, int]:
    """This rank's contiguous [start, stop) of ``n`` items: disjoint, covering, sizes differ by
    at most one (evaluation: every example counted exactly once)."""
    w, r = world_size(), rank()
    return r * n // w, (r + 1) * n // w
