"""Checkpoints: atomic writes, checksums, fallback to the previous good file."""

import os

import pytest
import torch

from rewa.train import checkpoint
from rewa.train.checkpoint import CheckpointError


def payload(value: float) -> dict:
    return {"epoch": int(value), "model": {"w": torch.full((4, 4), value)}, "rng": (3, (1, 2))}


def test_round_trip(tmp_path):
    checkpoint.save(tmp_path, payload(1.0))
    loaded = checkpoint.load(tmp_path / checkpoint.LATEST)
    assert loaded["epoch"] == 1
    assert torch.equal(loaded["model"]["w"], torch.ones(4, 4))


def test_save_keeps_the_previous_checkpoint(tmp_path):
    checkpoint.save(tmp_path, payload(1.0))
    checkpoint.save(tmp_path, payload(2.0))
    assert checkpoint.load(tmp_path / checkpoint.LATEST)["epoch"] == 2
    assert checkpoint.load(tmp_path / checkpoint.PREVIOUS)["epoch"] == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "header", "empty"])
def test_damaged_file_is_a_clear_error(tmp_path, damage):
    path = checkpoint.save(tmp_path, payload(1.0))
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        i = len(data) - 100
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
    elif damage == "header":
        data = b"PK" + data[2:]
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt") as err:
        checkpoint.load(path)
    assert any(w in str(err.value) for w in ("corrupt or truncated", "not a rewa checkpoint"))


def test_fallback_to_previous_good(tmp_path):
    checkpoint.save(tmp_path, payload(1.0))
    latest = checkpoint.save(tmp_path, payload(2.0))
    latest.write_bytes(latest.read_bytes()[:-10])
    loaded = checkpoint.load_latest_good(tmp_path)
    assert loaded.path.name == checkpoint.PREVIOUS
    assert loaded.payload["epoch"] == 1
    assert len(loaded.problems) == 1 and "corrupt or truncated" in loaded.problems[0]


def test_no_usable_checkpoint(tmp_path):
    assert checkpoint.load_latest_good(tmp_path) is None
    checkpoint.save(tmp_path, payload(1.0)).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        checkpoint.load_latest_good(tmp_path)


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    checkpoint.atomic_write_bytes(target, b"old")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_quarantine(tmp_path):
    path = checkpoint.save(tmp_path, payload(1.0))
    moved = checkpoint.quarantine(path)
    assert not path.exists() and moved.name == "checkpoint.pt.corrupt"


def test_payload_is_loaded_without_unpickling_code(tmp_path):
    # weights_only loading: a checkpoint cannot run code, even with a valid checksum
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / checkpoint.LATEST
    path.write_bytes(checkpoint.encode({"x": Evil()}))
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        checkpoint.load(path)
