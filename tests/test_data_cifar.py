"""CIFAR loader: real file format, validation split, corrupt files, download with MD5 check."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rewa.data.cifar import (
    CIFAR_MD5,
    CIFAR_URLS,
    channel_stats,
    load_cifar,
    split_indices,
    write_fake_cifar,
)
from rewa.errors import UsageError


@pytest.fixture(scope="module")
def fake10(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("c10"), n_train=300, n_test=100, seed=1)


def test_published_urls_and_md5():
    assert CIFAR_URLS["cifar10"].endswith("/cifar-10-python.tar.gz")
    assert CIFAR_MD5["cifar10"] == "c58f30108f718f92721af3b95e74349a"
    assert CIFAR_MD5["cifar100"] == "eb9058c3a382ffc7106e4002c42a8d85"


def test_loads_fake_cifar10(fake10):
    data = load_cifar("cifar10", fake10, download=False, val_size=50, seed=0)
    assert data.train_images.shape == (250, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.val_images.shape == (50, 3, 32, 32)
    assert data.test_images.shape == (100, 3, 32, 32)
    assert data.train_labels.dtype == torch.int64 and data.train_labels.shape == (250,)
    assert data.num_classes == 10 and data.classes[3] == "class_3"
    assert all(0 < m < 1 for m in data.mean) and all(0 < s < 1 for s in data.std)


def test_pixel_layout_is_rgb_planes(tmp_path):
    """b"data" rows hold 1024 R, then 1024 G, then 1024 B values, each row-major."""
    write_fake_cifar(tmp_path, n_train=5, n_test=2)
    row = np.arange(3072) % 251
    content = {b"data": np.stack([row] * 2).astype(np.uint8), b"labels": [0, 1]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(content, protocol=2))
    image = load_cifar("cifar10", tmp_path, download=False, val_size=0).test_images[0]
    assert image[0, 0, 5] == 5 and image[0, 1, 0] == 32 and image[1, 0, 0] == 1024 % 251
    assert image[2, 31, 31] == 3071 % 251


def test_cifar100_and_nested_folder(tmp_path):
    write_fake_cifar(
        tmp_path / "cifar-100-python", n_train=40, n_test=10, num_classes=100, name="cifar100"
    )
    data = load_cifar("cifar100", tmp_path, download=False, val_size=10)
    assert data.num_classes == 100 and len(data.train_labels) == 30 and len(data.test_labels) == 10


def test_val_split_sizes_disjoint_and_seeded(fake10):
    a = load_cifar("cifar10", fake10, download=False, val_size=60, seed=3)
    b = load_cifar("cifar10", fake10, download=False, val_size=60, seed=3)
    c = load_cifar("cifar10", fake10, download=False, val_size=60, seed=4)
    assert torch.equal(a.val_images, b.val_images) and torch.equal(a.train_labels, b.train_labels)
    assert not torch.equal(a.val_images, c.val_images)
    train, val = split_indices(300, 60, 3)
    assert len(train) == 240 and len(val) == 60
    assert sorted(torch.cat([train, val]).tolist()) == list(range(300))
    none = load_cifar("cifar10", fake10, download=False, val_size=0)
    assert none.val_images.shape == (0, 3, 32, 32) and len(none.train_labels) == 300
    with pytest.raises(UsageError, match="val_size"):
        load_cifar("cifar10", fake10, download=False, val_size=300)


def test_channel_stats_exact():
    images = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8)
    mean, std = channel_stats(images)
    x = images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert np.allclose(mean, x.mean(1).numpy(), atol=1e-12, rtol=0)
    assert np.allclose(std, x.std(1, unbiased=False).numpy(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "code"])
def test_corrupt_file_names_the_file(tmp_path, damage):
    write_fake_cifar(tmp_path, n_train=20, n_test=10)
    target = tmp_path / "data_batch_3"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:500])
    elif damage == "garbage":
        target.write_bytes(b"\x00not a pickle" * 10)
    elif damage == "wrong_shape":
        target.write_bytes(
            pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4})
        )
    else:  # a pickle that would run code must be refused, not executed
        target.write_bytes(pickle.dumps(Path("x")))
    with pytest.raises(UsageError, match=r"data_batch_3.*(delete|re-download)"):
        load_cifar("cifar10", tmp_path, download=False)


def test_missing_without_download(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_cifar("cifar10", tmp_path, download=False)
    with pytest.raises(UsageError, match="unknown CIFAR"):
        load_cifar("cifar11", tmp_path)


def _archive(tmp_path: Path) -> tuple[Path, str]:
    write_fake_cifar(tmp_path / "src" / "cifar-10-batches-py", n_train=30, n_test=10)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_file_url_with_md5(tmp_path):
    archive, md5 = _archive(tmp_path)
    data_dir = tmp_path / "data"
    data = load_cifar("cifar10", data_dir, url=archive.as_uri(), md5=md5, val_size=5)
    assert len(data.train_labels) == 25 and (data_dir / "cifar-10-batches-py").is_dir()
    # A second call finds the extracted files (no download; the URL no longer exists).
    archive.unlink()
    assert len(load_cifar("cifar10", data_dir, url=archive.as_uri(), val_size=5).test_labels) == 10


def test_download_bad_md5_is_rejected_and_deleted(tmp_path):
    archive, _ = _archive(tmp_path)
    data_dir = tmp_path / "data"
    with pytest.raises(UsageError, match="wrong MD5"):
        load_cifar("cifar10", data_dir, url=archive.as_uri(), md5="0" * 32)
    assert not any(data_dir.iterdir())


def test_default_md5_is_checked(tmp_path, monkeypatch):
    archive, md5 = _archive(tmp_path)
    with pytest.raises(UsageError, match="MD5"):
        load_cifar("cifar10", tmp_path / "a", url=archive.as_uri())
    monkeypatch.setitem(CIFAR_MD5, "cifar10", md5)
    monkeypatch.setitem(CIFAR_URLS, "cifar10", archive.as_uri())
    assert len(load_cifar("cifar10", tmp_path / "b", val_size=5).test_labels) == 10


def test_truncated_archive_in_data_dir(tmp_path):
    archive, md5 = _archive(tmp_path)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / archive.name).write_bytes(archive.read_bytes()[:300])
    with pytest.raises(UsageError, match=r"cifar-10-python.tar.gz.*delete it"):
        load_cifar("cifar10", data_dir, url=archive.as_uri(), md5=md5)


def test_unreachable_url(tmp_path):
    with pytest.raises(UsageError, match="could not download"):
        load_cifar("cifar10", tmp_path, url=(tmp_path / "nowhere.tar.gz").as_uri(), md5="0" * 32)


def test_unsafe_archive_refused(tmp_path):
    evil = tmp_path / "cifar-10-python.tar.gz"
    (tmp_path / "payload").write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tmp_path / "payload", arcname="../escaped")
    md5 = hashlib.md5(evil.read_bytes()).hexdigest()
    with pytest.raises(UsageError, match="unsafe"):
        load_cifar("cifar10", tmp_path / "data", url=evil.as_uri(), md5=md5)
    assert not (tmp_path / "escaped").exists()


def test_fake_data_is_learnable_signal(fake10):
    """Class means differ far more than the noise: a nearest-class-mean rule beats chance."""
    data = load_cifar("cifar10", fake10, download=False, val_size=0)
    x = data.train_images.float().mean(dim=(2, 3))
    means = torch.stack([x[data.train_labels == c].mean(0) for c in range(10)])
    xt = data.test_images.float().mean(dim=(2, 3))
    pred = torch.cdist(xt, means).argmin(1)
    assert (pred == data.test_labels).float().mean() > 0.5


def test_jpeg_transport_round_trip_keeps_labels_splits_and_pixels_close(tmp_path):
    """pack/unpack (the way CIFAR travels to a lent GPU machine): the unpacked folder loads like
    the original, with the same labels and class names, and pixels within the recorded JPEG
    error."""
    from rewa.data.transport import main as transport

    source = write_fake_cifar(tmp_path / "src", n_train=50, n_test=20)
    packed = tmp_path / "cifar.npz"
    assert transport(["pack", str(source), str(packed)]) == 0
    assert transport(["unpack", str(packed), str(tmp_path / "dst")]) == 0
    a = load_cifar("cifar10", source, download=False, val_size=10)
    b = load_cifar("cifar10", tmp_path / "dst", download=False, val_size=10)
    assert torch.equal(a.train_labels, b.train_labels) and torch.equal(a.test_labels, b.test_labels)
    assert a.classes == b.classes

    def pixels(d):
        return torch.cat([d.train_images, d.val_images, d.test_images]).float()

    error = float((pixels(a) - pixels(b)).abs().mean())
    with np.load(packed) as z:
        assert float(z["mean_abs_error"]) == pytest.approx(error, rel=1e-6)
    assert 0 < error < 20  # the fake images are noisy; CIFAR's own JPEG copy moves 0.15


def test_jpeg_transport_errors_are_one_line(tmp_path, capsys):
    from rewa.data.transport import main as transport

    assert transport(["pack", str(tmp_path / "missing"), str(tmp_path / "x.npz")]) == 2
    assert "missing" in capsys.readouterr().err
