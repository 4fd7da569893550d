"""The end-of-run evaluation (also ``rewa eval RUN_DIR``): threshold sweep, per-layer sparsity,
plots, written as eval.json / eval.md / PNGs in the run directory.

It uses the weights of the run's last checkpoint (the last epoch), never a "best test" epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rewa.errors import UsageError
from rewa.provenance import provenance
from rewa.report import curves
from rewa.report.tables import markdown_table, write_json
from rewa.sparsity import (
    DEFAULT_THRESHOLDS,
    MAGNITUDE_NAMES,
    SparsityReport,
    effective_weights,
    sparsity_report,
)
from rewa.train import checkpoint, distributed
from rewa.train.config import Config, config_from_dict
from rewa.train.datasets import split_size
from rewa.train.evaluation import (
    accuracy_at_sparsity,
    normalized_prunes,
    threshold_sweep,
    use_bf16,
)
from rewa.train.rundir import CONFIG, EVAL_JSON, EVAL_MD, METRICS, read_metrics, stored_config
from rewa.train.trainer import (
    build_model_and_method,
    eval_batches,
    load_data,
    select_device,
)

LAYER_THRESHOLD = 1e-3  # the second bar of the per-layer plot
SWEEP_COLUMNS = ["threshold", "source", "sparsity", "val_acc", "test_acc"]
SWEEP_FORMATS = {"threshold": ".3g", "sparsity": ".4%", "val_acc": ".4f", "test_acc": ".4f"}


def final_evaluation(
    root: Path,
    config: Config,
    model: nn.Module,
    splits: dict[str, Any],
    *,
    epoch: int,
    device: torch.device,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Sweep thresholds on ``model`` (already folded to plain weights) and write the artifacts."""
    cfg = config.eval
    splits = {name: batches for name, batches in splits.items() if batches is not None}
    targets = list(cfg.target_sparsities)
    bf16 = use_bf16(config.model.bf16, device)
    with tqdm(desc="threshold sweep", unit="τ", disable=not progress, leave=False) as bar:
        points = threshold_sweep(
            model,
            splits,
            thresholds=cfg.thresholds,
            target_sparsities=targets,
            device=device,
            bf16=bf16,
            progress=lambda _: bar.update(1),
        )
    normalize = config.sparsity.normalize
    normalized = None
    if normalize != "none" and targets:
        normalized = normalized_prunes(
            model,
            splits,
            target_sparsities=targets,
            normalize=normalize,
            device=device,
            bf16=bf16,
        )
    report = sparsity_report(model, sorted(set(DEFAULT_THRESHOLDS) | {LAYER_THRESHOLD}))
    empty = report.empty_layers()
    at = {
        split: {str(t): accuracy_at_sparsity(points, t, split) for t in targets} for split in splits
    }
    as_trained = points[0]
    result = {
        "provenance": provenance(),
        "run_dir": str(root),
        "epoch": epoch,
        "epochs": config.schedule.epochs,
        "weights": "last epoch (never best-test)",
        "denominator": "conv + linear weights",
        "split_sizes": {name: split_size(batches) for name, batches in splits.items()},
        "parameters": sum(p.numel() for p in model.parameters()),
        "final": {
            **{f"{s}_acc": as_trained.get(f"{s}_acc") for s in splits},
            **{f"{s}_loss": as_trained.get(f"{s}_loss") for s in splits},
            "sparsity": report.sparsity,
            "compression": report.compression,
        },
        "at_sparsity": at,
        "at_sparsity_rule": "accuracy at the smallest swept threshold whose sparsity >= target "
        "(the sweep includes the global-magnitude threshold of each target; not interpolated)",
        "sweep": points,
        "empty_layers": empty,
        "layers": report.to_dict(),
        "config": config.to_dict(),
    }
    if normalized is not None:
        result["at_sparsity_normalized"] = {
            "normalize": normalize,
            "rule": f"global magnitude of {MAGNITUDE_NAMES[normalize]} (the run's "
            "sparsity.normalize), pruned to each target",
            "points": normalized,
        }
    if not distributed.is_main():
        return result
    write_json(root / EVAL_JSON, result)
    (root / EVAL_MD).write_text(eval_markdown(result, report))
    if cfg.plots:
        write_plots(root, points, report, model)
    for name in empty:
        echo(f"WARNING: layer {name} is entirely zero: the network is cut there")
    echo(
        f"final (epoch {epoch}): "
        + " ".join(f"{s}_acc {as_trained[f'{s}_acc']:.4f}" for s in splits)
        + f" exact sparsity {report.sparsity:.2%}; wrote {root / EVAL_MD}"
    )
    return result


def write_plots(
    root: Path, points: list[dict[str, Any]], report: SparsityReport, model: nn.Module
) -> None:
    splits = {"val": "validation", "test": "test"}
    curves.accuracy_sparsity_plot(
        root / "accuracy_sparsity.png",
        {label: curves.sweep_curve(points, s) for s, label in splits.items()},
        title=f"{root.name}: accuracy vs sparsity (last epoch, one-shot global threshold)",
    )
    curves.layer_sparsity_plot(root / "layer_sparsity.png", report, LAYER_THRESHOLD)
    curves.weight_histogram(root / "weight_histogram.png", [w for _, w in effective_weights(model)])
    curves.training_curves(root / "training_curves.png", read_metrics(root / METRICS))


def eval_markdown(result: dict[str, Any], report: SparsityReport) -> str:
    splits = list(result["split_sizes"])
    lines = [
        f"# Evaluation of {result['run_dir']}",
        "",
        f"Weights of epoch {result['epoch']} of {result['epochs']} (last epoch, never best-test). "
        f"Sparsity denominator: {result['denominator']} ({report.total:,} weights). "
        "Split sizes: " + ", ".join(f"{k} {v:,}" for k, v in result["split_sizes"].items()) + ".",
        "",
        "## As trained",
        "",
        markdown_table(
            [result["final"]],
            [*(f"{s}_acc" for s in splits), "sparsity", "compression"],
            {"sparsity": ".4%", "compression": ".2f", **SWEEP_FORMATS},
        ),
        "",
        "## Accuracy at target sparsity",
        "",
        result["at_sparsity_rule"] + ".",
        "",
    ]
    rows = []
    for target in next(iter(result["at_sparsity"].values()), {}):
        row: dict[str, Any] = {"target": float(target)}
        for s in splits:
            hit = result["at_sparsity"][s][target]
            row[f"{s}_acc"] = hit["accuracy"] if hit else None
            row["sparsity"] = hit["sparsity"] if hit else None
            row["threshold"] = hit["threshold"] if hit else None
        rows.append(row)
    lines += [
        markdown_table(
            rows,
            ["target", "threshold", "sparsity", *(f"{s}_acc" for s in splits)],
            {"target": ".0%", **SWEEP_FORMATS},
        ),
        "",
        *_normalized_section(result, splits),
        "## Threshold sweep (zero every |x| <= τ)",
        "",
        markdown_table(
            result["sweep"], [c for c in SWEEP_COLUMNS if c in result["sweep"][0]], SWEEP_FORMATS
        ),
        "",
        "## Per-layer sparsity",
        "",
    ]
    if result["empty_layers"]:
        lines += [
            "**WARNING: entirely zero layers (the network is cut there): "
            + ", ".join(result["empty_layers"])
            + "**",
            "",
        ]
    lines += ["```", report.format(), "```", ""]
    return "\n".join(lines)


def _normalized_section(result: dict[str, Any], splits: list[str]) -> list[str]:
    normalized = result.get("at_sparsity_normalized")
    if normalized is None:
        return []
    return [
        f"## Accuracy at target sparsity, pruned by {MAGNITUDE_NAMES[normalized['normalize']]}",
        "",
        normalized["rule"] + ".",
        "",
        markdown_table(
            normalized["points"],
            ["target", "sparsity", *(f"{s}_acc" for s in splits)],
            {"target": ".0%", **SWEEP_FORMATS},
        ),
        "",
    ]


def evaluate_run(
    run_dir: str | Path,
    *,
    device: str | None = None,
    data_dir: str | None = None,
    plots: bool = True,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-run the final evaluation of a run from its newest good checkpoint."""
    root = Path(run_dir)
    if stored_config(root) is None and not (root / checkpoint.LATEST).exists():
        raise UsageError(f"{root} is not a run directory (no {CONFIG} or checkpoint)")
    loaded = checkpoint.load_latest_good(root)
    if loaded is None:
        raise UsageError(f"{root} has no checkpoint yet (training has not finished an epoch)")
    for problem in loaded.problems:
        echo(f"WARNING: {problem}; using {loaded.path.name}")
    config = config_from_dict(loaded.payload["config"])
    if data_dir is not None:
        config.data.data_dir = data_dir
    config.eval.plots = config.eval.plots and plots
    torch_device = select_device(device or config.train.device)
    data = load_data(config)
    model, method = build_model_and_method(config, data.num_classes, torch_device)
    model.load_state_dict(loaded.payload["model"])
    method.load_state_dict(loaded.payload["method"])
    epoch = int(loaded.payload["epoch"])
    if epoch < config.schedule.epochs:
        echo(f"note: the run is not finished; evaluating epoch {epoch} of {config.schedule.epochs}")
    folded = method.fold()
    splits = {"val": eval_batches(config, data, "val", torch_device)}
    if config.eval.test:
        splits["test"] = eval_batches(config, data, "test", torch_device)
    return final_evaluation(
        root,
        config,
        folded,
        splits,
        epoch=epoch,
        device=torch_device,
        echo=echo,
        progress=progress,
    )


__all__ = ["evaluate_run", "final_evaluation"]
