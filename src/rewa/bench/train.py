"""``rewa bench train``: images/s of a full training step with SGD and with ReWA.

Two copies of the same model (same initialization) train on one fixed random batch, one with
torch's SGD, one with ReWA; chunks of steps alternate between them, so that load on a shared
machine hits both alike. Data loading is left out on purpose: the number is the cost of forward,
backward and optimizer step, and the overhead is what ReWA adds to that.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import rewa
from rewa.bench.timing import Summary, load_average, synchronize, torch_threads
from rewa.models import build_model
from rewa.provenance import provenance
from rewa.report.tables import markdown_table, write_csv, write_json

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


def optimizers(args: argparse.Namespace) -> dict[str, OptimizerFactory]:
    """SGD as users run it, and ReWA as the README recommends (torch's default paths both)."""
    rewa_kw = dict(lr=0.1, K=9.0, M=2.0, momentum=0.9)
    out: dict[str, OptimizerFactory] = {
        "SGD": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
        "ReWA": lambda m: rewa.ReWA(
            rewa.param_groups(m, weight_decay=1e-4, all_params=args.all_params), **rewa_kw
        ),
    }
    if args.compile:
        out["ReWA compiled"] = lambda m: rewa.ReWA(
            rewa.param_groups(m, weight_decay=1e-4, all_params=args.all_params),
            compile=True,
            **rewa_kw,
        )
    return out


class Trainer:
    """One model + optimizer, timing whole steps and the optimizer step alone."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device):
        self.model, self.opt, self.device = model, opt, device
        self.step_seconds: list[float] = []

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.model(x), y).backward()
        synchronize(self.device)
        start = time.perf_counter()
        self.opt.step()
        synchronize(self.device)
        self.step_seconds.append(time.perf_counter() - start)

    def chunk(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.train_step(x, y)
        synchronize(self.device)
        return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model_name = args.model or ("resnet18" if device.type == "cuda" else "resnet20")
    base = build_model(model_name, num_classes=10).to(device)
    if args.channels_last:
        base = base.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    trainers = {}
    for name, factory in optimizers(args).items():
        model = copy.deepcopy(base).train()
        trainers[name] = Trainer(model, factory(model), device)
    load_before = load_average()
    for t in trainers.values():
        t.chunk(x, y, args.warmup)
        t.step_seconds.clear()
    chunks: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in tqdm(range(args.reps), desc="bench train", disable=args.quiet):
        for name, t in trainers.items():
            chunks[name].append(t.chunk(x, y, args.steps))
    rows = []
    for name, t in trainers.items():
        per_step = [c / args.steps for c in chunks[name]]
        s, opt_s = Summary.of(per_step), Summary.of(t.step_seconds)
        paired = [a / b for a, b in zip(chunks[name], chunks["SGD"], strict=True)]
        rows.append(
            {
                "optimizer": name,
                "images_per_s": args.batch_size / s.median,
                "ms_per_train_step": s.median * 1e3,
                "ms_p25": s.p25 * 1e3,
                "ms_p75": s.p75 * 1e3,
                "ms_opt_step": opt_s.median * 1e3,
                "opt_step_share": opt_s.median / s.median,
                "overhead_vs_sgd": Summary.of(paired).median - 1.0,
            }
        )
    return {
        "provenance": provenance(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "model": model_name,
        "parameters": sum(p.numel() for p in base.parameters()),
        "batch_size": args.batch_size,
        "steps_per_chunk": args.steps,
        "reps": args.reps,
        "warmup": args.warmup,
        "all_params": args.all_params,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "rows": rows,
    }


COLUMNS = [
    "optimizer",
    "images_per_s",
    "ms_per_train_step",
    "ms_p25",
    "ms_p75",
    "ms_opt_step",
    "opt_step_share",
    "overhead_vs_sgd",
]
FORMATS = {
    "images_per_s": ".1f",
    "ms_per_train_step": ".1f",
    "ms_p25": ".1f",
    "ms_p75": ".1f",
    "ms_opt_step": ".2f",
    "opt_step_share": ".2%",
    "overhead_vs_sgd": "+.1%",
}


def write(result: dict[str, Any], out_dir: Path) -> str:
    """Write train.json / .csv / .md to ``out_dir``; return the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "train.json", result)
    write_csv(out_dir / "train.csv", result["rows"], COLUMNS)
    prov = result["provenance"]
    which = "all parameters" if result["all_params"] else "conv/linear weights"
    lines = [
        "# Training step throughput",
        "",
        f"- command: `{prov['command']}`",
        f"- commit {prov['commit']}, torch {prov['torch']}, {result['device']}"
        f" ({prov.get('gpu') or prov['cpu']}), {result['threads']} threads",
        f"- date {prov['date']}; load average before {result['load_average_before']},"
        f" after {result['load_average_after']}",
        f"- {result['model']} ({result['parameters']:,} parameters), batch {result['batch_size']}"
        " of random 3x32x32 inputs (no data loading), forward + backward + step",
        f"- {result['reps']} interleaved chunks of {result['steps_per_chunk']} steps after"
        f" {result['warmup']} warm-up steps; ms = median per training step;"
        " `overhead_vs_sgd` = median over chunks of the time ratio to SGD's chunk, minus 1;"
        " `ms_opt_step` = median of `opt.step()` alone, `opt_step_share` = its share of the"
        " training step",
        f"- ReWA (K=9, M=2, SGD base) on {which}; torch's default foreach/single choice",
        "",
        markdown_table(result["rows"], COLUMNS, FORMATS),
        "",
    ]
    text = "\n".join(lines)
    (out_dir / "train.md").write_text(text)
    return text
