"""Thin runners for the benchmarks: ``python -m benchmarks.optim`` = ``rewa bench optim``.

The benchmark code lives in the installed package (:mod:`rewa.bench`) so that the ``rewa bench``
command works from any install; these modules only forward their flags to it.
"""

from __future__ import annotations

import sys


def forward(benchmark: str) -> int:
    """Run ``rewa bench <benchmark>`` with this process's command-line flags."""
    from rewa.cli import main

    sys.argv = ["rewa", "bench", benchmark, *sys.argv[1:]]  # as the provenance record shows it
    return main(sys.argv[1:])
