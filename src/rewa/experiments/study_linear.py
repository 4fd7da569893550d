"""`rewa study linear`: the synthetic sparse-regression study of METHOD.md, on equal terms.

Every iterative method is one :class:`rewa.methods.SparseMethod` trained by the same loop
(:func:`rewa.experiments.linear.fit_linear`: same init, batches, epochs and cosine schedule), with
its hyperparameters chosen by the smallest validation MSE over a small grid — never on the test
split. The classical references are computed in closed form: scikit-learn's Lasso path and the
dense least-squares (ridge, min-norm limit) path, their α also chosen on validation.

Three parts, written to one results directory:

- main: every method on each scenario (the published k = 1 problem with several seeds, more
  nonzeros, a correlated design), a markdown + CSV table;
- sweep: ReWA over K ∈ {3..13}, even M < K (SGD and AdamW bases) and direct ℓp at the same
  p = (K + 1 − M)/K and λ = κ/p, on the published problem — the error-vs-p plot;
- plots: error vs p, coefficient paths (Lasso path and training trajectories), training-loss
  curves of ReWA and direct ℓp (its instability).
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rewa.cliutil import fraction, nonneg_float, positive_int
from rewa.data.synthetic import SparseRegression, make_sparse_logistic, make_sparse_regression
from rewa.errors import UsageError
from rewa.experiments.linear import fit_linear, regression_metrics
from rewa.experiments.study import study_subparsers
from rewa.methods import build_method
from rewa.provenance import provenance
from rewa.report.tables import markdown_table, write_csv, write_json
from rewa.theory import lp_exponent

# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Scenario:
    """One draw of the sparse-regression problem."""

    d: int
    n: int
    k: int
    noise: float = 1.0
    correlation: float = 0.0
    n_val: int = 1000
    n_test: int = 2000
    seed: int = 0
    random_signs: bool = True
    task: str = "regression"  # or "logistic": β = (1, 0.5, 0, ...), labels ~ Bernoulli(σ(Xβ))
    # the regression loss: "half" ½·MSE, or "mean" the MSE itself (the authors' torch MSELoss)
    squared_loss: str = "half"

    @property
    def label(self) -> str:
        if self.task == "logistic":
            return "logistic, β = (1, 0.5, 0, …)"
        corr = f", AR(1) ρ={self.correlation:g}" if self.correlation else ""
        return f"k={self.k}{corr}"

    @property
    def loss(self) -> str:
        if self.task == "logistic":
            return "bce"
        return "mse_mean" if self.squared_loss == "mean" else "mse"

    def data(self) -> SparseRegression:
        return _cached_data(self)


@functools.lru_cache(maxsize=2)
def _cached_data(s: Scenario) -> SparseRegression:
    if s.task == "logistic":
        return make_sparse_logistic(s.d, s.n, n_val=s.n_val, n_test=s.n_test, seed=s.seed)
    return make_sparse_regression(
        s.d,
        s.n,
        s.k,
        noise=s.noise,
        n_val=s.n_val,
        n_test=s.n_test,
        correlation=s.correlation,
        random_signs=s.random_signs,
        seed=s.seed,
    )


@dataclass(frozen=True)
class Candidate:
    """One training run (or one closed-form path) of one method with one set of hyperparameters.

    ``family`` names the table row; candidates of the same family (and part, scenario, K, M)
    compete on validation MSE.
    """

    part: str  # "main" or "sweep"
    scenario: Scenario
    family: str
    method: str  # a registry name, or "lasso" / "ridge" (closed-form paths)
    base: str = "sgd"
    lr: float = 0.0
    options: tuple[tuple[str, Any], ...] = ()
    strength: float = 0.0  # κ, λ or weight decay: the x-axis of the coefficient paths
    K: float | None = None
    M: float | None = None
    p: float | None = None  # the ℓp exponent the method behaves like (1 for ℓ1, None if none)
    momentum: float = 0.9

    @property
    def hyper(self) -> str:
        opts = dict(self.options)
        shown = {k: v for k, v in opts.items() if k not in ("K", "M", "p")}
        closed_form = self.method in ("lasso", "ridge")
        parts = [] if closed_form else [f"lr={self.lr:g}"]
        parts += [f"{k}={v:g}" for k, v in shown.items()]
        return ", ".join(parts)


@dataclass
class Settings:
    """What the study runs: sizes, grids, epochs."""

    protocol: str = "short"
    task: str = "regression"
    squared_loss: str = "half"  # "half": ½·MSE; "mean": the MSE (the authors' loss)
    d: int = 10_000
    n: int = 2_000
    noise: float = 1.0
    ks: tuple[int, ...] = (1, 10, 50)
    correlation: float = 0.5
    correlated_ks: tuple[int, ...] = (10,)
    seeds: tuple[int, ...] = (0, 1, 2)
    variant_seeds: int = 1
    n_val: int = 1000
    n_test: int = 2000
    epochs: int = 20
    batch_size: int = 25
    # how every iterative method starts and moves: see fit_linear
    init: str = "correlation"
    momentum: float = 0.9
    random_signs: bool = True
    sweep_K: tuple[float, ...] = (3, 5, 7, 9, 11, 13)
    sweep_bases: tuple[str, ...] = ("sgd", "adamw")
    sweep_lp: bool = True  # direct ℓp at each (K, M)'s p in the sweep
    sweep_seeds: int = 1  # main-scenario seeds the sweep runs on
    main_K: float = 9.0
    main_M: float = 2.0
    # the AdamW-base ReWA rows of the main table, as (K, M, eps); empty: (main_K, main_M, 0)
    adamw_variants: tuple[tuple[float, float, float], ...] = ()
    # grids (ReWA's κ and learning rates are absolute; the dense-SGD-type baselines' learning
    # rates are multiples of batch/d, the scale of their stability limit)
    rewa_sgd_lr: tuple[float, ...] = (0.01, 0.03)
    rewa_sgd_kappa: tuple[float, ...] = (0.01, 0.03, 0.1)
    rewa_adamw_lr: tuple[float, ...] = (0.003,)
    rewa_adamw_kappa: tuple[float, ...] = (0.3, 1.0)
    # × batch/d: 0.2 is stable for plain SGD at d = 10,000, 0.4 diverges without a penalty
    sgd_lr_factor: tuple[float, ...] = (0.2, 0.4)
    l1_lam: tuple[float, ...] = (0.05, 0.1, 0.2)
    lp_kappa: tuple[float, ...] = (0.01, 0.03, 0.1)
    spred_kappa: tuple[float, ...] = (0.01, 0.03, 0.1)
    # the sweep: ReWA-SGD and direct ℓp over these κ (ReWA-AdamW over rewa_adamw_kappa), each at
    # the first learning rate of its grid (for direct ℓp the one plain SGD is stable at)
    sweep_kappa: tuple[float, ...] = (0.003, 0.03, 0.1)
    lasso_alphas: int = 16
    families: tuple[str, ...] = ()  # empty: all
    sweep: bool = True
    workers: int = 2

    @property
    def sgd_lrs(self) -> tuple[float, ...]:
        return tuple(f * self.batch_size / self.d for f in self.sgd_lr_factor)

    def scenarios(self) -> list[Scenario]:
        base = {"d": self.d, "n": self.n, "noise": self.noise, "n_val": self.n_val}
        base.update(n_test=self.n_test, random_signs=self.random_signs, task=self.task)
        base.update(squared_loss=self.squared_loss)
        out = [Scenario(k=self.ks[0], seed=s, **base) for s in self.seeds]
        variant_seeds = self.seeds[: self.variant_seeds]
        out += [Scenario(k=k, seed=s, **base) for k in self.ks[1:] for s in variant_seeds]
        out += [
            Scenario(k=k, correlation=self.correlation, seed=s, **base)
            for k in self.correlated_ks
            for s in variant_seeds
        ]
        return out


QUICK = {
    "d": 400,
    "n": 200,
    "ks": (1, 5),
    "correlated_ks": (5,),
    "seeds": (0,),
    "n_val": 100,
    "n_test": 200,
    "epochs": 30,
    "sweep_K": (3, 5),
    "rewa_sgd_lr": (0.03,),
    "rewa_sgd_kappa": (0.03, 0.1),
    "rewa_adamw_lr": (0.01,),
    "sgd_lr_factor": (0.4,),
    "l1_lam": (0.05, 0.1),
    "lp_kappa": (0.03, 0.1),
    "spred_kappa": (0.03, 0.1),
    "sweep_kappa": (0.03, 0.1),
    "lasso_alphas": 8,
}

# The published protocol of the method's authors (issues 15, 35): 800 epochs (64,000 steps),
# batch 25, lr 2e-4 cosine, momentum 0, torch.nn.Linear's init, 1-sparse truth e₁, and their loss:
# the mean squared error (torch's MSELoss, no ½). Their ReWA step y ← y(1 − κ_t) − η_t·s·g with
# κ_t = κ₀·η_t/η₀, κ₀ = 5e-5 at η₀ = 2e-4, is then exactly lr 2e-4 with weight_decay
# κ₀/η₀ = 0.25 (tests/test_study_linear.py checks one step against it). The (K, M) map runs at
# exactly that, on three seeds. Every family's strength gets a grid of the same size (six
# values, factors of 2 around the value its last run chose, converted to the mean-MSE loss: a
# strength λ on ½·MSE is 2λ here; the sixth, above, came after a five-value run picked its top
# value for Spred and ReWA-AdamW M=0 on seed 2) at one learning rate each: the published one for
# ReWA-SGD, the one its last run chose for ReWA-AdamW (1e-2 over 1e-3), and for the SGD-type
# baselines half the ½·MSE study's 0.2·batch/d, the same step on a gradient twice as large.
PUBLISHED = {
    "protocol": "published",
    "squared_loss": "mean",
    "epochs": 800,
    "ks": (1,),
    "correlated_ks": (),
    "seeds": (0, 1, 2),
    "init": "uniform",
    "momentum": 0.0,
    "random_signs": False,
    "rewa_sgd_lr": (2e-4,),
    "rewa_sgd_kappa": (0.0625, 0.125, 0.25, 0.5, 1.0, 2.0),
    "adamw_variants": ((9.0, 2.0, 0.0), (9.0, 0.0, 1e-3)),
    "rewa_adamw_lr": (1e-2,),
    "rewa_adamw_kappa": (0.075, 0.15, 0.3, 0.6, 1.2, 2.4),
    "sgd_lr_factor": (0.1,),
    "l1_lam": (0.05, 0.1, 0.2, 0.4, 0.8, 1.6),
    "lp_kappa": (0.05, 0.1, 0.2, 0.4, 0.8, 1.6),
    "spred_kappa": (0.05, 0.1, 0.2, 0.4, 0.8, 1.6),
    "sweep_kappa": (0.25,),
    "sweep_bases": ("sgd",),
    "sweep_lp": False,
    "sweep_seeds": 3,
}
# The authors' second synthetic task, at the published protocol's schedule and grids scaled to
# the logistic loss (its gradients are smaller than least squares'): d = 1,000, n = 1,000.
LOGISTIC = {
    **PUBLISHED,
    "protocol": "published, logistic",
    "task": "logistic",
    "d": 1_000,
    "n": 1_000,
    # six strengths per family, factors of 2 around what its last runs chose (issue 35: several
    # picks were at a grid's edge; a five-value run still picked the top for ReWA-AdamW, Spred
    # and, on one seed, direct ℓp), each at one learning rate
    "rewa_sgd_lr": (2e-3,),
    "rewa_sgd_kappa": (0.0075, 0.015, 0.03, 0.06, 0.12, 0.24),
    "rewa_adamw_lr": (1e-2,),
    "rewa_adamw_kappa": (0.05, 0.1, 0.2, 0.4, 0.8, 1.6),
    "sgd_lr_factor": (2.0,),
    "l1_lam": (0.0075, 0.015, 0.03, 0.06, 0.12, 0.24),
    "lp_kappa": (0.005, 0.01, 0.02, 0.04, 0.08, 0.16),
    "spred_kappa": (0.005, 0.01, 0.02, 0.04, 0.08, 0.16),
    "sweep": False,
}

MAIN_FAMILIES = ("rewa-sgd", "rewa-adamw", "l1-prox", "lasso", "lp", "spred", "dense-ls")

# ---------------------------------------------------------------- the grids


def _rewa(part, s, cfg, base, K, M, eps=0.0):
    """ReWA (K, M, ε) over its grid; the sweep at the first learning rate only (affordability)."""
    lrs, kappas = (
        (cfg.rewa_sgd_lr, cfg.rewa_sgd_kappa)
        if base == "sgd"
        else (cfg.rewa_adamw_lr, cfg.rewa_adamw_kappa)
    )
    if part == "sweep":
        lrs = lrs[:1]
        kappas = cfg.sweep_kappa if base == "sgd" else kappas
    family = f"ReWA-{'SGD' if base == 'sgd' else 'AdamW'}"
    if part == "main":
        family += f" K={K:g} M={M:g}" + (f" ε={eps:g}" if eps else "")
    p = lp_exponent(K, M)
    for lr in lrs:
        for kappa in kappas:
            opts = (("K", K), ("M", M), ("weight_decay", kappa)) + ((("eps", eps),) if eps else ())
            yield Candidate(part, s, family, "rewa", base, lr, opts, kappa, K, M, p, cfg.momentum)


def _lp(part, s, cfg, K, M):
    """Direct ℓp (δ = 0, the raw penalty) at ReWA's p and λ = κ/p for each κ of the grid."""
    p = lp_exponent(K, M)
    family = "direct ℓp (δ=0)" if part == "sweep" else f"direct ℓp p={p:.3g} (δ=0)"
    lrs = cfg.sgd_lrs if part == "main" else cfg.sgd_lrs[:1]
    for lr in lrs:
        for kappa in cfg.lp_kappa if part == "main" else cfg.sweep_kappa:
            opts = (("lam", kappa / p), ("p", p), ("delta", 0.0))
            yield Candidate(part, s, family, "lp", "sgd", lr, opts, kappa, K, M, p, cfg.momentum)


def main_candidates(s: Scenario, cfg: Settings) -> Iterable[Candidate]:
    fams = cfg.families or MAIN_FAMILIES
    K, M = cfg.main_K, cfg.main_M
    if "rewa-sgd" in fams:
        yield from _rewa("main", s, cfg, "sgd", K, M)
    if "rewa-adamw" in fams:
        for vK, vM, eps in cfg.adamw_variants or ((K, M, 0.0),):
            yield from _rewa("main", s, cfg, "adamw", vK, vM, eps)
    mu = cfg.momentum
    if "l1-prox" in fams:
        for lr in cfg.sgd_lrs:
            for lam in cfg.l1_lam:
                opts = (("lam", lam),)
                yield Candidate(
                    "main", s, "ℓ1 prox (SGD)", "l1-prox", "sgd", lr, opts, lam, p=1.0, momentum=mu
                )
    if "lasso" in fams:
        name = "ℓ1 logistic path (sklearn)" if s.task == "logistic" else "Lasso path (sklearn)"
        yield Candidate("main", s, name, "lasso", p=1.0)
    if "lp" in fams:
        yield from _lp("main", s, cfg, K, M)
    if "spred" in fams:
        for lr in cfg.sgd_lrs:
            for kappa in cfg.spred_kappa:
                opts = (("weight_decay", kappa),)
                yield Candidate(
                    "main", s, "Spred", "spred", "sgd", lr, opts, kappa, p=1.0, momentum=mu
                )
    if "dense-ls" in fams:
        name = (
            "dense logistic (ℓ2 path)"
            if s.task == "logistic"
            else "dense least squares (ridge path)"
        )
        yield Candidate("main", s, name, "ridge")


def sweep_pairs(cfg: Settings) -> list[tuple[float, float]]:
    """(K, M) with M even and M < K for every K of the sweep."""
    return [(K, float(M)) for K in cfg.sweep_K for M in range(0, math.ceil(K), 2) if M < K]


def sweep_candidates(s: Scenario, cfg: Settings) -> Iterable[Candidate]:
    for K, M in sweep_pairs(cfg):
        for base in cfg.sweep_bases:
            yield from _rewa("sweep", s, cfg, base, K, M)
        if cfg.sweep_lp:
            yield from _lp("sweep", s, cfg, K, M)


def all_candidates(cfg: Settings) -> list[Candidate]:
    scenarios = cfg.scenarios()
    out = [c for s in scenarios for c in main_candidates(s, cfg)]
    if cfg.sweep:
        for s in scenarios[: max(1, min(cfg.sweep_seeds, len(cfg.seeds)))]:
            out += list(sweep_candidates(s, cfg))
    return out


# ---------------------------------------------------------------- running one candidate

TRACE_POINTS = 60  # coefficient snapshots kept per run (for the trajectory plot)


@dataclass
class Outcome:
    """Metrics of one candidate (or of each α of a path) plus curves for the plots."""

    rows: list[dict[str, Any]]
    curves: dict[str, list[float]] = field(default_factory=dict)


def run_candidate(
    c: Candidate, epochs: int, batch_size: int, lasso_alphas: int, init: str = "correlation"
) -> Outcome:
    """Train (or solve) one candidate; every row gets the CPU time of the whole candidate."""
    torch.set_num_threads(1)
    cpu = time.process_time()
    data = c.scenario.data()
    logistic = c.scenario.task == "logistic"
    if c.method == "lasso":
        outcome = (
            _logistic_path(c, data, lasso_alphas, "l1")
            if logistic
            else _lasso_path(c, data, lasso_alphas)
        )
    elif c.method == "ridge":
        outcome = _logistic_path(c, data, lasso_alphas, "l2") if logistic else _ridge_path(c, data)
    else:
        outcome = _train(c, data, epochs, batch_size, init)
    cpu = time.process_time() - cpu
    for row in outcome.rows:
        row["cpu_seconds"] = cpu
    return outcome


def _train(
    c: Candidate, data: SparseRegression, epochs: int, batch_size: int, init: str
) -> Outcome:
    support = data.support
    trace: dict[str, list[float]] = {"step": [], "support": [], "off_support": []}
    steps = epochs * math.ceil(data.X_train.shape[0] / batch_size)
    every = max(1, steps // TRACE_POINTS)

    def on_coef(step: int, coef: torch.Tensor) -> None:
        if step % every == 0 or step == steps - 1:
            trace["step"].append(step)
            trace["support"].append(float((coef[support] * data.beta[support].sign()).mean()))
            off = coef[~support].abs()
            trace["off_support"].append(float(off.max()) if off.numel() else 0.0)

    options = dict(c.options)
    fit = fit_linear(
        data,
        method=lambda model: build_method(
            c.method, model, lr=c.lr, momentum=c.momentum, base=c.base, options=options
        ),
        epochs=epochs,
        batch_size=batch_size,
        init=init,
        seed=c.scenario.seed,
        loss=c.scenario.loss,
        on_coef=on_coef,
    )
    row = _row(c, regression_metrics(fit.coef, data, loss=c.scenario.loss), fit.seconds)
    row.update(
        max_update=fit.stability["max_update"],
        max_update_near_zero=fit.stability["max_update_near_zero"],
        nonfinite=fit.stability["nonfinite_steps"] + fit.stability["nonfinite_losses"],
        loss_spikes=fit.stability["loss_spikes"],
        diverged=fit.diverged,
    )
    return Outcome([row], {"loss": fit.step_losses, **trace})


def _row(c: Candidate, metrics: dict[str, Any], seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "part": c.part,
        "scenario": c.scenario.label,
        "seed": c.scenario.seed,
        "family": c.family,
        "method": c.method,
        "base": c.base,
        "K": c.K,
        "M": c.M,
        "p": c.p,
        "hyper": c.hyper,
        "strength": c.strength,
        **extra,
        **metrics,
        "seconds": seconds,
    }


def _require_sklearn():
    try:
        from sklearn.linear_model import lasso_path
    except ImportError:
        raise UsageError(
            "the Lasso path reference needs scikit-learn: pip install 'rewa[study]' "
            "(or leave it out with --methods)"
        ) from None
    return lasso_path


def _lasso_path(c: Candidate, data: SparseRegression, count: int) -> Outcome:
    """scikit-learn's Lasso path: min ½·mean((y − Xβ)²) + α‖β‖₁, α from α_max down 30-fold
    (further down the fit is dense and slow), on the same training split."""
    lasso_path = _require_sklearn()
    X = data.X_train.double().numpy()
    y = data.y_train.double().numpy()
    alpha_max = float(abs(X.T @ y).max()) / X.shape[0]
    alphas = [alpha_max * 30.0 ** (-i / (count - 1)) for i in range(count)]
    start = time.perf_counter()
    alphas_out, coefs, _ = lasso_path(X, y, alphas=alphas)
    seconds = time.perf_counter() - start
    rows, supports, offs = [], [], []
    for alpha, coef in zip(alphas_out, coefs.T, strict=True):
        beta = torch.from_numpy(coef).float()
        cc = replace(c, options=(("alpha", float(alpha)),), strength=float(alpha))
        rows.append(_row(cc, regression_metrics(beta, data), seconds, diverged=False))
        supports.append(float((beta[data.support] * data.beta[data.support].sign()).mean()))
        off = beta[~data.support].abs()
        offs.append(float(off.max()) if off.numel() else 0.0)
    return Outcome(rows, {"alpha": list(map(float, alphas_out)), "support": supports, "off": offs})


def _logistic_path(c: Candidate, data: SparseRegression, count: int, penalty: str) -> Outcome:
    """scikit-learn's logistic regression without intercept along a path of C (inverse
    strength) for an ℓ1 (liblinear) or ℓ2 (lbfgs) penalty, on the same training split."""
    _require_sklearn()
    from sklearn.linear_model import LogisticRegression

    X, y = data.X_train.double().numpy(), data.y_train.numpy()
    n = X.shape[0]
    # C from where ℓ1 keeps one coefficient (λ_max = max|Xᵀ(y − ½)|/n) to 300 times weaker
    lam_max = float(abs(X.T @ (y - 0.5)).max()) / n
    lams = [lam_max * 300.0 ** (-i / (count - 1)) for i in range(count)]
    start = time.perf_counter()
    rows = []
    for lam in lams:
        solver = "liblinear" if penalty == "l1" else "lbfgs"
        model = LogisticRegression(
            penalty=penalty, C=1.0 / (n * lam), fit_intercept=False, solver=solver, max_iter=2000
        )
        model.fit(X, y)
        beta = torch.from_numpy(model.coef_.reshape(-1)).float()
        cc = replace(c, options=(("lam", lam),), strength=lam)
        rows.append(_row(cc, regression_metrics(beta, data, loss="bce"), 0.0, diverged=False))
    seconds = time.perf_counter() - start
    for row in rows:
        row["seconds"] = seconds
    return Outcome(rows)


def _ridge_path(c: Candidate, data: SparseRegression) -> Outcome:
    """Dense least squares: β(α) = Xᵀ(XXᵀ + nαI)⁻¹y minimizes ½·mean((y − Xβ)²) + (α/2)‖β‖²;
    α = 0 is the minimum-norm interpolant when n < d. One eigendecomposition gives every α."""
    X = data.X_train.double()
    y = data.y_train.double()
    n = X.shape[0]
    start = time.perf_counter()
    gram = X @ X.T if n <= X.shape[1] else None
    alphas = [0.0] + [10.0**e for e in (-3, -2, -1, -0.5, 0, 0.5, 1, 2)]
    rows = []
    if gram is not None:
        evals, evecs = torch.linalg.eigh(gram)
        qty = evecs.T @ y
    else:
        evals, evecs = torch.linalg.eigh(X.T @ X)
        qty = evecs.T @ (X.T @ y)
    seconds = time.perf_counter() - start
    for alpha in alphas:
        denom = evals + n * alpha
        inv = torch.where(denom > 1e-9 * float(evals.max()), 1.0 / denom, torch.zeros_like(denom))
        beta = X.T @ (evecs @ (inv * qty)) if gram is not None else evecs @ (inv * qty)
        cc = replace(c, options=(("alpha", alpha),), strength=alpha)
        rows.append(_row(cc, regression_metrics(beta.float(), data), seconds, diverged=False))
    return Outcome(rows)


# ---------------------------------------------------------------- running the grid


def _init_worker() -> None:
    torch.set_num_threads(1)


def run_all(
    candidates: Sequence[Candidate], cfg: Settings, progress: bool = True
) -> list[tuple[Candidate, Outcome]]:
    """Run every candidate, in ``cfg.workers`` processes (one thread each)."""
    args = (cfg.epochs, cfg.batch_size, cfg.lasso_alphas, cfg.init)
    # Longest first (closed-form paths of the big problem, then the fits), grouped by scenario so
    # that each worker's data cache hits.
    order = sorted(
        candidates,
        key=lambda c: (
            c.method not in ("lasso", "ridge"),
            c.scenario.seed,
            c.scenario.k,
            c.scenario.correlation,
        ),
    )
    bar = tqdm(total=len(order), desc="study linear", unit="fit", disable=not progress)
    results: list[tuple[Candidate, Outcome]] = []
    try:
        if cfg.workers <= 1:
            threads = torch.get_num_threads()
            try:
                for c in order:
                    results.append((c, run_candidate(c, *args)))
                    bar.update(1)
            finally:
                torch.set_num_threads(threads)
        else:
            ctx = get_context("spawn")
            with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker) as pool:
                futures = {pool.submit(run_candidate, c, *args): c for c in order}
                for future in as_completed(futures):
                    results.append((futures[future], future.result()))
                    bar.update(1)
    finally:
        bar.close()
    return results


# ---------------------------------------------------------------- selection and tables


def select(results: Iterable[tuple[Candidate, Outcome]]) -> dict[tuple, tuple[dict, Outcome]]:
    """For each (part, scenario, seed, family, K, M): the row with the smallest validation score.

    Ties go to the smallest strength, then the smallest learning rate (the rows are visited in
    that order, whatever order the runs finished in)."""
    best: dict[tuple, tuple[dict, Outcome]] = {}
    rows = [(row, c.lr, outcome) for c, outcome in results for row in outcome.rows]
    rows.sort(key=lambda r: (float(r[0].get("strength") or 0.0), r[1]))
    for row, _, outcome in rows:
        key = (row["part"], row["scenario"], row["seed"], row["family"], row["K"], row["M"])
        if key not in best or _score(row) < _score(best[key][0]):
            best[key] = (row, outcome)
    return best


def _score(row: dict[str, Any]) -> float:
    """Validation MSE (cross-entropy for a logistic task), with NaN (a diverged run) worst."""
    value = row["val_mse"] if "val_mse" in row else row["val_loss"]
    return value if value == value else math.inf


SUMMARY = [
    "test_mse",
    "test_loss",
    "test_acc",
    "est_error",
    "precision",
    "recall",
    "f1",
    "exact_sparsity",
    "sparsity_1e-3",
    "support_bias",
    "max_update",
    "max_update_near_zero",
    "nonfinite",
    "seconds",
]


def summarize(selected: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of the selected main-part rows."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in selected:
        if row["part"] == "main":
            groups[(row["scenario"], row["family"])].append(row)
    out = []
    for (scenario, family), rows in groups.items():
        summary: dict[str, Any] = {"scenario": scenario, "method": family, "seeds": len(rows)}
        summary["selected"] = "; ".join(r["hyper"] for r in sorted(rows, key=lambda r: r["seed"]))
        for col in SUMMARY:
            values = [float(r[col]) for r in rows if r.get(col) is not None]
            if not values:
                continue
            summary[col] = statistics.fmean(values)
            summary[f"{col}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(summary)
    return out


def _fmt(value: Any, fmt: str) -> str:
    """``format(value, fmt)``, but exploded values (|v| ≥ 1e6) in 3 significant digits."""
    if not isinstance(value, float) or math.isnan(value) or math.isinf(value):
        return str(value)
    return format(value, ".3g" if abs(value) >= 1e6 else fmt)


def _pm(value: float, std: float, fmt: str) -> str:
    text = _fmt(value, fmt)
    return text if not std else f"{text} ± {_fmt(std, fmt.lstrip('+'))}"


MD_COLUMNS = {
    "test_mse": ".4f",
    "test_loss": ".4f",
    "test_acc": ".4f",
    "est_error": ".4f",
    "precision": ".2f",
    "recall": ".2f",
    "f1": ".2f",
    "exact_sparsity": ".4f",
    "sparsity_1e-3": ".4f",
    "support_bias": "+.3f",
    "max_update": ".3g",
    "max_update_near_zero": ".3g",
    "seconds": ".1f",
}


def main_markdown(summary: list[dict[str, Any]]) -> str:
    parts = []
    for scenario in dict.fromkeys(r["scenario"] for r in summary):
        rows = [r for r in summary if r["scenario"] == scenario]
        seeds = max(r["seeds"] for r in rows)
        cells = [
            {
                "method": r["method"],
                **{c: _pm(r[c], r[f"{c}_std"], f) for c, f in MD_COLUMNS.items() if c in r},
                "nonfinite": "" if "nonfinite" not in r else f"{r['nonfinite']:g}",
            }
            for r in rows
        ]
        cols = ["method", *MD_COLUMNS, "nonfinite"]
        cols = [c for c in cols if any(cell.get(c) not in (None, "") for cell in cells)]
        header = f"### {scenario} ({seeds} seed{'s' if seeds > 1 else ''}: mean ± std)"
        parts.append(header + "\n\n" + markdown_table(cells, cols))
        chosen = "\n".join(f"- {r['method']}: {r['selected']}" for r in rows)
        score = "cross-entropy" if "test_loss" in rows[0] else "MSE"
        parts.append(f"Selected on validation {score} (per seed):\n" + chosen)
    return "\n\n".join(parts)


SWEEP_COLUMNS = [
    "family",
    "K",
    "M",
    "p",
    "hyper",
    "test_mse",
    "est_error",
    "f1",
    "exact_sparsity",
    "sparsity_1e-3",
    "support_bias",
    "max_update",
    "max_update_near_zero",
    "nonfinite",
]
SWEEP_FORMATS = {
    "p": ".3f",
    "test_mse": ".4f",
    "est_error": ".4f",
    "f1": ".2f",
    "exact_sparsity": ".4f",
    "sparsity_1e-3": ".4f",
    "support_bias": "+.3f",
    "max_update": ".3g",
    "max_update_near_zero": ".3g",
    "K": "g",
    "M": "g",
}

# ---------------------------------------------------------------- the command


PROTOCOLS = {"short": {}, "published": PUBLISHED}


def settings_from_args(args: argparse.Namespace, task: str = "regression") -> Settings:
    preset = LOGISTIC if task == "logistic" else PROTOCOLS[args.protocol]
    cfg = Settings(**preset)
    if args.quick:  # a small problem, the protocol's schedule and init kept
        quick = dict(QUICK)
        if preset is not PROTOCOLS["short"]:  # the protocol's grids on a small problem
            sizes = ("d", "n", "n_val", "n_test", "sweep_K", "lasso_alphas")
            quick = {k: v for k, v in quick.items() if k in sizes}
            quick.update(seeds=(0, 1), epochs=40)  # two seeds: the map's mean ± std
        cfg = replace(cfg, **quick)
    for name in ("d", "n", "noise", "epochs", "batch_size", "workers", "n_val", "n_test"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    for name in ("ks", "seeds", "correlated_ks", "sweep_K"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, tuple(value))
    if args.correlation is not None:
        cfg.correlation = args.correlation
    if args.variant_seeds is not None:
        cfg.variant_seeds = args.variant_seeds
    if args.methods is not None:
        unknown = sorted(set(args.methods) - set(MAIN_FAMILIES))
        if unknown:
            raise UsageError(f"unknown method {unknown[0]!r}; valid: {', '.join(MAIN_FAMILIES)}")
        cfg.families = tuple(args.methods)
    cfg.sweep = cfg.sweep and not args.no_sweep
    _validate(cfg)
    return cfg


def _validate(cfg: Settings) -> None:
    if any(k > cfg.d for k in (*cfg.ks, *cfg.correlated_ks)):
        raise UsageError(f"every k must be <= d ({cfg.d})")
    if not cfg.ks:
        raise UsageError("--ks needs at least one value (the first is the main scenario)")
    if not cfg.seeds:
        raise UsageError("--seeds needs at least one value")
    if not 0 <= cfg.correlation < 1:
        raise UsageError(f"--correlation must be in [0, 1), got {cfg.correlation}")
    if any(K < 1 for K in cfg.sweep_K):
        raise UsageError("every --sweep-K must be >= 1")
    if cfg.n_val < 1:
        raise UsageError("--n-val must be >= 1: hyperparameters are chosen on validation")
    fams = cfg.families or MAIN_FAMILIES
    if "lasso" in fams:
        _require_sklearn()


def run(
    args: argparse.Namespace, echo: Callable[[str], None] = print, task: str = "regression"
) -> dict[str, Any]:
    cfg = settings_from_args(args, task)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    candidates = all_candidates(cfg)
    fits = sum(c.method not in ("lasso", "ridge") for c in candidates)
    echo(
        f"study {task}: d={cfg.d}, n={cfg.n}, σ={cfg.noise:g}, {len(cfg.scenarios())} scenario "
        f"draws, {fits} training runs of {cfg.epochs} epochs + closed-form paths, "
        f"{cfg.workers} worker(s)"
    )
    # Recorded before the workers import the code: it is the code they run, even if the tree
    # changes while the study runs.
    record = provenance()
    start = time.perf_counter()
    results = run_all(candidates, cfg, progress=not args.quiet)
    wall = time.perf_counter() - start
    best = select(results)
    selected = [row for row, _ in best.values()]
    summary = summarize(selected)
    sweep_rows = sorted(
        (r for r in selected if r["part"] == "sweep"),
        key=lambda r: (r["family"], r["K"], r["M"], r["seed"]),
    )
    grid = [row for _, o in results for row in o.rows]
    cpu = sum(o.rows[0]["cpu_seconds"] for _, o in results)
    payload = {
        "settings": asdict(cfg),
        "provenance": record,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "summary": summary,
        "selected": selected,
        "grid": grid,
    }
    write_json(out / "results.json", payload)
    summary_cols = ["scenario", "method", "seeds", "selected"] + [
        c for col in SUMMARY for c in (col, f"{col}_std")
    ]
    write_csv(out / "results.csv", summary, summary_cols)
    write_csv(out / "grid.csv", grid)
    if sweep_rows:
        write_csv(out / "sweep.csv", sweep_rows)
    md = _markdown(cfg, summary, sweep_rows, wall, cpu)
    (out / "results.md").write_text(md)
    written = ["results.md", "results.csv", "results.json", "grid.csv"]
    written += ["sweep.csv"] if sweep_rows else []
    if not args.no_plot:
        from rewa.experiments import study_linear_plots as plots

        written += plots.write_all(out, cfg, results, best, sweep_rows)
    echo(md)
    echo(f"\nWrote {', '.join(written)} to {out}/ in {wall:.0f} s of runs")
    return payload


INIT_TEXT = {
    "correlation": "same init 1e-3·Xᵀy/n (small, nonzero, with the right signs on a strong "
    "support: ReWA's updates vanish near 0, so a weight rarely changes sign)",
    "uniform": "same init U(±1/√d) (torch.nn.Linear's default, as the published protocol: random "
    "signs, so a true coefficient can start on the wrong side of 0)",
    "random": "same init N(0, 1e-6)",
}


def _problem_text(cfg: Settings) -> str:
    if cfg.task == "logistic":
        return (
            f"Labels y ~ Bernoulli(σ(Xβ)) with β = (1, 0.5, 0, …, 0), no bias, X ∈ R^(n×d) "
            f"i.i.d. N(0,1), d = {cfg.d:,}, n = {cfg.n:,} training rows, {cfg.n_val:,} "
            f"validation, {cfg.n_test:,} test; logistic (cross-entropy) loss"
        )
    truth = "k nonzeros of ±1" if cfg.random_signs else "k nonzeros of +1 (k = 1: β = e₁)"
    return (
        f"y = Xβ + σξ, X ∈ R^(n×d) i.i.d. N(0,1) (AR(1) columns where stated), d = {cfg.d:,}, "
        f"n = {cfg.n:,} training rows, {cfg.n_val:,} validation, {cfg.n_test:,} test, σ = "
        f"{cfg.noise:g}, {truth}; training loss {LOSS_TEXT[cfg.squared_loss]}"
    )


LOSS_TEXT = {
    "half": "½·mean((Xβ − y)²)",
    "mean": "mean((Xβ − y)²) (torch's MSELoss, the authors' convention: no ½)",
}


def _markdown(cfg: Settings, summary, sweep_rows, wall: float, cpu: float) -> str:
    workers = f"{cfg.workers} worker process(es), 1 thread each"
    score = "cross-entropy" if cfg.task == "logistic" else "MSE"
    title = "Sparse logistic regression" if cfg.task == "logistic" else "Sparse-regression"
    lines = [
        f"# {title} study (`rewa study {'logistic' if cfg.task == 'logistic' else 'linear'}`, "
        f"protocol: {cfg.protocol})",
        "",
        f"{_problem_text(cfg)}. Every iterative method: {cfg.epochs} epochs of "
        f"minibatch {cfg.batch_size}, cosine learning rate, momentum {cfg.momentum:g} (SGD "
        f"bases), same loop, {INIT_TEXT[cfg.init]}. "
        f"Hyperparameters: the smallest validation {score} over the grid (never test; a tie goes "
        "to the smallest strength, then the smallest learning rate). "
        "Support / precision / recall: |β̂ⱼ| > 1e-3; exact sparsity: β̂ⱼ == 0 over all d "
        "coefficients; support bias: mean signed error on the true support relative to |β| "
        "(−0.1 = shrunk by 10%); max update: largest |Δβ̂ⱼ| in one step, and (near zero) over the "
        "coefficients with |β̂ⱼ| ≤ 1e-3 before the step — the kicks of ℓp's unbounded gradient; "
        "nonfinite: steps with NaN/inf. Seconds: wall time of one run (the whole path for Lasso "
        "/ dense; the machine's load during the study is in the footer).",
        "",
        main_markdown(summary),
    ]
    if sweep_rows and cfg.sweep_seeds > 1:
        lines += ["", *_map_markdown(cfg, sweep_rows)]
    elif sweep_rows:
        lines += [
            "",
            f"## Sweep over p on {cfg.scenarios()[0].label} (seed {cfg.seeds[0]})",
            "",
            "ReWA (K, M) behaves like ℓp with p = (K + 1 − M)/K and λ = κ/p; direct ℓp uses that "
            "p and λ with δ = 0. Each row: best of its grid on validation.",
            "",
            markdown_table(
                [
                    {c: _fmt(r[c], SWEEP_FORMATS.get(c, ".4g")) for c in SWEEP_COLUMNS}
                    for r in sweep_rows
                ],
                SWEEP_COLUMNS,
            ),
        ]
    lines += [
        "",
        f"Runs took {wall:.0f} s of wall time ({workers}) and {cpu:.0f} CPU-seconds in the "
        f"workers: about {cpu / max(cfg.workers, 1) / 60:.1f} minutes on {cfg.workers} otherwise "
        "idle core(s).",
    ]
    return "\n".join(lines) + "\n"


MAP_METRICS = ("test_mse", "est_error", "exact_sparsity", "sparsity_1e-3", "f1", "support_bias")


def km_map(sweep_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds of each (family, K, M) cell of the sweep; ``valid`` is
    0 ≤ M < K − 1 (M = K − 1 is plain reparameterization, with its saddle at 0)."""
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in sweep_rows:
        cells[(r["family"], r["K"], r["M"])].append(r)
    out = []
    for (family, K, M), rows in sorted(cells.items()):
        cell: dict[str, Any] = {"family": family, "K": K, "M": M, "p": rows[0]["p"]}
        cell.update(seeds=len(rows), valid=M < K - 1, hyper=rows[0]["hyper"])
        for key in MAP_METRICS:
            values = [float(r[key]) for r in rows]
            cell[key] = statistics.fmean(values)
            cell[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(cell)
    return out


def _map_markdown(cfg: Settings, sweep_rows) -> list[str]:
    cells = km_map(sweep_rows)
    rows = [
        {
            "K": f"{c['K']:g}",
            "M": f"{c['M']:g}",
            "p": f"{c['p']:.3f}",
            "valid": "yes" if c["valid"] else "no (M = K − 1)",
            **{k: _pm(c[k], c[f"{k}_std"], MD_COLUMNS.get(k, ".4f")) for k in MAP_METRICS},
        }
        for c in cells
    ]
    return [
        f"## The (K, M) map ({cells[0]['family']}, {cells[0]['hyper']}; mean ± std of "
        f"{cells[0]['seeds']} seeds)",
        "",
        "Every odd K of 3..13 with every even M < K, at the published hyperparameters. ReWA "
        "(K, M) behaves like ℓp with p = (K + 1 − M)/K. Heatmaps: km_map.png.",
        "",
        markdown_table(rows, ["K", "M", "p", "valid", *MAP_METRICS]),
    ]


def register(commands: argparse._SubParsersAction) -> None:
    p = study_subparsers(commands).add_parser(
        "linear",
        help="the synthetic sparse-regression study: ReWA vs ℓ1, Lasso, direct ℓp, Spred, dense",
        description="Train every method on y = Xβ + σξ (published scale d = 10,000, n = 2,000, "
        "k = 1, σ = 1; also more nonzeros and a correlated design), choose each method's "
        "hyperparameters on a validation split, and write a markdown + CSV table, a sweep over "
        "ReWA's (K, M) with direct ℓp at the same p, and plots to --out-dir. The default scale "
        "takes minutes on 2 cores; --quick takes well under a minute.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _arguments(p, "linear")
    p.set_defaults(func=_main)
    q = study_subparsers(commands).add_parser(
        "logistic",
        help="the sparse logistic-regression study: β = (1, 0.5, 0, ...), the same methods",
        description="The authors' second synthetic task: labels ~ Bernoulli(σ(Xβ)) with "
        "β = (1, 0.5, 0, ..., 0), no bias, logistic loss (d = 1,000, n = 1,000), trained by every "
        "method of `rewa study linear` at the published protocol's schedule (800 epochs, batch "
        "25, cosine, momentum 0, torch.nn.Linear init) with hyperparameters chosen on validation "
        "cross-entropy; ℓ1- and ℓ2-penalized scikit-learn paths as references. Reports support "
        "recovery, test loss and accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _arguments(q, "logistic")
    q.set_defaults(func=_logistic)


def _arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--quick", action="store_true", help="a small problem and grid (for tests)")
    p.add_argument("--d", type=positive_int, help="number of features (default 10000)")
    p.add_argument("--n", type=positive_int, help="training samples (default 2000)")
    p.add_argument("--n-val", type=positive_int, help="validation samples (default 1000)")
    p.add_argument("--n-test", type=positive_int, help="test samples (default 2000)")
    p.add_argument(
        "--seeds", type=int, nargs="+", help="seeds of the main scenario (default 0 1 2)"
    )
    p.add_argument("--epochs", type=positive_int, help="training epochs per run (default 20)")
    p.add_argument("--batch-size", type=positive_int, help="minibatch size (default 25)")
    p.add_argument(
        "--methods",
        nargs="+",
        metavar="NAME",
        help=f"main-table methods (default all: {' '.join(MAIN_FAMILIES)})",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        help="parallel processes, one thread each (default 2; 1 runs in this process)",
    )
    p.add_argument("--out-dir", default=f"runs/study_{name}", help="where the results go")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if name != "linear":  # the logistic task has one problem and no sweep
        p.set_defaults(protocol="published", noise=None, ks=None, correlated_ks=None)
        p.set_defaults(correlation=None, variant_seeds=None, sweep_K=None, no_sweep=True)
        return
    p.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="short",
        help="short: 20 epochs, momentum 0.9, correlation init, k = 1, 10, 50 and a correlated "
        "design; published: the authors' protocol (800 epochs, batch 25, lr 2e-4 cosine, "
        "momentum 0, torch.nn.Linear init, β = e₁, ReWA weight_decay 0.25 = κ₀/η₀) with the "
        "(K, M) map on three seeds",
    )
    p.add_argument("--noise", type=nonneg_float, help="noise standard deviation σ (default 1)")
    p.add_argument(
        "--ks",
        type=positive_int,
        nargs="+",
        help="numbers of true nonzeros; the first is the main scenario, which gets every seed "
        "and the p sweep (default 1 10 50)",
    )
    p.add_argument(
        "--correlated-ks",
        type=positive_int,
        nargs="*",
        help="k of the correlated-design variants; none to skip (default 10)",
    )
    p.add_argument(
        "--correlation",
        type=fraction,
        help="AR(1) correlation ρ of the correlated variants, ρ^|i−j| (default 0.5)",
    )
    p.add_argument(
        "--variant-seeds",
        type=positive_int,
        help="how many of --seeds the other scenarios use (default 1)",
    )
    p.add_argument(
        "--sweep-K",
        type=float,
        nargs="+",
        help="ReWA orders K of the p sweep, each with every even M < K (default 3 5 7 9 11 13)",
    )
    p.add_argument("--no-sweep", action="store_true", help="skip the sweep over p")


def _main(args: argparse.Namespace) -> int:
    run(args)
    return 0


def _logistic(args: argparse.Namespace) -> int:
    run(args, task="logistic")
    return 0


__all__ = ["Candidate", "Scenario", "Settings", "register", "run"]
