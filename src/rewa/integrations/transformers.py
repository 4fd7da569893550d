"""A transformers ``TrainerCallback`` that logs sparsity and steers ReWA to a target sparsity.

    from rewa.integrations.transformers import SparsityCallback

    optimizer = rewa.ReWA(rewa.param_groups(model, weight_decay=0.1), lr=2e-3, base="adamw")
    trainer = Trainer(model, args, optimizers=(optimizer, scheduler),
                      callbacks=[SparsityCallback(target=0.9)])

After every optimizer step the controller of ``rewa train --target-sparsity``
(:func:`rewa.control.for_optimizer`) scales the ReWA group's weight decay so that training ends
with ``target`` of the sparsified weights at ``|x| <= threshold``; without a target the callback
only measures. Each logging step's entry of ``trainer.state.log_history`` gets the measured
sparsity and the controller's state (``sparsity_exact``, ``sparsity_below_0.001``,
``control_*``). The controller's own state is not saved in the Trainer's checkpoints: a resumed run
restarts it from the decay the optimizer holds.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from rewa.integrations._common import SparsityLoop


class SparsityCallback(TrainerCallback):
    """Sparsity logging and target-sparsity control in the transformers ``Trainer``.

    Args:
        target: the sparsity to end at (fraction of the sparsified weights at ``|x| <=
            threshold``), or None to measure only.
        threshold: τ of the measurement.
        every: optimizer steps between two controller updates.
        controller_options: gains and limits of :class:`rewa.control.SparsityController`.
    """

    def __init__(
        self,
        target: float | None = None,
        *,
        threshold: float = 1e-3,
        every: int = 10,
        **controller_options: Any,
    ) -> None:
        self.loop = SparsityLoop(target, threshold=threshold, every=every, **controller_options)
        self.model = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.model = model
        self.loop.start(optimizer, model)

    def on_step_end(self, args, state, control, **kwargs):
        self.loop.after_step(state.global_step - 1, state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.model is not None and state.log_history:
            state.log_history[-1].update(self.loop.metrics(self.model))
