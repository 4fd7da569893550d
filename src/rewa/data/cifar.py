"""CIFAR-10 and CIFAR-100 from the official "python version" files, held in memory as uint8.

The files are pickled dicts (``b"data"``: N×3072 uint8, 1024 R then 1024 G then 1024 B values per
image, row-major; ``b"labels"`` or ``b"fine_labels"``). When they are missing, the official
archive is downloaded, its published MD5 checked and the archive extracted.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from rewa.errors import UsageError

CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
CIFAR_MD5 = {
    "cifar10": "c58f30108f718f92721af3b95e74349a",
    "cifar100": "eb9058c3a382ffc7106e4002c42a8d85",
}


@dataclass(frozen=True)
class _Layout:
    folder: str  # the folder the official archive extracts to
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes


_LAYOUTS = {
    "cifar10": _Layout(
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": _Layout(
        folder="cifar-100-python",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}

IMAGE_SHAPE = (3, 32, 32)
_PIXELS = 3 * 32 * 32


@dataclass
class CifarData:
    """A CIFAR dataset in memory: images uint8 (N, 3, 32, 32), labels int64 (N,).

    ``mean`` and ``std`` are per-channel statistics of ``train_images`` (after the validation
    split was carved out), in [0, 1] units, for normalization.
    """

    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = "cifar10"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_cifar(
    name: str,
    data_dir: str | Path,
    *,
    download: bool = True,
    val_size: int = 5000,
    seed: int = 0,
    url: str | None = None,
    md5: str | None = None,
) -> CifarData:
    """Load CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``) from ``data_dir``.

    ``data_dir`` may hold the batch files itself or the folder the official archive extracts to
    (``cifar-10-batches-py`` / ``cifar-100-python``). If the files are absent and ``download`` is
    true, the archive is fetched from ``url`` (default: the official one), checked against ``md5``
    (default: the published one) and extracted into ``data_dir``. ``val_size`` training images,
    drawn with ``seed``, form the validation split (0: no validation split).
    """
    layout = _layout(name)
    data_dir = Path(data_dir)
    folder = _find_files(layout, data_dir)
    if folder is None:
        if not download:
            raise UsageError(
                f"{name} not found in {data_dir} (expected {layout.test_file}, "
                f"{layout.meta_file}, ... there or in {data_dir / layout.folder}); "
                "pass the right data directory or allow the download"
            )
        _download_and_extract(name, data_dir, url=url, md5=md5)
        folder = _find_files(layout, data_dir)
        if folder is None:
            raise UsageError(
                f"the archive for {name} did not contain the expected files "
                f"({layout.folder}/{layout.test_file}, ...); check the URL"
            )

    classes = [_decode(n) for n in _read_pickle(folder / layout.meta_file)[layout.names_key]]
    train = [_read_batch(folder / f, layout, len(classes)) for f in layout.train_files]
    train_images = torch.cat([images for images, _ in train])
    train_labels = torch.cat([labels for _, labels in train])
    test_images, test_labels = _read_batch(folder / layout.test_file, layout, len(classes))

    train_idx, val_idx = split_indices(len(train_labels), val_size, seed)
    mean, std = channel_stats(train_images[train_idx])
    return CifarData(
        train_images=train_images[train_idx],
        train_labels=train_labels[train_idx],
        val_images=train_images[val_idx],
        val_labels=train_labels[val_idx],
        test_images=test_images,
        test_labels=test_labels,
        classes=classes,
        mean=mean,
        std=std,
        name=name,
    )


def split_indices(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Sorted (train, validation) indices: ``val_size`` of ``range(n)`` drawn with ``seed``."""
    if not 0 <= val_size < n:
        raise UsageError(f"val_size must be in [0, {n - 1}] (the training set has {n} images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 images (N, C, H, W), in [0, 1] units."""
    if images.dtype != torch.uint8:
        raise ValueError(f"channel_stats expects uint8 images, got {images.dtype}")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        # A 256-bin histogram gives exact moments without a float copy of the dataset.
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = hist.sum()
        mean = (hist * values).sum() / total
        var = (hist * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)


# --- reading -------------------------------------------------------------------------------------


def _layout(name: str) -> _Layout:
    if name not in _LAYOUTS:
        raise UsageError(f"unknown CIFAR dataset {name!r}; choose one of {sorted(_LAYOUTS)}")
    return _LAYOUTS[name]


def _find_files(layout: _Layout, data_dir: Path) -> Path | None:
    for folder in (data_dir, data_dir / layout.folder):
        if (folder / layout.test_file).is_file() and (folder / layout.meta_file).is_file():
            return folder
    return None


# The only globals a CIFAR pickle refers to (numpy arrays); a downloaded file cannot run code.
_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, nothing else."""

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]  # numpy 2 renamed numpy.core
        return super().find_class(module, name)


def _corrupt(path: Path, why: str) -> UsageError:
    return UsageError(
        f"{path} is corrupt or truncated ({why}); delete it (and the rest of its folder) "
        "and run again to re-download, or copy a good version there"
    )


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            content = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except FileNotFoundError:
        raise UsageError(f"{path} is missing; the CIFAR folder is incomplete") from None
    except Exception as err:  # any unpickling failure means a damaged file
        raise _corrupt(path, f"{type(err).__name__}: {err}") from None
    if not isinstance(content, dict):
        raise _corrupt(path, f"expected a dict, found {type(content).__name__}")
    return content


def _read_batch(path: Path, layout: _Layout, num_classes: int) -> tuple[Tensor, Tensor]:
    content = _read_pickle(path)
    if b"data" not in content or layout.label_key not in content:
        raise _corrupt(path, f"keys {sorted(content)} lack b'data' or {layout.label_key!r}")
    data = np.asarray(content[b"data"])
    labels = np.asarray(content[layout.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise _corrupt(path, f"data is {data.dtype} {data.shape}, expected uint8 (N, {_PIXELS})")
    if labels.shape != (data.shape[0],):
        raise _corrupt(path, f"{labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and not (labels.min() >= 0 and labels.max() < num_classes):
        raise _corrupt(path, f"labels outside [0, {num_classes})")
    images = torch.from_numpy(data.reshape(-1, *IMAGE_SHAPE).copy())
    return images, torch.from_numpy(labels.copy())


def _decode(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


# --- downloading ---------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_and_extract(name: str, data_dir: Path, *, url: str | None, md5: str | None) -> None:
    url = url or CIFAR_URLS[name]
    md5 = md5 or CIFAR_MD5[name]
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / Path(urllib.request.url2pathname(url.rsplit("/", 1)[-1])).name
    if not archive.is_file():
        _download(url, archive)
        if _md5(archive) != md5:
            archive.unlink()
            raise UsageError(
                f"the file downloaded from {url} has the wrong MD5 (expected {md5}); it was "
                "deleted; run again, or download it yourself into the data directory"
            )
    elif _md5(archive) != md5:
        raise UsageError(
            f"{archive} is corrupt or incomplete (MD5 is not {md5}); delete it and run again"
        )
    _safe_extract(archive, data_dir)


def _download(url: str, target: Path) -> None:
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"download {target.name}"
            ) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as err:
        partial.unlink(missing_ok=True)
        raise UsageError(
            f"could not download {url} ({err}); check the network, or put the extracted "
            f"files into {target.parent} yourself"
        ) from None
    partial.replace(target)


def _safe_extract(archive: Path, into: Path) -> None:
    """Extract regular files and folders only, refusing paths that leave ``into``."""
    root = into.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                target = (root / member.name).resolve()
                if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
                    raise UsageError(f"{archive} holds an unsafe entry {member.name!r}; not used")
            for member in tar.getmembers():
                target = root / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise UsageError(
            f"{archive} could not be extracted ({err}); delete it and run again"
        ) from None


# --- fake files for tests ------------------------------------------------------------------------


def write_fake_cifar(
    directory: str | Path,
    *,
    n_train: int = 500,
    n_test: int = 200,
    num_classes: int = 10,
    seed: int = 0,
    name: str = "cifar10",
) -> Path:
    """Write a small dataset in the real CIFAR file format into ``directory`` (for tests).

    Each class has its own colour and stripe period, plus noise, so that a tiny model learns it
    above chance within a couple of epochs. Returns ``directory``.
    """
    layout = _layout(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(num_classes, 3, 1, 1))
    periods = 2 + np.arange(num_classes) % 6

    def images_for(labels: np.ndarray) -> np.ndarray:
        rows = np.arange(32)[None, None, :, None]
        stripes = 30.0 * np.sign(np.sin(np.pi * rows / periods[labels, None, None, None]))
        noise = rng.normal(0.0, 25.0, size=(len(labels), 3, 32, 32))
        pixels = colours[labels] + stripes + noise
        return np.clip(pixels, 0, 255).astype(np.uint8).reshape(len(labels), _PIXELS)

    def write(path: Path, labels: np.ndarray, batch_label: str) -> None:
        content = {
            b"batch_label": batch_label.encode(),
            layout.label_key: labels.tolist(),
            b"data": images_for(labels),
            b"filenames": [f"fake_{i}.png".encode() for i in range(len(labels))],
        }
        with open(path, "wb") as f:
            pickle.dump(content, f, protocol=2)

    train_labels = rng.integers(0, num_classes, size=n_train)
    for i, chunk in enumerate(np.array_split(train_labels, len(layout.train_files))):
        write(directory / layout.train_files[i], chunk, f"training batch {i + 1}")
    write(directory / layout.test_file, rng.integers(0, num_classes, size=n_test), "testing batch")
    meta = {layout.names_key: [f"class_{c}".encode() for c in range(num_classes)]}
    with open(directory / layout.meta_file, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return directory
