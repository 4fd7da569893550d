"""What both callbacks do: measure, steer, and say what they did."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer

from rewa.control import TargetSparsity, for_optimizer
from rewa.sparsity import sparsity_report


class SparsityLoop:
    """Sparsity logging and (with ``target``) target-sparsity control for one training run."""

    def __init__(
        self,
        target: float | None,
        *,
        threshold: float = 1e-3,
        every: int = 10,
        **controller_options: Any,
    ) -> None:
        if target is not None and not 0.0 < target < 1.0:
            raise ValueError(f"target sparsity must be in (0, 1), got {target!r}")
        self.target = target
        self.threshold = threshold
        self.every = every
        self.options = controller_options
        self.control: TargetSparsity | None = None
        self._pending_state: dict[str, Any] | None = None

    def start(self, optimizer: Optimizer | None, model: nn.Module) -> None:
        if self.target is None:
            return
        if optimizer is None:
            raise ValueError("target sparsity needs the optimizer (none was given to the loop)")
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate / Lightning wrappers
        self.control = for_optimizer(
            inner, model, self.target, threshold=self.threshold, every=self.every, **self.options
        )
        if self._pending_state is not None:
            self.control.load_state_dict(self._pending_state)
            self._pending_state = None

    def after_step(self, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (from 0) of ``total_steps``."""
        if self.control is not None:
            self.control.after_step(step, total_steps)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        report = sparsity_report(model, (self.threshold,))
        out = {
            "sparsity_exact": report.sparsity,
            f"sparsity_below_{self.threshold:g}": report.fraction_below(self.threshold),
        }
        if self.control is not None:
            out.update(self.control.metrics())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {} if self.control is None else {"control": self.control.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        control = state.get("control")
        if control is None:
            return
        if self.control is None:
            self._pending_state = control  # applied when the run starts
        else:
            self.control.load_state_dict(control)
