"""The integration examples in examples/ (PyTorch Lightning, the transformers Trainer) run and
reach sparsity; skipped where those packages are missing (pip install -e '.[integrations]')."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def test_lightning_configure_optimizers_and_closure_step():
    pytest.importorskip("pytorch_lightning")
    result = load("lightning_rewa").main(quiet=True)
    assert result["loss"] < 0.2
    assert result["below_1e-3"] > 0.8


def test_transformers_trainer_with_rewa_and_a_scheduler():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    result = load("transformers_rewa").main(quiet=True)
    assert result["train_accuracy"] > 0.9
    assert result["below_1e-3"] > 0.8
