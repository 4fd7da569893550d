"""`rewa target-sparsity`: show the target-sparsity controller at work, and tabulate runs.

``rewa target-sparsity linear``: the synthetic sparse regression of METHOD.md, trained by ReWA
and by proximal ℓ1 with the controller asked for each S, from a base strength that alone would
end elsewhere; the table has requested vs achieved sparsity (|β̂| <= 1e-3), test MSE, ‖β̂ − β‖,
support F1 and the final strength, plus a plot of measured vs scheduled sparsity.

``rewa target-sparsity summarize RUN_DIR...``: the same table for training runs made with
``rewa train --target-sparsity S`` (achieved sparsity and accuracy as trained and after zeroing
every |x| <= the reporting threshold, from the run's metrics and eval.json).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rewa.cliutil import nonneg_int, positive_float, positive_int
from rewa.control import (
    GAINS,
    NO_LOOKAHEAD,
    PROXIMAL,
    SparsityController,
    TargetSparsity,
    sparse_group_knob,
)
from rewa.data.synthetic import make_sparse_regression
from rewa.errors import UsageError
from rewa.experiments.linear import fit_linear, regression_metrics
from rewa.optim import ReWA
from rewa.optim.prox import ProxL1
from rewa.provenance import provenance
from rewa.report.tables import markdown_table, write_csv, write_json

THRESHOLD = 1e-3
METHODS = ("rewa", "l1-prox")
LINEAR_COLUMNS = [
    "method",
    "requested",
    "seed",
    "achieved",
    "error_points",
    "exact_sparsity",
    "test_mse",
    "est_error",
    "f1",
    "strength",
    "base_strength",
]
LINEAR_FORMATS = {
    "requested": ".2%",
    "achieved": ".2%",
    "error_points": "+.2f",
    "exact_sparsity": ".2%",
    "test_mse": ".3f",
    "est_error": ".3f",
    "f1": ".3f",
    "strength": ".3g",
    "base_strength": ".3g",
}


# ---------------------------------------------------------------- the regression experiment


def make_optimizer(method: str, params, args: argparse.Namespace):
    if method == "rewa":
        return ReWA(
            params, lr=args.lr_rewa, K=args.K, M=args.M, weight_decay=args.wd_rewa, momentum=0.9
        )
    return ProxL1(params, lr=args.lr_l1, l1=args.lam_l1, momentum=0.9)


def fit(method: str, target: float | None, seed: int, args, data, on_step=None) -> dict[str, Any]:
    """One fit; ``target=None`` is the uncontrolled reference at the base strength."""
    steps = args.epochs * math.ceil(args.n / args.batch_size)
    state: dict[str, Any] = {"step": 0, "trace": []}

    def factory(params):
        opt = make_optimizer(method, params, args)
        if target is not None:
            profile = PROXIMAL if method in NO_LOOKAHEAD else {}  # as control.for_method does
            controller = SparsityController(target, threshold=THRESHOLD, **profile)
            state["hook"] = TargetSparsity(
                controller, sparse_group_knob(opt), params, every=args.every
            )
        state["knob"] = sparse_group_knob(opt)
        return opt

    def step():
        hook = state.get("hook")
        if hook is not None:
            measured = hook.after_step(state["step"], steps)
            if measured is not None:
                c = hook.controller
                state["trace"].append((c.progress, measured, c.last_target, c.multiplier))
        state["step"] += 1
        if on_step is not None:
            on_step()

    result = fit_linear(
        data, factory, epochs=args.epochs, batch_size=args.batch_size, seed=seed, on_step=step
    )
    metrics = regression_metrics(result.coef, data, support_threshold=THRESHOLD)
    achieved = float((result.coef.abs() <= THRESHOLD).float().mean())
    knob = state["hook"].knob if target is not None else state["knob"]
    return {
        "method": method,
        "requested": target,
        "seed": seed,
        "achieved": achieved,
        "error_points": None if target is None else 100 * (achieved - target),
        "exact_sparsity": metrics["exact_sparsity"],
        "test_mse": metrics["test_mse"],
        "est_error": metrics["est_error"],
        "f1": metrics["f1"],
        "strength": knob.value(),
        "base_strength": knob.base[0],
        "trace": state["trace"],
    }


def run_linear(args: argparse.Namespace, echo=print) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    methods = args.methods
    targets = args.targets
    seeds = list(range(args.seed, args.seed + args.seeds))
    jobs = [(m, t, s) for m in methods for t in [None, *targets] for s in seeds]
    steps = args.epochs * math.ceil(args.n / args.batch_size)
    rows = []
    with tqdm(total=len(jobs) * steps, desc="target-sparsity", unit="step",
              disable=args.quiet, mininterval=1.0) as bar:  # fmt: skip
        for method, target, seed in jobs:
            data = make_sparse_regression(args.d, args.n, args.k, noise=args.noise, seed=seed)
            rows.append(fit(method, target, seed, args, data, on_step=lambda: bar.update(1)))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = [{k: v for k, v in r.items() if k != "trace"} for r in rows]
    write_csv(out / "results.csv", table, LINEAR_COLUMNS)
    summary = summarize_linear(table)
    write_json(
        out / "results.json",
        {
            "provenance": provenance(),
            "config": {k: v for k, v in vars(args).items() if k != "func"},
            "threshold": THRESHOLD,
            "gains": GAINS,
            "summary": summary,
            "results": table,
            "traces": {f"{r['method']}/{r['requested']}/{r['seed']}": r["trace"] for r in rows},
        },
    )
    text = linear_markdown(args, table, summary)
    (out / "results.md").write_text(text)
    if not args.no_plot:
        trace_plot(out / "trajectories.png", [r for r in rows if r["seed"] == seeds[0]])
    echo(text)
    echo(
        f"wrote {out}/results.md, results.csv, results.json"
        + ("" if args.no_plot else ", trajectories.png")
    )
    return rows


def summarize_linear(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and requested sparsity: mean achieved, worst |error|, mean test MSE."""
    out = []
    keys = sorted({(r["method"], r["requested"]) for r in rows}, key=lambda k: (k[0], k[1] or -1))
    for method, target in keys:
        group = [r for r in rows if r["method"] == method and r["requested"] == target]
        errors = [abs(r["error_points"]) for r in group if r["error_points"] is not None]
        out.append(
            {
                "method": method,
                "requested": target,
                "runs": len(group),
                "achieved_mean": sum(r["achieved"] for r in group) / len(group),
                "worst_error_points": max(errors) if errors else None,
                "test_mse_mean": sum(r["test_mse"] for r in group) / len(group),
                "f1_mean": sum(r["f1"] for r in group) / len(group),
                "strength_mean": sum(r["strength"] for r in group) / len(group),
            }
        )
    return out


def linear_markdown(args, rows, summary) -> str:
    names = {"rewa": f"ReWA (SGD, K={args.K:g}, M={args.M:g}, lr {args.lr_rewa:g})",
             "l1-prox": f"proximal ℓ1 (SGD, lr {args.lr_l1:g})"}  # fmt: skip
    shown = [
        {**r, "method": names[r["method"]], "requested": r["requested"] or "none (base)"}
        for r in summary
    ]
    return "\n".join(
        [
            "# Target-sparsity control on the sparse regression",
            "",
            f"d = {args.d}, n = {args.n}, k = {args.k} true nonzeros, σ = {args.noise:g}; "
            f"{args.epochs} epochs of batch {args.batch_size}, cosine lr; seeds {args.seed}.."
            f"{args.seed + args.seeds - 1}. Sparsity = fraction of |β̂| <= {THRESHOLD:g} "
            f"(the controller's measurement, every {args.every} steps). The controller starts "
            f"from the base strength (ReWA κ = {args.wd_rewa:g}, ℓ1 λ = {args.lam_l1:g}); "
            "'none (base)' rows are that strength without control.",
            "",
            "## Summary (mean over seeds; worst = largest |achieved − requested| in points)",
            "",
            markdown_table(
                shown,
                [
                    "method",
                    "requested",
                    "runs",
                    "achieved_mean",
                    "worst_error_points",
                    "test_mse_mean",
                    "f1_mean",
                    "strength_mean",
                ],
                {
                    "requested": ".2%",
                    "achieved_mean": ".2%",
                    "worst_error_points": ".2f",
                    "test_mse_mean": ".3f",
                    "f1_mean": ".3f",
                    "strength_mean": ".3g",
                },
            ),
            "",
            "## Every run",
            "",
            markdown_table(rows, LINEAR_COLUMNS, LINEAR_FORMATS),
            "",
        ]
    )


# one curve: (label, x, measured sparsity, scheduled sparsity, strength), aligned sequences
Curve = tuple[str, Sequence[float], Sequence[float], Sequence[float], Sequence[float]]


def trajectory_figure(
    path: Path,
    panels: dict[str, list[Curve]],
    *,
    density_label: str,
    strength_label: str,
    x_label: str,
) -> None:
    """One column per panel: measured (solid) vs scheduled (dashed) density on top, the
    controlled strength below, both on log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(panels), figsize=(5.5 * len(panels), 6.5), squeeze=False)
    for col, (title, curves) in enumerate(panels.items()):
        top, bottom = axes[0][col], axes[1][col]
        for label, x, measured, target, strength in curves:
            (line,) = top.plot(x, [max(1 - m, 1e-4) for m in measured], label=label)
            top.plot(x, [max(1 - t, 1e-4) for t in target], "--", color=line.get_color())
            bottom.plot(x, strength, color=line.get_color())
        top.set_yscale("log")
        top.set_ylabel(density_label)
        top.set_title(f"{title}: measured (solid) vs scheduled (dashed)", fontsize=9)
        top.legend(fontsize=8)
        strengths = [v for *_, strength in curves for v in strength if v > 0]
        if strengths and min(strengths) == max(strengths):  # a flat line: give log a range
            bottom.set_ylim(strengths[0] / 2, strengths[0] * 2)
        bottom.set_yscale("log")
        bottom.set_ylabel(strength_label)
        bottom.set_xlabel(x_label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trace_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    """Measured and scheduled sparsity, and the strength multiplier, over training."""
    panels: dict[str, list[Curve]] = {}
    for r in sorted((r for r in rows if r["requested"] is not None), key=lambda r: r["method"]):
        progress, measured, target, multiplier = zip(*r["trace"], strict=True)
        curve = (f"S = {r['requested']:g}", progress, measured, target, multiplier)
        panels.setdefault(r["method"], []).append(curve)
    trajectory_figure(
        path,
        panels,
        density_label=f"density 1 − s (|β̂| > {THRESHOLD:g})",
        strength_label="strength multiplier",
        x_label="progress",
    )


# ---------------------------------------------------------------- runs of the trainer


RUN_COLUMNS = [
    "run",
    "method",
    "requested",
    "achieved",
    "error_points",
    "exact_sparsity",
    "val_acc",
    "test_acc",
    "val_acc_pruned",
    "test_acc_pruned",
    "final_strength",
    "base_strength",
    "finetuned_sparsity",
    "test_acc_finetuned",
]
RUN_FORMATS = {
    "requested": ".2%",
    "achieved": ".2%",
    "error_points": "+.2f",
    "exact_sparsity": ".2%",
    "val_acc": ".4f",
    "test_acc": ".4f",
    "val_acc_pruned": ".4f",
    "test_acc_pruned": ".4f",
    "final_strength": ".3g",
    "base_strength": ".3g",
    "finetuned_sparsity": ".2%",
    "test_acc_finetuned": ".4f",
}
PRUNED_DIR = "pruned"  # where scripts/target_sparsity_cifar.sh puts `rewa prune` of each run


def run_summary(run_dir: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for a run trained with ``sparsity.target`` (``records``: its metrics.jsonl)."""
    from rewa.report.runs import training_sessions

    evaluation_path = run_dir / "eval.json"
    if not evaluation_path.is_file():
        raise UsageError(f"{run_dir} has no eval.json (unfinished run?)")
    evaluation = json.loads(evaluation_path.read_text())
    config = evaluation["config"]
    target, tau = config["sparsity"]["target"], config["sparsity"]["threshold"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    last = epochs[-1]
    point = next((p for p in evaluation["sweep"] if p["threshold"] == tau), None)
    if point is None:
        raise UsageError(f"{run_dir}: the threshold sweep has no point at τ = {tau:g}")
    options = config["method"]["options"]
    base = options.get("lam", options.get("weight_decay"))  # the strength the controller scales
    final = last.get("control_strength") if target else base  # a reference run keeps its own
    return {
        "run": run_dir.name,
        "method": config["method"]["name"],
        "requested": target or None,
        "achieved": point["sparsity"],
        "error_points": 100 * (point["sparsity"] - target) if target else None,
        "exact_sparsity": evaluation["final"]["sparsity"],
        "val_acc": evaluation["final"].get("val_acc"),
        "test_acc": evaluation["final"].get("test_acc"),
        "val_acc_pruned": point.get("val_acc"),
        "test_acc_pruned": point.get("test_acc"),
        "final_strength": final,
        "base_strength": base,
        **finetuned(run_dir / PRUNED_DIR),
        "threshold": tau,
        "epochs": config["schedule"]["epochs"],
        "split_sizes": evaluation["split_sizes"],
        "training_sessions": training_sessions(run_dir),
        "trace": [
            (
                r["epoch"],
                r.get("control_measured"),
                r.get("control_target"),
                r.get("control_multiplier"),
                r.get("val_acc"),
            )
            for r in epochs
        ],
    }


def finetuned(pruned_dir: Path) -> dict[str, Any]:
    """Sparsity and test accuracy after `rewa prune ... --finetune-epochs N` of the run, if any."""
    path = pruned_dir / "prune.json"
    if not path.is_file():
        return {}
    result = json.loads(path.read_text())
    tuned = result.get("finetune", {})
    return {
        "finetuned_sparsity": tuned.get("sparsity"),
        "test_acc_finetuned": tuned.get("test_acc"),
        "finetune_epochs": tuned.get("epochs"),
        "prune_rule": result["pruned"]["rule"],
    }


def summarize_runs(args: argparse.Namespace, echo=print) -> list[dict[str, Any]]:
    from rewa.train.rundir import read_metrics

    run_dirs = [Path(d) for d in args.run_dirs]
    metrics = [read_metrics(d / "metrics.jsonl") for d in run_dirs]
    rows = [run_summary(d, records) for d, records in zip(run_dirs, metrics, strict=True)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = [{k: v for k, v in r.items() if k not in ("trace", "training_sessions")} for r in rows]
    write_csv(out / "results.csv", table, RUN_COLUMNS)
    write_json(out / "results.json", {"provenance": provenance(), "runs": rows})
    tau = rows[0]["threshold"]
    text = "\n".join(
        [
            "# Target-sparsity control: training runs",
            "",
            f"achieved = fraction of conv + linear weights with |x| <= {tau:g} at the end of "
            "training (the controller's measurement); *_pruned = accuracy after zeroing those "
            "weights (the sparse model); *_finetuned = after `rewa prune` at that threshold and "
            "masked fine-tuning (see prune.json of each run); a run without 'requested' is an "
            "uncontrolled reference at its base strength. Split sizes: "
            + ", ".join(f"{k} {v:,}" for k, v in rows[0]["split_sizes"].items())
            + f". Last epoch of {rows[0]['epochs']}, never best-test.",
            "",
            markdown_table(table, RUN_COLUMNS, RUN_FORMATS),
            "",
            "Per epoch (measured sparsity, scheduled target, multiplier, val_acc):",
            "",
            *(
                f"- {r['run']}: "
                + "; ".join(
                    f"e{e}: {m:.3f}/{t:.3f}/×{x:.3g}/{a:.3f}"
                    for e, m, t, x, a in r["trace"]
                    if m is not None
                )
                for r in rows
                if r["requested"]
            ),
            "",
        ]
    )
    (out / "results.md").write_text(text)
    if not args.no_plot and any(r["requested"] for r in rows):
        runs_plot(out / "trajectories.png", metrics, rows)
    echo(text)
    return rows


def runs_plot(path: Path, metrics: list[list[dict[str, Any]]], rows: list[dict[str, Any]]) -> None:
    """Each controlled run's measured vs scheduled density and its strength, one column a
    method, from its metrics.jsonl records."""
    panels: dict[str, list[Curve]] = {}
    for run_records, row in zip(metrics, rows, strict=True):
        if not row["requested"]:
            continue
        # step records where output.log_every gave them, and the end of every epoch
        records = [
            r
            for r in run_records
            if r["kind"] in ("step", "epoch") and r.get("control_measured") is not None
        ]
        records.sort(key=lambda r: r["epoch"])
        curve = tuple(
            [r[key] for r in records]
            for key in ("epoch", "control_measured", "control_target", "control_strength")
        )
        panels.setdefault(row["method"], []).append((f"S = {row['requested']:g}", *curve))
    trajectory_figure(
        path,
        panels,
        density_label=f"density 1 − s (|x| > {rows[0]['threshold']:g})",
        strength_label="controlled strength (κ, λ, …)",
        x_label="epoch",
    )


# ---------------------------------------------------------------- argparse


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected sparsities in (0, 1), got {text!r}")
    return values


def _methods(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in METHODS]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"methods must be among {', '.join(METHODS)}, got {text!r}"
        )
    return values


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "target-sparsity",
        help="the target-sparsity controller on the sparse regression, or a table of runs",
        description="Show target-sparsity control: `linear` runs the sparse regression with the "
        "controller for each requested sparsity; `summarize` tabulates runs trained with "
        "`rewa train --target-sparsity S`.",
    )
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    lin = sub.add_parser(
        "linear",
        help="controller on the synthetic sparse regression (CPU, about a minute)",
        description="Sparse regression (METHOD.md) with ReWA and proximal ℓ1, each controlled "
        "to every requested sparsity from a base strength; writes results.md/csv/json and "
        "trajectories.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    lin.add_argument("--targets", type=_fractions, default=[0.9, 0.95, 0.99], metavar="S,S")
    lin.add_argument("--methods", type=_methods, default=list(METHODS), metavar="M,M")
    lin.add_argument("--d", type=positive_int, default=2000, help="number of features")
    lin.add_argument("--n", type=positive_int, default=400, help="training samples")
    lin.add_argument("--k", type=positive_int, default=10, help="true nonzeros")
    lin.add_argument("--noise", type=positive_float, default=1.0, help="noise σ")
    lin.add_argument("--epochs", type=positive_int, default=150)
    lin.add_argument("--batch-size", type=positive_int, default=25)
    lin.add_argument("--every", type=positive_int, default=10, help="steps between updates")
    lin.add_argument("--K", type=positive_float, default=9.0, help="ReWA order K")
    lin.add_argument("--M", type=float, default=2.0, help="ReWA exponent M")
    lin.add_argument("--lr-rewa", type=positive_float, default=2e-2)
    lin.add_argument("--wd-rewa", type=positive_float, default=1e-2, help="ReWA base κ")
    lin.add_argument("--lr-l1", type=positive_float, default=1e-3)
    lin.add_argument("--lam-l1", type=positive_float, default=1e-2, help="ℓ1 base λ")
    lin.add_argument("--seed", type=nonneg_int, default=0, help="first seed")
    lin.add_argument("--seeds", type=positive_int, default=3, help="number of seeds")
    lin.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    lin.add_argument("--out-dir", default="runs/target_sparsity_linear")
    lin.add_argument("--no-plot", action="store_true")
    lin.add_argument("--quiet", action="store_true", help="no progress bar")
    lin.set_defaults(func=lambda a: run_linear(a) and 0)
    summ = sub.add_parser(
        "summarize",
        help="requested vs achieved sparsity and accuracy of `rewa train --target-sparsity` runs",
        description="Tabulate runs of `rewa train --target-sparsity S` (and uncontrolled reference "
        "runs): requested vs achieved sparsity, accuracy before and after pruning at the "
        "controller's threshold, and after `rewa prune` into RUN_DIR/pruned if present; writes "
        "results.md/csv/json and trajectories.png.",
    )
    summ.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    summ.add_argument("--out", default="runs/target_sparsity_report", metavar="DIR")
    summ.add_argument("--no-plot", action="store_true", help="skip trajectories.png")
    summ.set_defaults(func=lambda a: summarize_runs(a) and 0)


__all__ = ["register", "run_linear", "summarize_runs"]
