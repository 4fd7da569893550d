"""`rewa study NAME`: the parent command of the studies (each a module in rewa.cli.COMMANDS)."""

from __future__ import annotations

import argparse

_KEY = "_rewa_study_subparsers"


def study_subparsers(commands: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The subparsers of `rewa study`, created by the first study module that registers."""
    existing = getattr(commands, _KEY, None)
    if existing is not None:
        return existing
    parser = commands.add_parser(
        "study",
        help="experiments that compare methods (e.g. `rewa study linear`)",
        description="Studies: each runs a grid of methods and writes tables, plots and provenance.",
    )
    studies = parser.add_subparsers(dest="study", metavar="STUDY")
    parser.set_defaults(func=lambda args: _no_study(parser))
    setattr(commands, _KEY, studies)
    return studies


def _no_study(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
