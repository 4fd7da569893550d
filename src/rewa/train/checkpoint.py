"""Crash-safe checkpoints: atomic writes, a sha256 checksum, and a previous good copy.

File format: one line ``REWA-CHECKPOINT 1 <sha256 hex of payload>\\n`` followed by the payload
(``torch.save`` bytes). A checkpoint is written to a temporary file in the same directory, fsynced
and renamed over the target (``os.replace`` is atomic on POSIX), so a reader sees either the old
or the new file, never a partial one. Before that, the current checkpoint is renamed to
``<name>.prev`` so that one good older copy always survives a crash or a corrupt newest file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewa.errors import UsageError

MAGIC = b"REWA-CHECKPOINT 1 "
LATEST = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


class CheckpointError(UsageError):
    """A checkpoint file is missing, truncated, corrupt or not a rewa checkpoint."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def encode(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    return MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def decode(data: bytes, where: str) -> dict[str, Any]:
    """The payload of checkpoint bytes, after checking the header and the checksum."""
    header, sep, body = data.partition(b"\n")
    if not header.startswith(MAGIC) or not sep:
        raise CheckpointError(f"{where} is not a rewa checkpoint (bad or missing header)")
    expected = header[len(MAGIC) :].decode(errors="replace")
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"{where} is corrupt or truncated ({len(data)} bytes; checksum mismatch)"
        )
    try:
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as err:  # a valid checksum over an unreadable payload
        raise CheckpointError(f"{where} has a valid checksum but cannot be loaded: {err}") from err


def save(directory: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as the latest checkpoint in ``directory``; keep the previous one."""
    directory = Path(directory)
    data = encode(payload)
    latest = directory / LATEST
    if latest.exists():
        os.replace(latest, directory / PREVIOUS)
    atomic_write_bytes(latest, data)
    return latest


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror}") from None
    return decode(data, str(path))


@dataclass
class Loaded:
    payload: dict[str, Any]
    path: Path
    problems: list[str]  # why newer candidates were rejected (empty when the newest was good)


def candidates(directory: str | Path) -> Iterable[Path]:
    directory = Path(directory)
    return [p for p in (directory / LATEST, directory / PREVIOUS) if p.exists()]


def quarantine(path: str | Path) -> Path:
    """Move a bad checkpoint aside (``<name>.corrupt``) so that it never replaces a good one."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    os.replace(path, target)
    return target


def load_latest_good(
    directory: str | Path, fits: Callable[[dict[str, Any]], None] | None = None
) -> Loaded | None:
    """The newest checkpoint in ``directory`` that passes its checksum (and ``fits``, which
    raises :class:`CheckpointError` for a payload that does not fit the run: another model's
    checkpoint with a valid checksum), or None if there is none.

    Raises :class:`CheckpointError` when checkpoints exist but none of them is usable.
    """
    problems = []
    found = list(candidates(directory))
    for path in found:
        try:
            payload = load(path)
            if fits is not None:
                fits(payload)
            return Loaded(payload, path, problems)
        except CheckpointError as err:
            problems.append(f"{path.name}: {err}" if path.name not in str(err) else str(err))
    if problems:
        raise CheckpointError(
            "no usable checkpoint: " + "; ".join(problems) + " (use --force to start over)"
        )
    return None
