"""Models: exact parameter counts, forward shapes, init, channels_last, registry errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rewa.errors import UsageError
from rewa.models import MODELS, build_model
from rewa.models.resnet import BasicBlock, PadShortcut


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, classes, expected",
    [
        ("resnet20", 10, 269_722),  # "0.27M" (He et al. 2016, option A)
        ("resnet32", 10, 464_154),  # 0.46M
        ("resnet56", 10, 853_018),  # 0.85M
        ("resnet18", 10, 11_173_962),
        ("resnet18_imagenet", 1000, 11_689_512),
        ("resnet50", 1000, 25_557_032),
    ],
)
def test_parameter_counts(name, classes, expected):
    assert n_params(build_model(name, classes)) == expected


def test_resnet20_option_b_has_projections():
    model = build_model("resnet20", shortcut="B")
    assert n_params(model) == 272_474
    assert not any(isinstance(m, PadShortcut) for m in model.modules())
    assert sum(isinstance(m, PadShortcut) for m in build_model("resnet20").modules()) == 2


def test_tiny_is_tiny():
    assert 1_000 < n_params(build_model("tiny")) < 5_000


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet18_imagenet", "tiny"])
def test_forward_shape_and_channels_last(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    model_cl = model.to(memory_format=torch.channels_last)
    out_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, out_cl, atol=1e-4, rtol=1e-4)


def test_resnet50_forward_small_input():
    model = build_model("resnet50", num_classes=1000).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_imagenet_resnet18_upsamples_inside_forward():
    model = build_model("resnet18_imagenet", upsample=224).eval()
    seen = []
    model.conv1.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].shape))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert seen == [(1, 3, 224, 224)]
    # The state dict is the plain ResNet-18's: no wrapper prefix.
    assert set(model.state_dict()) == set(build_model("resnet18_imagenet").state_dict())


def test_init():
    torch.manual_seed(0)
    model = build_model("resnet56")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    conv = model.stages[2][3].conv1  # Kaiming normal, fan-out, ReLU gain: std = sqrt(2 / fan_out)
    expected = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.std().item() / expected - 1) < 0.05


def test_zero_init_residual():
    model = build_model("resnet20", zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9 and all(b.bn2.weight.abs().sum() == 0 for b in blocks)
    assert all(b.bn1.weight.eq(1).all() for b in blocks)
    bottleneck = build_model("resnet50", zero_init_residual=True).stages[0][0]
    assert bottleneck.bn3.weight.abs().sum() == 0 and bottleneck.bn2.weight.eq(1).all()


def test_registry_errors():
    assert set(MODELS) >= {"resnet20", "resnet32", "resnet56", "resnet18", "resnet50", "tiny"}
    with pytest.raises(UsageError, match=r"unknown model 'resnet19'.*resnet20"):
        build_model("resnet19")
    with pytest.raises(UsageError, match="no option upsample; valid: shortcut"):
        build_model("resnet20", upsample=224)
