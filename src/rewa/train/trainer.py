"""The training loop: config -> run directory -> metrics, checkpoints, resume, final evaluation.

Every method goes through :func:`rewa.methods.build_method` (optimizer, penalty, after-step hook,
fold); the loop knows nothing about any particular method. Rank-0-only logging and checkpoints and
sharded batches make it ready for torchrun (see :mod:`rewa.train.distributed`).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rewa.control import caution
from rewa.errors import UsageError
from rewa.methods import SparseMethod, build_method
from rewa.models import build_model
from rewa.optim.rewa import ReWA, check_state_dict, trust_parameters
from rewa.provenance import provenance
from rewa.sparsity import sparsity_report, unwrap
from rewa.theory import lr_factor
from rewa.train import checkpoint, distributed, sparse_hooks
from rewa.train.config import Config, config_from_dict
from rewa.train.datasets import eval_batches, load_data, train_batches
from rewa.train.evaluation import autocast, evaluate, per_example, use_bf16
from rewa.train.rundir import (
    CONFIG,
    EVAL_JSON,
    METRICS,
    RUN_INFO,
    TENSORBOARD,
    MetricsLog,
    RunLock,
    prepare,
    remove_if_only_lock,
)
from rewa.train.source import initial_weights

FORMAT = 1
TRAIN_THRESHOLDS = (1e-6, 1e-4, 1e-3, 1e-2)  # sparsity logged every epoch


class NonFiniteError(UsageError):
    """The loss or a gradient was NaN/inf and ``train.skip_nonfinite`` is off."""


# ---------------------------------------------------------------- test-only fault injection


@dataclass
class Faults:
    """Failures injected by the reliability tests through environment variables.

    ``REWA_TEST_NONFINITE_STEPS=3,7``: the gradients of those global steps are made NaN.
    ``REWA_TEST_PAUSE_AT_STEP=N`` with ``REWA_TEST_PAUSE_FILE=path``: before step N the process
    creates ``path`` and sleeps, so that a test can kill it at a known point mid-epoch.
    """

    nonfinite_steps: frozenset[int] = frozenset()
    pause_at_step: int | None = None
    pause_file: str | None = None

    @classmethod
    def from_env(cls) -> Faults:
        steps = os.environ.get("REWA_TEST_NONFINITE_STEPS", "")
        pause = os.environ.get("REWA_TEST_PAUSE_AT_STEP")
        return cls(
            frozenset(int(s) for s in steps.split(",") if s.strip()),
            int(pause) if pause else None,
            os.environ.get("REWA_TEST_PAUSE_FILE"),
        )

    def before_step(self, step: int) -> None:
        if self.pause_at_step is not None and step == self.pause_at_step:
            if self.pause_file:
                Path(self.pause_file).write_text(str(os.getpid()))
            while True:  # wait to be killed
                time.sleep(1.0)


# ---------------------------------------------------------------- small helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The states of every random generator the loop may touch (checkpoint-safe types)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"train.device: unknown device {name!r} (use auto, cpu, cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device is cuda but no CUDA device is available")
    return device


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def build_model_and_method(
    config: Config,
    num_classes: int,
    device: torch.device,
    init: Callable[[nn.Module], Any] | None = None,
) -> tuple[nn.Module, SparseMethod]:
    """The config's model on ``device`` and its method; ``init(model)`` runs in between (the
    method may reparameterize the weights it finds)."""
    model = build_model(config.model.name, num_classes, **config.model.options).to(device)
    if init is not None:
        init(model)
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    m = config.method
    method = build_method(
        m.name, model, lr=m.lr, momentum=m.momentum, base=m.base, options=m.options
    )
    return model, method


def config_of(payload: dict[str, Any]) -> Config:
    return config_from_dict(payload["config"])


# ---------------------------------------------------------------- the trainer


class DeferredCheck:
    """The first step whose loss or a gradient was non-finite, kept on the device."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((1,), -1, dtype=torch.int64, device=device)

    def observe(self, flag: torch.Tensor, step: int) -> None:
        self.first = torch.where((self.first < 0) & (flag > 0), step, self.first)

    def first_bad(self) -> int | None:
        """The first bad step on any rank since training started, or None (a host sync)."""
        value = int(distributed.all_reduce_max(self.first.clone()).item())
        return value if value >= 0 else None


class Tally:
    """Loss and accuracy sums kept on the device (reading them is a host sync, so the loop
    reads them only at log steps and epoch ends)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.n = 0

    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        self.loss += loss
        self.correct += correct
        self.n += n

    def read(self) -> tuple[float, int, int]:
        """(loss sum, correct, count) over all ranks."""
        loss, correct, n = distributed.sum_over_ranks(float(self.loss), int(self.correct), self.n)
        return loss, int(correct), int(n)


@dataclass
class EpochStats:
    epoch: Tally
    window: Tally
    skipped: int = 0
    seconds: float = 0.0


class Trainer:
    """Train one run described by ``config`` in ``run_dir``.

    ``echo`` prints one-line messages (rank 0 only); the progress bar goes to stderr.
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        *,
        echo: Callable[[str], None] = print,
        progress: bool | None = None,
    ) -> None:
        self.config = config
        self.root = Path(run_dir)
        self.main = distributed.is_main()
        self._echo = echo
        self.progress = config.output.progress if progress is None else progress
        self.faults = Faults.from_env()
        self.step = 0
        self.epoch = 0  # completed epochs
        self.nonfinite_skipped = 0
        self.tensorboard = None
        self.deferred: DeferredCheck | None = None
        self.init_info: dict[str, Any] | None = None  # where the weights came from (init_from)

    def echo(self, text: str) -> None:
        if not self.main:
            return
        if self.progress:
            tqdm.write(text, file=sys.stderr)
        else:
            self._echo(text)

    # ------------------------------------------------------------ setup

    def setup(self, *, fresh: bool = True) -> None:
        """Build everything the run needs; ``fresh``: a new run (not resumed from a checkpoint),
        which starts from ``train.init_from``'s weights if set."""
        cfg = self.config
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = distributed.local_device(select_device(cfg.train.device))
        self.bf16 = use_bf16(cfg.model.bf16, self.device)
        if self.device.type == "cuda":  # fixed shapes: let cuDNN pick its fastest convolutions
            torch.backends.cudnn.benchmark = True
        self.deferred = DeferredCheck(self.device) if self.defer_host_syncs() else None
        seed_everything(cfg.train.seed)
        self.data = load_data(cfg)
        init = None
        if fresh and cfg.train.init_from:

            def init(model: nn.Module) -> None:
                self.init_info = initial_weights(cfg.train.init_from, model, self.echo)

        self.model, self.method = build_model_and_method(
            cfg, self.data.num_classes, self.device, init
        )
        self.forward_model = distributed.wrap_model(
            self.model, self.device, compile=cfg.model.compile
        )  # DDP on several processes; self.model stays the plain module
        self.train_batches = train_batches(cfg, self.data, self.device)
        self.steps_per_epoch = len(self.train_batches)
        self.total_steps = cfg.schedule.epochs * self.steps_per_epoch
        self.warmup_steps = round(cfg.schedule.warmup_epochs * self.steps_per_epoch)
        for group in self.method.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        trust_parameters(self.method.optimizer)  # this loop writes no parameter through .data
        self.hooks = sparse_hooks.build(cfg, self.model, self.method)  # target sparsity, masks
        if "control" in self.hooks and (warning := caution(self.method.name)):
            self.echo(f"WARNING: {warning}")
        self.val_batches = eval_batches(cfg, self.data, "val", self.device)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)

    def state(self, finished: bool) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "epoch": self.epoch,
            "step": self.step,
            "finished": finished,
            "config": self.config.to_dict(),
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.method.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "hooks": sparse_hooks.state_dict(self.hooks),
            "rng": rng_state(),
            "counters": {"nonfinite_skipped": self.nonfinite_skipped},
        }

    def fits(self, payload: dict[str, Any]) -> None:
        """Raise CheckpointError, in one line, if ``payload`` is not a checkpoint of this run's
        model and optimizer (a valid file of another run: a wider model, other groups)."""
        if payload.get("format") != FORMAT:
            found = payload.get("format")
            raise checkpoint.CheckpointError(f"unsupported checkpoint format {found}")
        ours, theirs = unwrap(self.model).state_dict(), payload.get("model", {})
        for name in sorted(ours.keys() | theirs.keys()):
            if name not in ours or name not in theirs:
                where = "the model" if name not in ours else "the checkpoint"
                raise checkpoint.CheckpointError(f"does not fit this run: {where} has no {name!r}")
            if tuple(theirs[name].shape) != tuple(ours[name].shape):
                raise checkpoint.CheckpointError(
                    f"does not fit this run: {name} has shape {tuple(theirs[name].shape)}, "
                    f"the model's {tuple(ours[name].shape)}"
                )
        if isinstance(self.method.optimizer, ReWA):
            try:
                check_state_dict(payload.get("optimizer", {}), self.method.optimizer.param_groups)
            except ValueError as err:
                raise checkpoint.CheckpointError(f"does not fit this run: {err}") from None

    def restore(self, payload: dict[str, Any]) -> None:
        if payload.get("format") != FORMAT:
            found = payload.get("format")
            raise checkpoint.CheckpointError(f"unsupported checkpoint format {found}")
        unwrap(self.model).load_state_dict(payload["model"])
        self.method.optimizer.load_state_dict(payload["optimizer"])
        self.method.load_state_dict(payload["method"])
        sparse_hooks.load_state_dict(self.hooks, payload.get("hooks", {}))
        set_rng_state(payload["rng"])
        self.epoch, self.step = int(payload["epoch"]), int(payload["step"])
        self.nonfinite_skipped = int(payload["counters"]["nonfinite_skipped"])

    def has_checkpoint(self) -> bool:
        return distributed.on_main(lambda: bool(checkpoint.candidates(self.root)))

    def resume_from_checkpoint(self) -> bool:
        """Load the newest good checkpoint; returns False when there is none."""
        # rank 0 reads the run directory (it need not be shared) and sends the state to all ranks
        loaded = distributed.on_main(lambda: checkpoint.load_latest_good(self.root, self.fits))
        if loaded is None:
            return False
        for problem in loaded.problems:
            self.echo(f"WARNING: {problem}; falling back to {loaded.path.name}")
        if loaded.problems and self.main:
            bad = self.root / checkpoint.LATEST
            if loaded.path.name != checkpoint.LATEST and bad.exists():
                checkpoint.quarantine(bad)
        self.restore(loaded.payload)
        if self.main:
            MetricsLog(self.root / METRICS).truncate_after(self.step)
        self.echo(f"resumed from {loaded.path} (epoch {self.epoch}, step {self.step})")
        return True

    def write_run_files(self, resumed: bool) -> None:
        if not self.main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if not resumed:
            checkpoint.atomic_write_bytes(self.root / CONFIG, self.config.to_yaml().encode())
        info_path = self.root / RUN_INFO
        info = json.loads(info_path.read_text()) if resumed and info_path.exists() else {}
        sessions = info.get("sessions", [])
        sessions.append(
            {
                **provenance(),
                "resumed_at_epoch": self.epoch if resumed else None,
                "device": str(self.device),
                "bf16": self.bf16,
                "init_from": self.init_info,
                "world_size": distributed.world_size(),
            }
        )
        info["sessions"] = sessions
        checkpoint.atomic_write_bytes(info_path, (json.dumps(info, indent=2) + "\n").encode())
        if self.config.output.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tensorboard = SummaryWriter(str(self.root / TENSORBOARD))

    # ------------------------------------------------------------ one step

    def set_lr(self) -> float:
        s = self.config.schedule
        factor = lr_factor(self.step, self.total_steps, self.warmup_steps, s.cosine)
        for group in self.method.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.method.optimizer.param_groups[0]["lr"]

    def nonfinite_flag(self, loss: torch.Tensor) -> torch.Tensor:
        """1.0 (on the device, not read) where the loss or a gradient is non-finite, else 0.0."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        worst = loss.detach().float().abs().reshape(1)
        if grads:
            norms = torch._foreach_norm(grads, float("inf"))
            worst = torch.cat([worst, torch.stack(norms).float()])
        return (~torch.isfinite(worst)).any().to(torch.float32).reshape(1)

    def nonfinite(self, loss: torch.Tensor) -> bool:
        """Whether this step's loss or a gradient is non-finite on any rank (a host sync)."""
        return bool(distributed.all_reduce_max(self.nonfinite_flag(loss)).item())

    def defer_host_syncs(self) -> bool:
        """Whether to check for non-finite steps only at log steps and epoch ends (on a GPU a
        per-step check stalls the pipeline). Skipping bad steps needs the per-step check."""
        return self.device.type == "cuda" and not self.config.train.skip_nonfinite

    def raise_if_nonfinite(self) -> None:
        """With deferred checks: stop if a step since the last check was non-finite. The check
        comes before any checkpoint is written, so the last good checkpoint stays intact."""
        if self.deferred is None:
            return
        bad_step = self.deferred.first_bad()
        if bad_step is None:
            return
        last = self.root / checkpoint.LATEST
        kept = f"the last good checkpoint {last} is intact" if last.exists() else "no checkpoint"
        epoch = bad_step // self.steps_per_epoch + 1
        raise NonFiniteError(
            f"non-finite loss or gradient at epoch {epoch}, step {bad_step} (found at step "
            f"{self.step}); training stopped ({kept}). Lower the learning rate, or set "
            "train.skip_nonfinite=true to skip such steps (counted in metrics.jsonl)"
        )

    def nonfinite_names(self, loss: torch.Tensor) -> str:
        names = [
            name
            for name, p in unwrap(self.model).named_parameters()
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        what = [] if torch.isfinite(loss).all() else ["loss"]
        if names:
            what.append("gradient of " + ", ".join(names[:3]) + (" ..." if len(names) > 3 else ""))
        return " and ".join(what) or "gradient"

    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor, stats: EpochStats) -> None:
        self.faults.before_step(self.step)
        self.set_lr()
        with autocast(self.device, self.bf16):
            logits = self.forward_model(inputs)
        logits, labels = per_example(logits, labels)  # a language model: one per token
        loss = self.criterion(logits.float(), labels)
        penalty = self.method.penalty()
        total = loss if penalty is None else loss + penalty
        self.method.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.step in self.faults.nonfinite_steps:
            next(p for p in self.model.parameters() if p.grad is not None).grad.fill_(math.nan)
        if self.deferred is not None:
            self.deferred.observe(self.nonfinite_flag(total), self.step)
        if self.deferred is None and self.nonfinite(total):
            self.handle_nonfinite(total)
            stats.skipped += 1
        else:
            self.method.optimizer.step()
            self.method.after_step(self.step, self.total_steps)
            sparse_hooks.after_step(self.hooks, self.step, self.total_steps)
        self.step += 1
        with torch.no_grad():
            n = labels.numel()
            correct = (logits.argmax(1) == labels).sum()
            value = loss.detach().double()
            loss_sum = torch.where(torch.isfinite(value), value, 0.0) * n
        stats.epoch.add(loss_sum, correct, n)
        stats.window.add(loss_sum, correct, n)

    def handle_nonfinite(self, loss: torch.Tensor) -> None:
        what = self.nonfinite_names(loss)
        where = f"epoch {self.epoch + 1}, step {self.step}"
        self.method.optimizer.zero_grad(set_to_none=True)
        if self.config.train.skip_nonfinite:
            self.nonfinite_skipped += 1
            self.echo(f"WARNING: non-finite {what} at {where}: step skipped")
            return
        last = self.root / checkpoint.LATEST
        kept = f"the last good checkpoint {last} is intact" if last.exists() else "no checkpoint"
        raise NonFiniteError(
            f"non-finite {what} at {where}; training stopped ({kept}). Lower the learning rate, "
            "or set train.skip_nonfinite=true to skip such steps (counted in metrics.jsonl)"
        )

    # ------------------------------------------------------------ epochs

    def run(
        self,
        *,
        resume: bool = False,
        force: bool = False,
        on_finish: Callable[[Trainer], None] | None = None,
    ) -> dict[str, Any]:
        """Train (or continue) the run, then call ``on_finish(self)`` (under the run's lock) if
        the run is complete and not yet evaluated; returns the last epoch record."""
        claimed: list[RunLock] = []
        fresh = not self.root.exists()

        def claim() -> bool:  # rank 0 alone checks and locks the run dir; all ranks get its answer
            decision = prepare(self.root, self.config, resume=resume, force=force)
            claimed.append(RunLock.acquire(self.root))
            return decision

        resume = distributed.on_main(claim)
        lock = claimed[0] if claimed else None
        threads = torch.get_num_threads()
        try:
            self.setup(fresh=not (resume and self.has_checkpoint()))
            resumed = resume and self.resume_from_checkpoint()
            self.write_run_files(resumed)
            evaluated = self.epoch >= self.config.schedule.epochs and distributed.on_main(
                lambda: (self.root / EVAL_JSON).exists()
            )
            record = self.fit()
            if on_finish is not None and not evaluated:
                on_finish(self)
        finally:
            torch.set_num_threads(threads)
            if self.tensorboard is not None:
                self.tensorboard.close()
            if lock is not None:
                lock.release()
                if fresh:  # a run that failed before writing anything leaves no directory
                    remove_if_only_lock(self.root)
        return record

    def fit(self) -> dict[str, Any]:
        cfg = self.config
        metrics = MetricsLog(self.root / METRICS)
        record: dict[str, Any] = {}
        session_start, session_steps = time.perf_counter(), 0
        if self.epoch >= cfg.schedule.epochs:
            self.echo(f"run already complete ({self.epoch} epochs)")
        while self.epoch < cfg.schedule.epochs:
            stats = self.train_epoch(session_start, session_steps)
            session_steps += self.steps_per_epoch
            self.epoch += 1
            record = self.epoch_record(stats)
            if self.main:
                metrics.append(record)
                self.log_tensorboard(record)
            finished = self.epoch == cfg.schedule.epochs
            if finished or self.epoch % cfg.output.checkpoint_every == 0:
                self.save_checkpoint(finished)
            self.echo(self.summary(record))
        return record

    def save_checkpoint(self, finished: bool) -> None:
        if self.main:
            checkpoint.save(self.root, self.state(finished))
        distributed.barrier()

    def train_epoch(self, session_start: float, session_steps: int) -> EpochStats:
        cfg = self.config
        self.model.train()
        self.train_batches.set_epoch(self.epoch)
        stats = EpochStats(Tally(self.device), Tally(self.device))
        bar = tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {self.epoch + 1}/{cfg.schedule.epochs}",
            unit="step",
            disable=not (self.progress and self.main),
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            dynamic_ncols=True,
            leave=False,
        )
        start = time.perf_counter()
        for i, (inputs, labels) in enumerate(self.train_batches):
            self.train_step(inputs, labels, stats)
            bar.update(1)
            last = i + 1 == self.steps_per_epoch
            if (i + 1) % cfg.output.log_every == 0 or last:  # the only host syncs of the loop
                self.raise_if_nonfinite()
                if not last:
                    record = self.step_record(stats, (i + 1) / self.steps_per_epoch)  # collective
                    if self.main:
                        MetricsLog(self.root / METRICS).append(record)
                loss_sum, correct, seen = stats.epoch.read()
                elapsed = time.perf_counter() - start
                done = session_steps + i + 1
                remaining = self.total_steps - self.step
                eta = (time.perf_counter() - session_start) / done * remaining
                bar.set_postfix_str(
                    f"loss {loss_sum / max(seen, 1):.3f} acc {correct / max(seen, 1):.3f} "
                    f"sparsity {self.exact_sparsity():.1%} {seen / elapsed:.0f} img/s "
                    f"ETA {format_seconds(eta)}",
                    refresh=False,
                )
        stats.seconds = time.perf_counter() - start
        bar.close()
        return stats

    def exact_sparsity(self) -> float:
        return sparsity_report(self.model, ()).sparsity

    def step_record(self, stats: EpochStats, fraction: float) -> dict[str, Any]:
        loss_sum, correct, n = stats.window.read()
        record = {
            "kind": "step",
            "epoch": self.epoch + fraction,
            "step": self.step,
            "lr": self.method.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(n, 1),
            "train_acc": correct / max(n, 1),
            **sparse_hooks.metrics(self.hooks),
        }
        stats.window = Tally(self.device)
        return record

    def epoch_record(self, stats: EpochStats) -> dict[str, Any]:
        distributed.sync_buffers(self.model)  # one model everywhere for evaluation and checkpoints
        loss_sum, correct, seen = stats.epoch.read()
        (skipped,) = distributed.sum_over_ranks(stats.skipped)
        report = sparsity_report(self.model, TRAIN_THRESHOLDS)
        record: dict[str, Any] = {
            "kind": "epoch",
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.method.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "sparsity": report.sparsity,
            **{f"below_{t:g}": report.fraction_below(t) for t in TRAIN_THRESHOLDS},
            "nonfinite_skipped": self.nonfinite_skipped,
            "nonfinite_skipped_epoch": int(skipped),
            **sparse_hooks.metrics(self.hooks),
            "epoch_seconds": stats.seconds,
            "images_per_s": seen / stats.seconds if stats.seconds else None,
            "time": time.time(),
        }
        if self.val_batches is not None:
            val = evaluate(self.model, self.val_batches, device=self.device, bf16=self.bf16)
            record.update(val_loss=val.loss, val_acc=val.accuracy)
        replicas = distributed.replica_check(self.model, self.method.optimizer)  # {} on 1 process
        if replicas.get("replicas_identical") is False:
            self.echo("WARNING: the ranks' model/optimizer states differ (replica_sha256 per rank)")
        record.update(replicas)
        return record

    def log_tensorboard(self, record: dict[str, Any]) -> None:
        if self.tensorboard is None:
            return
        for key, value in record.items():
            if isinstance(value, int | float) and key not in ("epoch", "step", "time"):
                self.tensorboard.add_scalar(key, value, record["epoch"])

    def summary(self, record: dict[str, Any]) -> str:
        val = f" val_acc {record['val_acc']:.4f}" if "val_acc" in record else ""
        skipped = record["nonfinite_skipped"]
        return (
            f"epoch {record['epoch']}/{self.config.schedule.epochs}: "
            f"train_loss {record['train_loss']:.4f} train_acc {record['train_acc']:.4f}{val} "
            f"sparsity {record['sparsity']:.2%} (<=1e-3: {record['below_0.001']:.2%}) "
            f"{record['images_per_s'] or 0:.0f} img/s"
            + (f" skipped_nonfinite {skipped}" if skipped else "")
        )
