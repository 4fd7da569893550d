"""Target-sparsity controller: schedule, control law, knob, checkpoints, and the closed loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from rewa.control import (
    GAINS,
    PROXIMAL,
    GroupKnob,
    OptionKnob,
    SparsityController,
    TargetSparsity,
    cubic_ramp,
    for_method,
    log_density_error,
    quantile_error,
    sparse_group_knob,
)
from rewa.data.synthetic import make_sparse_regression
from rewa.experiments.linear import fit_linear
from rewa.experiments.target_sparsity import METHODS
from rewa.methods import build_method
from rewa.optim import ReWA, param_groups
from rewa.optim.prox import ProxL1
from rewa.sparsity import magnitude_threshold


def test_cubic_ramp_matches_the_gmp_schedule():
    assert cubic_ramp(0.0, 0.1, 0.5) == 0.0
    assert cubic_ramp(0.1, 0.1, 0.5) == 0.0
    assert cubic_ramp(0.3, 0.1, 0.5) == pytest.approx(1 - 0.5**3)
    assert cubic_ramp(0.5, 0.1, 0.5) == 1.0
    assert cubic_ramp(0.9, 0.1, 0.5) == 1.0
    values = [cubic_ramp(p / 100, 0.1, 0.5) for p in range(101)]
    assert values == sorted(values)


def test_log_density_error_sign_and_scale():
    # too many nonzeros (10% vs 1% wanted) -> positive, log(10) up to the floor
    assert log_density_error(0.90, 0.99, floor=0.0) == pytest.approx(math.log(10))
    assert log_density_error(0.99, 0.90, floor=0.0) == pytest.approx(-math.log(10))
    assert log_density_error(0.95, 0.95) == 0.0
    assert math.isfinite(log_density_error(1.0, 0.99))


def test_quantile_error_in_clipped_decades():
    assert quantile_error(1e-2, 1e-3) == pytest.approx(1.0)
    assert quantile_error(1e-3, 1e-3) == 0.0
    assert quantile_error(10**-3.5, 1e-3) == pytest.approx(-0.5)
    assert quantile_error(1e-9, 1e-3) == -1.0 and quantile_error(0.0, 1e-3) == -1.0
    assert quantile_error(5.0, 1e-3, clip=2.0) == 2.0
    assert quantile_error(-1.0, 1e-3) == 0.0  # target 0: nothing to prune


def test_controller_holds_before_the_ramp_and_respects_its_clamp():
    ctl = SparsityController(0.9, ramp_start=0.2, ramp_end=0.5, min_multiplier=0.1)
    for p in (0.05, 0.1, 0.2):  # no change while the ramp has not started
        assert ctl.update(0.0, p, magnitude=1.0) == 1.0
    for i in range(1, 200):  # the weights never move: the multiplier saturates at the top
        m = ctl.update(0.0, 0.2 + 0.8 * i / 200, magnitude=1.0)
    assert m == pytest.approx(ctl.settings.max_multiplier)
    ctl2 = SparsityController(0.5, ramp_start=0.0, ramp_end=0.1, min_multiplier=0.1)
    for i in range(1, 100):  # far too sparse: multiplier goes down to its floor, no further
        m = ctl2.update(1.0, i / 100, magnitude=0.0)
    assert m == pytest.approx(0.1)
    assert ctl2.integral == pytest.approx(math.log(0.1))  # anti-windup: clamped integral
    with pytest.raises(ValueError, match="magnitude="):
        ctl2.update(0.5, 0.5)


@pytest.mark.parametrize("target", [0.9, 0.95, 0.99])
def test_density_signal_controls_a_static_plant(target):
    # Static plant (like proximal ℓ1 at exact zeros): density = 0.2 / strength.
    ctl = SparsityController(target, threshold=0.0, ramp_start=0.0, ramp_end=0.5)
    assert ctl.settings.signal == "density" and ctl.settings.kp == GAINS["density"]["kp"]
    m, n = 1.0, 1000
    for i in range(1, n + 1):
        m = ctl.update(1.0 - min(1.0, 0.2 / m), i / n)
    assert 1.0 - min(1.0, 0.2 / m) == pytest.approx(target, abs=1e-3)


def shrinking_weights(target: float, n_updates: int = 500, seed: int = 0) -> tuple[float, float]:
    """A plant like weight decay on a layer: every log-magnitude moves by −rate·(log m − b_i)
    per unit progress, where b_i is how strongly the data holds weight i (uniform on [0, 4]:
    the right multiplier is unknown, somewhere in e^0..e^4). Returns the final fraction of
    |x| <= 1e-3 and the final multiplier."""
    gen = torch.Generator().manual_seed(seed)
    log_x = torch.empty(5000, dtype=torch.float64).uniform_(-2.5, -0.5, generator=gen)
    hold = torch.empty(5000, dtype=torch.float64).uniform_(0.0, 4.0, generator=gen)
    ctl = SparsityController(target)  # quantile signal, default gains
    m = 1.0
    for i in range(1, n_updates + 1):
        p = i / n_updates
        log_x -= 10.0 * (math.log(m) - hold) / n_updates
        log_x.clamp_(max=0.0)
        x = log_x.exp()
        q = magnitude_threshold([x], ctl.scheduled_target(p))
        m = ctl.update(float((x <= 1e-3).double().mean()), p, magnitude=q)
    return float((log_x.exp() <= 1e-3).double().mean()), m


@pytest.mark.parametrize("target", [0.9, 0.95, 0.99])
def test_quantile_signal_controls_shrinking_weights(target):
    achieved, m = shrinking_weights(target)
    assert achieved == pytest.approx(target, abs=0.005)
    assert m > 1.0  # it had to raise the strength


def test_integral_is_throttled_while_the_learning_rate_warms_up():
    a = SparsityController(0.9, ramp_start=0.0)
    b = SparsityController(0.9, ramp_start=0.0)
    a.update(0.0, 0.1, magnitude=1.0)
    b.update(0.0, 0.1, magnitude=1.0, rate=0.5)
    assert a.integral > 0 and b.integral == pytest.approx(a.integral / 2)
    model = _model()
    opt = ReWA(param_groups(model, weight_decay=1e-3), lr=1.0)
    for group in opt.param_groups:
        group["initial_lr"] = 1.0
    hook = TargetSparsity(SparsityController(0.9), sparse_group_knob(opt), [model[0].weight])
    rates = []
    for lr in (0.25, 0.5, 0.75, 0.995, 0.5, 0.1):  # warmup, peak, then a decay: 1 from the peak
        for group in opt.param_groups:
            group["lr"] = lr
        rates.append(hook.lr_rate())
    assert rates == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert hook.state_dict()["warmed_up"] is True


def test_controller_state_dict_resumes_identically():
    def drive(ctl, start, stop, n=100):
        return [
            ctl.update(min(0.99, i / n), i / n, magnitude=10 ** (-i / 30))
            for i in range(start, stop)
        ]

    a = SparsityController(0.95)
    full = drive(a, 1, 100)
    b = SparsityController(0.95)
    drive(b, 1, 40)
    c = SparsityController(0.5, threshold=0.0)  # different settings: replaced by the saved ones
    c.load_state_dict(b.state_dict())
    assert drive(c, 40, 100) == full[39:]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target": 1.0},
        {"target": -0.1},
        {"target": 0.9, "ramp_start": 0.5, "ramp_end": 0.5},
        {"target": 0.9, "kp": -1.0},
        {"target": 0.9, "min_multiplier": 2.0},
        {"target": 0.9, "threshold": -1e-3},
        {"target": 0.9, "threshold": 0.0, "signal": "quantile"},
        {"target": 0.9, "signal": "sparsity"},
    ],
)
def test_invalid_settings_are_rejected(kwargs):
    with pytest.raises(ValueError, match="SparsityController"):
        SparsityController(**kwargs)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


def test_group_knob_scales_only_the_rewa_group_and_keeps_its_base_through_resume():
    model = _model()
    opt = ReWA(param_groups(model, weight_decay=1e-3), lr=0.1)
    knob = sparse_group_knob(opt)
    assert knob.key == "weight_decay" and knob.groups == [0]
    knob.set(10.0)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1e-2)
    assert opt.param_groups[1]["weight_decay"] == 0.0  # plain group untouched
    saved = {"opt": opt.state_dict(), "knob": knob.state_dict()}
    # resume: the optimizer's groups come back scaled; the knob's base must not be re-read
    opt2 = ReWA(param_groups(model, weight_decay=1e-3), lr=0.1)
    opt2.load_state_dict(saved["opt"])
    knob2 = GroupKnob(opt2, "weight_decay", [0])
    knob2.load_state_dict(saved["knob"])
    knob2.set(2.0)
    assert opt2.param_groups[0]["weight_decay"] == pytest.approx(2e-3)


def test_sparse_group_knob_prefers_an_l1_strength_and_rejects_zero_strength():
    model = _model()
    weights = [model[0].weight, model[3].weight]
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    opt = torch.optim.SGD([{"params": weights, "l1": 1e-4}, {"params": others, "l1": 0.0}], lr=0.1)
    knob = sparse_group_knob(opt)
    assert knob.key == "l1" and knob.groups == [0]
    with pytest.raises(ValueError, match="positive starting value"):
        sparse_group_knob(ReWA(param_groups(model, weight_decay=0.0), lr=0.1))
    with pytest.raises(ValueError, match="no sparsified parameter group"):
        sparse_group_knob(torch.optim.SGD(model.parameters(), lr=0.1))


def test_target_sparsity_measures_every_n_steps_and_at_the_end():
    model = _model()
    opt = ReWA(param_groups(model, weight_decay=1e-3), lr=0.1)
    weights = [model[0].weight, model[3].weight]
    hook = TargetSparsity(SparsityController(0.5), sparse_group_knob(opt), weights, every=4)
    calls = [hook.after_step(s, 10) for s in range(10)]
    assert [c is not None for c in calls] == [False, False, False, True] * 2 + [False, True]
    with torch.no_grad():
        model[0].weight.zero_()
    assert hook.measure() == pytest.approx(128 / 160)
    assert set(hook.metrics()) == {
        "control_target",
        "control_measured",
        "control_multiplier",
        "control_strength",
    }


@pytest.mark.parametrize(
    ("name", "options", "key"),
    [
        ("rewa", {"weight_decay": 1e-3}, "weight_decay"),
        ("l1-prox", {"lam": 1e-3}, "l1"),
        ("l1", {"lam": 1e-3}, "lam"),
        ("spred", {"weight_decay": 1e-3}, "weight_decay"),
    ],
)
def test_for_method_scales_each_methods_strength(name, options, key):
    model = _model()
    method = build_method(name, model, lr=0.1, options=options)
    hook = for_method(method, model, 0.9, every=1)
    assert hook.knob.key == key
    signal = "density" if name == "l1-prox" else "quantile"  # exact zeros: the density signal
    assert hook.controller.settings.signal == signal
    assert hook.controller.settings.kp == GAINS[signal]["kp"]
    hook.knob.set(3.0)
    assert hook.knob.value() == pytest.approx(3e-3)
    if isinstance(hook.knob, OptionKnob):
        assert method.options["lam"] == pytest.approx(3e-3)  # read by the penalty each step
    else:
        assert method.optimizer.param_groups[hook.knob.groups[0]][key] == pytest.approx(3e-3)
    assert 0.0 <= hook.measure() <= 1.0


def test_for_method_rejects_methods_without_a_strength_and_bad_options():
    model = _model()
    with pytest.raises(ValueError, match="prunes to its own target"):
        for_method(build_method("gmp", model, lr=0.1), model, 0.9)
    with pytest.raises(ValueError, match="cannot control method 'dense'"):
        for_method(build_method("dense", model, lr=0.1), model, 0.9)
    with pytest.raises(ValueError, match="unknown controller option 'kd'"):
        for_method(build_method("rewa", _model(), lr=0.1), model, 0.9, kd=1.0)


def _controlled_regression(target: float, method: str, strength: float, seed: int = 0) -> float:
    data = make_sparse_regression(1000, 200, 5, seed=seed)
    epochs = 100
    steps = epochs * 8
    holder: dict = {"step": 0}

    def factory(params):
        if method == "rewa":
            opt = ReWA(params, lr=2e-2, K=9, M=2, weight_decay=strength)
        else:
            opt = ProxL1(params, lr=1e-3, l1=strength, momentum=0.9)
        controller = SparsityController(target, **({} if method == "rewa" else PROXIMAL))
        holder["hook"] = TargetSparsity(controller, sparse_group_knob(opt), params, every=10)
        return opt

    def on_step():
        holder["hook"].after_step(holder["step"], steps)
        holder["step"] += 1

    fit = fit_linear(data, factory, epochs=epochs, on_step=on_step, seed=seed)
    assert holder["step"] == steps
    return float((fit.coef.abs() <= 1e-3).float().mean())


@pytest.mark.parametrize("target", [0.9, 0.95, 0.99])
def test_rewa_on_sparse_regression_ends_at_the_target(target, one_thread):
    # Uncontrolled on this problem, κ = 1e-2 ends at 81% of |β̂| <= 1e-3, κ = 0.1 at 99.1%.
    achieved = _controlled_regression(target, "rewa", 1e-2)
    assert abs(achieved - target) <= 0.005, achieved


@pytest.mark.parametrize("target", [0.9, 0.99])
def test_proximal_l1_on_sparse_regression_ends_at_the_target(target, one_thread):
    achieved = _controlled_regression(target, "l1-prox", 1e-2, seed=1)
    assert abs(achieved - target) <= 0.005, achieved


def test_linear_command_writes_one_row_per_method_target_and_seed(tmp_path, one_thread):
    from rewa.cli import main

    out = tmp_path / "linear"
    argv = ["target-sparsity", "linear", "--d", "200", "--n", "100", "--k", "5", "--epochs", "4",
            "--seeds", "2", "--targets", "0.5,0.9", "--out-dir", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    controlled = {(r["method"], r["requested"], r["seed"]) for r in rows if r["requested"]}
    assert controlled == {(m, s, seed) for m in METHODS for s in (0.5, 0.9) for seed in (0, 1)}
    assert (out / "trajectories.png").stat().st_size > 0


# ---------------------------------------------------------------- layer-relative measurement


def test_rms_measure_does_not_see_a_layer_shrunk_whole():
    model = _model()
    opt = ReWA(param_groups(model, weight_decay=1e-3), lr=0.1)
    knob = sparse_group_knob(opt)
    weights = [model[0].weight, model[3].weight]
    absolute = TargetSparsity(SparsityController(0.5), knob, weights)
    relative = TargetSparsity(
        SparsityController(0.5, threshold=0.01), knob, weights, normalize="rms"
    )
    before = relative.measure()
    with torch.no_grad():
        model[0].weight.mul_(1e-6)  # BatchNorm follows: the same function, no sparser
    assert absolute.measure() >= 128 / 160  # the absolute threshold is fooled
    assert relative.measure() == pytest.approx(before)
    with torch.no_grad():
        model[0].weight[:4] = 0.0  # 32 of 128 weights really gone
    assert relative.measure() == pytest.approx(before + 32 / 160, abs=1 / 160)


def test_rms_signal_keeps_raising_a_strength_that_only_shrinks_the_layer():
    # The plant: the strength shrinks every weight by the same factor (what weight decay does to
    # a layer that feeds BatchNorm when the loss does not resist). The absolute signal is met
    # once the layer is below τ; the relative one sees no sparsity and keeps pushing.
    def run(normalize: str, threshold: float) -> TargetSparsity:
        w = torch.rand(1000, generator=torch.Generator().manual_seed(0)) + 0.5
        options = {"lam": 1e-3}
        controller = SparsityController(
            0.9, threshold=threshold, lookahead=0.0, max_multiplier=100.0
        )
        hook = TargetSparsity(controller, OptionKnob(options, "lam"), [w], every=1,
                              normalize=normalize)  # fmt: skip
        for step in range(400):
            w.mul_(math.exp(-options["lam"]))
            hook.after_step(step, 400)
        return hook

    absolute = run("none", 1e-3)
    assert absolute.measure() >= 0.9
    assert absolute.controller.multiplier < absolute.controller.settings.max_multiplier
    relative = run("rms", 0.01)
    assert relative.measure() == 0.0  # the truth: nothing is sparse
    assert relative.controller.multiplier == pytest.approx(
        relative.controller.settings.max_multiplier
    )


def test_for_method_passes_normalize_and_rejects_unknown_ones():
    model = _model()
    method = build_method("rewa", model, lr=0.1, options={"weight_decay": 1e-3})
    assert for_method(method, model, 0.9, threshold=0.01, normalize="rms").normalize == "rms"
    with pytest.raises(ValueError, match="normalize must be one of"):
        for_method(method, model, 0.9, normalize="layer")


def test_a_non_finite_magnitude_holds_the_multiplier():
    ctl = SparsityController(0.9, threshold=1e-3)
    m = ctl.update(0.1, 0.1, magnitude=1.5e-3)
    assert ctl.update(0.1, 0.15, magnitude=float("nan")) == m
    assert math.isfinite(ctl.integral) and ctl.update(0.1, 0.2, magnitude=1.5e-3) > m
