import math

import pytest
import torch
from torch import nn

import rewa
from rewa.sparsity import magnitude_threshold, sparsifiable_parameters, sparsity_report


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))


def test_report_counts_only_conv_and_linear_weights():
    net = model()
    with torch.no_grad():
        net[0].weight[:2] = 0.0  # 36 of 72
        net[3].weight[0, :8] = 1e-5  # 8 of 48 below 1e-4, not zero
    report = sparsity_report(net, thresholds=(1e-4, 0.5))
    assert report.total == 72 + 48
    assert report.zeros == 36
    assert report.sparsity == pytest.approx(36 / 120)
    assert report.compression == pytest.approx(120 / 84)
    assert report.fraction_below(1e-4) == pytest.approx(44 / 120)
    assert [la.name for la in report.layers] == ["0.weight", "3.weight"]
    assert report.layers[0].sparsity == 0.5
    table = report.format()
    assert "TOTAL" in table and "0.weight" in table
    d = report.to_dict()
    assert d["zeros"] == 36 and d["layers"][1]["numel"] == 48


def test_report_on_tensors_and_empty_layers():
    report = sparsity_report({"a": torch.zeros(5), "b": torch.ones(5)}, thresholds=(0.1,))
    assert report.empty_layers() == ["a"]
    assert sparsity_report([torch.zeros(3)], thresholds=(0.1,)).compression == math.inf


def test_prune_by_sparsity_is_global_magnitude():
    net = model()
    threshold = rewa.prune_(net, sparsity=0.9)
    weights = torch.cat([p.flatten() for _, p in sparsifiable_parameters(net)])
    assert (weights == 0).float().mean().item() == pytest.approx(0.9, abs=1 / 120)
    assert weights[weights != 0].abs().min() > threshold
    assert (net[1].weight != 0).all()  # BatchNorm untouched


def test_prune_by_threshold():
    net = model()
    rewa.prune_(net, threshold=0.1)
    for _, p in sparsifiable_parameters(net):
        assert ((p == 0) | (p.abs() > 0.1)).all()


def test_prune_needs_exactly_one_target():
    with pytest.raises(ValueError):
        rewa.prune_(model())
    with pytest.raises(ValueError):
        rewa.prune_(model(), threshold=0.1, sparsity=0.5)
    with pytest.raises(ValueError):
        magnitude_threshold([torch.ones(3)], 1.5)
