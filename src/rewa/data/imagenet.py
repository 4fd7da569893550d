"""ImageNet-style image folders (``root/train/<class>/*.JPEG``, ``root/val/<class>/*.JPEG``).

Standard augmentation: random-resized-crop to 224 (scale 0.08–1, aspect 3/4–4/3) and horizontal
flip for training; resize the shorter side to 256 and center-crop 224 for validation. Images are
decoded and transformed by torchvision when it is installed (``pip install rewa[imagenet]``),
otherwise by Pillow with the same algorithms. Random draws use torch's global generator, which
DataLoader seeds per worker, so ``torch.manual_seed`` makes a run reproducible.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from rewa.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".webp")
BACKENDS = ("torchvision", "pillow")


def default_backend() -> str:
    """``"torchvision"`` when it imports, else ``"pillow"``; an error if neither is installed."""
    try:
        import torchvision  # noqa: F401

        return "torchvision"
    except Exception:  # not installed, or a build that does not match torch
        pass
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise UsageError(
            "ImageNet folders need Pillow or torchvision: pip install 'rewa[imagenet]'"
        ) from None
    return "pillow"


# --- the folder ----------------------------------------------------------------------------------


def find_classes(directory: str | Path) -> list[str]:
    """Sorted names of the class folders in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a folder (expected <split>/<class>/<image> files)")
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        loose = [p.name for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = (
            " (it holds images directly: sort them into one folder per class, as in train/)"
            if loose
            else ""
        )
        raise UsageError(f"{directory} has no class folders{hint}")
    return classes


def _images_in(folder: Path) -> list[Path]:
    found = []
    for dirpath, _, filenames in os.walk(folder, followlinks=True):
        found += [Path(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


class ImageFolder(Dataset):
    """Images in one folder per class; ``dataset[i]`` is ``(transform(image), class index)``.

    ``class_to_idx`` fixes the class numbering (pass the training set's to the validation set);
    by default the sorted folder names are numbered 0, 1, ...
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Any], Tensor] | None = None,
        *,
        class_to_idx: dict[str, int] | None = None,
        backend: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.backend = backend or default_backend()
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown image backend {self.backend!r}; choose one of {BACKENDS}")
        found = find_classes(self.root)
        if class_to_idx is None:
            class_to_idx = {name: i for i, name in enumerate(found)}
        unknown = sorted(set(found) - set(class_to_idx))
        if unknown:
            raise UsageError(f"{self.root} has classes not in the training set: {unknown[:5]}")
        self.class_to_idx = class_to_idx
        self.classes = sorted(class_to_idx, key=class_to_idx.__getitem__)
        self.samples: list[tuple[Path, int]] = []
        for name in found:
            images = _images_in(self.root / name)
            if not images:
                raise UsageError(f"{self.root / name} holds no images ({IMAGE_EXTENSIONS})")
            self.samples += [(path, class_to_idx[name]) for path in images]
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = decode_image(path, self.backend)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def decode_image(path: Path, backend: str) -> Any:
    """An RGB image: a uint8 (3, H, W) tensor (torchvision) or a PIL image (pillow)."""
    try:
        if backend == "torchvision":
            from torchvision.io import ImageReadMode, decode_image, read_file

            return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        from PIL import Image

        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:
        raise UsageError(
            f"cannot decode {path} ({type(err).__name__}: {err}); replace or remove the file"
        ) from None


# --- Pillow transforms (the torchvision algorithms, written out) ---------------------------------


def random_resized_box(
    width: int,
    height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random crop covering a ``scale`` fraction of the area with aspect
    ratio in ``ratio`` (log-uniform); after 10 failed draws, the central crop of the whole image
    with the aspect ratio clamped to ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,)).item())
            left = int(torch.randint(0, width - w + 1, (1,)).item())
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class PillowTrainTransform:
    """Random-resized-crop to ``size`` (bilinear), random horizontal flip, normalized tensor."""

    def __init__(self, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, image) -> Tensor:
        from PIL import Image

        left, top, w, h = random_resized_box(*image.size)
        image = image.resize(
            (self.size, self.size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)
        )
        if torch.rand(1).item() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_normalized_tensor(image, self.mean, self.std)


class PillowEvalTransform:
    """Resize the shorter side to ``resize`` (bilinear), center-crop ``size``, normalized."""

    def __init__(
        self, size: int = 224, resize: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD
    ) -> None:
        self.size, self.resize, self.mean, self.std = size, resize, mean, std

    def __call__(self, image) -> Tensor:
        from PIL import Image

        width, height = image.size
        if width <= height:
            new = (self.resize, int(self.resize * height / width))
        else:
            new = (int(self.resize * width / height), self.resize)
        image = image.resize(new, Image.Resampling.BILINEAR)
        left = round((new[0] - self.size) / 2)
        top = round((new[1] - self.size) / 2)
        image = image.crop((left, top, left + self.size, top + self.size))
        return to_normalized_tensor(image, self.mean, self.std)


def to_normalized_tensor(image, mean, std) -> Tensor:
    """A PIL RGB image → float32 (3, H, W), ``(x / 255 − mean) / std``."""
    array = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return (array.float() / 255.0 - mean_t) / std_t


# --- entry points --------------------------------------------------------------------------------


def imagenet_transform(
    train: bool, *, size: int = 224, resize: int = 256, backend: str | None = None
) -> Callable[[Any], Tensor]:
    """The standard training (``train=True``) or evaluation transform for ``backend``'s images."""
    if resize < size:
        raise UsageError(f"resize ({resize}) must be at least the crop size ({size})")
    backend = backend or default_backend()
    if backend == "pillow":
        return PillowTrainTransform(size) if train else PillowEvalTransform(size, resize)
    from torchvision.transforms import v2

    steps = (
        [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        if train
        else [v2.Resize(resize, antialias=True), v2.CenterCrop(size)]
    )
    return v2.Compose(
        [*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def load_imagenet(
    root: str | Path, *, size: int = 224, resize: int = 256, backend: str | None = None
) -> tuple[ImageFolder, ImageFolder]:
    """(train, val) datasets of ``root/train`` and ``root/val``, with the standard transforms;
    val uses train's class numbering. Use with a DataLoader (and DistributedSampler)."""
    root = Path(root)
    backend = backend or default_backend()
    train = ImageFolder(
        root / "train",
        imagenet_transform(True, size=size, resize=resize, backend=backend),
        backend=backend,
    )
    val = ImageFolder(
        root / "val",
        imagenet_transform(False, size=size, resize=resize, backend=backend),
        class_to_idx=train.class_to_idx,
        backend=backend,
    )
    return train, val
