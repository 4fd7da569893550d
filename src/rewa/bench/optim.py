"""``rewa bench optim``: the cost of one optimizer step, ReWA against torch's SGD and AdamW.

Every optimizer gets its own copy of the same parameters (one shared set of gradients) and all of
them are timed in turn within each repetition, so load on a shared machine hits them alike. The
effective bandwidth divides the bytes an ideal fused step must move (each tensor of the update
read once and written once) by the measured time, and is compared with a plain copy's bandwidth
on the same device: it says how far each step is from the memory-bound optimum.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from rewa.bench.shapes import PARAM_SETS, Shape, numel
from rewa.bench.timing import (
    Summary,
    copy_bandwidth,
    interleaved,
    load_average,
    steady_allocator,
    time_once,
    torch_threads,
)
from rewa.optim import ReWA
from rewa.provenance import provenance
from rewa.report.tables import markdown_table, write_csv, write_json

BASELINE = "adamw-foreach"
# ReWA's hyperparameters in the benchmark: the published CIFAR recipe (K = 9, M = 2, ε = 0).
REWA_KW = dict(K=9.0, M=2.0, eps=0.0, weight_decay=1e-4)


@dataclass(frozen=True)
class Candidate:
    """An optimizer to time: how to build it and how many tensor elements a step must move."""

    name: str
    build: Callable[[list[Tensor]], torch.optim.Optimizer]
    # per parameter element, the state tensors an ideal step reads + writes (float32 each)
    elements_moved: int


def candidates(
    device: torch.device, compiled: bool = True, fused: bool | None = None
) -> list[Candidate]:
    """The optimizers of the issue: torch SGD/AdamW and ReWA's paths, both bases.

    ``fused``: include fused AdamW (None: if this torch build has it for ``device``).
    """
    out = [
        # reads x, g, b; writes x, b
        Candidate(
            "sgd-foreach",
            lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, weight_decay=1e-4, foreach=True),
            5,
        ),
        # reads x, g, m, v; writes x, m, v
        Candidate("adamw-foreach", lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True), 7),
    ]
    if fused if fused is not None else fused_adamw_works(device):
        fused_adamw = lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)  # noqa: E731
        out.append(Candidate("adamw-fused", fused_adamw, 7))
    paths: list[tuple[str, dict[str, Any]]] = [
        ("foreach", {"foreach": True}),
        ("single", {"foreach": False}),
        ("default", {}),  # CPU: consecutive tensors in ~2 MiB groups; AdamW base: fused
        ("nodetect", {"detect_writes": False}),  # as the trainer runs it: no .data-write check
        ("unfused", {"fused": False}),  # AdamW base: the default grouping without the kernel
    ]
    if compiled:
        paths.append(("compiled", {"compile": True}))
    for base, label, moved in (("sgd", "rewa-sgd", 6), ("adamw", "rewa-adamw", 8)):
        # reads y, g and the moments; writes y, x and the moments
        for path, kw in paths:
            if path == "unfused" and base != "adamw":
                continue
            out.append(
                Candidate(
                    f"{label}-{path}",
                    lambda ps, base=base, kw=kw: ReWA(ps, lr=1e-3, base=base, **REWA_KW, **kw),
                    moved,
                )
            )
    return out


def fused_adamw_works(device: torch.device) -> bool:
    """Whether this torch build has a fused AdamW kernel for ``device``."""
    p = torch.zeros(2, device=device, requires_grad=True)
    p.grad = torch.ones_like(p)
    try:
        torch.optim.AdamW([p], lr=1e-3, fused=True).step()
    except (RuntimeError, ValueError, NotImplementedError):
        return False
    return True


def make_tensors(
    shapes: list[Shape], device: torch.device, seed: int
) -> tuple[list[Tensor], list[Tensor]]:
    """Initial weights (He-like scale) and one set of gradients, shared by all optimizers."""
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen).mul_(0.05).to(device) for s in shapes]
    grads = [torch.randn(s, generator=gen).mul_(1e-3).to(device) for s in shapes]
    return weights, grads


def bench_set(
    name: str,
    shapes: list[Shape],
    cands: list[Candidate],
    device: torch.device,
    *,
    reps: int,
    warmup: int,
    seed: int,
    bar: tqdm | None = None,
) -> list[dict[str, Any]]:
    """Time every candidate on one parameter set; one row per candidate."""
    weights, grads = make_tensors(shapes, device, seed)
    steps: dict[str, Callable[[], Any]] = {}
    first_step: dict[str, float] = {}
    for cand in cands:
        params = [w.clone().requires_grad_() for w in weights]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt = cand.build(params)
        first_step[cand.name] = time_once(opt.step, device)  # includes compilation
        for _ in range(warmup):
            opt.step()
        steps[cand.name] = opt.step
    samples = interleaved(steps, device, reps, on_rep=(lambda: bar.update(1)) if bar else None)
    n = numel(shapes)
    rows = []
    for cand in cands:
        s = Summary.of(samples[cand.name])
        paired = [t / b for t, b in zip(samples[cand.name], samples[BASELINE], strict=True)]
        moved = cand.elements_moved * n * 4
        rows.append(
            {
                "params": name,
                "optimizer": cand.name,
                "numel": n,
                "tensors": len(shapes),
                "ms_median": s.median * 1e3,
                "ms_p25": s.p25 * 1e3,
                "ms_p75": s.p75 * 1e3,
                "ms_min": s.min * 1e3,
                "vs_adamw_foreach": Summary.of(paired).median,
                "mb_moved": moved / 1e6,
                "gb_per_s": moved / s.median / 1e9,
                "first_step_s": first_step[cand.name],
            }
        )
    return rows


def profile_step(opt_step: Callable[[], Any], device: torch.device, row_limit: int = 15) -> str:
    """torch.profiler's per-op table of one step (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    opt_step()
    with profile(activities=activities) as prof:
        opt_step()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=row_limit)


COLUMNS = [
    "params",
    "optimizer",
    "ms_median",
    "ms_p25",
    "ms_p75",
    "ms_min",
    "vs_adamw_foreach",
    "gb_per_s",
    "copy_fraction",
    "first_step_s",
]
FORMATS = {
    "ms_median": ".2f",
    "ms_p25": ".2f",
    "ms_p75": ".2f",
    "ms_min": ".2f",
    "vs_adamw_foreach": ".2f",
    "gb_per_s": ".1f",
    "copy_fraction": ".0%",
    "first_step_s": ".2f",
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    every = candidates(device, compiled=not args.no_compile)
    keep = {BASELINE, *args.only} if args.only else {c.name for c in every}
    cands = [c for c in every if c.name in keep]
    allocator = "default"
    if args.allocator == "steady" and device.type == "cpu":
        allocator = steady_allocator() or "default (not glibc)"
    load_before = load_average()
    copy_bw = copy_bandwidth(device, args.copy_elements)
    rows: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    with tqdm(total=args.reps * len(args.sets), desc="bench optim", disable=args.quiet) as bar:
        for name in args.sets:
            bar.set_postfix_str(name)
            rows += bench_set(
                name,
                PARAM_SETS[name](),
                cands,
                device,
                reps=args.reps,
                warmup=args.warmup,
                seed=args.seed,
                bar=bar,
            )
            for prof_name in args.profile or []:
                cand = next((c for c in every if c.name == prof_name), None)
                if cand is None:  # e.g. fused AdamW on a device without it
                    continue
                weights, grads = make_tensors(PARAM_SETS[name](), device, args.seed)
                params = [w.requires_grad_() for w in weights]
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                profiles[f"{name} / {prof_name}"] = profile_step(cand.build(params).step, device)
    copy_after = copy_bandwidth(device, args.copy_elements)
    copy_gbs = (copy_bw.median + copy_after.median) / 2 / 1e9
    for row in rows:
        row["copy_fraction"] = row["gb_per_s"] / copy_gbs
    return {
        "provenance": provenance(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "allocator": allocator,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "copy_gb_per_s": {"before": copy_bw.median / 1e9, "after": copy_after.median / 1e9},
        "reps": args.reps,
        "warmup": args.warmup,
        "rewa_hyperparameters": REWA_KW,
        "rows": rows,
        "profiles": profiles,
    }


def write(result: dict[str, Any], out_dir: Path) -> str:
    """Write optim.json / .csv / .md to ``out_dir``; return the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "optim.json", result)
    write_csv(out_dir / "optim.csv", result["rows"], [*COLUMNS, "numel", "tensors", "mb_moved"])
    prov = result["provenance"]
    lines = [
        "# Optimizer step time",
        "",
        f"- command: `{prov['command']}`",
        f"- commit {prov['commit']}, torch {prov['torch']}, {result['device']}"
        f" ({prov.get('gpu') or prov['cpu']}), {result['threads']} threads",
        f"- date {prov['date']}; load average before {result['load_average_before']},"
        f" after {result['load_average_after']}",
        f"- copy bandwidth (read + write): {result['copy_gb_per_s']['before']:.1f} GB/s before,"
        f" {result['copy_gb_per_s']['after']:.1f} GB/s after",
        f"- CPU allocator: {result.get('allocator', 'default')}",
        f"- {result['reps']} interleaved repetitions after {result['warmup']} warm-up steps;"
        " ms = wall time of `opt.step()`; `vs_adamw_foreach` = median over repetitions of the"
        " time ratio to adamw-foreach in the same repetition; `gb_per_s` = bytes an ideal fused"
        " step moves / median time; `copy_fraction` = that / copy bandwidth;"
        " `first_step_s` includes compilation",
        f"- ReWA: every parameter under ReWA, {result['rewa_hyperparameters']}",
        "",
    ]
    for name in dict.fromkeys(r["params"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["params"] == name]
        lines += [
            f"## {name}: {rows[0]['numel']:,} parameters in {rows[0]['tensors']} tensors",
            "",
            markdown_table(rows, COLUMNS[1:], FORMATS),
            "",
        ]
    for key, table in result["profiles"].items():
        lines += [f"## Profile: {key}", "", "```", table.rstrip(), "```", ""]
    text = "\n".join(lines)
    (out_dir / "optim.md").write_text(text)
    return text
