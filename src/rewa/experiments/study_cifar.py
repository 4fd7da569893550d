"""`rewa study cifar RUNS --out DIR`: table and plot of a CIFAR study (scripts/cifar10_resnet20.sh).

``RUNS`` holds one folder per run with the files the script keeps of it: ``config.yaml``,
``metrics.jsonl``, ``eval.json`` and ``prune_S/prune.json`` for each sparsity S it was pruned to
(``rewa prune --sparsity S --bn-recalibrate N --finetune-epochs E``). Runs are grouped by method
(fixed-strength ReWA, ReWA steered to a target on |x| and on |x| / rms(layer) are separate
groups); for each group, sparsity and way of reporting (as pruned, BatchNorm re-estimated,
fine-tuned) the run with the best *validation* accuracy is selected and its *test* accuracy
reported.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rewa.provenance import provenance
from rewa.report.runs import (
    epoch_records,
    finished_runs,
    load_eval,
    prune_results,
    training_machine,
    training_precision,
)
from rewa.report.tables import markdown_table, write_csv, write_json
from rewa.train.config import parse_yaml

WAYS = {"oneshot": "as pruned", "bn": "BatchNorm re-estimated", "ft": "masked fine-tuning"}
GROUP_ORDER = [
    "dense",
    "rewa",
    "rewa-target",
    "rewa-target-rms",
    "l1-prox",
    "l1",
    "gmp",
    "str",
    "spred",
    "lp",
    "rigl",
    "powerprop",
    "powerprop-decay",
]
GROUP_LABELS = {
    "dense": "dense, then pruned",
    "rewa": "ReWA K=9 M=2 (fixed κ)",
    "rewa-target": "ReWA K=9 M=2 (κ steered to S)",
    "rewa-target-rms": "ReWA K=9 M=2 (κ steered to S on |x| / rms(layer))",
    "l1-prox": "ℓ1 proximal",
    "l1": "ℓ1 subgradient",
    "gmp": "GMP",
    "str": "STR",
    "spred": "Spred",
    "lp": "direct ℓp",
    "rigl": "RigL (ERK, sparse from step 0)",
    "powerprop": "Powerprop α=9 (ReWA M=K−1, no decay)",
    "powerprop-decay": "Powerprop α=9 + decay on v",
}
STRENGTH = {"rewa": "weight_decay", "l1-prox": "lam", "l1": "lam", "str": "weight_decay"}
CSV_COLUMNS = [
    "group", "run", "strength", "target", "sparsity", "pruned_sparsity",
    "val_oneshot", "test_oneshot", "val_bn", "test_bn", "val_ft", "test_ft", "ft_lr",
    "ft_lrs_tried", "unpruned_val", "unpruned_test", "exact_zeros", "below_1e-3", "train_minutes",
]  # fmt: skip


def read_run(folder: Path) -> dict[str, Any]:
    """The facts of one run folder (its config, final evaluation, prune results, wall time)."""
    evaluation = load_eval(folder)
    config = evaluation.get("config") or parse_yaml((folder / "config.yaml").read_text(), "")
    records = epoch_records(folder)
    prunes = prune_results(folder)
    method = config["method"]
    sparsity = config.get("sparsity") or {}
    target = float(sparsity.get("target") or 0.0)
    name = method["name"]
    group = f"{name}-target" if target > 0 else name
    if target > 0 and sparsity.get("normalize", "none") != "none":
        group += f"-{sparsity['normalize']}"
    strength_key = STRENGTH.get(name)
    strength = method["options"].get(strength_key) if strength_key else None
    if name == "gmp":
        target = float(method["options"]["target"])
    if name == "rigl":
        target = float(method["options"]["sparsity"])
    if name == "powerprop" and float(method["options"].get("weight_decay", 0.0)) > 0:
        group = "powerprop-decay"  # the ablation chain's middle step
    final = evaluation["final"]
    return {
        "run": folder.name,
        "group": group,
        "strength": strength,
        "target": target or None,
        "unpruned_val": final.get("val_acc"),
        "unpruned_test": final.get("test_acc"),
        "exact_zeros": final.get("sparsity"),
        "below_1e-3": _below(evaluation, 1e-3),
        "train_minutes": sum(r.get("epoch_seconds", 0.0) for r in records) / 60.0,
        "median_epoch_s": statistics.median(seconds)
        if (seconds := _epoch_seconds(records))
        else None,
        "epochs": len(records),
        "precision": training_precision(folder),
        "machine": training_machine(folder),
        "prunes": prunes,
        "provenance": evaluation.get("provenance"),
        "config": config,
    }


def _epoch_seconds(records: Sequence[Mapping[str, Any]]) -> list[float]:
    return [r["epoch_seconds"] for r in records if r.get("epoch_seconds")]


def _below(evaluation: Mapping[str, Any], tau: float) -> float | None:
    for point in evaluation.get("sweep", []):
        if math.isclose(point.get("threshold", -1.0), tau, rel_tol=1e-9):
            return point.get("sparsity")
    return None


def rows_of(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per sparsity the run was pruned to."""
    rows = []
    for s, result in sorted(run["prunes"].items(), key=lambda kv: float(kv[0])):
        pruned = result["pruned"]
        bn = pruned.get("bn_recalibrated") or {}
        ft = result.get("finetune") or {}
        rows.append(
            {
                **{k: run[k] for k in ("group", "run", "strength", "target")},
                "sparsity": float(s),
                "pruned_sparsity": pruned["sparsity"],
                "val_oneshot": pruned.get("val_acc"),
                "test_oneshot": pruned.get("test_acc"),
                "val_bn": bn.get("val_acc"),
                "test_bn": bn.get("test_acc"),
                "val_ft": ft.get("val_acc"),
                "test_ft": ft.get("test_acc"),
                "ft_lr": ft.get("lr"),
                "ft_lrs_tried": " ".join(f"{t['lr']:g}" for t in _ft_trials(result)),
                **{k: run[k] for k in ("unpruned_val", "unpruned_test", "exact_zeros")},
                "below_1e-3": run["below_1e-3"],
                "train_minutes": run["train_minutes"],
            }
        )
    return rows


def _ft_trials(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The fine-tunings the prune chose between on validation (just the one when it had one lr)."""
    return result.get("finetune_trials") or ([result["finetune"]] if "finetune" in result else [])


def select(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, float, str], Mapping[str, Any]]:
    """(group, sparsity, way) -> the row with the best validation accuracy of that way."""
    chosen: dict[tuple[str, float, str], Mapping[str, Any]] = {}
    for row in rows:
        for way in WAYS:
            val = row.get(f"val_{way}")
            if val is None:
                continue
            key = (row["group"], row["sparsity"], way)
            if key not in chosen or val > chosen[key][f"val_{way}"]:
                chosen[key] = row
    return chosen


def _order(group: str) -> tuple[int, str]:
    return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), group)


def _groups(chosen: Mapping[tuple[str, float, str], Any]) -> list[str]:
    """The methods that have a selected run, in table order."""
    return sorted({g for g, _, _ in chosen}, key=_order)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def main_table(chosen: Mapping[tuple[str, float, str], Mapping[str, Any]], sparsities) -> str:
    groups = _groups(chosen)
    rows = []
    for group in groups:
        row = {"method": GROUP_LABELS.get(group, group)}
        for s in sparsities:
            cells = [chosen.get((group, s, way)) for way in WAYS]
            row[f"{s:.0%}"] = " / ".join(
                _pct(c[f"test_{way}"]) if c else "–" for c, way in zip(cells, WAYS, strict=True)
            )
        rows.append(row)
    return markdown_table(rows, ["method", *(f"{s:.0%}" for s in sparsities)])


def selection_table(chosen, sparsities) -> str:
    groups = _groups(chosen)
    rows = []
    for group in groups:
        for way, label in WAYS.items():
            row = {"method": GROUP_LABELS.get(group, group), "way": label}
            for s in sparsities:
                c = chosen.get((group, s, way))
                row[f"{s:.0%}"] = _selected(c, way)
            rows.append(row)
    return markdown_table(rows, ["method", "way", *(f"{s:.0%}" for s in sparsities)])


def _selected(row: Mapping[str, Any] | None, way: str) -> str:
    if row is None:
        return "–"
    if way == "ft" and row.get("ft_lr") is not None:
        tried = row["ft_lrs_tried"]
        of = f" of {tried}" if " " in tried else ""
        return f"{row['run']} (lr {row['ft_lr']:g}{of})"
    return row["run"]


RUN_COLUMNS = [
    "run", "group", "strength", "target", "unpruned_val", "unpruned_test", "exact_zeros",
    "below_1e-3", "epochs", "precision", "train_minutes", "median_epoch_s", "machine",
]  # fmt: skip
RUN_FORMATS = {
    "unpruned_val": ".4f", "unpruned_test": ".4f", "exact_zeros": ".2%", "below_1e-3": ".2%",
    "train_minutes": ".1f", "median_epoch_s": ".0f", "strength": ".3g", "target": ".2f",
}  # fmt: skip


def allocations(runs: Sequence[Mapping[str, Any]]) -> dict[tuple[str, float], dict[str, float]]:
    """(run, S) -> {layer: its sparsity} of the model pruned to S (fine-tuning keeps the mask)."""
    return {
        (run["run"], float(s)): {
            entry["layer"].removesuffix(".weight"): entry["sparsity"]
            for entry in result.get("allocation", [])
        }
        for run in runs
        for s, result in run["prunes"].items()
    }


Chosen = Mapping[tuple[str, float, str], Mapping[str, Any]]
Allocation = Mapping[tuple[str, float], Mapping[str, float]]


def allocation_table(chosen: Chosen, allocation: Allocation, s: float) -> str | None:
    """Layers down, each method's as-pruned run at S across: the sparsity of every layer."""
    selected = [chosen.get((group, s, "oneshot")) for group in _groups(chosen)]
    picked = [row["run"] for row in selected if row and allocation.get((row["run"], s))]
    if not picked:
        return None
    layers = list(allocation[(picked[0], s)])
    rows = [
        {"layer": layer, **{run: _pct(allocation[(run, s)].get(layer)) for run in picked}}
        for layer in layers
    ]
    return markdown_table(rows, ["layer", *picked])


def plot(path: Path, chosen, dense_test: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rewa.report.curves import _sparsity_axis, legend_on_fullest

    groups = _groups(chosen)
    fig, axes = plt.subplots(1, len(WAYS), figsize=(15, 4.6), sharey=True)
    for ax, (way, label) in zip(axes, WAYS.items(), strict=True):
        for group in groups:
            points = sorted(
                (row["pruned_sparsity"], row[f"test_{way}"])
                for (g, _, w), row in chosen.items()
                if g == group and w == way and row.get(f"test_{way}") is not None
            )
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=4, label=GROUP_LABELS.get(group, group))
        if dense_test is not None:
            ax.axhline(dense_test, color="k", ls=":", lw=1, label="dense (unpruned)")
        _sparsity_axis(ax)
        ax.set_xlim(0.88, 0.995)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (validation-selected run)")
    axes[0].set_ylim(0, 1)
    legend_on_fullest(axes, fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study_budget(runs: Sequence[Mapping[str, Any]]) -> int | None:
    """The epochs every compared run shares: the most common among the pruned runs (among all
    runs if none was pruned). Runs trained for another number of epochs are not compared."""
    epochs = [r["epochs"] for r in runs if r["prunes"]] or [r["epochs"] for r in runs]
    return statistics.mode(epochs) if epochs else None


def dense_reference(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The dense run the sparse ones are read against: the best on validation."""
    dense = [r for r in runs if r["group"] == "dense" and r["unpruned_val"] is not None]
    return max(dense, key=lambda r: r["unpruned_val"]) if dense else None


def summarize(runs_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Read every run folder of ``runs_dir``; write results.md/csv/json and the plot."""
    every = [read_run(f) for f in finished_runs(runs_dir)]
    budget = study_budget(every)
    runs = [r for r in every if r["epochs"] == budget]
    others = [r for r in every if r["epochs"] != budget]
    rows = [row for run in runs for row in rows_of(run)]
    chosen = select(rows)
    sparsities = sorted({row["sparsity"] for row in rows})
    dense = dense_reference(runs)
    dense_test = dense["unpruned_test"] if dense else None
    allocation = allocations(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / "accuracy_sparsity.png", chosen, dense_test)
    write_csv(out / "results.csv", rows, CSV_COLUMNS)
    write_json(
        out / "results.json",
        {
            "provenance": provenance(),
            "selection": "per method, sparsity and way: best validation accuracy; test reported",
            "rows": rows,
            "allocation": {
                f"{s:g}": {run: layers for (run, at), layers in allocation.items() if at == s}
                for s in sparsities
            },
            "budget_epochs": budget,
            "runs": [{k: v for k, v in r.items() if k != "prunes"} for r in runs],
            "other_budgets": [{k: v for k, v in r.items() if k != "prunes"} for r in others],
        },
    )
    text = [
        "Test accuracy (%) at exactly S global sparsity of the conv + linear weights: "
        "**as pruned / BatchNorm re-estimated / after masked fine-tuning**. Each cell's run is "
        "the one of its method with the best validation accuracy for that S and way (runs below).",
        "",
        main_table(chosen, sparsities),
        "",
        f"Dense (unpruned) test accuracy: {_pct(dense_test)}% ({dense['run']}, "
        f"{dense['epochs']} epochs, as every run compared)."
        if dense
        else "",
        "",
        "## Selected runs",
        "",
        selection_table(chosen, sparsities),
        "",
        "Masked fine-tuning: `(lr A of A B)` is the lr chosen on validation among those the "
        "prune tried, one fine-tuning of the same pruned model each; `(lr A)`: a prune made "
        "with that lr only.",
        "",
        "## Every run (as trained)",
        "",
        markdown_table(runs, RUN_COLUMNS, RUN_FORMATS),
        "",
        "`exact_zeros`: exact zeros of the trained weights; `below_1e-3`: fraction |x| <= 1e-3; "
        "`precision`: bf16 autocast or float32 (`model.bf16: auto` follows the machine); "
        "`machine`: the CPU (with the features torch detects, where run.json records them) or "
        "GPU each training session ran on; "
        "`train_minutes`: sum of the epochs' wall time (evaluation excluded; it includes any time "
        "the run was paused or shared the machine, which `median_epoch_s` does not). Every "
        "(run, S) row, with validation accuracies, is in results.csv.",
        "",
        *_allocation_section(chosen, allocation, sparsities),
    ]
    if others:
        text += [
            f"## Runs at other budgets (not compared: the table holds {budget}-epoch runs)",
            "",
            markdown_table(others, RUN_COLUMNS, RUN_FORMATS),
            "",
        ]
    (out / "results.md").write_text("\n".join(text))
    return {"rows": rows, "chosen": chosen, "runs": runs, "other_budgets": others}


def _allocation_section(
    chosen: Chosen, allocation: Allocation, sparsities: Sequence[float]
) -> list[str]:
    tables = [(s, allocation_table(chosen, allocation, s)) for s in sparsities]
    tables = [(s, table) for s, table in tables if table]
    if not tables:
        return []
    text = [
        "## Per-layer allocation",
        "",
        "Sparsity (%) of each layer's weights in the model pruned to S, for each method's run "
        "selected as pruned (the same mask after BatchNorm re-estimation and fine-tuning).",
        "",
    ]
    for s, table in tables:
        text += [f"### {s:.0%}", "", table, ""]
    return text


def register(commands: argparse._SubParsersAction) -> None:
    from rewa.experiments.study import study_subparsers

    p = study_subparsers(commands).add_parser(
        "cifar",
        help="tabulate a CIFAR study (scripts/cifar10_resnet20.sh): accuracy at 90-99%% sparsity",
        description="Read the run folders of a CIFAR study (config, metrics, eval.json and the "
        "prune_S/prune.json of `rewa prune --sparsity S --bn-recalibrate N --finetune-epochs E`), "
        "select each method's run on validation accuracy per sparsity and way of reporting, and "
        "write results.md, results.csv, results.json and accuracy_sparsity.png.",
    )
    p.add_argument("runs", metavar="RUNS", help="folder of run folders (e.g. OUT/runs)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the table and plot go")
    p.set_defaults(func=_summarize)


def _summarize(args: argparse.Namespace) -> int:
    result = summarize(args.runs, args.out)
    print(f"{len(result['runs'])} runs, {len(result['rows'])} pruned models; wrote {args.out}")
    return 0
