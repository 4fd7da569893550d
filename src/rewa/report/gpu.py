"""README.md of scripts/gpu_check.sh's folder: what ran, the optimizer step against fused AdamW,
training images/s, and the published recipe's accuracy at 90-99.2% sparsity beside the published
numbers. ``python -m rewa.report.gpu DIR``; a stage that left no file is reported as missing."""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from rewa.report.tables import markdown_table

# docs/METHOD.md: CIFAR-10, ResNet-18, 100 epochs, K=9 M=2, one-shot global threshold; the
# published points (accuracy @ sparsity) next to the sparsity we evaluate at
PUBLISHED = {0.9: "91.9% @ 90.4%", 0.99: "91.5% @ 99.0%", 0.992: "90.2% @ 99.2%"}
TARGETS = (0.9, 0.95, 0.98, 0.99, 0.992)
OPTIMIZERS = (
    "adamw-fused", "adamw-foreach", "sgd-foreach", "rewa-sgd-default", "rewa-sgd-compiled",
    "rewa-adamw-default", "rewa-adamw-compiled",
)  # fmt: skip


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _stages(folder: Path) -> str:
    path = folder / "stages.txt"
    if not path.is_file():
        return "(no stages.txt)"
    return "\n".join(f"- `{line}`" for line in path.read_text().splitlines() if line.strip())


def _tests(folder: Path) -> str:
    path = folder / "tests.log"
    if not path.is_file():
        return "not run"
    lines = [
        ln for ln in path.read_text().splitlines() if re.search(r"\d+ (passed|skipped|failed)", ln)
    ]
    return lines[-1].strip("= ") if lines else "no summary line (see tests.log)"


def _optim_table(bench: dict[str, Any] | None) -> str:
    if not bench:
        return "not measured (bench/optim.json missing)"
    rows = []
    for r in bench["rows"]:
        if r["optimizer"] not in OPTIMIZERS:
            continue
        fused = next(
            (
                x
                for x in bench["rows"]
                if x["params"] == r["params"] and x["optimizer"] == "adamw-fused"
            ),
            None,
        )
        rows.append(
            {
                "params": r["params"],
                "optimizer": r["optimizer"],
                "ms": r["ms_median"],
                "x_adamw_foreach": r["vs_adamw_foreach"],
                "x_adamw_fused": r["ms_median"] / fused["ms_median"] if fused else None,
                "gb_per_s": r.get("gb_per_s"),
            }
        )
    columns = ["params", "optimizer", "ms", "x_adamw_foreach", "x_adamw_fused", "gb_per_s"]
    formats = {"ms": ".3f", "x_adamw_foreach": ".2f", "x_adamw_fused": ".2f", "gb_per_s": ".0f"}
    return markdown_table(rows, columns, formats)


def _precision_table(bench: dict[str, Any] | None) -> str:
    if not bench:
        return "not measured (bench/precision.json missing)"
    columns = ["precision", "memory_format", "images_per_s", "ms_per_step"]
    table = markdown_table(bench["rows"], columns, {"images_per_s": ".0f", "ms_per_step": ".2f"})
    return f"{bench['model']}, batch {bench['batch_size']}, eager, SGD step:\n\n{table}"


def _training(folder: Path) -> tuple[str, str]:
    evaluation = _json(folder / "run" / "eval.json")
    metrics = folder / "run" / "metrics.jsonl"
    if evaluation is None:
        return "not trained (run/eval.json missing)", ""
    records = []
    if metrics.is_file():
        records = [json.loads(x) for x in metrics.read_text().splitlines()]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    speed = [r["images_per_s"] for r in epochs[1:] if r.get("images_per_s")]  # after compile
    seconds = sum(r.get("epoch_seconds", 0.0) for r in epochs)
    final = evaluation["final"]
    facts = (
        f"{evaluation['epoch']} of {evaluation['epochs']} epochs; training {seconds:.0f} s, "
        f"median {statistics.median(speed) if speed else float('nan'):,.0f} images/s (epochs "
        f"after the first); unpruned test accuracy {final.get('test_acc', float('nan')):.4f}, "
        f"exact zeros {final['sparsity']:.2%} of conv + linear weights."
    )
    test = evaluation["at_sparsity"].get("test", {})
    rows = []
    for target in TARGETS:
        hit = test.get(str(target)) or test.get(f"{target:g}")
        published = PUBLISHED.get(target, "")
        rows.append(
            {
                "sparsity": f"{target:.1%}",
                "test_acc": hit["accuracy"] if hit else None,
                "achieved": hit["sparsity"] if hit else None,
                "published (ReWA K=9 M=2)": published,
            }
        )
    columns = ["sparsity", "test_acc", "achieved", "published (ReWA K=9 M=2)"]
    return facts, markdown_table(rows, columns, {"test_acc": ".4f", "achieved": ".3%"})


def write_readme(folder: str | Path) -> str:
    folder = Path(folder)
    env = (folder / "env.txt").read_text().strip() if (folder / "env.txt").is_file() else ""
    facts, accuracy = _training(folder)
    text = f"""# GPU check (scripts/gpu_check.sh)

```
{env}
```

Stages (return code, seconds):

{_stages(folder)}

## CUDA tests

`pytest -m cuda`: {_tests(folder)}

## Optimizer step (`rewa bench optim`)

{_optim_table(_json(folder / "bench" / "optim.json"))}

`x_adamw_fused`: time of the step over torch's fused AdamW on the same parameters.

## Training throughput (`rewa bench precision`)

{_precision_table(_json(folder / "bench" / "precision.json"))}

## The published recipe (configs/cifar10_resnet18_rewa.yaml)

CIFAR-10 (the JPEG-decoded copy, carried as JPEGs), CIFAR ResNet-18 (3x3 stem, 32 px; the
published harness upsampled to 224 px with an ImageNet ResNet-18), ReWA K=9 M=2 κ=1e-4 on SGD,
lr 0.256 cosine, batch 256, bf16 autocast. {facts}

Test accuracy after one global magnitude threshold at each sparsity (no fine-tuning), the
last epoch's weights:

{accuracy}
"""
    (folder / "README.md").write_text(text)
    return text


if __name__ == "__main__":
    print(write_readme(sys.argv[1] if len(sys.argv) > 1 else "results/gpu"))
