"""argparse helpers shared by the commands: typed, range-checked values with one-line errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _typed(kind: type, check: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


positive_int = _typed(int, lambda v: v > 0, "a positive integer")
nonneg_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _typed(float, lambda v: v > 0 and v != float("inf"), "a positive number")
nonneg_float = _typed(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
fraction = _typed(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
