"""Result tables as markdown, CSV and JSON."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Row = Mapping[str, Any]


def _cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return format(value, fmt or ".4g")
    return str(value)


def markdown_table(
    rows: Sequence[Row], columns: Sequence[str], formats: Mapping[str, str] | None = None
) -> str:
    """A GitHub-flavoured markdown table of ``columns`` (keys of each row)."""
    formats = formats or {}
    cells = [[_cell(row.get(c), formats.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str], align: str) -> str:
        padded = [getattr(v, align)(w) for v, w in zip(values, widths, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns, "ljust"), rule, *(line(r, "rjust") for r in cells)])


def write_csv(path: str | Path, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: str | Path, payload: Any) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
