"""The run directory: what a run writes, and the rules that protect an existing run.

A run directory holds ``config.yaml`` (the resolved config), ``run.json`` (provenance of each
session), ``metrics.jsonl``, ``checkpoint.pt`` / ``checkpoint.prev.pt`` and the evaluation
(``eval.json``, ``eval.md``, PNGs). A directory that holds a run is never overwritten without
``force``; resuming requires the same config (up to keys that do not change what is trained).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from rewa.errors import UsageError
from rewa.train import checkpoint
from rewa.train.config import Config, config_from_dict, flatten, run_differences

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RUN_INFO = "run.json"
EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
LOCK = ".lock"
TENSORBOARD = "tensorboard"
# Files a run writes; --force removes exactly these (never anything else in the directory).
OWNED = (
    CONFIG,
    METRICS,
    RUN_INFO,
    EVAL_JSON,
    EVAL_MD,
    checkpoint.LATEST,
    checkpoint.PREVIOUS,
    checkpoint.LATEST + ".corrupt",
    checkpoint.PREVIOUS + ".corrupt",
    "accuracy_sparsity.png",
    "layer_sparsity.png",
    "weight_histogram.png",
    "training_curves.png",
)


def default_run_dir(config: Config, config_path: str | Path | None) -> Path:
    name = config.output.name or (Path(config_path).stem if config_path else "run")
    return Path(config.output.runs_root) / name


def holds_run(root: Path) -> bool:
    return any((root / name).exists() for name in (CONFIG, METRICS, checkpoint.LATEST))


def stored_config(root: Path) -> dict[str, Any] | None:
    path = root / CONFIG
    if not path.exists():
        return None
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return values if isinstance(values, dict) else None


def _describe_differences(old: dict[str, Any], new: dict[str, Any], keys: list[str]) -> str:
    fo, fn = flatten(old), flatten(new)
    shown = [f"{k}: {fo.get(k)!r} -> {fn.get(k)!r}" for k in keys[:4]]
    more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
    return "; ".join(shown) + more


def clear(root: Path) -> None:
    """Remove the files a run wrote (and only those)."""
    for name in OWNED:
        (root / name).unlink(missing_ok=True)
    if (root / TENSORBOARD).is_dir():
        shutil.rmtree(root / TENSORBOARD)


def prepare(root: Path, config: Config, *, resume: bool, force: bool) -> bool:
    """Check ``root`` against the run about to start; returns True if it should be resumed.

    - ``force``: start over (the files of a previous run are removed).
    - ``resume``: continue the run in ``root`` if there is one; its config must match.
    - neither: ``root`` must be new or empty.
    """
    if resume and force:
        raise UsageError("--resume and --force contradict each other; pick one")
    if root.exists() and not root.is_dir():
        raise UsageError(f"run dir {root} exists and is not a directory")
    if force:
        if root.exists():
            clear(root)
        return False
    if not root.exists() or not any(p.name != LOCK for p in root.iterdir()):
        return False
    if not holds_run(root):
        raise UsageError(
            f"run dir {root} is not empty and holds no rewa run; pick a new directory "
            "(--run-dir) or pass --force"
        )
    old = stored_config(root)
    if old is not None:
        with contextlib.suppress(UsageError):  # keys added to Config since compare as defaults
            old = config_from_dict(old).to_dict()
    new = config.to_dict()
    diff = run_differences(old, new) if old is not None else ["config.yaml (missing)"]
    if diff:
        detail = _describe_differences(old or {}, new, diff)
        raise UsageError(
            f"run dir {root} holds a different run ({detail}); pick another --run-dir, or pass "
            "--force to overwrite it"
        )
    if not resume:
        raise UsageError(
            f"run dir {root} already holds this run; pass --resume to continue it or --force "
            "to start over"
        )
    return True


@dataclass
class RunLock:
    """An exclusive lock on a run directory (released when the process dies, even by SIGKILL)."""

    handle: IO[str]

    @classmethod
    def acquire(cls, root: Path) -> RunLock:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / LOCK, "a")  # noqa: SIM115 - held for the run's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UsageError(f"run dir {root} is in use by another rewa process") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        return cls(handle)

    def release(self) -> None:
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        self.handle.close()


def remove_if_only_lock(root: Path) -> None:
    """Remove ``root`` if it holds nothing but a released lock file."""
    if root.is_dir() and [p.name for p in root.iterdir()] == [LOCK]:
        (root / LOCK).unlink()
        root.rmdir()


class MetricsLog:
    """Append-only JSON lines; on resume, records after the checkpoint's step are dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        checkpoint.atomic_write_bytes(self.path, text.encode())

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics file; a partial last line (a crash mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
