"""``rewa bench precision``: training images/s of a model under each CPU/GPU setting a config can
choose — float32 or bf16 autocast, contiguous or channels_last, torch thread counts, and with
``--compile`` the model eager or under ``torch.compile`` (``model.compile``).

One model and one fixed random batch (no data loading), torch SGD; the settings' chunks of steps
are interleaved repetition by repetition so that load on a shared machine hits them alike. This
is what picked the defaults of the CPU configs (``model.bf16: auto``, ``channels_last: true``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rewa.bench.timing import Summary, load_average, synchronize
from rewa.models import build_model
from rewa.provenance import provenance
from rewa.report.tables import markdown_table, write_csv, write_json
from rewa.train.evaluation import autocast, native_bf16

# untimed steps at least for a torch.compile'd model: the first compiles forward and backward; one
# more keeps a recompilation (a guard failing on the second call) out of the timed chunks
COMPILED_WARMUP = 2


class Setting:
    """One (threads, precision, memory format, compiled) combination with its own model and
    optimizer."""

    def __init__(
        self, base: nn.Module, threads: int, bf16: bool, channels_last: bool, compiled: bool, batch
    ):
        self.threads, self.bf16 = threads, bf16
        self.channels_last, self.compiled = channels_last, compiled
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = copy.deepcopy(base).to(memory_format=fmt).train()
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        self.model = torch.compile(model) if compiled else model
        x, y = batch
        self.x, self.y = x.contiguous(memory_format=fmt), y
        self.seconds: list[float] = []

    @property
    def label(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "precision": "bf16 autocast" if self.bf16 else "float32",
            "memory_format": "channels_last" if self.channels_last else "contiguous",
            "model": "torch.compile" if self.compiled else "eager",
        }

    def chunk(self, steps: int, device: torch.device) -> float:
        if self.threads:
            torch.set_num_threads(self.threads)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            self.opt.zero_grad(set_to_none=True)
            with autocast(device, self.bf16):
                logits = self.model(self.x)
            nn.functional.cross_entropy(logits.float(), self.y).backward()
            self.opt.step()
        synchronize(device)
        return (time.perf_counter() - start) / steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    threads_before = torch.get_num_threads()
    torch.manual_seed(args.seed)
    base = build_model(args.model, num_classes=10).to(device)
    gen = torch.Generator().manual_seed(args.seed)
    batch = (
        torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device),
        torch.randint(0, 10, (args.batch_size,), generator=gen).to(device),
    )
    modes = (False, True) if args.compile else (False,)
    combos = itertools.product(args.threads, args.precisions, (False, True), modes)
    settings = [Setting(base, t, p == "bf16", cl, c, batch) for t, p, cl, c in combos]
    load_before = load_average()
    try:
        for s in settings:
            warmup = max(args.warmup, COMPILED_WARMUP) if s.compiled else args.warmup
            if warmup:
                s.chunk(warmup, device)
        for _ in tqdm(range(args.reps), desc="bench precision", disable=args.quiet):
            for s in settings:
                s.seconds.append(s.chunk(args.steps, device))
    finally:
        torch.set_num_threads(threads_before)
    rows = []
    for s in settings:
        summary = Summary.of(s.seconds)
        rows.append(
            {
                **s.label,
                "images_per_s": args.batch_size / summary.median,
                "ms_per_step": summary.median * 1e3,
                "ms_p25": summary.p25 * 1e3,
                "ms_p75": summary.p75 * 1e3,
            }
        )
    fastest = max(rows, key=lambda r: r["images_per_s"])
    for row in rows:
        row["vs_fastest"] = row["images_per_s"] / fastest["images_per_s"]
    return {
        "provenance": provenance(),
        "device": str(device),
        "native_bf16": native_bf16(device),
        "model": args.model,
        "batch_size": args.batch_size,
        "steps_per_chunk": args.steps,
        "reps": args.reps,
        "warmup": args.warmup,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "rows": rows,
    }


COLUMNS = [
    "threads", "precision", "memory_format", "model", "images_per_s", "ms_per_step", "ms_p25",
    "ms_p75", "vs_fastest",
]  # fmt: skip
FORMATS = {
    "images_per_s": ".1f", "ms_per_step": ".1f", "ms_p25": ".1f", "ms_p75": ".1f",
    "vs_fastest": ".2f",
}  # fmt: skip


def write(result: dict[str, Any], out_dir: Path) -> str:
    """Write precision.json / .csv / .md to ``out_dir``; return the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "precision.json", result)
    write_csv(out_dir / "precision.csv", result["rows"], COLUMNS)
    prov = result["provenance"]
    lines = [
        "# Training throughput by precision, memory format, threads and compilation",
        "",
        f"- command: `{prov['command']}`",
        f"- commit {prov['commit']}, torch {prov['torch']}, {result['device']}"
        f" ({prov.get('gpu') or prov['cpu']}, {prov['cpu_count']} cores); native bf16:"
        f" {result['native_bf16']}",
        f"- date {prov['date']}; load average before {result['load_average_before']},"
        f" after {result['load_average_after']}",
        f"- {result['model']}, batch {result['batch_size']} of random 3x32x32 inputs (no data"
        " loading), forward + backward + SGD step; median over"
        f" {result['reps']} interleaved chunks of {result['steps_per_chunk']} steps after"
        f" {result['warmup']} warm-up steps ({COMPILED_WARMUP} or more for a compiled model,"
        " its compilation among them)",
        "",
        markdown_table(result["rows"], COLUMNS, FORMATS),
        "",
    ]
    text = "\n".join(lines)
    (out_dir / "precision.md").write_text(text)
    return text
