"""Compare training runs: one table (markdown + CSV) and one accuracy–sparsity plot.

Each run directory must hold the ``eval.json`` written at the end of training (or by
``rewa eval``). Accuracy at a target sparsity is the *measured* accuracy at the smallest swept
threshold whose sparsity reaches the target (the sweep contains the global-magnitude threshold of
each target), not an interpolation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rewa.errors import UsageError
from rewa.provenance import provenance
from rewa.report import curves
from rewa.report.tables import markdown_table, write_csv, write_json
from rewa.train.evaluation import accuracy_at_sparsity
from rewa.train.rundir import RUN_INFO

TARGETS = (0.9, 0.95, 0.98, 0.99)


def load_eval(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "eval.json"
    if not path.exists():
        raise UsageError(
            f"{run_dir}: no eval.json (the run has not finished; run `rewa eval {run_dir}`)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(
            f"{path} is not valid JSON ({err.msg}); rerun `rewa eval {run_dir}`"
        ) from None


def finished_runs(runs_dir: str | Path) -> list[Path]:
    """The run folders of ``runs_dir`` that hold an eval.json (sorted by name)."""
    folders = sorted(p for p in Path(runs_dir).iterdir() if (p / "eval.json").is_file())
    if not folders:
        raise UsageError(f"{runs_dir}: no finished runs (folders with eval.json)")
    return folders


def epoch_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run's metrics.jsonl ([] without one)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == "epoch"]


def training_sessions(run_dir: str | Path) -> list[dict[str, Any]]:
    """The provenance (command, commit, hardware, precision) of each session that trained the
    run, from its run.json ([] without one)."""
    path = Path(run_dir) / RUN_INFO
    return json.loads(path.read_text()).get("sessions", []) if path.is_file() else []


def training_precision(run_dir: str | Path) -> str:
    """How a run's training sessions computed, from its run.json: "bf16" (autocast), "fp32",
    "mixed" (sessions differ, e.g. resumed on another machine) or "?" (not recorded)."""
    sessions = training_sessions(run_dir)
    kinds = {("bf16" if s["bf16"] else "fp32") if "bf16" in s else "?" for s in sessions}
    if len(kinds) == 1:
        return kinds.pop()
    return "mixed" if kinds else "?"


def _machine(session: Mapping[str, Any]) -> str:
    name = session.get("gpu") or session.get("cpu") or "?"
    features = session.get("cpu_features")
    return f"{name} ({'+'.join(features)})" if features and not session.get("gpu") else name


def training_machine(run_dir: str | Path) -> str:
    """Where a run's training sessions ran, from its run.json: the GPU, else the CPU with the
    features torch detected (recorded since run.json has them), sessions on different machines
    joined by "; "; "?" when not recorded."""
    machines = list(dict.fromkeys(_machine(s) for s in training_sessions(run_dir)))
    return "; ".join(machines) or "?"


def prune_results(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """S -> the prune.json of ``rewa prune --out RUN/prune_S`` (S as written in the folder name)."""
    return {
        path.parent.name.removeprefix("prune_"): json.loads(path.read_text())
        for path in sorted(Path(run_dir).glob("prune_*/prune.json"))
    }


def _options(config: dict[str, Any]) -> str:
    method = config["method"]
    opts = {**method.get("options", {})}
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in opts.items()]
    parts.append(f"lr={method['lr']:g}")
    if method.get("base", "sgd") != "sgd":
        parts.append(f"base={method['base']}")
    return " ".join(parts)


def run_row(run_dir: str | Path, evaluation: dict[str, Any], split: str) -> dict[str, Any]:
    """One table row: method, options, final accuracies, accuracy at each target sparsity."""
    config = evaluation["config"]
    final = evaluation["final"]
    row: dict[str, Any] = {
        "run": Path(run_dir).name,
        "method": config["method"]["name"],
        "options": _options(config),
        "model": config["model"]["name"],
        "epochs": f"{evaluation['epoch']}/{evaluation['epochs']}",
        "val_acc": final.get("val_acc"),
        "test_acc": final.get("test_acc"),
        "exact_sparsity": final["sparsity"],
    }
    for target in TARGETS:
        hit = accuracy_at_sparsity(evaluation["sweep"], target, split)
        row[f"{split}@{target:.0%}"] = hit["accuracy"] if hit else None
        row[f"sparsity@{target:.0%}"] = hit["sparsity"] if hit else None
    return row


def compare_runs(
    run_dirs: Sequence[str | Path], out_dir: str | Path, *, split: str = "test"
) -> list[dict[str, Any]]:
    """Write comparison.md / .csv / .json and accuracy_sparsity.png into ``out_dir``."""
    if not run_dirs:
        raise UsageError("give at least one run directory")
    evaluations = {str(d): load_eval(d) for d in run_dirs}
    rows = [run_row(d, e, split) for d, e in evaluations.items()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target_cols = [f"{split}@{t:.0%}" for t in TARGETS]
    columns = ["run", "method", "options", "epochs", "val_acc", "test_acc", "exact_sparsity"]
    formats = {"val_acc": ".4f", "test_acc": ".4f", "exact_sparsity": ".2%"}
    formats.update({c: ".4f" for c in target_cols})
    table = markdown_table(rows, [*columns, *target_cols], formats)
    note = (
        f"Accuracy on the {split} split of the last epoch's weights, pruned by one global "
        "magnitude threshold (no fine-tuning). `{split}@S` is the measured accuracy at the "
        "smallest swept threshold whose sparsity is >= S (not interpolated; the achieved "
        "sparsity of each point is in the CSV). Sparsity denominator: conv + linear weights."
    ).replace("{split}", split)
    (out / "comparison.md").write_text(table + "\n\n" + note + "\n")
    all_columns = [*columns, "model", *target_cols, *(f"sparsity@{t:.0%}" for t in TARGETS)]
    write_csv(out / "comparison.csv", rows, all_columns)
    write_json(
        out / "comparison.json",
        {"provenance": provenance(), "runs": list(evaluations), "rows": rows, "note": note},
    )
    curves.accuracy_sparsity_plot(
        out / "accuracy_sparsity.png",
        {
            f"{row['run']} ({row['method']})": curves.sweep_curve(e["sweep"], split)
            for row, e in zip(rows, evaluations.values(), strict=True)
        },
        ylabel=f"{split} accuracy",
        title=f"accuracy vs sparsity ({split}, last epoch, one-shot global threshold)",
    )
    return rows
