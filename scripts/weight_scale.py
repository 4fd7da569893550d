"""Is a model sparse, or only small? Scale-free statistics of the conv + linear weights of runs.

A layer followed by BatchNorm computes the same function at any scale of its weights, so a
decay can shrink such a layer as a whole without sparsifying it, and a fixed threshold such as
|x| <= 1e-3 then counts weights that still matter. Per run: the median |x|, the fraction of
weights below 0.1 and 0.01 of their layer's RMS, and the share of each layer's squared norm held
by its largest 10% of weights (mean over layers; 0.1 for equal weights, 1 for 10%-sparse layers).

    python scripts/weight_scale.py RUN [RUN ...] [--out FILE.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rewa.provenance import provenance
from rewa.report.tables import markdown_table
from rewa.sparsity import effective_weights, normalized_magnitudes
from rewa.train.source import plain_model, read_source


def statistics(run: str) -> dict[str, str]:
    model = plain_model(read_source(run, echo=lambda *args: None))
    weights = [w.float() for _, w in effective_weights(model)]  # what sparsity is measured over
    relative = torch.cat([r.flatten() for r in normalized_magnitudes(weights, "rms")])
    magnitudes = torch.cat([w.abs().flatten() for w in weights])
    top_share = []
    for w in weights:
        energy = w.flatten().pow(2).sort(descending=True).values
        top_share.append(float(energy[: max(1, energy.numel() // 10)].sum() / energy.sum()))
    return {
        "run": run,
        "median magnitude": f"{float(magnitudes.median()):.2e}",
        "≤ 1e-3": f"{float((magnitudes <= 1e-3).float().mean()):.1%}",
        "< 0.1 × layer RMS": f"{float((relative < 0.1).float().mean()):.1%}",
        "< 0.01 × layer RMS": f"{float((relative < 0.01).float().mean()):.1%}",
        "norm² in top 10%": f"{sum(top_share) / len(top_share):.3f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories or checkpoints")
    parser.add_argument("--out", type=Path, help="write the table (with provenance) here")
    args = parser.parse_args()
    rows = [statistics(run) for run in args.runs]
    text = markdown_table(rows, list(rows[0])) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# Sparse or only small? (scripts/weight_scale.py)\n\n"
            + text
            + "\n"
            + "\n".join(f"- {k}: {v}" for k, v in provenance().items())
            + "\n"
        )


if __name__ == "__main__":
    main()
