"""What the trainer trains on, sharded over torchrun ranks.

Two kinds of dataset (``data.dataset``):

- ``cifar10`` / ``cifar100``: the whole dataset in memory as uint8 tensors
  (:class:`rewa.data.batches.TensorBatches`, augmentation on the device);
- ``imagenet``: an ImageFolder layout, ``data_dir/train/<class>/*.JPEG`` and
  ``data_dir/val/<class>/*.JPEG``, decoded by DataLoader workers (torchvision or Pillow).

The training order is the same in both: epoch ``e`` is a permutation that is a pure function of
``(train.seed, e)``; the global batch ``data.batch_size`` takes consecutive positions of it and
rank ``r`` of ``W`` gets its ``1/W`` share of each global batch. So the global batches do not
depend on ``W``, and a run resumed with a different number of processes sees the same data. The
random augmentation of an image folder sample is seeded by ``(train.seed, epoch, sample)``, so it
depends neither on ``W`` nor on the number of workers (the in-memory CIFAR batches draw theirs
per position of the epoch, also independent of ``W``).

Evaluation splits are split into contiguous per-rank shards without padding: every example is
counted exactly once when the counts are summed over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from rewa.data.batches import TensorBatches
from rewa.data.cifar import CifarData, load_cifar
from rewa.data.imagenet import ImageFolder, load_imagenet
from rewa.data.text import TextBatches, TextData, TextEval, load_text
from rewa.errors import UsageError
from rewa.train import distributed
from rewa.train.config import Config

FOLDER_DATASETS = ("imagenet",)
TEXT_DATASETS = ("tinyshakespeare",)


# ---------------------------------------------------------------- image folders


@dataclass
class FolderData:
    """An ImageFolder training and validation split (``val/`` is the evaluation split)."""

    root: Path
    train: ImageFolder
    val: ImageFolder
    train_indices: list[int]  # the samples used (all, or a seeded subset with data.limit_*)
    val_indices: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, sample index)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


class SeededSamples(Dataset):
    """``dataset[indices[i]]`` looked up by key ``(epoch, i)``, its random transform seeded by
    ``(seed, epoch, indices[i])``: the augmentation of a sample depends on nothing else (not on
    the worker that decodes it, nor on the number of ranks). The caller's RNG is left untouched."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], seed: int) -> None:
        self.dataset, self.indices, self.seed = dataset, list(indices), seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, i = key
        index = self.indices[i]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]


class EpochKeys(Sampler):
    """Turns the positions of ``inner`` into ``(epoch, position)`` keys for :class:`SeededSamples`
    (the epoch travels with each key, so persistent workers need no notification)."""

    def __init__(self, inner: Sampler | Sequence[int]) -> None:
        self.inner = inner
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, int(i)) for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class LoaderBatches:
    """DataLoader batches moved to ``device`` (optionally channels_last); ``set_epoch`` like
    :class:`TensorBatches`. ``total_examples`` is the size of the split over all ranks."""

    def __init__(
        self,
        samples: SeededSamples,
        sampler: EpochKeys,
        batch_size: int,
        *,
        drop_last: bool,
        device: torch.device,
        workers: int,
        channels_last: bool,
        total_examples: int,
    ) -> None:
        self.device = device
        self.channels_last = channels_last
        self.sampler = sampler
        self.total_examples = total_examples
        self.loader = DataLoader(
            samples,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for inputs, labels in self.loader:
            inputs = inputs.to(self.device, non_blocking=True)
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            yield inputs, labels.to(self.device, torch.int64, non_blocking=True)


def _subset(n: int, limit: int, seed: int) -> list[int]:
    """All of ``range(n)``, or a seeded random ``limit`` of them in increasing order."""
    if not limit or limit >= n:
        return list(range(n))
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=gen)[:limit].tolist())


def load_folder(config: Config) -> FolderData:
    d = config.data
    backend = None if d.backend == "auto" else d.backend
    train, val = load_imagenet(d.data_dir, size=d.image_size, resize=d.resize, backend=backend)
    if not d.augment:  # train on the evaluation view (resize + center crop)
        train.transform = val.transform
    return FolderData(
        Path(d.data_dir),
        train,
        val,
        _subset(len(train), d.limit_train, d.split_seed),
        _subset(len(val), d.limit_eval, d.split_seed + 1),
    )


# ---------------------------------------------------------------- CIFAR in memory


def load_cifar_data(config: Config) -> CifarData:
    d = config.data
    data = load_cifar(
        d.dataset, d.data_dir, download=d.download, val_size=d.val_size, seed=d.split_seed
    )
    # Seeded random subsets, never the first N: CIFAR's test_batch is ordered by class.
    limits = {"train": (d.limit_train, 0), "val": (d.limit_eval, 1), "test": (d.limit_eval, 2)}
    for split, (limit, offset) in limits.items():
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if limit and limit < len(labels):
            keep = torch.tensor(_subset(len(labels), limit, d.split_seed + offset))
            setattr(data, f"{split}_images", images[keep])
            setattr(data, f"{split}_labels", labels[keep])
    return data


class EvalShard(TensorBatches):
    """TensorBatches over this rank's contiguous shard of an evaluation split."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, **options: Any) -> None:
        self.total_examples = len(labels)
        start, stop = distributed.shard_range(len(labels))
        super().__init__(images[start:stop], labels[start:stop], batch_size, **options)


# ---------------------------------------------------------------- entry points

Data = CifarData | FolderData | TextData


def load_data(config: Config) -> Data:
    """The dataset of ``config.data`` (in-memory CIFAR, an image folder, or a text)."""
    d = config.data
    if d.dataset in FOLDER_DATASETS:
        return load_folder(config)
    if d.dataset in TEXT_DATASETS:
        return load_text(
            d.data_dir,
            name=d.dataset,
            download=d.download,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
        )
    return load_cifar_data(config)


Batches = TensorBatches | LoaderBatches | TextBatches | TextEval


def train_batches(config: Config, data: Data, device: torch.device) -> Batches:
    """This rank's training batches: its share of each global batch of ``data.batch_size``."""
    cfg = config
    batch = distributed.per_rank_batch(cfg.data.batch_size)
    rank, world = distributed.rank(), distributed.world_size()
    if isinstance(data, TextData):
        n = len(data.train_tokens)
        batches = TextBatches(
            data.train_tokens, batch, cfg.data.block_size, device=device, seed=cfg.train.seed,
            rank=rank, world_size=world, tokens_per_epoch=cfg.data.limit_train,
        )  # fmt: skip
    elif isinstance(data, FolderData):
        n = len(data.train_indices)
        sampler = DistributedSampler(
            range(n), num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed,
            drop_last=True,
        )  # fmt: skip
        batches: Batches = LoaderBatches(
            SeededSamples(data.train, data.train_indices, cfg.train.seed),
            EpochKeys(sampler),
            batch,
            drop_last=True,
            device=device,
            workers=cfg.data.workers,
            channels_last=cfg.model.channels_last,
            total_examples=n,
        )
    else:
        n = len(data.train_labels)
        batches = TensorBatches(
            data.train_images,
            data.train_labels,
            batch,
            shuffle=True,
            drop_last=True,
            augment=cfg.data.augment,
            mean=data.mean,
            std=data.std,
            device=device,
            seed=cfg.train.seed,
            rank=rank,
            world_size=world,
            channels_last=cfg.model.channels_last,
        )
    if len(batches) == 0:
        raise UsageError(
            f"data.batch_size ({cfg.data.batch_size}) is larger than the training set "
            f"({n} images): no full batch per epoch"
        )
    return batches


def eval_batches(config: Config, data: Data, split: str, device: torch.device) -> Batches | None:
    """This rank's shard of evaluation split ``split`` ("val" or "test"), or None if it is empty.

    An image folder has one evaluation split, ``val/``: it is "val", and "test" is None (ImageNet's
    labelled test set is not public; the literature's ImageNet accuracy is on ``val/``).
    """
    cfg = config
    batch = max(1, math.ceil(cfg.data.eval_batch_size / distributed.world_size()))
    if isinstance(data, TextData):  # the held-out end of the text: validation, then test
        tokens = data.val_tokens if split == "val" else data.test_tokens
        if len(tokens) <= cfg.data.block_size + 1:
            return None
        return TextEval(
            tokens, batch, cfg.data.block_size, device=device,
            rank=distributed.rank(), world_size=distributed.world_size(),
        )  # fmt: skip
    if isinstance(data, FolderData):
        if split != "val" or not data.val_indices:
            return None
        start, stop = distributed.shard_range(len(data.val_indices))
        return LoaderBatches(
            SeededSamples(data.val, data.val_indices, cfg.train.seed),
            EpochKeys(range(start, stop)),
            batch,
            drop_last=False,
            device=device,
            workers=cfg.data.workers,
            channels_last=cfg.model.channels_last,
            total_examples=len(data.val_indices),
        )
    images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
    if len(labels) == 0:
        return None
    return EvalShard(
        images,
        labels,
        batch,
        shuffle=False,
        drop_last=False,
        augment=False,
        mean=data.mean,
        std=data.std,
        device=device,
        channels_last=cfg.model.channels_last,
    )


def split_size(batches: Any) -> int:
    """Number of examples in an evaluation split, over all ranks."""
    total = getattr(batches, "total_examples", None)
    return int(total) if total is not None else len(batches.labels)
