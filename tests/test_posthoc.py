"""Wanda and SparseGPT (rewa.baselines.posthoc) against answers known in closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rewa.baselines.posthoc import (
    InputStats,
    calibration_runner,
    prune_posthoc_,
    sparsegpt_prune,
    wanda_mask,
)

F64 = torch.float64


def stats_of(x: torch.Tensor) -> InputStats:
    s = InputStats(x.shape[1])
    s.add(x)
    return s


def correlated_inputs(n=400, d=24, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen, dtype=F64) + 2.0 * torch.eye(d, dtype=F64)
    scale = torch.logspace(-1, 1, d, dtype=F64)
    return (torch.randn(n, d, generator=gen, dtype=F64) @ mix) * scale


def reconstruction_error(w, w_hat, x) -> float:
    return float(((w - w_hat) @ x.T).square().sum())


def test_wanda_prunes_each_row_by_weight_times_input_norm():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]], dtype=F64)
    x = torch.diag(torch.tensor([10.0, 1.0, 1.0, 1.0], dtype=F64))  # feature 0 ten times louder
    keep = wanda_mask(w, stats_of(x), 0.5)
    # scores row 0: 10, 2, 3, 4 -> prune features 1, 2; row 1: 40, 3, 2, 1 -> prune 2, 3
    assert keep.tolist() == [[True, False, False, True], [True, True, False, False]]
    equal = wanda_mask(w, stats_of(torch.eye(4, dtype=F64)), 0.5)  # equal norms: magnitude
    assert equal.tolist() == [[False, False, True, True], [True, True, False, False]]


def test_sparsegpt_with_white_inputs_is_magnitude_pruning():
    """H = I: the OBS updates vanish and the scores are w², so SparseGPT keeps the largest
    weights of each block and changes none of them."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 16, generator=gen, dtype=F64)
    pruned, keep = sparsegpt_prune(w, stats_of(torch.eye(16, dtype=F64)), 0.5, block=16, damp=0.0)
    threshold = w.abs().flatten().kthvalue(48).values
    assert torch.equal(keep, w.abs() > threshold)
    assert torch.equal(pruned, w * keep)


def test_sparsegpt_pruning_a_first_column_is_the_least_squares_optimum():
    """Zeroing the weights of the first input feature: the optimal-brain-surgeon update of the
    other weights minimizes ‖(w − ŵ)ᵀX‖² exactly (ŵ₀ = 0, the rest free)."""
    x = correlated_inputs()
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(5, x.shape[1], generator=gen, dtype=F64)
    mask = torch.ones_like(w, dtype=torch.bool)
    mask[:, 0] = False
    pruned, _ = sparsegpt_prune(w, stats_of(x), 0.0, block=8, damp=0.0, mask=mask)
    target = w @ x.T  # each row's outputs, fitted by the remaining features
    rest = torch.linalg.lstsq(x[:, 1:], target.T).solution.T
    expected = torch.cat([torch.zeros(5, 1, dtype=F64), rest], dim=1)
    torch.testing.assert_close(pruned, expected, rtol=1e-8, atol=1e-10)


def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude():
    x = correlated_inputs(seed=3)
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(16, x.shape[1], generator=gen, dtype=F64)
    stats = stats_of(x)
    # one block: the mask is chosen over all columns (a block of 8 here would force half of the
    # low-variance and half of the high-variance features out, whatever their saliency)
    sgpt, keep = sparsegpt_prune(w, stats, 0.5, block=x.shape[1], damp=0.0)
    wanda = w * wanda_mask(w, stats, 0.5)
    magnitude = w * (w.abs() > w.abs().flatten().median())
    errors = [reconstruction_error(w, v, x) for v in (sgpt, wanda, magnitude)]
    assert errors[0] < errors[1] < errors[2]
    assert float((~keep).float().mean()) == pytest.approx(0.5)


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(12, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("sequential", [True, False])
def test_prune_posthoc_reaches_the_sparsity_of_every_layer_and_returns_the_masks(
    criterion, sequential
):
    torch.manual_seed(0)
    model = TwoLayers()
    batches = [(torch.randn(32, 12), None) for _ in range(3)]
    run = calibration_runner(model, batches, count=2)
    masks = prune_posthoc_(model, 0.75, criterion, run, sequential=sequential, block=8)
    assert set(masks) == {"a.weight", "b.weight"}
    for name in ("a", "b"):
        w = getattr(model, name).weight
        assert float((w == 0).float().mean()) == pytest.approx(0.75)
        assert torch.equal(w != 0, masks[f"{name}.weight"])
    with pytest.raises(ValueError, match="criterion"):
        prune_posthoc_(model, 0.5, "magic", run)
