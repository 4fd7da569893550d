"""Median (over rounds) ratios of ReWA's step to torch's fastest same-base step, from the tables
scripts/bench_ab.sh writes under OUT/{base,new}_N/optim.md:

    python scripts/bench_ab_ratios.py OUT
"""

from __future__ import annotations

import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

PAIRS = [
    ("rewa-sgd/sgd-foreach", "rewa-sgd-default", "sgd-foreach"),
    ("nodetect", "rewa-sgd-nodetect", "sgd-foreach"),
    ("rewa-adamw/adamw-fused", "rewa-adamw-default", "adamw-fused"),
    ("nodetect", "rewa-adamw-nodetect", "adamw-fused"),
]


def read(out: Path) -> dict[tuple[str, str, str], list[float]]:
    """(side, shape set, optimizer) -> ms per step of every round."""
    times: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for table in sorted(out.glob("*_*/optim.md")):
        side = table.parent.name.split("_")[0]
        shapes = None
        for line in table.read_text().splitlines():
            if heading := re.match(r"## (\w+):", line):
                shapes = heading.group(1)
            elif (row := re.match(r"\|\s+([a-z-]+)\s+\|\s+([\d.]+)", line)) and shapes:
                times[(side, shapes, row.group(1))].append(float(row.group(2)))
    return times


def ratio(times, side: str, shapes: str, a: str, b: str) -> float:
    pairs = zip(times[(side, shapes, a)], times[(side, shapes, b)], strict=True)
    return statistics.median(x / y for x, y in pairs)


def main() -> None:
    times = read(Path(sys.argv[1]))
    for shapes in sorted({k[1] for k in times}):
        for side in ("base", "new"):
            cells = [f"{name} {ratio(times, side, shapes, a, b):.2f}" for name, a, b in PAIRS]
            print(f"{shapes:9s} {side}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
