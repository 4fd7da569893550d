"""ResNets, written from the papers (He et al. 2015/2016), no torchvision.

- CIFAR ResNet-20/32/56 (6n+2 layers, 3 stages of 16/32/64 channels). Shortcut option A (the
  paper's CIFAR choice, parameter-free: stride-2 subsampling and zero-padded channels) by
  default; option B (1×1 conv + BN projection where the shape changes) on request.
- CIFAR ResNet-18: 3×3 stem, no max-pool, 4 stages of 64..512 channels, projection shortcuts.
- ImageNet ResNet-18 / ResNet-50: 7×7 stride-2 stem and max-pool; ResNet-50 with bottleneck
  blocks, the stride on the 3×3 conv ("v1.5"). An ``upsample`` size bilinearly resizes inputs
  inside ``forward`` (CIFAR 32 px → 224 px for the published harness).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and append zero channels up to ``cout``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.extra = cout - cin
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


def make_shortcut(cin: int, cout: int, stride: int, kind: str) -> nn.Module:
    """Identity where the shape is kept; else option A (pad) or B (1×1 conv + BN projection)."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(cin, cout, stride)
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(cin, cout, stride, shortcut)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = make_shortcut(cin, cout, stride, shortcut)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A stem, stages of residual blocks (the first block of stage i > 0 has stride 2), global
    average pooling and a linear classifier."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        widths: list[int],
        num_classes: int = 10,
        *,
        stem: str = "cifar",
        shortcut: str = "B",
        zero_init_residual: bool = False,
        upsample: int | None = None,
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.upsample = upsample
        cin = widths[0]
        if stem == "cifar":
            self.conv1 = conv3x3(3, cin)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, cin, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(cin)
        stages = []
        for i, (n, planes) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(cin, planes, stride, shortcut))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self, zero_init_residual=zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample is not None and x.shape[-2:] != (self.upsample, self.upsample):
            x = F.interpolate(
                x, size=(self.upsample, self.upsample), mode="bilinear", align_corners=False
            )
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.stages(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def init_weights(model: nn.Module, *, zero_init_residual: bool = False) -> None:
    """Kaiming-normal (fan-out, ReLU) convolutions, BN γ = 1 and β = 0; with
    ``zero_init_residual`` the last BN γ of every residual block is 0 (each block starts as the
    identity). Note: under ReWA with M > 0, a weight at exactly 0 never moves, so do not combine
    ``zero_init_residual`` with ReWA on norm parameters."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.last_bn.weight)


def cifar_resnet(depth: int, num_classes: int = 10, *, shortcut: str = "A", **kwargs) -> ResNet:
    """He et al. (2016) CIFAR ResNet with ``depth`` = 6n + 2 layers."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n] * 3, [16, 32, 64], num_classes, shortcut=shortcut, **kwargs)


def resnet20(num_classes: int = 10, **kwargs) -> ResNet:
    return cifar_resnet(20, num_classes, **kwargs)


def resnet32(num_classes: int = 10, **kwargs) -> ResNet:
    return cifar_resnet(32, num_classes, **kwargs)


def resnet56(num_classes: int = 10, **kwargs) -> ResNet:
    return cifar_resnet(56, num_classes, **kwargs)


def resnet18(num_classes: int = 10, **kwargs) -> ResNet:
    """CIFAR ResNet-18: 3×3 stem, no max-pool (11,173,962 parameters for 10 classes)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, **kwargs)


def resnet18_imagenet(num_classes: int = 10, *, upsample: int | None = None, **kwargs) -> ResNet:
    """ImageNet ResNet-18 (7×7 stem, max-pool); ``upsample=224`` resizes CIFAR inputs inside
    ``forward`` as the published CIFAR harness did."""
    return ResNet(
        BasicBlock,
        [2, 2, 2, 2],
        [64, 128, 256, 512],
        num_classes,
        stem="imagenet",
        upsample=upsample,
        **kwargs,
    )


def resnet50(num_classes: int = 1000, *, upsample: int | None = None, **kwargs) -> ResNet:
    """ImageNet ResNet-50 (25,557,032 parameters for 1000 classes)."""
    return ResNet(
        Bottleneck,
        [3, 4, 6, 3],
        [64, 128, 256, 512],
        num_classes,
        stem="imagenet",
        upsample=upsample,
        **kwargs,
    )
