"""Every method of the registry builds on a small model and trains a few steps (both bases)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rewa.errors import UsageError
from rewa.methods import METHODS, build_method
from rewa.optim.prox import ProxL1
from rewa.sparsity import effective_weights

ALL = ["rewa", "dense", "l1", "l1-prox", "lp", "spred", "str", "gmp", "rigl", "powerprop"]
OPTIONS = {
    "rewa": {"weight_decay": 1e-2},
    "dense": {},
    "l1": {"lam": 1e-2},
    "l1-prox": {"lam": 1e-1},
    "lp": {"lam": 1e-2, "p": 0.5},
    "spred": {"weight_decay": 1e-2},
    "str": {"weight_decay": 1e-2, "s_init": -3.0},
    "gmp": {"target": 0.5, "frequency": 2},
    "rigl": {"sparsity": 0.5, "interval": 2},
    "powerprop": {"alpha": 3.0},
}


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def train(method, steps=6):
    gen = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        x = torch.randn(16, 6, generator=gen)
        target = torch.randint(0, 3, (16,), generator=gen)
        loss = nn.functional.cross_entropy(method.model(x), target)
        penalty = method.penalty()
        objective = loss if penalty is None else loss + penalty
        method.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        method.optimizer.step()
        method.after_step(step, steps)
        method.observe_loss(float(loss.detach()))
        losses.append(float(loss.detach()))
    return losses


def test_registry_has_every_method_of_the_issue():
    assert sorted(METHODS) == sorted(ALL)


@pytest.mark.parametrize("base", ["sgd", "adamw"])
@pytest.mark.parametrize("name", ALL)
def test_each_method_trains_and_folds(name, base):
    model = net()
    method = build_method(name, model, lr=0.05, base=base, options=OPTIONS[name])
    losses = train(method)
    assert all(torch.isfinite(torch.tensor(losses)))
    folded = method.fold()
    assert folded is model
    params = dict(folded.named_parameters())
    assert not any("parametrizations" in n for n in params)  # a plain model again
    assert {"0.weight", "3.weight"} <= set(params)
    assert all(bool(torch.isfinite(w).all()) for _, w in effective_weights(folded))
    x = torch.randn(4, 6)
    folded.eval()
    assert folded(x).shape == (4, 3)


def test_sparse_methods_make_exact_zeros():
    for name in ["l1-prox", "gmp", "str"]:
        method = build_method(name, net(), lr=0.05, options=OPTIONS[name])
        if name == "str":
            for s in method.optimizer.param_groups[0]["params"][-2:]:
                s.data.fill_(0.0)  # a large threshold σ(0) = 0.5
        train(method)
        zeros = sum(int((w == 0).sum()) for _, w in effective_weights(method.fold()))
        assert zeros > 0, name


def test_l1_prox_uses_proxl1_and_leaves_biases_unthresholded():
    method = build_method("l1-prox", net(), lr=0.1, options={"lam": 1.0})
    assert isinstance(method.optimizer, ProxL1)
    sparse, plain = method.optimizer.param_groups
    assert sparse["l1"] == 1.0 and plain["l1"] == 0.0
    assert len(sparse["params"]) == 2  # the two Linear weights


def test_lp_method_reports_its_stability():
    method = build_method("lp", net(), lr=0.5, options={"lam": 0.1, "p": 0.3, "delta": 0.0})
    train(method, steps=10)
    report = method.diagnostics()
    assert report["steps"] == 10 and report["max_update"] > 0
    assert {"nonfinite_steps", "loss_spikes", "nonfinite_losses"} <= set(report)


def test_gmp_method_state_dict_round_trip():
    model = net()
    method = build_method("gmp", model, lr=0.05, options={"target": 0.5, "frequency": 1})
    train(method, steps=4)
    state = copy.deepcopy(method.state_dict())
    other = build_method("gmp", net(), lr=0.05, options={"target": 0.5, "frequency": 1})
    other.model.load_state_dict(model.state_dict())
    other.load_state_dict(state)
    for name, mask in method.pruning.pruner.masks.items():
        assert torch.equal(other.pruning.pruner.masks[name], mask)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("l1", {"lambda": 1.0}, r"valid: lam, "),
        ("lp", {"p": -1.0}, "option p"),
        ("lp", {"lam": -1.0}, "option lam"),
        ("gmp", {"target": 2.0}, "target"),
        ("gmp", {"scope": "row"}, "scope"),
        ("spred", {"weight_decay": "x"}, "weight_decay"),
        ("str", {"threshold": 1.0}, "valid: "),
    ],
)
def test_bad_options_are_usage_errors(name, options, match):
    with pytest.raises(UsageError, match=match):
        build_method(name, net(), lr=0.1, options=options)


def test_unknown_base_is_a_usage_error():
    for name in ["l1", "l1-prox", "spred"]:
        with pytest.raises(UsageError, match="base"):
            build_method(name, net(), lr=0.1, base="rmsprop")
