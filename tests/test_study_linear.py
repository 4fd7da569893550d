"""`rewa study linear`: runs at --quick size, writes its artifacts, selects on validation only."""

from __future__ import annotations

import builtins
import json
from collections import defaultdict

import pytest

from rewa.cli import main
from rewa.errors import UsageError
from rewa.experiments import study_linear as study

try:
    import sklearn  # noqa: F401

    HAVE_SKLEARN = True
except ImportError:  # scikit-learn is the optional extra `study`
    HAVE_SKLEARN = False

WITHOUT_LASSO = [f for f in study.MAIN_FAMILIES if f != "lasso"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    methods = [] if HAVE_SKLEARN else ["--methods", *WITHOUT_LASSO]
    rc = main(
        ["study", "linear", "--quick", "--workers", "1", "--quiet", "--out-dir", str(out), *methods]
    )
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_study_writes_every_artifact(quick):
    out, payload = quick
    for name in [
        "results.md",
        "results.csv",
        "results.json",
        "grid.csv",
        "sweep.csv",
        "error_vs_p.png",
        "coefficient_paths.png",
        "training_loss.png",
    ]:
        assert (out / name).stat().st_size > 0, name
    assert {"command", "date", "cpu"} <= set(payload["provenance"])
    md = (out / "results.md").read_text()
    assert "ReWA-SGD K=9 M=2" in md and "Spred" in md and "Sweep over p" in md


def test_quick_study_covers_every_scenario_and_method(quick):
    _, payload = quick
    cfg = study.Settings(**study.QUICK)
    scenarios = {s.label for s in cfg.scenarios()}
    families = {r["method"] for r in payload["summary"]}
    assert (
        {r["scenario"] for r in payload["summary"]}
        == scenarios
        == {"k=1", "k=5", "k=5, AR(1) ρ=0.5"}
    )
    expected = {"ReWA-SGD K=9 M=2", "ReWA-AdamW K=9 M=2", "ℓ1 prox (SGD)", "Spred"}
    expected |= {"direct ℓp p=0.889 (δ=0)", "dense least squares (ridge path)"}
    expected |= {"Lasso path (sklearn)"} if HAVE_SKLEARN else set()
    assert families == expected
    sweep = [r for r in payload["selected"] if r["part"] == "sweep"]
    pairs = study.sweep_pairs(cfg)
    assert len(sweep) == 3 * len(pairs)  # ReWA-SGD, ReWA-AdamW, direct ℓp for every (K, M)
    for row in sweep:
        assert row["p"] == pytest.approx((row["K"] + 1 - row["M"]) / row["K"])


def test_selection_uses_validation_never_test(quick):
    _, payload = quick
    groups = defaultdict(list)
    for row in payload["grid"]:
        groups[
            (row["part"], row["scenario"], row["seed"], row["family"], row["K"], row["M"])
        ].append(row)
    for chosen in payload["selected"]:
        key = (
            chosen["part"],
            chosen["scenario"],
            chosen["seed"],
            chosen["family"],
            chosen["K"],
            chosen["M"],
        )
        rows = groups[key]
        assert chosen["val_mse"] == min(r["val_mse"] for r in rows)
        assert all(row["val_mse"] > 0 for row in rows)


def test_rewa_sparsifies_and_dense_does_not(quick):
    _, payload = quick
    rows = {r["method"]: r for r in payload["summary"] if r["scenario"] == "k=1"}
    assert rows["ReWA-SGD K=9 M=2"]["sparsity_1e-3"] > 0.9
    assert rows["dense least squares (ridge path)"]["sparsity_1e-3"] < 0.5
    assert rows["ℓ1 prox (SGD)"]["exact_sparsity"] > 0.5


def test_sweep_pairs_are_even_M_below_K():
    cfg = study.Settings(sweep_K=(3, 5))
    assert study.sweep_pairs(cfg) == [(3, 0.0), (3, 2.0), (5, 0.0), (5, 2.0), (5, 4.0)]


def test_parallel_workers_give_the_same_numbers(tmp_path):
    args = [
        "study",
        "linear",
        "--quick",
        "--quiet",
        "--no-plot",
        "--no-sweep",
        "--d",
        "60",
        "--n",
        "40",
    ]
    args += ["--ks", "2", "--correlated-ks", "--epochs", "3", "--methods", "rewa-sgd", "l1-prox"]
    main([*args, "--workers", "1", "--out-dir", str(tmp_path / "a")])
    main([*args, "--workers", "2", "--out-dir", str(tmp_path / "b")])

    def rows(name):
        grid = json.loads((tmp_path / name / "results.json").read_text())["grid"]
        return sorted(
            ({k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")} for r in grid),
            key=lambda r: (r["family"], r["hyper"]),
        )

    assert rows("a") == rows("b") and len(rows("a")) == 4


def test_missing_scikit_learn_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(UsageError, match=r"rewa\[study\]"):
        study._require_sklearn()


@pytest.mark.parametrize(
    "bad",
    [
        ["--ks", "0"],
        ["--methods", "lasso2"],
        ["--correlation", "1.5"],
        ["--ks", "500", "--d", "400"],
        ["--epochs", "many"],
        ["--sweep-K", "0.5"],
    ],
)
def test_bad_flags_give_one_line_errors(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        raise SystemExit(
            main(["study", "linear", "--quick", "--quiet", "--out-dir", str(tmp_path), *bad])
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err.strip().splitlines()[-1]


def test_study_without_a_name_prints_help(capsys):
    assert main(["study"]) == 2
    assert "linear" in capsys.readouterr().out


# ---------------------------------------------------------------- the published protocol


def test_published_protocol_is_the_authors_schedule():
    cfg = study.Settings(**study.PUBLISHED)
    assert (cfg.epochs, cfg.batch_size, cfg.momentum, cfg.init) == (800, 25, 0.0, "uniform")
    assert cfg.epochs * cfg.n // cfg.batch_size == 64_000 and cfg.ks == (1,)
    assert cfg.rewa_sgd_lr == (2e-4,) and 0.25 in cfg.rewa_sgd_kappa
    assert cfg.sweep_kappa == (0.25,) and cfg.sweep_seeds == 3 and not cfg.sweep_lp
    assert study.sweep_pairs(cfg)[:3] == [(3, 0.0), (3, 2.0), (5, 0.0)]
    assert len(study.sweep_pairs(cfg)) == 27


def test_published_weight_decay_is_the_per_step_decay_rescaled_with_the_lr():
    """κ_step = weight_decay · lr_t: κ₀ = 5e-5 at η₀ = 2e-4 is weight_decay = 0.25 (momentum 0,
    no gradient: y shrinks by 1 − 5e-5 per step at η₀, by half as much at η₀/2)."""
    import torch

    from rewa import ReWA

    p = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    opt = ReWA([p], lr=2e-4, K=9, M=2, weight_decay=0.25, momentum=0.0)
    p.grad = torch.zeros(1, dtype=torch.float64)
    opt.step()
    y0 = 0.5 ** (1 / 9)
    assert float(opt.state[p]["y"]) == pytest.approx(y0 * (1 - 5e-5), rel=1e-12)
    opt.param_groups[0]["lr"] = 1e-4
    opt.step()
    assert float(opt.state[p]["y"]) == pytest.approx(y0 * (1 - 5e-5) * (1 - 2.5e-5), rel=1e-12)


def _one_published_step(squared_loss: str):
    """The study's first ReWA-SGD step at the published protocol (K 9, M 2, lr 2e-4, weight decay
    0.25, momentum 0) on a small problem, one full batch: (β before, β after, the data)."""
    import torch

    from rewa.experiments.linear import fit_linear, initial_coef

    cfg = study.Settings(**{**study.PUBLISHED, "squared_loss": squared_loss, "d": 50, "n": 40})
    scenario = cfg.scenarios()[0]
    data = scenario.data()
    beta0 = initial_coef(data, cfg.init, 0.0, torch.Generator().manual_seed(0))
    options = {"K": 9.0, "M": 2.0, "weight_decay": 0.25}
    fit = fit_linear(
        data,
        method=lambda model: study.build_method(
            "rewa", model, lr=2e-4, momentum=cfg.momentum, base="sgd", options=options
        ),
        epochs=1,
        batch_size=cfg.n,
        init=beta0,
        loss=scenario.loss,
    )
    return beta0, fit.coef, data


def test_published_step_is_the_authors_update():
    """The authors' regression step, written out from METHOD.md: g = ∂/∂β mean((Xβ − y)²),
    y ← y·(1 − κ₀) − η₀·|y|^M·g with κ₀ = 5e-5, η₀ = 2e-4 (first step: the cosine factor is 1),
    β = sign(y)|y|^K. On ½·MSE the same numbers take half that gradient step: a different
    iteration, which the check tells apart."""
    import torch

    beta0, beta1, data = _one_published_step("mean")
    X, target = data.X_train.double(), data.y_train.double()
    b0 = beta0.double()
    g = 2.0 * X.T @ (X @ b0 - target) / X.shape[0]
    y0 = b0.sign() * b0.abs() ** (1 / 9)
    y1 = y0 * (1 - 5e-5) - 2e-4 * y0.abs() ** 2 * g
    expected = y1.sign() * y1.abs() ** 9
    moved = (expected - b0).abs().max()
    assert moved > 1e-7  # the step is far above float32 rounding of β
    torch.testing.assert_close(beta1.double(), expected, rtol=1e-5, atol=1e-3 * float(moved))
    _, half, _ = _one_published_step("half")
    assert (half.double() - expected).abs().max() > 0.2 * moved


@pytest.fixture(scope="module")
def published_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("published")
    args = ["study", "linear", "--quick", "--protocol", "published", "--out-dir", str(out)]
    assert main([*args, "--quiet", "--workers", "1"]) == 0
    return out


def test_published_quick_run_writes_the_km_map(published_quick):
    out = published_quick
    payload = json.loads((out / "results.json").read_text())
    assert payload["settings"]["protocol"] == "published"
    assert payload["settings"]["init"] == "uniform" and payload["settings"]["momentum"] == 0.0
    sweep = [r for r in payload["selected"] if r["part"] == "sweep"]
    cells = study.km_map(sweep)
    assert {c["seeds"] for c in cells} == {2}
    assert [(c["K"], c["M"], c["valid"]) for c in cells] == [
        (3, 0, True), (3, 2, False), (5, 0, True), (5, 2, True), (5, 4, False),
    ]  # fmt: skip
    assert (out / "km_map.png").stat().st_size > 0
    text = (out / "results.md").read_text()
    assert "The (K, M) map" in text and "no (M = K − 1)" in text
    families = {r["method"] for r in payload["summary"]}
    assert {"ReWA-AdamW K=9 M=2", "ReWA-AdamW K=9 M=0 ε=0.001"} <= families
    assert "torch.nn.Linear's default" in text


def test_logistic_study_reports_loss_accuracy_and_support(tmp_path):
    from rewa.data.synthetic import make_sparse_logistic

    data = make_sparse_logistic(50, 4000, seed=0)
    assert set(data.y_train.unique().tolist()) == {0.0, 1.0}
    assert data.beta[:2].tolist() == [1.0, 0.5] and int(data.support.sum()) == 2
    # the labels follow σ(Xβ): the true coefficients fit them better than zero
    import torch

    loss = torch.nn.functional.binary_cross_entropy_with_logits
    assert float(loss(data.X_train @ data.beta, data.y_train)) < float(
        loss(torch.zeros(len(data.y_train)), data.y_train)
    )
    out = tmp_path / "logistic"
    argv = ["study", "logistic", "--quick", "--out-dir", str(out), "--quiet", "--workers", "1"]
    assert main([*argv, "--methods", "rewa-sgd", "l1-prox", "lasso"]) == 0
    payload = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in payload["summary"]}
    assert set(rows) == {"ReWA-SGD K=9 M=2", "ℓ1 prox (SGD)", "ℓ1 logistic path (sklearn)"}
    for row in rows.values():
        assert 0.5 <= row["test_acc"] <= 1.0 and row["test_loss"] > 0 and "recall" in row
    assert "validation cross-entropy" in (out / "results.md").read_text()


def test_fit_linear_starts_from_a_given_coefficient_vector():
    import torch

    from rewa.data.synthetic import make_sparse_regression
    from rewa.experiments.linear import fit_linear

    data = make_sparse_regression(50, 40, 2, n_val=10, n_test=10, seed=0)
    start = torch.linspace(-1.0, 1.0, 50)
    fit = fit_linear(data, lambda ps: torch.optim.SGD(ps, lr=0.0), epochs=1, init=start)
    assert torch.equal(fit.coef, start)
    with pytest.raises(ValueError, match="shape"):
        fit_linear(data, lambda ps: torch.optim.SGD(ps, lr=0.0), epochs=1, init=start[:10])
