"""Batch augmentation (crop + flip, normalize) and TensorBatches: shapes, determinism, sharding."""

from __future__ import annotations

import pytest
import torch

from rewa.data.augment import apply_crop_flip, crop_flip_params, normalize, random_crop_flip
from rewa.data.batches import TensorBatches


def _images(n=6, c=3, h=8, w=8, seed=0):
    return torch.randint(
        0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _reference(image, top, left, flip, padding):
    """One image at a time, by definition: pad with zeros, cut the window, mirror."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=image.dtype)
    padded[:, padding : padding + h, padding : padding + w] = image
    out = padded[:, top : top + h, left : left + w]
    return out.flip(-1) if flip else out


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_flip_matches_per_image_definition(dtype):
    images = _images(n=16).to(dtype)
    top, left, flip = crop_flip_params(16, 3, torch.Generator().manual_seed(1))
    out = apply_crop_flip(images, top, left, flip, padding=3)
    assert out.shape == images.shape and out.dtype == dtype
    for i in range(16):
        ref = _reference(images[i], int(top[i]), int(left[i]), bool(flip[i]), 3)
        assert torch.equal(out[i], ref)


def test_crop_flip_moves_pixels_and_covers_all_offsets():
    top, left, flip = crop_flip_params(2000, 4, torch.Generator().manual_seed(0))
    assert set(top.tolist()) == set(range(9)) == set(left.tolist())
    assert 0.45 < flip.float().mean() < 0.55
    images = _images(n=64, h=32, w=32)
    out = random_crop_flip(images, 4, torch.Generator().manual_seed(0))
    changed = (out != images).flatten(1).any(1)
    assert changed.float().mean() > 0.9  # only (top, left) = (4, 4) without flip is the identity


def test_crop_flip_deterministic_given_generator():
    images = _images(n=32, h=32, w=32)
    a = random_crop_flip(images, 4, torch.Generator().manual_seed(5))
    b = random_crop_flip(images, 4, torch.Generator().manual_seed(5))
    c = random_crop_flip(images, 4, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_flip_channels_last_and_zero_padding():
    images = _images(n=4).contiguous(memory_format=torch.channels_last)
    top = torch.tensor([0, 8, 0, 4])
    left = torch.tensor([0, 8, 8, 4])
    out = apply_crop_flip(images, top, left, torch.tensor([False, False, True, False]), 4)
    assert torch.equal(out[0, :, 4:, 4:], images[0, :, :4, :4]) and out[0, :, :4].eq(0).all()
    assert torch.equal(out[1, :, :4, :4], images[1, :, 4:, 4:])
    assert torch.equal(out[3], images[3])


def test_no_per_image_python_loop(monkeypatch):
    """The batch is processed by a fixed number of tensor ops, whatever its size."""
    calls = {"n": 0}
    original = torch.Tensor.__getitem__

    def counting(self, idx):
        calls["n"] += 1
        return original(self, idx)

    monkeypatch.setattr(torch.Tensor, "__getitem__", counting)
    random_crop_flip(_images(n=2), 4, torch.Generator().manual_seed(0))
    small = calls["n"]
    calls["n"] = 0
    random_crop_flip(_images(n=200), 4, torch.Generator().manual_seed(0))
    assert calls["n"] == small


def test_normalize():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1)
    out = normalize(images, (0.0, 0.5, 0.2), (1.0, 0.5, 0.1))
    assert out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    assert normalize(images, (0, 0, 0), (1, 1, 1), dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="uint8"):
        normalize(images.float(), (0, 0, 0), (1, 1, 1))


def _batches(n=50, **kwargs):
    images = _images(n=n, h=8, w=8)
    labels = torch.arange(n)
    options = dict(shuffle=True, augment=True, mean=(0.5,) * 3, std=(0.25,) * 3, seed=7)
    options.update(kwargs)
    return TensorBatches(images, labels, 8, **options)


def _epoch(batches, epoch):
    batches.set_epoch(epoch)
    return list(batches)


def test_epoch_is_pure_function_of_seed_and_epoch():
    a, b = _batches(), _batches()
    e3 = _epoch(a, 3)
    _epoch(b, 0)  # b's history differs
    for (x1, y1), (x2, y2) in zip(e3, _epoch(b, 3), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(torch.cat([y for _, y in e3]), torch.cat([y for _, y in _epoch(a, 4)]))
    assert len(a) == 7 and [len(y) for _, y in e3] == [8] * 6 + [2]
    assert sorted(torch.cat([y for _, y in e3]).tolist()) == list(range(50))
    x, _ = e3[0]
    assert x.dtype == torch.float32 and x.shape == (8, 3, 8, 8)


def test_drop_last_no_shuffle_no_augment():
    batches = _batches(shuffle=False, augment=False, drop_last=True)
    epoch = _epoch(batches, 0)
    assert len(batches) == len(epoch) == 6
    assert torch.equal(torch.cat([y for _, y in epoch]), torch.arange(48))
    x, _ = epoch[0]
    assert torch.allclose(x, normalize(_images(n=50)[:8], (0.5,) * 3, (0.25,) * 3))


@pytest.mark.parametrize("n, drop_last", [(50, False), (50, True), (64, False), (67, False)])
def test_sharding_disjoint_equal_and_equal_to_single_process(n, drop_last):
    world = 2
    single = _batches(n=n, drop_last=drop_last)
    single.batch_size = 16  # one process with the global batch
    ranks = [_batches(n=n, drop_last=drop_last, rank=r, world_size=world) for r in range(world)]
    per_rank = [_epoch(r, 2) for r in ranks]
    assert len(ranks[0]) == len(ranks[1]) == len(per_rank[0]) == len(per_rank[1])
    seen = [torch.cat([y for _, y in epoch]) for epoch in per_rank]
    assert len(seen[0]) == len(seen[1]) == ranks[0].num_samples
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    # Full global batches: the ranks' shards, concatenated, are the single-process batch.
    for (xs, ys), (x0, y0), (x1, y1) in zip(_epoch(single, 2), *per_rank, strict=False):
        if len(ys) == 16:
            assert torch.equal(ys, torch.cat([y0, y1])) and torch.equal(xs, torch.cat([x0, x1]))


def test_channels_last_output():
    x, _ = next(iter(_batches(channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)
