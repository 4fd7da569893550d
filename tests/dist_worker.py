"""Run by tests/test_distributed.py on 2 gloo processes (one launch, as process start-up is
what costs time): ``python -m torch.distributed.run --standalone --nproc_per_node 2
tests/dist_worker.py OUT [rewa CLI arguments...]``.

Each rank measures sharded and replicated tensors with :mod:`rewa.sparsity`, and trains a small
FSDP2-sharded (``fully_shard``, DTensor parameters) model with ReWA; it writes what it found to
``OUT/rank<r>.pt``. The test compares those with single-process values computed from the same
inputs (:func:`tensors`, :func:`model`, :func:`batches` are shared with it). Then, if CLI
arguments follow, every rank runs them through ``rewa.cli.main`` (what ``python -m rewa`` runs),
e.g. ``train --resume ...``, and exits with its status.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

THRESHOLDS = (0.0, 1e-3, 0.1, 0.5)
SPARSITIES = (0.0, 0.1, 0.5, 0.77, 0.9, 1.0)
REWA = {"lr": 0.1, "K": 3.0, "M": 2.0, "eps": 1e-4, "momentum": 0.9}
STEPS = 4


def tensors() -> dict[str, torch.Tensor]:
    """Weights with exact zeros, ties and an odd number of rows (uneven shards)."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, shape in (("a", (7, 5)), ("b", (4, 3, 3)), ("c", (11,))):
        t = torch.randn(shape, generator=gen)
        t[torch.rand(shape, generator=gen) < 0.3] = 0.0
        t.view(-1)[:3] = 0.25  # ties
        out[name] = t
    return out


def model() -> nn.Module:
    """No normalization layers: sharded data parallelism then equals one process, full batch."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen))
        for _ in range(n)
    ]


def train(net: nn.Module, opt: torch.optim.Optimizer, data, rank: int, world: int) -> None:
    for x, y in data:
        per = len(y) // world  # this rank's share of the global batch
        part = slice(rank * per, (rank + 1) * per)
        loss = nn.functional.cross_entropy(net(x[part]), y[part])
        opt.zero_grad()
        loss.backward()
        opt.step()


def report_counts(report) -> list[tuple[int, int, list[int]]]:
    return [(la.numel, la.zeros, [la.below[t] for t in THRESHOLDS]) for la in report.layers]


def main(out: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import rewa
    from rewa.sparsity import magnitude_threshold, sparsity_report

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    full = tensors()
    sharded = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in full.items()}
    replicated = {k: distribute_tensor(v, mesh, [Replicate()]) for k, v in full.items()}
    # plain shards of the flattened tensors, uneven: what a user with manual sharding passes
    pieces = {k: v.flatten().tensor_split(world)[rank] for k, v in full.items()}
    result = {
        "dtensor_sharded": report_counts(sparsity_report(sharded, THRESHOLDS)),
        "dtensor_replicated": report_counts(sparsity_report(replicated, THRESHOLDS)),
        "plain_replicated": report_counts(sparsity_report(full, THRESHOLDS)),
        "plain_sharded": report_counts(sparsity_report(pieces, THRESHOLDS, sharded=True)),
        "threshold_dtensor": [magnitude_threshold(sharded.values(), s) for s in SPARSITIES],
        "threshold_plain_sharded": [
            magnitude_threshold(pieces.values(), s, sharded=True) for s in SPARSITIES
        ],
    }

    net = model()
    for layer in (net[0], net[2]):
        fully_shard(layer)
    fully_shard(net)
    opt = rewa.ReWA(rewa.param_groups(net, weight_decay=1e-2), **REWA)
    data = batches(2 * STEPS)
    train(net, opt, data[:STEPS], rank, world)
    result["fsdp_param_types"] = sorted({type(p).__name__ for p in net.parameters()})
    result["fsdp_state_types"] = sorted(
        {type(s["y"]).__name__ for s in opt.state.values() if "y" in s}
    )
    result["fsdp_trained"] = [p.full_tensor() for p in net.parameters()]
    result["fsdp_prune_threshold"] = rewa.prune_(net, sparsity=0.5)
    result["fsdp_pruned_zeros"] = sparsity_report(net, ()).zeros
    train(net, opt, data[STEPS:], rank, world)  # y must follow the pruned weights (resync)
    result["fsdp_final"] = [p.full_tensor() for p in net.parameters()]

    # DDP with BatchNorm: the last forward leaves each rank its own running statistics
    from torch.nn.parallel import DistributedDataParallel

    from rewa.models import build_model
    from rewa.train.distributed import fingerprint, sync_buffers

    torch.manual_seed(0)
    bn_model = build_model("tiny", 3)
    DistributedDataParallel(bn_model)(torch.randn(4, 3, 8, 8) + rank)  # different data per rank
    buffers = [None] * world
    dist.all_gather_object(buffers, fingerprint(bn_model.buffers()))
    result["bn_buffers_differ"] = buffers[0] != buffers[1]
    sync_buffers(bn_model)
    dist.all_gather_object(buffers, fingerprint(bn_model.buffers()))
    result["bn_buffers_synced"] = buffers[0] == buffers[1]
    torch.save(result, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    status = 0
    if len(sys.argv) > 2:
        from rewa.cli import main as rewa_main

        status = rewa_main(sys.argv[2:])
    dist.destroy_process_group()
    sys.exit(status)
