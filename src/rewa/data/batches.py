"""Minibatches over an in-memory uint8 image dataset, augmented and normalized on the device."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from rewa.data.augment import apply_crop_flip, crop_flip_params, normalize


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose state is a pure function of (seed, epoch)."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class TensorBatches:
    """Iterate ``(inputs, labels)`` minibatches: inputs normalized float (B, C, H, W), labels int64.

    The whole dataset is moved to ``device`` once as uint8; cropping, flipping and normalization
    run there. The order and the augmentation of epoch ``e`` are a pure function of
    ``(seed, e)``: call ``set_epoch(e)`` before iterating (like DistributedSampler), and a
    resumed run sees exactly the same batches.

    Sharding: with ``world_size`` W > 1, ``batch_size`` is the per-rank batch; global batch k is
    positions ``[k·B·W, (k+1)·B·W)`` of the epoch's permutation and rank r takes its r-th slice of
    B, so the ranks' shards are disjoint, of equal size, and together they are the batches of a
    single process with batch B·W (the augmentation of a sample does not depend on W). A final
    global batch of R < B·W samples gives each rank R // W samples (R mod W are dropped), or
    nothing with ``drop_last``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        padding: int = 4,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{labels.shape[0]} labels for {images.shape[0]} images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world={world_size}")
        channels = images.shape[1]
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.mean = tuple(mean) if mean is not None else (0.0,) * channels
        self.std = tuple(std) if std is not None else (1.0,) * channels
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.padding = padding
        self.dtype = dtype
        self.channels_last = channels_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return sum(stop - start for start, stop in self._ranges())

    def __len__(self) -> int:
        return len(self._ranges())

    def _ranges(self) -> list[tuple[int, int]]:
        """This rank's [start, stop) slices of the epoch permutation, one per batch."""
        n, b, w = len(self.labels), self.batch_size, self.world_size
        full = n // (b * w)
        ranges = [(k * b * w + self.rank * b, k * b * w + (self.rank + 1) * b) for k in range(full)]
        per_rank = (n - full * b * w) // w
        if not self.drop_last and per_rank > 0:
            start = full * b * w + self.rank * per_rank
            ranges.append((start, start + per_rank))
        return ranges

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        gen = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        order = order.to(self.device)  # one copy per epoch: no host-device copy per batch
        if self.augment:  # one draw per position of the epoch, shared by all ranks
            params = tuple(p.to(self.device) for p in crop_flip_params(n, self.padding, gen))
        for start, stop in self._ranges():
            idx = order[start:stop]
            images = self.images[idx]
            if self.augment:
                top, left, flip = (p[start:stop] for p in params)
                images = apply_crop_flip(images, top, left, flip, self.padding)
            inputs = normalize(images, self.mean, self.std, self.dtype)
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            yield inputs, self.labels[idx]
