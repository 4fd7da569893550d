"""A PyTorch Lightning ``Callback`` that logs sparsity and steers ReWA to a target sparsity.

    from rewa.integrations.lightning import SparsityCallback

    trainer = pl.Trainer(max_epochs=10, callbacks=[SparsityCallback(target=0.9)])

The LightningModule's ``configure_optimizers`` returns a :class:`rewa.ReWA` built with
:func:`rewa.param_groups`. After every optimizer step the controller of ``rewa train
--target-sparsity`` (:func:`rewa.control.for_optimizer`) scales the ReWA group's weight decay so
that training ends with ``target`` of the sparsified weights at ``|x| <= threshold``; the
measured sparsity and the controller's state are logged with ``pl_module.log_dict`` every
``every`` steps. The controller's state is saved in Lightning's checkpoints and restored on
resume.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from rewa.integrations._common import SparsityLoop


class SparsityCallback(pl.Callback):
    """Sparsity logging and target-sparsity control in a Lightning ``Trainer`` (arguments as
    :class:`rewa.integrations.transformers.SparsityCallback`)."""

    def __init__(
        self,
        target: float | None = None,
        *,
        threshold: float = 1e-3,
        every: int = 10,
        **controller_options: Any,
    ) -> None:
        self.loop = SparsityLoop(target, threshold=threshold, every=every, **controller_options)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.loop.start(optimizer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1  # optimizer steps done, from 0
        self.loop.after_step(step, int(trainer.estimated_stepping_batches))
        if (step + 1) % self.loop.every == 0:
            pl_module.log_dict(self.loop.metrics(pl_module), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return self.loop.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loop.load_state_dict(state_dict)
