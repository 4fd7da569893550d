"""``rewa bench methods``: training images/s of every sparsification method, next to dense SGD.

Each method is set up on its own copy of one model (same initialization) through
:func:`rewa.methods.build_method`, as ``rewa train`` does it (channels_last before the method
reparameterizes, bf16 autocast of the forward pass), and trains on one fixed random batch: the
loop of the trainer (penalty, backward, optimizer step, after-step hook) without data loading.
Chunks of steps alternate between the methods, so that load on a shared machine hits them alike.
Every step is also split into its phases (forward, backward, optimizer step + the method's hook)
to show where a method's extra time goes.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rewa.bench.timing import Summary, load_average, synchronize, torch_threads
from rewa.methods import SparseMethod, build_method
from rewa.models import build_model
from rewa.provenance import provenance
from rewa.report.tables import markdown_table, write_csv, write_json
from rewa.train.evaluation import autocast, use_bf16

DEFAULT_METHODS = ("dense", "rewa", "l1-prox", "gmp", "str", "spred")
PHASES = ("forward", "backward", "step")
# 30 epochs of 45,000 images in batches of 128, as results/cifar10_resnet20: where GMP's ramp and
# mask updates fall (its hook is a no-op between updates, as in a real run).
DEFAULT_TOTAL_STEPS = 30 * 352


class MethodTrainer:
    """One method on its own model copy; times whole chunks and each phase of every step."""

    def __init__(self, name: str, method: SparseMethod, device: torch.device, bf16: bool):
        self.name, self.method, self.device, self.bf16 = name, method, device, bf16
        self.step = 0
        self.phase_seconds: dict[str, list[float]] = {phase: [] for phase in PHASES}

    def _lap(self, phase: str, start: float) -> float:
        synchronize(self.device)
        now = time.perf_counter()
        self.phase_seconds[phase].append(now - start)
        return now

    def train_step(self, x: torch.Tensor, y: torch.Tensor, total_steps: int) -> None:
        method = self.method
        start = time.perf_counter()
        with autocast(self.device, self.bf16):
            logits = method.model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        penalty = method.penalty()
        if penalty is not None:
            loss = loss + penalty
        start = self._lap("forward", start)
        method.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        start = self._lap("backward", start)
        method.optimizer.step()
        method.after_step(self.step, total_steps)
        self._lap("step", start)
        self.step += 1

    def chunk(self, x: torch.Tensor, y: torch.Tensor, steps: int, total_steps: int) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.train_step(x, y, total_steps)
        synchronize(self.device)
        return time.perf_counter() - start

    def clear(self) -> None:
        for seconds in self.phase_seconds.values():
            seconds.clear()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with torch_threads(args.threads):
        return _run(args)


def _trainers(args: argparse.Namespace, device: torch.device, bf16: bool) -> list[MethodTrainer]:
    torch.manual_seed(args.seed)
    base = build_model(args.model, num_classes=10).to(device)
    if args.memory_format == "channels_last":
        base = base.to(memory_format=torch.channels_last)
    trainers = []
    for name in args.methods:
        model = copy.deepcopy(base).train()
        method = build_method(name, model, lr=0.1, momentum=0.9)
        trainers.append(MethodTrainer(name, method, device, bf16))
    return trainers


def _batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device)
    if args.memory_format == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    bf16 = use_bf16(args.bf16, device)
    trainers = _trainers(args, device, bf16)
    x, y = _batch(args, device)
    load_before = load_average()
    for t in trainers:
        t.chunk(x, y, args.warmup, args.total_steps)
        t.clear()
    chunks: dict[str, list[float]] = {t.name: [] for t in trainers}
    for _ in tqdm(range(args.reps), desc="bench methods", disable=args.quiet):
        for t in trainers:
            chunks[t.name].append(t.chunk(x, y, args.steps, args.total_steps))
    reference = args.methods[0]
    rows = [_row(t, chunks, reference, args) for t in trainers]
    return {
        "provenance": provenance(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "model": args.model,
        "precision": "bf16 autocast" if bf16 else "float32",
        "memory_format": args.memory_format,
        "batch_size": args.batch_size,
        "steps_per_chunk": args.steps,
        "reps": args.reps,
        "warmup": args.warmup,
        "total_steps": args.total_steps,
        "reference": reference,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "rows": rows,
    }


def _row(
    t: MethodTrainer, chunks: dict[str, list[float]], reference: str, args: argparse.Namespace
) -> dict[str, Any]:
    s = Summary.of([c / args.steps for c in chunks[t.name]])
    paired = [a / b for a, b in zip(chunks[t.name], chunks[reference], strict=True)]
    row: dict[str, Any] = {
        "method": t.name,
        "images_per_s": args.batch_size / s.median,
        "ms_per_train_step": s.median * 1e3,
        "ms_p25": s.p25 * 1e3,
        "ms_p75": s.p75 * 1e3,
    }
    for phase in PHASES:
        row[f"ms_{phase}"] = Summary.of(t.phase_seconds[phase]).median * 1e3
    row[f"time_vs_{reference}"] = Summary.of(paired).median
    return row


FORMATS = {
    "images_per_s": ".1f",
    "ms_per_train_step": ".1f",
    "ms_p25": ".1f",
    "ms_p75": ".1f",
    **{f"ms_{phase}": ".1f" for phase in PHASES},
}


def columns(reference: str) -> list[str]:
    return [
        "method",
        "images_per_s",
        "ms_per_train_step",
        "ms_p25",
        "ms_p75",
        *(f"ms_{phase}" for phase in PHASES),
        f"time_vs_{reference}",
    ]


def write(result: dict[str, Any], out_dir: Path) -> str:
    """Write methods.json / .csv / .md to ``out_dir``; return the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = result["reference"]
    cols = columns(reference)
    formats = {**FORMATS, f"time_vs_{reference}": ".2f"}
    write_json(out_dir / "methods.json", result)
    write_csv(out_dir / "methods.csv", result["rows"], cols)
    prov = result["provenance"]
    features = ", ".join(prov.get("cpu_features") or []) or "none detected"
    lines = [
        "# Training step throughput of each method",
        "",
        f"- command: `{prov['command']}`",
        f"- commit {prov['commit']}, torch {prov['torch']}, {result['device']}"
        f" ({prov.get('gpu') or prov['cpu']}; CPU features: {features}),"
        f" {result['threads']} threads",
        f"- date {prov['date']}; load average before {result['load_average_before']},"
        f" after {result['load_average_after']}",
        f"- {result['model']}, {result['precision']}, {result['memory_format']}, batch"
        f" {result['batch_size']} of random 3x32x32 inputs (no data loading); each method built"
        " by `build_method` with its default options, trained by the trainer's step (penalty,"
        " backward, optimizer step, after-step hook; step counter out of"
        f" {result['total_steps']})",
        f"- {result['reps']} interleaved chunks of {result['steps_per_chunk']} steps after"
        f" {result['warmup']} warm-up steps; ms = median per training step; `ms_forward`"
        " (forward, loss and penalty), `ms_backward` and `ms_step` (optimizer step and the"
        " method's hook): medians of each phase; `time_vs_"
        f"{reference}` = median over chunks of the time ratio to {reference}'s chunk",
        "",
        markdown_table(result["rows"], cols, formats),
        "",
    ]
    text = "\n".join(lines)
    (out_dir / "methods.md").write_text(text)
    return text
