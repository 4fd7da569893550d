"""Training runs: typed config, trainer with crash-safe checkpoints, evaluation sweep.

``rewa train --config FILE`` / ``rewa eval RUN_DIR`` on the command line; in Python::

    from rewa.train import load_config, train
    train(load_config("configs/tiny.yaml", ["schedule.epochs=2"]), "runs/tiny")
"""

from rewa.train.config import Config, load_config
from rewa.train.pipeline import evaluate_run, train

__all__ = ["Config", "evaluate_run", "load_config", "train"]
