"""Train a run end to end: the training loop, then the final evaluation of the last epoch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rewa.train import distributed
from rewa.train.config import Config
from rewa.train.final import evaluate_run, final_evaluation
from rewa.train.trainer import Trainer, eval_batches


def train(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    echo: Callable[[str], None] = print,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``config`` in ``run_dir`` (see :class:`Trainer`) and evaluate the last epoch.

    Returns ``{"record": last epoch record, "eval": evaluation or None}``.
    """
    result: dict[str, Any] = {"eval": None}

    def finish(trainer: Trainer) -> None:
        folded = trainer.method.fold()  # training is over: fold reparameterizations in place
        splits = {"val": trainer.val_batches}
        if config.eval.test:
            splits["test"] = eval_batches(config, trainer.data, "test", trainer.device)
        result["eval"] = final_evaluation(
            trainer.root,
            config,
            folded,
            splits,
            epoch=trainer.epoch,
            device=trainer.device,
            echo=trainer.echo,
            progress=trainer.progress and trainer.main,
        )

    # under torchrun: join the process group (gloo on CPU, NCCL on CUDA) for this run
    with distributed.process_group(config.train.device):
        trainer = Trainer(config, run_dir, echo=echo, progress=progress)
        result["record"] = trainer.run(resume=resume, force=force, on_finish=finish)
    return result


__all__ = ["evaluate_run", "train"]
