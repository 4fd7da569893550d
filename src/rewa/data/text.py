"""Character-level text for language modelling (tiny Shakespeare), batched on the device.

``load_text(data_dir)`` reads ``data_dir/input.txt`` (downloaded and checked against its sha256
when absent and allowed), maps each distinct character to a token id (sorted, so the vocabulary
is a pure function of the text), and splits the sequence into contiguous, fixed parts: the first
``1 - val_fraction - test_fraction`` for training, then validation, then (if ``test_fraction``)
a test split.

:class:`TextBatches` draws training windows: batch ``k`` of epoch ``e`` holds
``batch_size`` windows of ``block_size + 1`` tokens at start positions drawn from a generator
seeded by (seed, e); inputs are the first ``block_size`` tokens, targets the last (next-token
prediction). An epoch has as many batches as the training text holds disjoint batches, so one
epoch sees about as many tokens as the text has (fewer with ``tokens_per_epoch``, e.g. a short
fine-tuning). :class:`TextEval` covers the validation text
with disjoint windows, each token predicted exactly once (but the first of each window).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from rewa.data.batches import epoch_generator
from rewa.data.cifar import _download
from rewa.errors import UsageError

TEXTS = {
    "tinyshakespeare": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}
FILE = "input.txt"


@dataclass
class TextData:
    """A tokenized text: ``train_tokens``, ``val_tokens`` and ``test_tokens`` (int64; the test
    split may be empty), the vocabulary."""

    train_tokens: Tensor
    val_tokens: Tensor
    vocab: list[str]
    name: str = "tinyshakespeare"
    test_tokens: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    @property
    def num_classes(self) -> int:
        return len(self.vocab)

    def decode(self, tokens) -> str:
        return "".join(self.vocab[int(t)] for t in tokens)

    def encode(self, text: str) -> Tensor:
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise UsageError(f"characters {unknown[:5]} are not in the vocabulary")
        return torch.tensor([index[c] for c in text], dtype=torch.int64)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_text(
    data_dir: str | Path,
    *,
    name: str = "tinyshakespeare",
    download: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
) -> TextData:
    """The text in ``data_dir/input.txt``, tokenized by character and split (train | val |
    test, contiguous)."""
    if not (val_fraction > 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise UsageError(
            f"data.val_fraction ({val_fraction}) and data.test_fraction ({test_fraction}) must "
            "be positive and leave some text to train on (their sum < 1)"
        )
    path = Path(data_dir) / FILE
    if not path.is_file():
        if not download or name not in TEXTS:
            raise UsageError(f"{path} not found; pass the folder holding {FILE} as data.data_dir")
        url, sha = TEXTS[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        _download(url, path)
        if _sha256(path) != sha:
            path.unlink()
            raise UsageError(f"the file downloaded from {url} has the wrong sha256; deleted it")
    text = path.read_text(encoding="utf-8")
    if len(text) < 100:
        raise UsageError(f"{path} holds {len(text)} characters: too short to train on")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    tokens = torch.tensor([index[c] for c in text], dtype=torch.int64)
    cut = int(len(tokens) * (1.0 - val_fraction - test_fraction))
    test_cut = len(tokens) - int(len(tokens) * test_fraction)
    return TextData(tokens[:cut], tokens[cut:test_cut], vocab, name, tokens[test_cut:])


def _windows(tokens: Tensor, starts: Tensor, length: int) -> Tensor:
    return tokens[starts[:, None] + torch.arange(length + 1, device=tokens.device)]


class TextBatches:
    """Random training windows; this rank's share of each global batch (see module doc)."""

    def __init__(
        self,
        tokens: Tensor,
        batch_size: int,
        block_size: int,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        tokens_per_epoch: int = 0,
    ) -> None:
        if len(tokens) <= block_size + 1:
            raise UsageError(f"the text ({len(tokens)} tokens) is shorter than one window")
        self.tokens = tokens.to(device)
        self.batch_size, self.block_size = batch_size, block_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.tokens_per_epoch = tokens_per_epoch or len(tokens)  # 0: as many as the text has
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        per_batch = self.batch_size * self.world_size * self.block_size
        return max(1, min(len(self.tokens), self.tokens_per_epoch) // per_batch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = epoch_generator(self.seed, self.epoch)
        global_batch = self.batch_size * self.world_size
        starts = torch.randint(
            0, len(self.tokens) - self.block_size - 1, (len(self), global_batch), generator=gen
        ).to(self.tokens.device)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for row in starts:
            window = _windows(self.tokens, row[mine], self.block_size)
            yield window[:, :-1], window[:, 1:]


class TextEval:
    """Disjoint windows over an evaluation text, this rank's contiguous share of them."""

    def __init__(
        self,
        tokens: Tensor,
        batch_size: int,
        block_size: int,
        *,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        count = (len(tokens) - 1) // block_size
        self.total_examples = count * block_size  # predicted tokens, over all ranks
        per_rank = -(-count // world_size)
        first, last = rank * per_rank, min(count, (rank + 1) * per_rank)
        self.starts = torch.arange(first, last) * block_size
        self.tokens = tokens.to(device)
        self.batch_size, self.block_size = batch_size, block_size

    def set_epoch(self, epoch: int) -> None:
        del epoch

    def __len__(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        starts = self.starts.to(self.tokens.device)
        for i in range(0, len(starts), self.batch_size):
            window = _windows(self.tokens, starts[i : i + self.batch_size], self.block_size)
            yield window[:, :-1], window[:, 1:]
