"""`rewa demo`: ReWA vs SGD vs AdamW on a synthetic sparse regression, in well under a minute."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rewa.cliutil import nonneg_float, positive_float, positive_int
from rewa.data.synthetic import make_sparse_regression
from rewa.errors import UsageError
from rewa.experiments.linear import OptimizerFactory, fit_linear, regression_metrics
from rewa.optim import ReWA
from rewa.optim.prox import ProxL1
from rewa.provenance import provenance
from rewa.report.plots import coefficient_plot
from rewa.report.tables import markdown_table, write_csv, write_json

COLUMNS = [
    "method",
    "test_mse",
    "est_error",
    "precision",
    "recall",
    "exact_sparsity",
    "sparsity_1e-3",
    "seconds",
]
FORMATS = {
    "exact_sparsity": ".2%",
    "sparsity_1e-3": ".2%",
    "precision": ".3f",
    "recall": ".3f",
    "seconds": ".1f",
}


def optimizers(args: argparse.Namespace) -> dict[str, OptimizerFactory]:
    """The three compared methods, each with its own learning rate and weight decay."""
    return {
        f"ReWA (SGD base, K={args.K:g}, M={args.M:g})": lambda ps: ReWA(
            ps, lr=args.lr_rewa, K=args.K, M=args.M, weight_decay=args.wd_rewa, momentum=0.9
        ),
        "SGD + weight decay": lambda ps: torch.optim.SGD(
            ps, lr=args.lr_sgd, momentum=0.9, weight_decay=args.wd_sgd
        ),
        "AdamW": lambda ps: torch.optim.AdamW(ps, lr=args.lr_adamw, weight_decay=args.wd_adamw),
    }


def l1_candidates(args: argparse.Namespace) -> dict[float, OptimizerFactory]:
    """Proximal ℓ1 (the paper's baseline) on SGD, one per strength λ of --l1-lams."""
    return {
        lam: lambda ps, lam=lam: ProxL1(ps, lr=args.lr_sgd, l1=lam, momentum=0.9)
        for lam in args.l1_lams
    }


def run(args: argparse.Namespace, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    torch.manual_seed(args.seed)
    data = make_sparse_regression(
        args.d, args.n, args.k, noise=args.noise, n_val=args.n_val, seed=args.seed
    )
    methods = optimizers(args)
    l1 = l1_candidates(args)
    steps = args.epochs * -(-args.n // args.batch_size)
    rows, estimates = [], {}
    total = steps * (len(methods) + len(l1))
    with tqdm(total=total, desc="demo", unit="step", disable=args.quiet, mininterval=0.5) as bar:

        def fit(factory: OptimizerFactory):
            return fit_linear(
                data,
                factory,
                epochs=args.epochs,
                batch_size=args.batch_size,
                seed=args.seed,
                on_step=lambda: bar.update(1),
            )

        for name, factory in methods.items():
            bar.set_postfix_str(name.split(" ")[0])
            result = fit(factory)
            rows.append(
                {"method": name, **regression_metrics(result.coef, data), "seconds": result.seconds}
            )
            estimates[name] = result.coef
        bar.set_postfix_str("ℓ1")
        fits = {lam: fit(factory) for lam, factory in l1.items()}
        lam = min(fits, key=lambda v: regression_metrics(fits[v].coef, data)["val_mse"])
        name = f"ℓ1 proximal (λ={lam:g}, chosen on validation)"
        rows.append(
            {
                "method": name,
                **regression_metrics(fits[lam].coef, data),
                "seconds": sum(f.seconds for f in fits.values()),
            }
        )
        estimates[name] = fits[lam].coef
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, COLUMNS, FORMATS)
    write_csv(out / "results.csv", rows, COLUMNS)
    write_json(
        out / "results.json", {"config": vars(args), "provenance": provenance(), "results": rows}
    )
    (out / "results.md").write_text(table + "\n")
    if not args.no_plot:
        coefficient_plot(
            out / "coefficients.png",
            data.beta,
            estimates,
            title=f"d={args.d}, n={args.n}, k={args.k}, σ={args.noise:g}",
        )
    echo(
        f"Sparse regression: d={args.d}, n={args.n}, k={args.k} true nonzeros, σ={args.noise:g}, "
        f"{args.epochs} epochs of batch {args.batch_size}; support = |β̂| > 1e-3; ℓ1's λ chosen "
        f"on {args.n_val} validation rows (its seconds: all {len(l1)} fits).\n"
    )
    echo(table)
    echo(
        f"\nWrote {out}/results.csv, results.json, results.md"
        + ("" if args.no_plot else ", coefficients.png")
    )
    return rows


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo",
        help="ReWA vs proximal ℓ1, SGD and AdamW on a synthetic sparse regression (CPU, ~10 s)",
        description="Fit a k-sparse linear regression y = Xβ + σξ with ReWA (SGD base), proximal "
        "ℓ1 (the paper's baseline; its strength chosen on a validation split), SGD with "
        "weight decay and AdamW; print a table (test MSE, ‖β̂−β‖, support precision/recall, exact "
        "sparsity and sparsity at 1e-3) and write it as CSV/JSON/markdown with a plot of the "
        "coefficients.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--d", type=positive_int, default=2000, help="number of features")
    p.add_argument("--n", type=positive_int, default=400, help="number of training samples")
    p.add_argument("--k", type=positive_int, default=10, help="number of true nonzeros")
    p.add_argument("--noise", type=nonneg_float, default=1.0, help="noise standard deviation σ")
    p.add_argument("--epochs", type=positive_int, default=150, help="training epochs per method")
    p.add_argument("--batch-size", type=positive_int, default=25, help="minibatch size")
    p.add_argument("--K", type=positive_float, default=9.0, help="ReWA order K (>= 1)")
    p.add_argument("--M", type=nonneg_float, default=2.0, help="ReWA adaptive exponent M")
    p.add_argument("--lr-rewa", type=positive_float, default=2e-2, help="ReWA learning rate")
    p.add_argument("--wd-rewa", type=nonneg_float, default=0.1, help="ReWA weight decay κ")
    p.add_argument("--lr-sgd", type=positive_float, default=1e-3, help="SGD learning rate")
    p.add_argument("--wd-sgd", type=nonneg_float, default=1e-3, help="SGD weight decay")
    p.add_argument("--lr-adamw", type=positive_float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--wd-adamw", type=nonneg_float, default=1e-2, help="AdamW weight decay")
    p.add_argument(
        "--l1-lams", type=positive_float, nargs="+", default=[0.03, 0.1, 0.3],
        help="strengths λ of proximal ℓ1 (SGD at --lr-sgd), one chosen on validation",
    )  # fmt: skip
    p.add_argument(
        "--n-val", type=positive_int, default=200, help="validation rows (choose ℓ1's λ)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for data, init and batch order")
    p.add_argument("--out-dir", default="runs/demo", help="where the CSV/JSON/PNG go")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.K < 1:
        raise UsageError(f"--K must be >= 1, got {args.K}")
    if args.k > args.d:
        raise UsageError(f"--k ({args.k}) cannot exceed --d ({args.d})")
    run(args)
    return 0


__all__ = ["register", "run"]
