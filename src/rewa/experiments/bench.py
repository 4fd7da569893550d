"""`rewa bench optim`, `train`, `methods` and `precision`: what a ReWA step, and a step of every
other method, costs next to torch's SGD/AdamW."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

import torch

from rewa.bench import methods as bench_methods
from rewa.bench import optim as bench_optim
from rewa.bench import precision as bench_precision
from rewa.bench import train as bench_train
from rewa.bench.shapes import PARAM_SETS
from rewa.cliutil import nonneg_int, positive_int
from rewa.errors import UsageError
from rewa.methods import METHODS
from rewa.models import IMAGE_MODELS


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        msg = f"expected a device such as cpu or cuda, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda requested but torch sees no CUDA device")
    return text


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _common(
    p: argparse.ArgumentParser, out_dir: str, *, warmup: int = 3, thread_counts: bool = False
) -> None:
    """The flags every benchmark takes; `thread_counts`: --threads names several to compare."""
    p.add_argument("--device", type=_device, default=_default_device(), help="cpu, cuda or cuda:N")
    threads = {"nargs": "+", "default": [0]} if thread_counts else {"default": 0}
    what = "thread counts to compare" if thread_counts else "threads"
    p.add_argument(
        "--threads", type=nonneg_int, **threads, help=f"torch CPU {what} (0: torch's default)"
    )
    p.add_argument("--warmup", type=nonneg_int, default=warmup, help="untimed steps before timing")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, gradients, inputs")
    p.add_argument("--out-dir", default=out_dir, help="where the JSON/CSV/markdown go")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no table")


def _chunks(p: argparse.ArgumentParser, *, steps: int, reps: int, each: str) -> None:
    """The batch and the timed chunks of training steps (the training-step benchmarks)."""
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per step")
    p.add_argument("--steps", type=positive_int, default=steps, help="training steps per chunk")
    p.add_argument("--reps", type=positive_int, default=reps, help=f"timed chunks per {each}")


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="benchmarks: optimizer step time, training throughput",
        description="Measure what ReWA costs: `rewa bench optim` times one optimizer step "
        "against torch's SGD and AdamW, `rewa bench train` measures images/s of full training "
        "steps with SGD and with ReWA, `rewa bench methods` those of every sparsification "
        "method, `rewa bench precision` those of float32 and bf16.",
    )
    sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    names = [c.name for c in bench_optim.candidates(torch.device("cpu"), fused=True)]
    p = sub.add_parser(
        "optim",
        help="time one optimizer step on ResNet-20/18/50 parameter shapes and a flat tensor",
        description="Time opt.step() of torch SGD/AdamW (foreach, fused where supported) and ReWA "
        "(SGD and AdamW bases; foreach, single-tensor and compiled paths) on the parameter "
        "shapes of ResNet-20, CIFAR ResNet-18, ResNet-50 and one flat 10M tensor. Reports "
        "ms/step (median, quartiles, min), the ratio to AdamW foreach, and effective memory "
        "bandwidth against a measured copy bandwidth.",
        formatter_class=fmt,
    )
    _common(p, "runs/bench")
    p.add_argument(
        "--sets",
        nargs="+",
        choices=list(PARAM_SETS),
        default=list(PARAM_SETS),
        help="parameter sets to time",
    )
    p.add_argument("--reps", type=positive_int, default=20, help="timed repetitions")
    p.add_argument(
        "--copy-elements",
        type=positive_int,
        default=1 << 25,
        help="float32 elements of the copy-bandwidth probe (large: out of cache)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd ReWA")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help=f"time only these optimizers (adamw-foreach is always timed): {', '.join(names)}",
    )
    p.add_argument(
        "--profile",
        nargs="+",
        metavar="NAME",
        help="also record torch.profiler's per-op table of one step of these optimizers",
    )
    p.add_argument(
        "--allocator",
        choices=("steady", "default"),
        default="steady",
        help="steady (default): keep glibc from handing freed memory back to the OS, so that "
        "optimizers that allocate temporaries at every step (torch's foreach) are timed without "
        "the page faults that otherwise make them vary up to 2x between processes",
    )
    p.set_defaults(func=_optim, optimizer_names=names)

    p = sub.add_parser(
        "train",
        help="images/s of forward + backward + step with SGD vs ReWA",
        description="Train two copies of the same model on one fixed random batch, one with "
        "torch SGD and one with ReWA (K=9, M=2), alternating chunks of steps; report images/s, "
        "the optimizer step time and ReWA's end-to-end overhead.",
        formatter_class=fmt,
    )
    _common(p, "runs/bench")
    p.add_argument(
        "--model",
        choices=IMAGE_MODELS,
        default=None,
        help="model (default: resnet20 on CPU, resnet18 on GPU)",
    )
    _chunks(p, steps=5, reps=10, each="optimizer")
    p.add_argument("--all-params", action="store_true", help="every parameter under ReWA")
    p.add_argument("--compile", action="store_true", help="also time ReWA(compile=True)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "methods",
        help="images/s of a training step of each method (dense, ReWA, l1, GMP, STR, Spred...)",
        description="Set up each method on its own copy of one model as `rewa train` does "
        "(default options, channels_last, bf16 autocast where native) and train it on one fixed "
        "random batch, alternating chunks of steps between methods; report images/s, the time "
        "of forward, backward and optimizer step, and each method's time against the first.",
        formatter_class=fmt,
    )
    _common(p, "runs/bench")
    p.add_argument(
        "--methods",
        nargs="+",
        metavar="NAME",
        default=list(bench_methods.DEFAULT_METHODS),
        help=f"methods to time, the first the reference; valid: {', '.join(sorted(METHODS))}",
    )
    p.add_argument("--model", choices=IMAGE_MODELS, default="resnet20", help="model")
    _chunks(p, steps=5, reps=10, each="method")
    p.add_argument(
        "--bf16",
        choices=("auto", "true", "false"),
        default="auto",
        help="bf16 autocast of the forward pass (auto: where the CPU/GPU computes bf16 natively)",
    )
    p.add_argument(
        "--memory-format",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="memory format of the model and the input (the CPU configs' is channels_last)",
    )
    p.add_argument(
        "--total-steps",
        type=positive_int,
        default=bench_methods.DEFAULT_TOTAL_STEPS,
        help="the run length the methods' schedules see (GMP's ramp and mask updates)",
    )
    p.set_defaults(func=_methods)

    p = sub.add_parser(
        "precision",
        help="training images/s under float32/bf16, contiguous/channels_last, thread counts",
        description="Time training steps (forward + backward + SGD step, one fixed random "
        "batch) of one model under every combination of --threads, --precisions and memory "
        "format (contiguous, channels_last), and with --compile eager and torch.compile'd, "
        "interleaved; report images/s and the ratio to the fastest setting.",
        formatter_class=fmt,
    )
    _common(p, "runs/bench", warmup=1, thread_counts=True)
    p.add_argument(
        "--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
        help="float32, and bf16 autocast of the forward pass",
    )  # fmt: skip
    p.add_argument("--model", choices=IMAGE_MODELS, default="resnet20", help="model")
    _chunks(p, steps=2, reps=3, each="setting")
    p.add_argument(
        "--compile", action="store_true",
        help="also time each setting with the model under torch.compile (model.compile)",
    )  # fmt: skip
    p.set_defaults(func=_precision)


def _check_names(given: list[str] | None, valid: list[str], flag: str) -> None:
    for name in given or []:
        if name not in valid:
            raise UsageError(f"{flag}: unknown optimizer {name!r}; valid: {', '.join(valid)}")


def _optim(args: argparse.Namespace) -> int:
    _check_names(args.only, args.optimizer_names, "--only")
    _check_names(args.profile, args.optimizer_names, "--profile")
    if args.no_compile and any("compiled" in n for n in (args.only or []) + (args.profile or [])):
        raise UsageError("--no-compile excludes the compiled optimizers named in --only/--profile")
    return _run_and_write(bench_optim, args, "optim")


def _train(args: argparse.Namespace) -> int:
    return _run_and_write(bench_train, args, "train")


def _methods(args: argparse.Namespace) -> int:
    # an unknown name is refused by build_method, before anything is timed
    if len(set(args.methods)) < len(args.methods):
        raise UsageError("--methods: a method is named twice")
    args.bf16 = {"true": True, "false": False}.get(args.bf16, args.bf16)
    return _run_and_write(bench_methods, args, "methods")


def _precision(args: argparse.Namespace) -> int:
    return _run_and_write(bench_precision, args, "precision")


def _run_and_write(bench: ModuleType, args: argparse.Namespace, stem: str) -> int:
    """Run one benchmark module, write its STEM.json/.csv/.md and print its table."""
    text = bench.write(bench.run(args), Path(args.out_dir))
    if not args.quiet:
        print(text)
        print(f"Wrote {args.out_dir}/{stem}.json, {stem}.csv, {stem}.md")
    return 0


__all__ = ["register"]
