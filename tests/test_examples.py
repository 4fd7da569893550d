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


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_transformers_callback_steers_gpt2_and_llama_to_the_target(model):
    """rewa.integrations.transformers.SparsityCallback: ReWA-AdamW on a GPT-2 / Llama built
    from a small config ends at the requested sparsity, and the log carries it."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    result = load("transformers_target_sparsity").main(model, target=0.8, quiet=True)
    assert result["below_1e-3"] == pytest.approx(0.8, abs=0.03)
    assert result["logged"] > 0
    assert result["last_loss"] < result["first_loss"]


def test_lightning_callback_steers_to_the_target_and_keeps_its_state():
    pytest.importorskip("pytorch_lightning")
    result = load("lightning_rewa").main(quiet=True, target=0.95)
    assert result["below_1e-3"] == pytest.approx(0.95, abs=0.02)
    assert "control" in result["callback_state"]
