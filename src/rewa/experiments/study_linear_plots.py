"""The plots of `rewa study linear`: error vs p, coefficient paths, training-loss curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SWEEP_STYLE = {
    "ReWA-SGD": ("tab:blue", "o"),
    "ReWA-AdamW": ("tab:cyan", "s"),
    "direct ℓp (δ=0)": ("tab:red", "^"),
}
FLOOR = 1e-12  # where exact zeros are drawn on log axes


def write_all(
    out: Path, cfg, results: Sequence[tuple[Any, Any]], selected: dict, sweep_rows
) -> list[str]:
    """Write every plot the data allows; returns the file names."""
    written = []
    main = cfg.scenarios()[0]
    if sweep_rows and cfg.sweep_seeds > 1:
        from rewa.experiments.study_linear import km_map

        km_heatmaps(out / "km_map.png", km_map(sweep_rows))
        written.append("km_map.png")
    first_seed = [r for r in sweep_rows if r["seed"] == main.seed]
    if first_seed:
        error_vs_p(out / "error_vs_p.png", first_seed, _main_refs(selected, main))
        written.append("error_vs_p.png")
        own = [(c, o) for c, o in results if c.scenario == main]
        if training_loss(out / "training_loss.png", own, main):
            written.append("training_loss.png")
    if coefficient_paths(out / "coefficient_paths.png", results, selected, main):
        written.append("coefficient_paths.png")
    return written


def km_heatmaps(path: Path, cells: Sequence[dict[str, Any]]) -> None:
    """Test MSE, estimation error and exact sparsity over (K, M), mean over seeds; cells with
    M = K − 1 (plain reparameterization) hatched."""
    import numpy as np

    Ks = sorted({c["K"] for c in cells})
    Ms = sorted({c["M"] for c in cells})
    panels = [
        ("test_mse", "test MSE", "log"),
        ("est_error", "‖β̂ − β‖₂", "log"),
        ("exact_sparsity", "exact sparsity (β̂ = 0)", "linear"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        grid = np.full((len(Ms), len(Ks)), np.nan)
        for c in cells:
            grid[Ms.index(c["M"]), Ks.index(c["K"])] = c[key]
        shown = np.log10(np.maximum(grid, FLOOR)) if scale == "log" else grid
        image = ax.imshow(shown, origin="lower", cmap="viridis", aspect="auto")
        for c in cells:
            i, j = Ms.index(c["M"]), Ks.index(c["K"])
            value = c[key]
            text = f"{value:.3g}" if scale == "log" else f"{value:.2g}"  # 0.0009, not 0.00
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w")
            if not c["valid"]:
                ax.add_patch(
                    plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", ec="r")
                )
        ax.set_xticks(range(len(Ks)), [f"{k:g}" for k in Ks])
        ax.set_yticks(range(len(Ms)), [f"{m:g}" for m in Ms])
        ax.set_xlabel("K")
        ax.set_ylabel("M")
        ax.set_title(label + (" (log10 colour)" if scale == "log" else ""), fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8)
    seeds = cells[0]["seeds"] if cells else 0
    fig.suptitle(
        f"ReWA-SGD over (K, M), mean of {seeds} seeds; hatched: M = K − 1 (plain "
        "reparameterization, saddle at 0)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _main_refs(selected: dict, main) -> dict[str, dict[str, Any]]:
    """Selected main-part rows of the main scenario's first seed, by family."""
    return {
        row["family"]: row
        for (part, label, seed, *_), (row, _) in selected.items()
        if part == "main" and label == main.label and seed == main.seed
    }


def error_vs_p(path: Path, sweep_rows, refs: dict[str, dict[str, Any]]) -> None:
    metrics = [
        ("est_error", "‖β̂ − β‖₂", "log"),
        ("f1", "support F1 (|β̂| > 1e-3)", "linear"),
        ("exact_sparsity", "exact sparsity (β̂ = 0)", "linear"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (key, label, scale) in zip(axes, metrics, strict=True):
        for family, (color, marker) in SWEEP_STYLE.items():
            rows = sorted((r for r in sweep_rows if r["family"] == family), key=lambda r: r["p"])
            if not rows:
                continue
            xs = [r["p"] for r in rows]
            ys = [_finite_or(r[key], float("nan")) for r in rows]
            if scale == "log":
                ys = [max(y, FLOOR) for y in ys]
            ax.plot(xs, ys, color=color, marker=marker, ms=4, lw=1, label=family)
        for family, row in refs.items():
            if family.startswith(("ℓ1 prox", "Lasso")):
                style = "--" if family.startswith("Lasso") else ":"
                ax.axhline(
                    _finite_or(row[key], float("nan")), color="k", ls=style, lw=1, label=family
                )
        ax.set_xlabel("p = (K + 1 − M)/K")
        ax.set_ylabel(label)
        ax.set_yscale(scale)
        ax.axvline(1.0, color="grey", lw=0.5)
    axes[0].legend(fontsize=7)
    fig.suptitle("ReWA over (K, M) vs direct ℓp at the same p (each point: best on validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite_or(value: float, default: float) -> float:
    return value if value == value and abs(value) != float("inf") else default


def coefficient_paths(path: Path, results, selected: dict, main) -> bool:
    """Left: the Lasso path. Middle/right: coefficient trajectories of the selected runs."""
    refs = _main_refs(selected, main)
    lasso = refs.get("Lasso path (sklearn)")
    runs = {
        fam: outcome
        for (part, label, seed, fam, *_), (_, outcome) in selected.items()
        if part == "main" and label == main.label and seed == main.seed and "step" in outcome.curves
    }
    if not runs and lasso is None:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    if lasso is not None:
        curves = selected[_key_of(selected, lasso)][1].curves
        ax.plot(
            curves["alpha"],
            curves["support"],
            "b-",
            marker=".",
            label="true support (sign-aligned mean)",
        )
        ax.plot(
            curves["alpha"],
            [max(v, FLOOR) for v in curves["off"]],
            "r-",
            marker=".",
            label="largest off-support |β̂|",
        )
        ax.axvline(lasso["strength"], color="k", ls="--", lw=1, label="α chosen on validation")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("α (Lasso penalty)")
        ax.set_title("Lasso path (scikit-learn)", fontsize=10)
        ax.legend(fontsize=7)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (family, outcome) in enumerate(sorted(runs.items())):
        c = outcome.curves
        color = colors[i % len(colors)]
        axes[1].plot(c["step"], c["support"], color=color, label=family)
        axes[2].plot(
            c["step"], [max(v, FLOOR) for v in c["off_support"]], color=color, label=family
        )
    axes[1].axhline(1.0, color="grey", lw=0.5)
    axes[1].set_title("true-support coefficient during training (1 = unbiased)", fontsize=10)
    axes[2].set_yscale("log")
    axes[2].set_title(
        f"largest off-support |β̂| during training (0 drawn at {FLOOR:g})", fontsize=10
    )
    for ax in axes[1:]:
        ax.set_xlabel("step")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Coefficient paths, {main.label}, seed {main.seed} (selected hyperparameters)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _key_of(selected: dict, row: dict) -> tuple:
    return next(k for k, (r, _) in selected.items() if r is row)


def training_loss(path: Path, results, main, max_panels: int = 3) -> bool:
    """Step losses of ReWA-SGD and direct ℓp (every κ of their grids) for a few (K, M): the
    smallest p of the sweep, the main (K, M) and one in between."""
    sweep = [(c, o) for c, o in results if c.part == "sweep" and "loss" in o.curves]
    pairs = sorted({(c.p, c.K, c.M) for c, _ in sweep if c.p is not None and c.p < 1})
    if not pairs:
        return False
    main_pair = next((x for x in pairs if (x[1], x[2]) == (9.0, 2.0)), pairs[-1])
    chosen = sorted({pairs[0], pairs[len(pairs) // 2], main_pair})[:max_panels]
    fig, axes = plt.subplots(1, len(chosen), figsize=(5 * len(chosen), 4), squeeze=False)
    for ax, (p, K, M) in zip(axes[0], chosen, strict=True):
        runs = [
            (c, o)
            for c, o in sweep
            if (c.K, c.M) == (K, M) and c.family in ("ReWA-SGD", "direct ℓp (δ=0)")
        ]
        for c, o in sorted(runs, key=lambda r: (r[0].family, r[0].strength, r[0].lr)):
            losses = [min(v, 1e12) if v == v else 1e12 for v in o.curves["loss"]]
            color = "tab:red" if c.family.startswith("direct") else "tab:blue"
            strongest = max(x.strength for x, _ in runs if x.family == c.family)
            ax.plot(
                _moving_average(losses, 20),
                color=color,
                ls="-" if c.strength == strongest else ":",
                lw=1,
                label=f"{c.family}, κ={c.strength:g}, lr={c.lr:g}",
            )
        ax.set_yscale("log")
        ax.set_title(f"p = {p:.3f} (K={K:g}, M={M:g})", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (moving average of 20 steps)")
        ax.legend(fontsize=6)
    fig.suptitle(f"Training loss, {main.label}, seed {main.seed}: ReWA vs direct ℓp at the same p")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _moving_average(values: Sequence[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out
