"""Models by name: ``build_model("resnet20", num_classes=10)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from rewa.errors import UsageError
from rewa.models.llama import LlamaLM, llama
from rewa.models.resnet import (
    ResNet,
    resnet18,
    resnet18_imagenet,
    resnet20,
    resnet32,
    resnet50,
    resnet56,
)
from rewa.models.tiny import TinyCNN, tiny

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "resnet18_imagenet": resnet18_imagenet,
    "resnet50": resnet50,
    "tiny": tiny,
    "llama": llama,
}

# The image classifiers (input N×3×H×W); llama takes token ids.
IMAGE_MODELS: tuple[str, ...] = tuple(name for name in MODELS if name != "llama")

_RESNET = ("shortcut", "zero_init_residual")
# The keyword options of each model besides num_classes (see rewa.models.resnet / tiny).
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "resnet20": _RESNET,
    "resnet32": _RESNET,
    "resnet56": _RESNET,
    "resnet18": _RESNET,
    "resnet18_imagenet": (*_RESNET, "upsample"),
    "resnet50": (*_RESNET, "upsample"),
    "tiny": ("width", "batchnorm"),
    "llama": ("dim", "layers", "heads", "hidden"),
}


def build_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the model called ``name`` (one of ``MODELS``) for ``num_classes`` classes."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    unknown = sorted(set(kwargs) - set(MODEL_OPTIONS[name]))
    if unknown:
        raise UsageError(
            f"model {name!r} has no option {', '.join(unknown)}; "
            f"valid: {', '.join(MODEL_OPTIONS[name])}"
        )
    return MODELS[name](num_classes, **kwargs)


__all__ = ["IMAGE_MODELS", "MODELS", "MODEL_OPTIONS", "LlamaLM", "ResNet", "TinyCNN", "build_model"]
