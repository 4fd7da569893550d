"""ImageNet folder loader on a tiny generated ImageFolder of JPEGs (Pillow backend)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from rewa.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolder,
    PillowEvalTransform,
    PillowTrainTransform,
    imagenet_transform,
    load_imagenet,
    random_resized_box,
)
from rewa.errors import UsageError
from rewa.models import build_model

Image = pytest.importorskip("PIL.Image")

COLOURS = {"n01": (200, 30, 30), "n02": (30, 200, 30), "n03": (30, 30, 200)}


def _write(path: Path, colour, size=(48, 36), noise: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    if noise:  # texture, so that different crops give different pixels
        gen = torch.Generator().manual_seed(sum(path.name.encode()))
        pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=gen)
        image = Image.blend(image, Image.fromarray(pixels.numpy()), 0.5)
    image.save(path, quality=95)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    for split, n in (("train", 3), ("val", 2)):
        for name, colour in COLOURS.items():
            for i in range(n):
                path = root / split / name / f"{name}_{i}.JPEG"
                _write(path, colour, (48 + 8 * i, 36), noise=split == "train")
    return root


def test_folder_layout_and_labels(folder):
    train, val = load_imagenet(folder, size=32, resize=40, backend="pillow")
    assert len(train) == 9 and len(val) == 6
    assert train.classes == ["n01", "n02", "n03"] and val.class_to_idx == train.class_to_idx
    assert train.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    image, label = val[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 1
    # A solid green image stays solid green after resize + crop + normalization (JPEG: ±3 levels).
    expected = (torch.tensor([30, 200, 30]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=0.06)


def test_dataloader_with_distributed_sampler_is_seeded(folder):
    train, _ = load_imagenet(folder, size=32, resize=40, backend="pillow")

    def epoch(seed):
        torch.manual_seed(seed)
        sampler = DistributedSampler(train, num_replicas=2, rank=1, shuffle=True, seed=0)
        return list(DataLoader(train, batch_size=4, sampler=sampler))

    a, b = epoch(0), epoch(0)
    assert [x.shape for x, _ in a] == [(4, 3, 32, 32), (1, 3, 32, 32)]
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b, strict=True))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, epoch(1), strict=True))


def test_tiny_model_trains_one_epoch(folder):
    train, _ = load_imagenet(folder, size=32, resize=40, backend="pillow")
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=len(train.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in DataLoader(train, batch_size=4, shuffle=True):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)


def test_random_resized_box_respects_scale_and_ratio():
    torch.manual_seed(0)
    for width, height in [(500, 375), (64, 64), (30, 200)]:
        for _ in range(200):
            left, top, w, h = random_resized_box(width, height)
            assert left >= 0 and left + w <= width and top >= 0 and top + h <= height
            fraction, aspect = w * h / (width * height), w / h
            fallback = (w == width or h == height) and (left, top) == (
                (width - w) // 2,
                (height - h) // 2,
            )
            # rounding to whole pixels widens the ranges slightly on small images
            assert fallback or (0.07 <= fraction <= 1 and 0.7 <= aspect <= 1.4)
    # an extreme strip never fits a 3/4..4/3 box of 8%+ area: the clamped central crop
    assert random_resized_box(1000, 10) == (493, 0, 13, 10)


def test_train_transform_flips_and_crops():
    image = Image.new("RGB", (64, 64))
    image.paste((255, 255, 255), (0, 0, 32, 64))  # left half white
    torch.manual_seed(0)
    outs = [PillowTrainTransform(16)(image) for _ in range(40)]
    left_brighter = [o[:, :, :8].mean() > o[:, :, 8:].mean() for o in outs]
    assert 5 < sum(left_brighter) < 35  # flips happen, not always
    assert len({tuple(o.flatten()[:50].tolist()) for o in outs}) > 20  # crops differ


def test_eval_transform_center_crop():
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    image.paste((255, 255, 255), (30, 10, 50, 30))  # a centred white square
    out = PillowEvalTransform(size=16, resize=20)(image)  # → 40×20, crop the central 16×16
    white = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert out.shape == (3, 16, 16) and abs(out[0, 8, 8].item() - white) < 1e-5
    assert abs(out[0, 0, 0].item() + IMAGENET_MEAN[0] / IMAGENET_STD[0]) < 1e-5


def test_errors(folder, tmp_path):
    with pytest.raises(UsageError, match="not a folder"):
        load_imagenet(tmp_path / "missing", backend="pillow")
    _write(tmp_path / "flat" / "train" / "a" / "x.JPEG", (1, 2, 3))
    _write(tmp_path / "flat" / "val" / "ILSVRC2012_val_1.JPEG", (1, 2, 3))
    with pytest.raises(UsageError, match="one folder per class"):
        load_imagenet(tmp_path / "flat", backend="pillow")
    with pytest.raises(UsageError, match="not in the training set"):
        ImageFolder(folder / "val", class_to_idx={"n01": 0}, backend="pillow")
    bad = tmp_path / "bad" / "c" / "broken.JPEG"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UsageError, match=r"broken.JPEG.*replace or remove"):
        ImageFolder(tmp_path / "bad", backend="pillow")[0]
    with pytest.raises(UsageError, match="resize"):
        imagenet_transform(False, size=224, resize=200, backend="pillow")


def test_torchvision_backend_matches_shapes(folder):
    pytest.importorskip("torchvision")
    train, val = load_imagenet(folder, size=32, resize=40, backend="torchvision")
    assert train[0][0].shape == val[0][0].shape == (3, 32, 32)
    assert math.isclose(
        val[4][0].mean().item(),
        load_imagenet(folder, size=32, resize=40, backend="pillow")[1][4][0].mean().item(),
        abs_tol=0.05,
    )
