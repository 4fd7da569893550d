"""RigL and Powerprop (issue 39): the properties that define them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rewa.baselines.rigl import drop_fraction, erk_densities
from rewa.methods import build_method


def test_erk_gives_small_layers_more_density_and_meets_the_total():
    shapes = {"conv1": (16, 3, 3, 3), "conv2": (64, 64, 3, 3), "conv3": (128, 64, 3, 3)}
    d = erk_densities(shapes, 0.1)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(d[n] * sizes[n] for n in shapes) / sum(sizes.values())
    assert total == pytest.approx(0.1)
    assert d["conv1"] == 1.0  # (sum of dims)/(product) would put it above 1: kept dense
    assert 0 < d["conv3"] < d["conv2"] < 1
    # below 1, densities keep the ratio of (sum of dims)/(product of dims)
    assert d["conv2"] / d["conv3"] == pytest.approx((134 / 36864) / (198 / 73728))
    dense = erk_densities({"tiny": (2, 2), "big": (100, 100)}, 0.5)
    assert dense["tiny"] == 1.0 and (4 + dense["big"] * 10_000) / 10_004 == pytest.approx(0.5)


def test_drop_fraction_is_the_cosine_schedule():
    assert drop_fraction(0, 100, 0.3) == pytest.approx(0.3)
    assert drop_fraction(50, 100, 0.3) == pytest.approx(0.15)
    assert drop_fraction(100, 100, 0.3) == 0.0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(20, 40), nn.Linear(40, 5)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_rigl_keeps_its_exact_sparsity_every_step_and_moves_weights_on_schedule():
    torch.manual_seed(0)
    model = Net()
    method = build_method(
        "rigl", model, lr=0.05, options={"sparsity": 0.8, "interval": 5, "end": 0.75}
    )
    rigl = method.rigl
    counts = {n: int(m.sum()) for n, m in rigl.masks.items()}
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    total, moved = 40, []
    for step in range(total):
        method.optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        before = {n: m.clone() for n, m in rigl.masks.items()}
        method.optimizer.step()
        method.after_step(step, total)
        for name, w in rigl.weights.items():
            assert int(rigl.masks[name].sum()) == counts[name]  # drop k, grow k
            assert int((w != 0).sum()) <= counts[name]
            assert not (w[~rigl.masks[name]] != 0).any()
        changed = sum(int((before[n] & ~rigl.masks[n]).sum()) for n in before)
        moved.append(changed)
    assert rigl.density() == pytest.approx(0.2, abs=0.01)
    updates = rigl.updates
    assert [u["step"] for u in updates] == [4, 9, 14, 19, 24]  # every 5 steps before 0.75·40
    for u in updates:
        expected = drop_fraction(u["step"] + 1, 30, 0.3)
        assert u["fraction"] == pytest.approx(expected)
        active = sum(counts.values())
        assert abs(u["moved"] - expected * active) <= len(counts)  # rounding per layer
    assert sum(moved) <= sum(u["moved"] for u in updates)  # regrown weights may come back


def test_powerprop_is_gradient_descent_on_v():
    """w = v|v|^(α−1); the method's step equals torch's SGD with momentum on v (float64),
    with and without weight decay on v."""
    for weight_decay in (0.0, 0.01):
        torch.manual_seed(0)
        model = nn.Linear(6, 3, bias=False).double()
        w0 = model.weight.detach().clone()
        alpha, lr = 3.0, 0.05
        method = build_method(
            "powerprop", model, lr=lr, momentum=0.9,
            options={"alpha": alpha, "weight_decay": weight_decay},
        )  # fmt: skip
        v = (w0.sign() * w0.abs() ** (1 / alpha)).requires_grad_()
        sgd = torch.optim.SGD([v], lr=lr, momentum=0.9, weight_decay=weight_decay)
        x = torch.randn(16, 6, dtype=torch.float64)
        for _ in range(5):
            method.optimizer.zero_grad()
            model(x).square().mean().backward()
            method.optimizer.step()
            sgd.zero_grad()
            w = v * v.abs() ** (alpha - 1)
            (x @ w.T).square().mean().backward()
            sgd.step()
        expected = (v * v.abs() ** (alpha - 1)).detach()
        torch.testing.assert_close(model.weight.detach(), expected, rtol=1e-10, atol=1e-12)
