"""Pruning masks: construction, masked fine-tuning keeps zeros exactly, checkpoints, allocation."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from rewa.masks import (
    MaskedTraining,
    Masks,
    allocation,
    allocation_rows,
    dead_layer_warnings,
)
from rewa.optim import ReWA, param_groups
from rewa.sparsity import sparsifiable_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 3))


def batches(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(16, 6, generator=gen)
        yield x, (x[:, :3] * 2).argmax(1)


def test_masks_from_sparsity_are_global_magnitude():
    model = mlp()
    masks = Masks.from_model(model, sparsity=0.75)
    assert masks.total == 288 and masks.total - masks.kept == 216  # exactly 0.75 · 288
    for s in (0.1, 0.33, 0.999):  # never below the request, at most one weight above (no ties)
        pruned = (
            Masks.from_model(model, sparsity=s).total - Masks.from_model(model, sparsity=s).kept
        )
        assert pruned == math.ceil(s * 288)
    assert Masks.from_model(model, sparsity=1.0).kept == 0
    weights = dict(sparsifiable_parameters(model))
    kept = torch.cat([weights[n].abs()[m] for n, m in masks.masks.items()])
    pruned = torch.cat([weights[n].abs()[~m] for n, m in masks.masks.items()])
    assert kept.min() > pruned.max()
    assert set(masks) == {"0.weight", "3.weight"}  # conv/linear weights only


def test_masks_from_threshold():
    model = mlp()
    masks = Masks.from_model(model, threshold=0.1)
    for name, p in sparsifiable_parameters(model):
        assert torch.equal(masks.masks[name], p.abs() > 0.1)
    with pytest.raises(ValueError, match="exactly one"):
        Masks.from_model(model)


OPTIMIZERS = {
    "rewa-sgd": lambda m: ReWA(param_groups(m, weight_decay=1e-3), lr=0.05, K=3, M=1),
    "rewa-adamw": lambda m: ReWA(param_groups(m, weight_decay=1e-3), lr=1e-2, base="adamw"),
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_masked_training_keeps_pruned_weights_exactly_zero(name):
    model = mlp()
    masks = Masks.from_model(model, sparsity=0.5)
    assert all(m.any() and not m.all() for m in masks.masks.values())
    optimizer = OPTIMIZERS[name](model)
    # some optimizer state before pruning, as after the sparse training phase
    for x, t in batches(3, seed=1):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), t).backward()
        optimizer.step()
    hook = MaskedTraining(model, masks, optimizer)
    before = {n: p.detach().clone() for n, p in sparsifiable_parameters(model)}
    for step, (x, t) in enumerate(batches(20)):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), t).backward()
        optimizer.step()
        hook.after_step(step, 20)
        assert masks.check(model) == 0
    for n, p in sparsifiable_parameters(model):
        assert not torch.equal(p[masks.masks[n]], before[n][masks.masks[n]])  # kept ones train
        for value in optimizer.state[p].values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                assert value[~masks.masks[n]].eq(0).all()


def test_rewa_with_positive_m_needs_no_rewrite_after_the_first_application():
    model = mlp()
    optimizer = ReWA(param_groups(model, weight_decay=1e-3), lr=0.05, K=9, M=2)
    masks = Masks.from_model(model, sparsity=0.8)
    hook = MaskedTraining(model, masks, optimizer)
    for step, (x, t) in enumerate(batches(5)):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), t).backward()
        optimizer.step()
        # zero y and zero momentum: the pruned entries are a fixed point of ReWA
        assert masks.apply_(model, optimizer) == 0
        hook.after_step(step, 5)


def test_masks_survive_a_checkpoint_round_trip():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hook = MaskedTraining(model, Masks.from_model(model, sparsity=0.6), optimizer)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "hook": hook.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2 = mlp(seed=1)
    model2.load_state_dict(saved["model"])
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    hook2 = MaskedTraining(model2, Masks({}), optimizer2)
    hook2.load_state_dict(saved["hook"])
    assert hook2.masks.masks.keys() == hook.masks.masks.keys()
    for n, m in hook.masks.masks.items():
        assert torch.equal(hook2.masks.masks[n], m)
    assert hook2.masks.check(model2) == 0


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the model is under ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_masks_apply_through_a_ddp_style_wrapper():
    model = mlp()
    masks = Masks.from_model(Wrapper(model), sparsity=0.5)
    assert set(masks) == {"0.weight", "3.weight"}
    masks.apply_(Wrapper(model))
    assert masks.check(model) == 0


def test_mask_errors_name_the_parameter():
    model = mlp()
    with pytest.raises(KeyError, match=r"nope\.weight"):
        Masks({"nope.weight": torch.ones(2, dtype=torch.bool)}).apply_(model)
    with pytest.raises(ValueError, match=r"0\.weight"):
        Masks({"0.weight": torch.ones(2, dtype=torch.bool)}).apply_(model)


def test_allocation_reports_dead_layers():
    model = mlp()
    with torch.no_grad():
        model[3].weight.zero_()
    report = allocation(model)
    warnings = dead_layer_warnings(report)
    assert len(warnings) == 1 and "3.weight" in warnings[0]
    rows = allocation_rows(report)
    assert [r["layer"] for r in rows][:2] == ["0.weight", "3.weight"]
    assert rows[1]["empty"] and not rows[0]["empty"]
    assert rows[0]["share_of_nonzeros"] == pytest.approx(1.0)
    assert rows[-1]["sparsity"] == pytest.approx(96 / (192 + 96))
