"""`rewa prune` and `rewa export`: from a trained run to a pruned, fine-tuned, exported model.

``rewa prune RUN_DIR --sparsity S`` (or ``--threshold T``) folds the run's last checkpoint into
a plain model, zeroes weights by global magnitude, reports the per-layer allocation (warning
about layers that became entirely zero), measures the pruned model's accuracy, and writes
``pruned.pt`` (weights + masks). ``--finetune-epochs N`` then trains it with the masks kept
after every step (a normal run directory ``finetune/``, resumable with ``--resume``).

``rewa export RUN_DIR|CHECKPOINT`` writes ``model_dense.pt`` (a plain state_dict with exact
zeros) and ``model_sparse.pt`` (compact, see :mod:`rewa.export`), checks that the sparse file
loads back into the same architecture with bit-identical outputs and accuracy, and measures
file sizes and CPU inference latency of dense kernels vs torch's sparse (CSR) kernels.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewa.baselines.posthoc import CRITERIA as POSTHOC
from rewa.baselines.posthoc import calibration_runner, prune_posthoc_
from rewa.cliutil import fraction, nonneg_float, nonneg_int, positive_float, positive_int
from rewa.errors import UsageError
from rewa.export import (
    latency,
    load_sparse,
    payload_bytes,
    save_dense,
    save_sparse,
    sparse_inference_model,
)
from rewa.masks import Masks, allocation, allocation_rows, dead_layer_warnings
from rewa.models import build_model
from rewa.provenance import provenance
from rewa.report.tables import markdown_table, write_csv, write_json
from rewa.sparsity import MAGNITUDE_NAMES, NORMALIZATIONS, sparsity_report
from rewa.train.source import PRUNED, Source, num_classes_of, plain_model, read_source

FINETUNE = "finetune"
ALLOCATION_COLUMNS = ["layer", "weights", "nonzeros", "sparsity", "share_of_nonzeros", "empty"]
ALLOCATION_FORMATS = {"sparsity": ".2%", "share_of_nonzeros": ".2%"}


def accuracies(model: nn.Module, config: Any, device: torch.device) -> dict[str, float]:
    """Top-1 accuracy on the config's validation and test splits (as they were in training)."""
    from rewa.train.datasets import eval_batches, load_data
    from rewa.train.evaluation import evaluate

    data = load_data(config)
    out = {}
    for split in ("val", "test"):
        batches = eval_batches(config, data, split, device)
        if batches is not None:
            result = evaluate(model, batches, device=device)
            out[f"{split}_acc"], out[f"{split}_loss"] = result.accuracy, result.loss
    return out


def recalibrated_accuracies(
    model: nn.Module, config: Any, device: torch.device, images: int
) -> dict[str, Any]:
    """Re-estimate ``model``'s BatchNorm statistics on training images (the run's augmentation,
    epoch 0 order) and measure the accuracies again."""
    from rewa.train.datasets import load_data, train_batches
    from rewa.train.evaluation import recalibrate_batchnorm

    batches = train_batches(config, load_data(config), device)
    batches.set_epoch(0)
    used = recalibrate_batchnorm(model, batches, images)
    return {"images": used, **accuracies(model, config, device)}


def try_accuracies(model, config, device, echo) -> dict[str, float]:
    try:
        return accuracies(model, config, device)
    except UsageError as err:
        echo(f"note: accuracy not measured ({err}); pass --data-dir DIR to measure it")
        return {}


def prepare_out(out: Path, force: bool) -> None:
    """``out`` must be new or empty unless ``force``."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} is not empty; pick another directory or pass --force")
    out.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------- rewa prune


def default_prune_dir(source: Source, args: argparse.Namespace) -> Path:
    base = source.path.parent
    tag = f"s{args.sparsity:g}" if args.sparsity is not None else f"t{args.threshold:g}"
    suffix = "" if args.normalize == "none" else f"_{args.normalize}"
    return base / f"pruned_{tag}{suffix}"


def prune_rule(args: argparse.Namespace) -> str:
    """The pruning rule in words, as prune.json and prune.md state it."""
    if args.criterion != "magnitude":
        return (
            f"{args.criterion}, sparsity {args.sparsity:g} in every linear layer, from "
            f"{args.calibration_batches} calibration batches"
        )
    magnitude = MAGNITUDE_NAMES[args.normalize]
    if args.sparsity is not None:
        return f"global magnitude of {magnitude}, sparsity {args.sparsity:g}"
    return f"{magnitude} <= {args.threshold:g}"


def prune(args: argparse.Namespace, echo=print) -> dict[str, Any]:
    from rewa.train import checkpoint
    from rewa.train.sparse_hooks import pruned_payload

    source = read_source(args.source, echo)
    config = source.config
    if args.data_dir:
        config.data.data_dir = args.data_dir
    if args.normalize is None:  # prune by the magnitude the run was steered on
        args.normalize = config.sparsity.normalize
        if args.normalize != "none":
            echo(f"normalize: {args.normalize} (the run's sparsity.normalize)")
    out = Path(args.out) if args.out else default_prune_dir(source, args)
    resuming = args.resume and (out / PRUNED).is_file()
    if not resuming:
        prepare_out(out, args.force)
    device = torch.device("cpu")
    model = plain_model(source, device)
    before = sparsity_report(model, ()).sparsity
    masks = posthoc_masks(model, config, args) if args.criterion != "magnitude" else None
    try:
        if masks is None:
            masks = Masks.from_model(
                model, threshold=args.threshold, sparsity=args.sparsity, normalize=args.normalize
            )
    except ValueError as err:
        raise UsageError(str(err)) from None
    masks.apply_(model)
    report = allocation(model)
    rows = allocation_rows(report)
    warnings = dead_layer_warnings(report)
    for warning in warnings:
        echo(f"WARNING: {warning}")
    acc = {} if args.no_eval else try_accuracies(model, config, device, echo)
    if args.bn_recalibrate and not resuming:
        acc["bn_recalibrated"] = recalibrated_accuracies(model, config, device, args.bn_recalibrate)
    facts = {
        "source": str(source.path),
        "rule": prune_rule(args),
        "sparsity_before": before,
        "sparsity": report.sparsity,
        "weights": report.total,
        "nonzeros": report.nonzeros,
        "empty_layers": report.empty_layers(),
        "num_classes": num_classes_of(config, source.payload["model"]),
        **acc,
    }
    if not resuming:
        payload = pruned_payload(model, masks, config.to_dict(), facts)
        checkpoint.atomic_write_bytes(out / PRUNED, checkpoint.encode(payload))
    result: dict[str, Any] = {"provenance": provenance(), "pruned": facts, "allocation": rows}
    if resuming:  # the recalibrated statistics are in pruned.pt, measured when it was written
        old = json.loads((out / "prune.json").read_text()) if (out / "prune.json").is_file() else {}
        if "bn_recalibrated" in old.get("pruned", {}):
            facts["bn_recalibrated"] = old["pruned"]["bn_recalibrated"]
    if args.finetune_epochs:
        result.update(finetune_on_validation(config, out, args, echo))
    write_json(out / "prune.json", result)
    write_csv(out / "allocation.csv", rows, ALLOCATION_COLUMNS)
    (out / "prune.md").write_text(prune_markdown(result, warnings))
    echo(prune_summary(result, out))
    return result


def posthoc_masks(model: nn.Module, config: Any, args: argparse.Namespace) -> Masks:
    """Wanda / SparseGPT masks (the model's weights pruned in place) from the run's training
    batches (epoch 0 order)."""
    from rewa.train.datasets import load_data, train_batches

    if args.sparsity is None:
        raise UsageError(f"--criterion {args.criterion} needs --sparsity (not --threshold)")
    data = load_data(config)
    run = calibration_runner(
        model, train_batches(config, data, torch.device("cpu")), args.calibration_batches
    )
    try:
        masks = prune_posthoc_(model, args.sparsity, args.criterion, run)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return Masks(masks)


def finetune_dir(out: Path, index: int, lr: float | None) -> Path:
    """The first --finetune-lr fine-tunes in ``finetune/``, any further one in
    ``finetune_lr<LR>/``."""
    return out / (FINETUNE if index == 0 else f"{FINETUNE}_lr{lr:g}")


def finetune_on_validation(
    config: Any, out: Path, args: argparse.Namespace, echo
) -> dict[str, Any]:
    """One masked fine-tuning per --finetune-lr value, each from the same pruned model. With
    several, ``finetune`` is the one of best validation accuracy (lowest validation loss for a
    language model; the first on a tie) and
    ``finetune_trials`` lists them all: a fixed lr is not fair across methods, since behind
    BatchNorm a step moves a layer by about lr / ||w||^2 and methods leave weights of different
    sizes."""
    lrs = args.finetune_lr or [None]  # None: the default, 0.1 x the run's lr
    names = [f"{lr:g}" for lr in lrs if lr is not None]
    if len(set(names)) < len(names):  # each names its run directory
        raise UsageError(f"--finetune-lr values repeat: {' '.join(names)}")
    configs = [finetune_config(config, out / PRUNED, args, lr) for lr in lrs]
    if len(lrs) > 1 and configs[0].data.val_size == 0:
        raise UsageError(
            "several --finetune-lr values are chosen between on the validation split, and this "
            "run has none (data.val_size=0); pass one value"
        )
    trials = [
        finetune(ft_config, finetune_dir(out, i, lr), args, echo)
        for i, (lr, ft_config) in enumerate(zip(lrs, configs, strict=True))
    ]
    if len(trials) == 1:
        return {"finetune": trials[0]}
    from rewa.train.datasets import TEXT_DATASETS

    if config.data.dataset in TEXT_DATASETS:  # a language model is judged by its loss
        best = min(trials, key=lambda t: t.get("val_loss", float("inf")))
        return {"finetune": {**best, "chosen_on": "val_loss"}, "finetune_trials": trials}
    best = max(trials, key=lambda t: t.get("val_acc", float("-inf")))
    return {"finetune": {**best, "chosen_on": "val_acc"}, "finetune_trials": trials}


def finetune_config(config: Any, pruned: Path, args: argparse.Namespace, lr: float | None):
    from rewa.train.config import apply_override, config_from_dict

    values = config.to_dict()
    method = values["method"]
    if args.finetune_method == "dense":
        values["method"] = {
            "name": "dense",
            "base": method["base"],
            "momentum": method["momentum"],
            "lr": method["lr"],
            "options": {"weight_decay": args.finetune_weight_decay},
        }
    elif method["name"] in ("spred", "str", "gmp"):
        raise UsageError(
            f"--finetune-method same does not work for {method['name']!r} (its weights are "
            "reparameterized or masked by the method itself); use --finetune-method dense"
        )
    values["method"]["lr"] = lr or 0.1 * method["lr"]
    values["schedule"] = {"epochs": args.finetune_epochs, "warmup_epochs": 0.0, "cosine": True}
    values["sparsity"] = {"finetune_from": str(pruned.resolve())}
    values["output"]["name"] = FINETUNE
    if args.seed is not None:
        values["train"]["seed"] = args.seed
    for assignment in args.overrides:
        apply_override(values, assignment)
    return config_from_dict(values)


def finetune(ft_config: Any, run_dir: Path, args, echo) -> dict[str, Any]:
    """Train ``ft_config`` (a :func:`finetune_config`) in ``run_dir``; its facts for prune.json."""
    from rewa.train import checkpoint
    from rewa.train.pipeline import train

    progress = False if args.quiet else None
    result = train(
        ft_config, run_dir, resume=args.resume, force=args.force, echo=echo, progress=progress
    )
    loaded = checkpoint.load_latest_good(run_dir)
    assert loaded is not None
    ft_source = Source(loaded.path, "run", loaded.payload)
    model = plain_model(ft_source)
    masks = Masks.from_state_dict(loaded.payload["hooks"]["masks"]["masks"])
    final = (result.get("eval") or {}).get("final") or {}
    if not final and (run_dir / "eval.json").is_file():
        final = json.loads((run_dir / "eval.json").read_text())["final"]
    return {
        "run_dir": str(run_dir),
        "epochs": ft_config.schedule.epochs,
        "method": ft_config.method.name,
        "lr": ft_config.method.lr,
        "masks_hold": masks.check(model) == 0,
        "sparsity": sparsity_report(model, ()).sparsity,
        **{k: v for k, v in final.items() if k.endswith(("_acc", "_loss"))},
    }


def prune_markdown(result: dict[str, Any], warnings: list[str]) -> str:
    p = result["pruned"]
    lines = [
        f"# Pruned: {p['source']}",
        "",
        f"Rule: {p['rule']}. Sparsity (exact zeros over conv + linear weights, {p['weights']:,} "
        f"weights): {p['sparsity_before']:.2%} before, {p['sparsity']:.2%} after.",
        "",
    ]
    accs = {k: v for k, v in p.items() if k.endswith("_acc")}
    if accs:
        lines += [
            "Pruned model (no fine-tuning): " + ", ".join(f"{k} {v:.4f}" for k, v in accs.items()),
            "",
        ]
    if "bn_recalibrated" in p:
        b = p["bn_recalibrated"]
        accs = ", ".join(f"{k} {v:.4f}" for k, v in b.items() if k.endswith("_acc"))
        lines += [
            f"BatchNorm statistics re-estimated on {b['images']:,} training images: {accs}",
            "",
        ]
    if "finetune" in result:
        f = result["finetune"]
        accs = ", ".join(f"{k} {v:.4f}" for k, v in f.items() if k.endswith("_acc"))
        lines += [
            f"Masked fine-tuning: {f['epochs']} epochs, method {f['method']}, lr {f['lr']:g}; "
            f"masks hold: {f['masks_hold']}; sparsity {f['sparsity']:.2%}; {accs}.",
            "",
        ]
    if "finetune_trials" in result:
        tried = ", ".join(
            f"lr {t['lr']:g}: val_acc {t['val_acc']:.4f}" for t in result["finetune_trials"]
        )
        lines += [f"The lr was chosen on validation accuracy among {tried}.", ""]
    lines += [f"**WARNING: {w}**" for w in warnings] + ([""] if warnings else [])
    lines += [
        "## Per-layer allocation",
        "",
        markdown_table(result["allocation"], ALLOCATION_COLUMNS, ALLOCATION_FORMATS),
        "",
    ]
    return "\n".join(lines)


def prune_summary(result: dict[str, Any], out: Path) -> str:
    p = result["pruned"]
    accs = " ".join(f"{k} {v:.4f}" for k, v in p.items() if k.endswith("_acc"))
    text = f"pruned to {p['sparsity']:.2%} (was {p['sparsity_before']:.2%}) {accs}".rstrip()
    if "bn_recalibrated" in p:
        b = p["bn_recalibrated"]
        text += "; BatchNorm re-estimated: " + " ".join(
            f"{k} {v:.4f}" for k, v in b.items() if k.endswith("_acc")
        )
    if "finetune" in result:
        f = result["finetune"]
        accs = " ".join(f"{k} {v:.4f}" for k, v in f.items() if k.endswith("_acc"))
        text += f"; fine-tuned {f['epochs']} epochs: {accs} (masks hold: {f['masks_hold']})"
        if "finetune_trials" in result:
            text += f" at lr {f['lr']:g}, chosen on validation"
    return text + f"; wrote {out}/{PRUNED}, prune.md, prune.json, allocation.csv"


# ---------------------------------------------------------------- rewa export


def example_input(config: Any, classes: int, batch: int, seed: int) -> torch.Tensor:
    """A batch of the inputs the run's model takes: token ids for a language model (its
    vocabulary is its number of classes), else images of the dataset's size."""
    from rewa.train.datasets import FOLDER_DATASETS, TEXT_DATASETS

    gen = torch.Generator().manual_seed(seed)
    if config.data.dataset in TEXT_DATASETS:
        return torch.randint(classes, (batch, config.data.block_size), generator=gen)
    size = config.data.image_size if config.data.dataset in FOLDER_DATASETS else 32
    return torch.randn(batch, 3, size, size, generator=gen)


def export(args: argparse.Namespace, echo=print) -> dict[str, Any]:
    source = read_source(args.source, echo)
    config = source.config
    if args.data_dir:
        config.data.data_dir = args.data_dir
    out = Path(args.out) if args.out else source.path.parent / "export"
    prepare_out(out, args.force)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = plain_model(source)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    classes = num_classes_of(config, state)
    meta = {
        "model": config.model.name,
        "model_options": dict(config.model.options),
        "num_classes": classes,
        "source": str(source.path),
    }
    report = sparsity_report(model, ())
    files: dict[str, int] = {}
    if args.format in ("dense", "both"):
        files["model_dense.pt"] = save_dense(state, out / "model_dense.pt")
    sparse_path = out / "model_sparse.pt"
    files["model_sparse.pt"] = save_sparse(state, sparse_path, meta)
    # the sparse file must give back exactly the model: same architecture, same outputs
    reloaded = exported_model(sparse_path)
    x = example_input(config, classes, 8, seed=0)
    with torch.inference_mode():
        exact = bool(torch.equal(reloaded(x), model(x)))
    if args.format == "dense":
        sparse_path.unlink()
        files.pop("model_sparse.pt")
    result: dict[str, Any] = {
        "provenance": provenance(),
        "model": meta,
        "sparsity": report.sparsity,
        "weights": report.total,
        "nonzeros": report.nonzeros,
        "files_bytes": files,
        "tensor_bytes": payload_bytes(state),
        "round_trip_outputs_identical": exact,
    }
    for warning in dead_layer_warnings(report):
        echo(f"WARNING: {warning}")
    if not args.no_eval:
        acc = try_accuracies(model, config, torch.device("cpu"), echo)
        if acc:
            re_acc = accuracies(reloaded, config, torch.device("cpu"))
            result["accuracy"] = {"model": acc, "exported": re_acc, "equal": acc == re_acc}
    if not args.no_latency:
        result["latency"] = measure_latency(model, config, classes, args, echo)
    write_json(out / "export.json", result)
    (out / "export.md").write_text(export_markdown(result))
    echo(export_markdown(result))
    return result


def exported_model(path: str | Path) -> nn.Module:
    """The model stored in a sparse export (architecture from its metadata), in eval mode."""
    from rewa.export import load_sparse_meta

    meta = load_sparse_meta(path)
    model = build_model(meta["model"], meta["num_classes"], **meta.get("model_options", {}))
    model.load_state_dict(load_sparse(path))
    return model.eval()


def measure_latency(model: nn.Module, config: Any, classes: int, args, echo) -> dict[str, Any]:
    sparse_model, dense_left = sparse_inference_model(model)
    rows = []
    for batch in args.batch_sizes:
        x = example_input(config, classes, batch, seed=1)
        with torch.inference_mode():
            max_diff = float((sparse_model(x) - model(x)).abs().max())
        dense = latency(lambda x=x: model(x), repeats=args.repeats)
        sparse = latency(lambda x=x: sparse_model(x), repeats=args.repeats)
        rows.append(
            {
                "batch": batch,
                "dense_ms": dense["median_ms"],
                "dense_p10_ms": dense["p10_ms"],
                "dense_p90_ms": dense["p90_ms"],
                "sparse_ms": sparse["median_ms"],
                "sparse_p10_ms": sparse["p10_ms"],
                "sparse_p90_ms": sparse["p90_ms"],
                "sparse_over_dense": sparse["median_ms"] / dense["median_ms"],
                "max_abs_output_diff": max_diff,
            }
        )
        echo(
            f"batch {batch}: dense {dense['median_ms']:.2f} ms, sparse (CSR) "
            f"{sparse['median_ms']:.2f} ms"
        )
    return {
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "repeats": args.repeats,
        "kernels": "dense: torch conv2d/linear; sparse: CSR weight x unfolded input "
        "(torch.sparse.mm)",
        "layers_left_dense": dense_left,
        "rows": rows,
    }


EXPORT_LATENCY_COLUMNS = ["batch", "dense_ms", "sparse_ms", "sparse_over_dense"]


def export_markdown(result: dict[str, Any]) -> str:
    files = result["files_bytes"]
    tensors = result["tensor_bytes"]
    lines = [
        f"# Export of {result['model']['source']}",
        "",
        f"Model {result['model']['model']}: sparsity {result['sparsity']:.2%} "
        f"({result['nonzeros']:,} of {result['weights']:,} conv + linear weights nonzero).",
        "",
        "| file | bytes |",
        "|---|---|",
        *(f"| {name} | {size:,} |" for name, size in files.items()),
        f"| (tensor payload, dense) | {tensors['dense']:,} |",
        f"| (tensor payload, sparse encodings) | {tensors['sparse']:,} |",
        "",
        f"Sparse file loads back with identical outputs: {result['round_trip_outputs_identical']}.",
    ]
    if "accuracy" in result:
        a = result["accuracy"]
        lines.append(
            f"Accuracy of the model {a['model']} and of the exported model {a['exported']}: "
            f"{'equal' if a['equal'] else 'DIFFERENT'}."
        )
    if "latency" in result:
        lat = result["latency"]
        lines += [
            "",
            f"CPU inference latency (median of {lat['repeats']} runs, {lat['threads']} "
            f"thread(s), 1-min load average {lat['load_average_1min']}):",
            "",
            markdown_table(
                lat["rows"],
                EXPORT_LATENCY_COLUMNS,
                {"dense_ms": ".2f", "sparse_ms": ".2f", "sparse_over_dense": ".2f"},
            ),
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- argparse


def _batch_sizes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes, got {text!r}")
    return values


PRUNE_EPILOG = """\
examples:
  rewa prune runs/cifar10_resnet20_rewa --sparsity 0.95
  rewa prune runs/cifar10_resnet20_rewa --threshold 1e-3 --finetune-epochs 5 --out runs/p
  rewa export runs/p/finetune --format both
  rewa prune runs/r --sparsity 0.95 --finetune-epochs 1 --finetune-lr 0.01 0.001

The output directory gets pruned.pt (weights + masks, loadable by `rewa export`), prune.md,
prune.json and allocation.csv (per-layer sparsity; layers that became entirely zero are warned
about). With --finetune-epochs, finetune/ is a normal run directory (metrics, checkpoints, the
final threshold sweep); an interrupted fine-tuning continues with the same command + --resume.
With several --finetune-lr values, prune.json's "finetune" names the run directory chosen on
validation and "finetune_trials" lists every one.
"""


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "prune",
        help="prune a trained run to a sparsity or threshold, optionally masked fine-tuning",
        description="Prune the last checkpoint of a run (or a checkpoint file) by global "
        "magnitude to a target sparsity, or zero every |x| <= threshold; report the per-layer "
        "allocation and the pruned model's accuracy; optionally fine-tune with the masks kept.",
        epilog=PRUNE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT", help="a run directory or checkpoint")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument(
        "--sparsity", type=fraction, metavar="S", help="prune to this fraction of zeros (global)"
    )
    rule.add_argument(
        "--threshold", type=nonneg_float, metavar="T", help="zero every weight with |x| <= T"
    )
    p.add_argument(
        "--criterion", choices=("magnitude", *POSTHOC), default="magnitude",
        help="magnitude: one global threshold; wanda / sparsegpt: each linear layer to "
        "--sparsity from its inputs on --calibration-batches training batches (layer by layer, "
        "with the earlier layers already pruned; SparseGPT also updates the kept weights)",
    )  # fmt: skip
    p.add_argument(
        "--calibration-batches", type=positive_int, default=8, metavar="N",
        help="training batches whose activations Wanda / SparseGPT read",
    )  # fmt: skip
    p.add_argument(
        "--normalize", choices=NORMALIZATIONS, default=None,
        help="compare |x| (none: the paper's global magnitude) or |x| / rms(layer) (rms: "
        "scale-free across layers, for networks whose layers feed BatchNorm); default: the "
        "run's sparsity.normalize (none unless it was steered with rms)",
    )  # fmt: skip
    p.add_argument(
        "--finetune-epochs", type=nonneg_int, default=0, metavar="N",
        help="masked fine-tuning epochs after pruning (default 0: none)",
    )  # fmt: skip
    p.add_argument(
        "--finetune-method", choices=("dense", "same"), default="dense",
        help="fine-tune with plain SGD/AdamW (dense, default) or the run's own method",
    )  # fmt: skip
    p.add_argument(
        "--finetune-lr", type=positive_float, nargs="+", metavar="LR",
        help="peak learning rate of the fine-tuning (cosine, no warmup; default 0.1 x the run's). "
        "Several values: one fine-tuning each (finetune/, finetune_lr<LR>/ ...), the one of best "
        "validation accuracy reported. Behind BatchNorm a step moves a layer by about "
        "lr / ||w||^2, and ReWA leaves weights several times smaller than a dense run's, so no "
        "single lr suits every method (results/cifar10_resnet20/ft_check): compare methods with "
        "e.g. --finetune-lr 0.01 0.001",
    )  # fmt: skip
    p.add_argument(
        "--finetune-weight-decay", type=nonneg_float, default=5e-4, metavar="WD",
        help="weight decay of the dense fine-tuning",
    )  # fmt: skip
    p.add_argument(
        "--bn-recalibrate", type=nonneg_int, default=0, metavar="IMAGES",
        help="re-estimate BatchNorm statistics on this many training images after pruning "
        "(reported beside the one-shot accuracy; the model in pruned.pt keeps them)",
    )  # fmt: skip
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the fine-tuning config (e.g. data.batch_size=64); repeatable",
    )  # fmt: skip
    p.add_argument("--out", metavar="DIR", help="output directory (default: next to the source)")
    p.add_argument("--data-dir", help="dataset directory, if it moved since training")
    p.add_argument("--no-eval", action="store_true", help="do not measure accuracy")
    p.add_argument("--seed", type=int, help="seed of the fine-tuning (default: the run's)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_prune)

    e = commands.add_parser(
        "export",
        help="write a pruned model as a dense state_dict and a compact sparse file",
        description="Export the model of a run, a checkpoint or a `rewa prune` output: "
        "model_dense.pt (plain state_dict, exact zeros) and model_sparse.pt (per tensor the "
        "smallest of dense / indices+values / bitmap+values), checked to load back with "
        "identical outputs; report file sizes and CPU latency of dense vs sparse (CSR) kernels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument("source", metavar="RUN_DIR|CHECKPOINT", help="run dir, prune dir or file")
    e.add_argument("--format", choices=("dense", "sparse", "both"), default="both")
    e.add_argument("--out", metavar="DIR", help="output directory (default: SOURCE_DIR/export)")
    e.add_argument("--data-dir", help="dataset directory, if it moved since training")
    e.add_argument("--no-eval", action="store_true", help="do not compare accuracies")
    e.add_argument("--no-latency", action="store_true", help="do not time inference")
    e.add_argument(
        "--batch-sizes", type=_batch_sizes, default=[1, 64], metavar="B,B",
        help="batch sizes of the latency measurement",
    )  # fmt: skip
    e.add_argument("--repeats", type=positive_int, default=20, help="timed runs per measurement")
    e.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    e.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    e.set_defaults(func=_export)


def _prune(args: argparse.Namespace) -> int:
    prune(args)
    return 0


def _export(args: argparse.Namespace) -> int:
    export(args)
    return 0


__all__ = ["export", "exported_model", "prune", "read_source", "register"]
