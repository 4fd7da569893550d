"""Parameter shapes of the benchmarked architectures, generated without building the models.

The optimizer benchmark needs only the list of parameter tensors' shapes (in ``model.parameters()``
order). Generating them here keeps ``rewa bench optim`` independent of :mod:`rewa.models` and of
torchvision; ``tests/test_bench.py`` checks the totals against the published parameter counts.
"""

from __future__ import annotations

from collections.abc import Callable

Shape = tuple[int, ...]


def _bn(c: int) -> list[Shape]:
    return [(c,), (c,)]  # weight, bias (running stats are buffers, not parameters)


def _conv_bn(c_out: int, c_in: int, k: int) -> list[Shape]:
    return [(c_out, c_in, k, k), *_bn(c_out)]


def _basic_block(c_in: int, c_out: int, *, conv_shortcut: bool) -> list[Shape]:
    shapes = _conv_bn(c_out, c_in, 3) + _conv_bn(c_out, c_out, 3)
    if conv_shortcut and c_in != c_out:
        shapes += _conv_bn(c_out, c_in, 1)
    return shapes


def cifar_resnet(depth: int, num_classes: int = 10) -> list[Shape]:
    """He et al. (2016) CIFAR ResNet-(6n+2): 16/32/64 channels, identity (option A) shortcuts."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    blocks = (depth - 2) // 6
    shapes = _conv_bn(16, 3, 3)
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(blocks):
            shapes += _basic_block(c_in, width, conv_shortcut=False)
            c_in = width
    return [*shapes, (num_classes, 64), (num_classes,)]


def cifar_resnet18(num_classes: int = 10) -> list[Shape]:
    """ResNet-18 for 32-px inputs: 3x3 stem, no max-pool, 1x1-conv projection shortcuts."""
    shapes = _conv_bn(64, 3, 3)
    c_in = 64
    for width in (64, 128, 256, 512):
        for _ in range(2):
            shapes += _basic_block(c_in, width, conv_shortcut=True)
            c_in = width
    return [*shapes, (num_classes, 512), (num_classes,)]


def resnet50(num_classes: int = 1000) -> list[Shape]:
    """ImageNet ResNet-50 (bottleneck blocks 3-4-6-3, stride on the 3x3 conv)."""
    shapes = _conv_bn(64, 3, 7)
    c_in = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            c_out = 4 * width
            shapes += _conv_bn(width, c_in, 1) + _conv_bn(width, width, 3)
            shapes += _conv_bn(c_out, width, 1)
            if b == 0:
                shapes += _conv_bn(c_out, c_in, 1)
            c_in = c_out
    return [*shapes, (num_classes, 2048), (num_classes,)]


def llama(vocab: int = 65, dim: int = 192, layers: int = 6, hidden: int = 512) -> list[Shape]:
    """The tiny-Shakespeare LLaMA-style decoder of configs/tinyshakespeare_llama_*.yaml: token
    embedding; per block RMSNorm, qkv and output projections, RMSNorm, SwiGLU gate/up/down; final
    RMSNorm and head (no biases)."""
    block = [
        (dim,),
        (3 * dim, dim),
        (dim, dim),
        (dim,),
        (hidden, dim),
        (hidden, dim),
        (dim, hidden),
    ]
    return [(vocab, dim), *block * layers, (dim,), (vocab, dim)]


def flat(numel: int = 10_000_000) -> list[Shape]:
    """One flat tensor: the pure memory-bandwidth case, no per-tensor overhead."""
    return [(numel,)]


PARAM_SETS: dict[str, Callable[[], list[Shape]]] = {
    "resnet20": lambda: cifar_resnet(20),
    "resnet18": cifar_resnet18,
    "resnet50": resnet50,
    "llama": llama,
    "flat10m": flat,
}


def numel(shapes: list[Shape]) -> int:
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
