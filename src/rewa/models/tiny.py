"""A very small CNN (about 2k parameters) for fast tests."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rewa.models.resnet import init_weights


class TinyCNN(nn.Module):
    """conv3×3(3→c)–BN–ReLU, conv3×3(c→2c, stride 2)–BN–ReLU, global average pool, linear
    (``batchnorm=False``: no BN)."""

    def __init__(self, num_classes: int = 10, *, width: int = 8, batchnorm: bool = True) -> None:
        super().__init__()
        # batchnorm=False (identity instead) makes the gradient a plain mean over the batch, so
        # data-parallel training equals one process with the global batch (distributed tests)
        norm = nn.BatchNorm2d if batchnorm else (lambda _: nn.Identity())
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = norm(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def tiny(num_classes: int = 10, **kwargs) -> TinyCNN:
    return TinyCNN(num_classes, **kwargs)
