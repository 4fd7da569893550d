"""A trained model on disk — a run directory, a trainer checkpoint or ``rewa prune``'s output —
read back as a plain model (reparameterizations folded): what ``rewa prune``/``rewa export``
start from, and the weights ``rewa train --init-from`` starts a new run from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewa.errors import UsageError
from rewa.models import build_model
from rewa.sparsity import unwrap

PRUNED = "pruned.pt"


@dataclass
class Source:
    """A trained model on disk: a trainer checkpoint (``kind="run"``) or ``rewa prune``'s output
    (``kind="pruned"``)."""

    path: Path
    kind: str
    payload: dict[str, Any]

    @property
    def config(self):
        from rewa.train.config import config_from_dict

        return config_from_dict(self.payload["config"])


def read_source(arg: str | Path, echo=print) -> Source:
    """Resolve RUN_DIR (newest good checkpoint), a prune output dir, or a checkpoint file."""
    from rewa.train import checkpoint
    from rewa.train.sparse_hooks import PRUNED_FORMAT

    path = Path(arg)
    if path.is_dir():
        if (path / PRUNED).is_file() and not (path / checkpoint.LATEST).exists():
            path = path / PRUNED
        else:
            loaded = checkpoint.load_latest_good(path)
            if loaded is None:
                raise UsageError(f"{path} holds no checkpoint (is it a run directory?)")
            for problem in loaded.problems:
                echo(f"WARNING: {problem}; using {loaded.path.name}")
            return Source(loaded.path, "run", loaded.payload)
    elif not path.exists():
        raise UsageError(f"{path} does not exist (give a run directory or a checkpoint file)")
    payload = checkpoint.load(path)
    kind = "pruned" if payload.get("kind") == PRUNED_FORMAT else "run"
    if "config" not in payload or "model" not in payload:
        raise UsageError(f"{path} is not a rewa checkpoint (no config or model)")
    return Source(path, kind, payload)


def num_classes_of(config: Any, state: dict[str, torch.Tensor]) -> int:
    """Classes of the model: from the dataset name, else the last 2-d weight's output size."""
    known = {"cifar10": 10, "cifar100": 100}
    if config.data.dataset in known:
        return known[config.data.dataset]
    matrices = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not matrices:
        raise UsageError("cannot tell the number of classes of this model")
    return int(matrices[-1].shape[0])


def plain_model(source: Source, device: torch.device | None = None) -> nn.Module:
    """The source's model as a plain module (reparameterizations folded), in eval mode."""
    from rewa.train.trainer import build_model_and_method

    config = source.config
    device = device or torch.device("cpu")
    classes = num_classes_of(config, source.payload["model"])
    if source.kind == "pruned":  # already plain
        model = build_model(config.model.name, classes, **config.model.options).to(device)
        model.load_state_dict(source.payload["model"])
        return model.eval()
    model, method = build_model_and_method(config, classes, device)
    unwrap(model).load_state_dict(source.payload["model"])
    method.load_state_dict(source.payload.get("method", {}))
    return method.fold().eval()


def initial_weights(path: str | Path, model: nn.Module, echo=print) -> dict[str, Any]:
    """Load the plain weights of the run or checkpoint at ``path`` into ``model`` (same
    architecture; BatchNorm statistics included). Returns a description for run.json."""
    source = read_source(path, echo)
    state = plain_model(source).state_dict()
    target = unwrap(model)
    mine = target.state_dict()
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    shapes = [k for k in set(mine) & set(state) if mine[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        detail = (
            (missing and f"missing {missing[:3]}")
            or (unexpected and f"unexpected {unexpected[:3]}")
            or f"shapes of {sorted(shapes)[:3]} differ"
        )
        raise UsageError(
            f"--init-from {path}: its model ({source.config.model.name}) does not fit this "
            f"run's ({detail})"
        )
    target.load_state_dict(state)
    return {
        "path": str(source.path),
        "kind": source.kind,
        "epoch": source.payload.get("epoch"),
        "method": source.config.method.name,
    }
