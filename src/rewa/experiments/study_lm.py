"""`rewa study lm RUNS --out DIR`: the table, plot and text samples of the language-model study
(scripts/tinyshakespeare.sh).

``RUNS`` holds one folder per run (config.yaml, metrics.jsonl, eval.json with the one-shot sweep at
50/70/80/90% sparsity, and ``prune_S/prune.json`` of ``rewa prune --sparsity S --finetune-epochs``).
Runs are grouped by method; for each method and sparsity the run with the lowest *validation* loss
is selected, separately for the one-shot and the fine-tuned model (the text is split in training
and validation only, so the numbers are validation numbers: every choice was made on them, which
the table states). Sparsity is over the attention and MLP matrices; the whole model's (embeddings,
norms and head stay dense) is given beside it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rewa.errors import UsageError
from rewa.provenance import provenance
from rewa.report.runs import epoch_records, finished_runs, load_eval, prune_results
from rewa.report.tables import markdown_table, write_csv, write_json

SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9)  # always in the table; any other pruned one is added
LABELS = {
    "dense": "dense AdamW, then pruned",
    "l1-prox": "AdamW + ℓ1 (proximal)",
    "gmp": "GMP (AdamW, to 80%)",
    "rewa M=2": "ReWA-AdamW K=9 M=2",
    "rewa M=0": "ReWA-AdamW K=9 M=0 ε>0",
}
ORDER = list(LABELS)
CSV_COLUMNS = [
    "group", "run", "strength", "sparsity", "pruned_sparsity", "model_sparsity",
    "val_loss_oneshot", "val_loss_ft", "unpruned_val_loss", "train_minutes",
]  # fmt: skip


def group_of(config: Mapping[str, Any]) -> str:
    method = config["method"]
    if method["name"] == "rewa":
        return f"rewa M={float(method['options'].get('M', 2.0)):g}"
    return method["name"]


def read_run(folder: Path) -> dict[str, Any]:
    evaluation = load_eval(folder)
    config = evaluation["config"]
    records = epoch_records(folder)
    prunes = {float(s): result for s, result in prune_results(folder).items()}
    options = config["method"]["options"]
    return {
        "run": folder.name,
        "group": group_of(config),
        "strength": options.get("weight_decay")
        if config["method"]["name"] != "l1-prox"
        else options.get("lam"),
        "config": config,
        "sweep": evaluation["sweep"],
        "prunes": prunes,
        "train_minutes": sum(r.get("epoch_seconds", 0.0) for r in records) / 60.0,
        "parameters": evaluation["parameters"],
        "provenance": evaluation.get("provenance"),
    }


def _oneshot(sweep: Sequence[Mapping[str, Any]], target: float) -> Mapping[str, Any] | None:
    """The sweep point at the smallest threshold whose sparsity reaches ``target``."""
    hits = [p for p in sweep if p["sparsity"] >= target - 1e-9]
    return min(hits, key=lambda p: p["threshold"]) if hits else None


def eligible_fraction(run: Mapping[str, Any]) -> float:
    """Attention/MLP weights (the sweep's denominator) over all parameters of the run's model."""
    return run["sweep"][0]["total"] / run["parameters"]


def sparsities_of(runs: Sequence[Mapping[str, Any]]) -> list[float]:
    """The table's columns: SPARSITIES and every sparsity some run was pruned to."""
    return sorted({*SPARSITIES, *(s for run in runs for s in run["prunes"])})


def _oneshot_at(run: Mapping[str, Any], s: float) -> Mapping[str, Any] | None:
    """The one-shot model at sparsity ``s``: the final evaluation's sweep point, else the
    unfine-tuned model of ``rewa prune --sparsity s`` (the same global-magnitude rule)."""
    point = _oneshot(run["sweep"], s)
    if point is not None:
        return point
    pruned = (run["prunes"].get(s) or {}).get("pruned")
    return None if pruned is None or pruned.get("val_loss") is None else pruned


def rows_of(
    run: Mapping[str, Any], fraction: float, sparsities: Sequence[float] = SPARSITIES
) -> list[dict[str, Any]]:
    out = []
    for s in sparsities:
        point = _oneshot_at(run, s)
        if point is None:
            continue
        ft = (run["prunes"].get(s) or {}).get("finetune") or {}
        out.append(
            {
                "group": run["group"],
                "run": run["run"],
                "strength": run["strength"],
                "sparsity": s,
                "pruned_sparsity": point["sparsity"],
                "model_sparsity": point["sparsity"] * fraction,
                "val_loss_oneshot": point.get("val_loss"),
                "val_loss_ft": ft.get("val_loss"),
                "unpruned_val_loss": _oneshot(run["sweep"], 0.0)["val_loss"],
                "train_minutes": run["train_minutes"],
            }
        )
    return out


def select(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, float, str], Mapping[str, Any]]:
    """(group, sparsity, "oneshot"|"ft") -> the row with the lowest validation loss."""
    chosen: dict[tuple[str, float, str], Mapping[str, Any]] = {}
    for row in rows:
        for way in ("oneshot", "ft"):
            loss = row.get(f"val_loss_{way}")
            if loss is None or not math.isfinite(loss):
                continue
            key = (row["group"], row["sparsity"], way)
            if key not in chosen or loss < chosen[key][f"val_loss_{way}"]:
                chosen[key] = row
    return chosen


def _cell(row: Mapping[str, Any] | None, way: str) -> str:
    if row is None:
        return "–"
    loss = row[f"val_loss_{way}"]
    return f"{loss:.3f} ({math.exp(loss):.2f})"


def table(chosen, way: str, sparsities: Sequence[float] = SPARSITIES) -> str:
    groups = sorted({g for g, _, _ in chosen}, key=lambda g: ORDER.index(g) if g in ORDER else 99)
    rows = []
    for g in groups:
        row = {"method": LABELS.get(g, g)}
        for s in sparsities:
            row[f"{s:.0%}"] = _cell(chosen.get((g, s, way)), way)
        rows.append(row)
    return markdown_table(rows, ["method", *(f"{s:.0%}" for s in sparsities)])


def plot(path: Path, chosen) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rewa.report.curves import legend_on_fullest

    groups = sorted({g for g, _, _ in chosen}, key=lambda g: ORDER.index(g) if g in ORDER else 99)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    for ax, (way, title) in zip(
        axes,
        (("oneshot", "one-shot global magnitude prune"), ("ft", "after masked fine-tuning")),
        strict=True,
    ):
        for g in groups:
            points = sorted(
                (s, row[f"val_loss_{way}"])
                for (gg, s, w), row in chosen.items()
                if gg == g and w == way
            )
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=LABELS.get(g, g))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("sparsity of the attention + MLP matrices")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss (nats per character)")
    axes[0].set_ylim(top=min(4.5, axes[0].get_ylim()[1]))
    legend_on_fullest(axes, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def samples(checkpoints: Path, chosen, data_dir: str, out: Path, chars: int = 400) -> str:
    """Generated text from the dense run and from the 80%-sparse fine-tuned model of the method
    with the lowest validation loss there."""
    from rewa.data.text import load_text
    from rewa.models.llama import generate
    from rewa.train.source import plain_model, read_source

    candidates = [
        (r["val_loss_ft"], g, r) for (g, s, w), r in chosen.items() if s == 0.8 and w == "ft"
    ]
    sources = []
    dense = next((r for (g, s, w), r in chosen.items() if g == "dense" and s == 0.0), None)
    if dense is not None:
        sources.append(("dense AdamW (unpruned)", checkpoints / dense["run"]))
    if candidates:
        _, group, best = min(candidates, key=lambda c: c[0])
        label = f"{LABELS.get(group, group)}, 80% sparse + fine-tuned ({best['run']})"
        sources.append((label, checkpoints / best["run"] / "prune_0.8" / "finetune"))
    data = load_text(data_dir, download=False)
    try:
        prompt = data.encode("ROMEO:\n")
    except UsageError:  # another text: start from its validation part
        prompt = data.val_tokens[:16]
    text = ["# Samples (temperature 0.8, top-k 40, the same seed)", ""]
    for label, path in sources:
        if not path.exists():
            continue
        model = plain_model(read_source(path))
        tokens = generate(model, prompt, chars, temperature=0.8, top_k=40,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
        text += [f"## {label}", "", "```", data.decode(tokens), "```", ""]
    (out / "samples.md").write_text("\n".join(text))
    return "\n".join(text)


def summarize(
    runs_dir: str | Path, out_dir: str | Path, checkpoints: str | Path | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    runs = [read_run(f) for f in finished_runs(runs_dir)]
    fraction = eligible_fraction(runs[0])
    sparsities = sparsities_of(runs)
    rows = [row for run in runs for row in rows_of(run, fraction, sparsities)]
    chosen = select(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / "loss_sparsity.png", chosen)
    write_csv(out / "results.csv", rows, CSV_COLUMNS)
    kept = [{k: v for k, v in r.items() if k not in ("sweep", "prunes")} for r in runs]
    write_json(out / "results.json", {"provenance": provenance(), "rows": rows, "runs": kept})
    picked = sorted({(LABELS.get(g, g), r["run"]) for (g, _, _), r in chosen.items()})
    text = [
        "Validation loss in nats per character (perplexity in brackets) after one global "
        "magnitude prune of the attention + MLP matrices to each sparsity; the whole model's "
        f"sparsity is {fraction:.4f} times that (embeddings, norms and head stay dense). Each cell "
        "is the method's run with the lowest validation loss there: the text has no third split, "
        "so these are the numbers every choice was made on.",
        "",
        "## One-shot prune",
        "",
        table(chosen, "oneshot", sparsities),
        "",
        "## After the short masked fine-tuning",
        "",
        table(chosen, "ft", sparsities),
        "",
        "Runs in the cells: " + "; ".join(f"{label}: {run}" for label, run in picked) + ".",
        "",
    ]
    (out / "results.md").write_text("\n".join(text))
    if checkpoints is not None and data_dir is not None:
        samples(Path(checkpoints), chosen, data_dir, out)
    return {"rows": rows, "chosen": chosen, "runs": runs}


def register(commands: argparse._SubParsersAction) -> None:
    from rewa.experiments.study import study_subparsers

    p = study_subparsers(commands).add_parser(
        "lm",
        help="tabulate the language-model study (scripts/tinyshakespeare.sh): loss vs sparsity",
        description="Read the run folders of the language-model study, select each method's run "
        "on validation loss per sparsity (one-shot and fine-tuned), and write results.md/csv/json, "
        "loss_sparsity.png and, with --checkpoints and --data-dir, samples.md.",
    )
    p.add_argument("runs", metavar="RUNS", help="folder of run folders (e.g. OUT/runs)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the table and plot go")
    p.add_argument("--checkpoints", metavar="DIR", help="the runs' directories (for samples)")
    p.add_argument("--data-dir", help="the text's folder (for samples)")
    p.set_defaults(func=_summarize)


def _summarize(args: argparse.Namespace) -> int:
    result = summarize(args.runs, args.out, args.checkpoints, args.data_dir)
    print(f"{len(result['runs'])} runs; wrote {args.out}")
    return 0
