import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import rewa
from rewa.masks import Masks
from rewa.sparsity import (
    layer_rms,
    magnitude_threshold,
    normalized_magnitudes,
    pruned_count,
    sparsifiable_parameters,
    sparsity_report,
)


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


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 10**9), k=st.integers(0, 10**9), tenths=st.integers(0, 10))
def test_pruned_count_is_ceil_of_s_times_n_without_rounding_noise(n, k, tenths):
    k = min(k, n)
    assert pruned_count(k / n, n) == k if n else pruned_count(0.5, 0) == 0
    assert pruned_count(tenths / 10, 10) == tenths  # 0.7 * 10 = 7.000000000000001 is 7
    if n:
        s = (k + 0.5) / n  # half a weight past k: the count rounds up
        assert pruned_count(min(s, 1.0), n) == min(k + 1, n)


@pytest.mark.parametrize("sparsity", [0.5, 0.905, 0.7, 0.999, 1.0])
def test_prune_masks_and_sweep_agree_on_how_many_weights_a_sparsity_prunes(sparsity):
    """prune_, Masks and the evaluation's target τ all prune ceil(S·n) of the 120 weights."""
    from rewa.train.evaluation import sweep_thresholds

    want = math.ceil(sparsity * 120 - 1e-9)
    net = model()
    masks = Masks.from_model(net, sparsity=sparsity)
    [(tau, _)] = [pt for pt in sweep_thresholds(net, (), [sparsity]) if pt[1] != "as trained"]
    rewa.prune_(net, sparsity=sparsity)
    report = sparsity_report(net, ())
    assert report.zeros == want == sum(int((~m).sum()) for m in masks.masks.values())
    assert sum(int((p.abs() <= tau).sum()) for _, p in sparsifiable_parameters(model())) == want


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


# ---------------------------------------------------------------- layer-relative magnitudes


def test_layer_rms_is_the_root_mean_square_of_each_tensor():
    a, b = torch.tensor([3.0, -4.0]), torch.zeros(3)
    assert layer_rms([a, b]) == [pytest.approx(math.sqrt(12.5)), 0.0]
    magnitudes = normalized_magnitudes([a, b], "rms")
    expected = torch.tensor([3.0, 4.0]) / math.sqrt(12.5)
    torch.testing.assert_close(magnitudes[0], expected)
    assert not magnitudes[1].any()  # an all-zero layer stays zero, no NaN
    torch.testing.assert_close(normalized_magnitudes([a], "none")[0], a.abs())
    # a layer that all but underflowed: its RMS (1e-45 · 2^-0.5) is below the smallest float32
    tiny = torch.tensor([1e-45, 0.0], dtype=torch.float32)
    ratios = normalized_magnitudes([tiny], "rms")[0]
    assert torch.isfinite(ratios).all() and ratios[1] == 0 and ratios[0] > 1
    with pytest.raises(ValueError, match="normalize must be one of none, rms"):
        normalized_magnitudes([a], "l2")


@settings(max_examples=30, deadline=None)
@given(log_scale=st.floats(-8.0, 8.0), seed=st.integers(0, 2**16))
def test_rms_magnitudes_do_not_see_a_layers_scale(log_scale, seed):
    t = torch.randn(50, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    before = normalized_magnitudes([t], "rms")[0]
    after = normalized_magnitudes([t * 10.0**log_scale], "rms")[0]
    torch.testing.assert_close(after, before, rtol=1e-12, atol=0.0)


def _zeros(net: nn.Module) -> list[Tensor]:
    return [p == 0 for _, p in sparsifiable_parameters(net)]


def test_rms_pruning_ignores_a_shrunk_layer_that_global_magnitude_empties():
    reference, shrunk = model(), model()
    with torch.no_grad():
        shrunk[0].weight.mul_(1e-4)  # BatchNorm follows: the network computes the same function
    plain = model()
    with torch.no_grad():
        plain[0].weight.mul_(1e-4)
    rewa.prune_(plain, sparsity=0.5)  # |x|: 60 of the 120 smallest are all in the shrunk layer
    assert int((plain[0].weight == 0).sum()) == 60 and not (plain[3].weight == 0).any()
    rewa.prune_(reference, sparsity=0.5, normalize="rms")
    rewa.prune_(shrunk, sparsity=0.5, normalize="rms")
    for got, want in zip(_zeros(shrunk), _zeros(reference), strict=True):
        assert torch.equal(got, want)
    assert sparsity_report(shrunk, ()).zeros == 60
    assert 0 < int((shrunk[0].weight == 0).sum()) < 60  # both layers lose weights


def test_masks_from_model_normalize_like_prune():
    net = model()
    with torch.no_grad():
        net[3].weight.mul_(50.0)
    masks = Masks.from_model(net, sparsity=0.75, normalize="rms")
    rewa.prune_(net, sparsity=0.75, normalize="rms")
    for (name, p), kept in zip(sparsifiable_parameters(net), masks.masks.values(), strict=True):
        assert torch.equal(kept, p != 0), name
    threshold_masks = Masks.from_model(net, threshold=0.1, normalize="rms")
    assert threshold_masks.sparsity >= 0.75
