"""The `rewa` command line: one subcommand per module in COMMANDS."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rewa import __version__
from rewa.errors import UsageError

# Each module defines register(subparsers) adding its parser with set_defaults(func=...).
COMMANDS = [
    "rewa.experiments.demo",
    "rewa.experiments.train_cli",
    "rewa.experiments.study_linear",
    "rewa.experiments.study_cifar",
    "rewa.experiments.study_lm",
    "rewa.experiments.bench",
    "rewa.experiments.prune_cli",
    "rewa.experiments.target_sparsity",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewa",
        description="Sparse training with ReWA: experiments, reports, pruning and export.",
    )
    parser.add_argument("--version", action="version", version=f"rewa {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"rewa {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rewa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
