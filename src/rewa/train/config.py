"""The training configuration: typed dataclasses, loaded from YAML plus dotted overrides.

``load_config("configs/x.yaml", ["method.lr=0.1", "method.options.K=3"])`` returns a validated
:class:`Config`. Every key is checked: an unknown key is an error naming the closest valid key,
a value of the wrong type or out of range is a one-line error naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rewa.errors import UsageError
from rewa.sparsity import NORMALIZATIONS

DEFAULT_SWEEP: tuple[float, ...] = (
    1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5,
)  # fmt: skip
DEFAULT_TARGETS: tuple[float, ...] = (0.9, 0.95, 0.98, 0.99)


def _check(test: Callable[[Any], bool], text: str) -> dict[str, Any]:
    """Field metadata: a range check and how to describe the valid range."""
    return {"check": (test, text)}


def _choices(*values: str) -> dict[str, Any]:
    return _check(lambda v: v in values, "one of " + ", ".join(values))


POSITIVE = _check(lambda v: v > 0, "> 0")
NONNEG = _check(lambda v: v >= 0, ">= 0")


@dataclass
class DataConfig:
    # cifar10/cifar100: in memory; imagenet: data_dir/train/<class>/*, data_dir/val/<class>/*
    # tinyshakespeare: character-level text, data_dir/input.txt (the first 1 - val_fraction -
    # test_fraction trains)
    dataset: str = field(
        default="cifar10", metadata=_choices("cifar10", "cifar100", "imagenet", "tinyshakespeare")
    )
    data_dir: str = "data/cifar10"
    download: bool = True
    val_size: int = field(default=5000, metadata=NONNEG)
    split_seed: int = 0
    # The GLOBAL batch: under torchrun each of W processes takes batch_size / W (must divide).
    batch_size: int = field(default=128, metadata=POSITIVE)
    eval_batch_size: int = field(default=500, metadata=POSITIVE)
    augment: bool = True
    # Image folders (dataset imagenet): DataLoader workers per process, decoder, crop sizes.
    workers: int = field(default=4, metadata=NONNEG)
    backend: str = field(default="auto", metadata=_choices("auto", "torchvision", "pillow"))
    image_size: int = field(default=224, metadata=POSITIVE)
    resize: int = field(default=256, metadata=POSITIVE)  # evaluation: shorter side, then crop
    # Text: tokens of context per example, and the fraction of the text held out (the end).
    block_size: int = field(default=128, metadata=POSITIVE)
    val_fraction: float = field(default=0.1, metadata=_check(lambda v: 0 < v < 1, "in (0, 1)"))
    # ... and the fraction after it held out as a test split (0: none; the text's end is then
    # validation only). Contiguous and fixed: train | validation | test.
    test_fraction: float = field(default=0.0, metadata=_check(lambda v: 0 <= v < 1, "in [0, 1)"))
    # Smoke runs: use only N training / evaluation images (0 = all); for a text, limit_train
    # caps the training tokens of an epoch.
    limit_train: int = field(default=0, metadata=NONNEG)
    limit_eval: int = field(default=0, metadata=NONNEG)


@dataclass
class ModelConfig:
    name: str = "resnet20"
    options: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False
    compile: bool = False
    # bf16 autocast for the forward pass (parameters stay float32): true, false, or auto = where
    # the device computes bf16 natively (CUDA with bf16 support; a CPU with AVX512-BF16 or AMX).
    # On a CPU without them bf16 is emulated and ~10x slower than float32.
    bf16: bool | str = field(
        default=False, metadata=_check(lambda v: v in (True, False, "auto"), "true, false or auto")
    )


@dataclass
class MethodConfig:
    name: str = "rewa"
    base: str = field(default="sgd", metadata=_choices("sgd", "adamw"))
    lr: float = field(default=0.1, metadata=POSITIVE)
    momentum: float = field(default=0.9, metadata=_check(lambda v: 0 <= v < 1, "in [0, 1)"))
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScheduleConfig:
    epochs: int = field(default=30, metadata=POSITIVE)
    warmup_epochs: float = field(default=0.0, metadata=NONNEG)
    cosine: bool = True  # cosine decay to 0 after the warmup; False keeps lr constant


@dataclass
class TrainConfig:
    seed: int = 0
    label_smoothing: float = field(default=0.0, metadata=_check(lambda v: 0 <= v < 1, "in [0, 1)"))
    skip_nonfinite: bool = False  # skip (and count) steps with a non-finite loss or gradient
    threads: int = field(default=0, metadata=NONNEG)  # torch CPU threads, 0 = torch's default
    device: str = field(default="auto", metadata=_check(lambda v: bool(v), "non-empty"))
    # Start from the weights of this run dir / checkpoint / prune output (fresh optimizer state).
    init_from: str = ""


@dataclass
class EvalConfig:
    thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_SWEEP))
    target_sparsities: list[float] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    test: bool = True  # also sweep the test set (always the last epoch's weights)
    plots: bool = True


@dataclass
class OutputConfig:
    runs_root: str = "runs"
    name: str = ""  # run directory name under runs_root; default: the config file's stem
    checkpoint_every: int = field(default=1, metadata=POSITIVE)  # epochs
    log_every: int = field(default=50, metadata=POSITIVE)  # steps between step records
    progress: bool = True
    tensorboard: bool = True  # only used when tensorboard is importable


@dataclass
class SparsityConfig:
    # rewa.train.sparse_hooks: target-sparsity control (0 = off) and masked fine-tuning
    target: float = field(default=0.0, metadata=_check(lambda v: 0 <= v < 1, "in [0, 1)"))
    threshold: float = field(default=1e-3, metadata=NONNEG)  # |x| <= threshold counts as zero
    # what the controller compares with the threshold: |x| (none) or |x| / rms(layer) (rms)
    normalize: str = field(default="none", metadata=_choices(*NORMALIZATIONS))
    every: int = field(default=10, metadata=POSITIVE)  # steps between controller updates
    ramp_start: float = field(default=0.05, metadata=_check(lambda v: 0 <= v <= 1, "in [0, 1]"))
    ramp_end: float = field(default=0.6, metadata=_check(lambda v: 0 <= v <= 1, "in [0, 1]"))
    controller: dict[str, Any] = field(default_factory=dict)  # kp, ki, min/max_multiplier
    finetune_from: str = ""  # a pruned checkpoint (rewa prune): its weights, masks kept


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# Sections and keys that do not change what is trained: a resumed run may differ in these.
NON_RUN_KEYS = (
    "output",
    "eval",
    "train.threads",
    "train.device",
    "data.data_dir",
    "data.workers",
)


# ---------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\d[\d_]*(?:\.[\d_]*)?[eE][-+]?\d+|\d[\d_]*\.[\d_]*|\.\d[\d_]*"
        r"(?:[eE][-+]?\d+)?|\.(?:inf|Inf|INF))|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"{where}: not valid YAML{at}: {getattr(err, 'problem', err)}") from None


# ---------------------------------------------------------------- validation


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(kind: Any) -> str:
    if isinstance(kind, types.UnionType):
        return " or ".join(_describe(member) for member in typing.get_args(kind))
    origin = typing.get_origin(kind)
    if origin is list:
        return "a list of numbers"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """``value`` as ``kind`` or a UsageError naming ``key``."""

    def bad() -> UsageError:
        return UsageError(
            f"config key {key!r} must be {_describe(kind)}, got {value!r} ({type(value).__name__})"
        )

    if isinstance(kind, types.UnionType):  # the first member that takes the value
        for member in typing.get_args(kind):
            try:
                return _coerce(key, value, member)
            except UsageError:
                continue
        raise bad()
    origin = typing.get_origin(kind)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise bad()
        return [_coerce(f"{key}[{i}]", v, float) for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise bad()
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        if not math.isfinite(value):
            raise UsageError(f"config key {key!r} must be finite, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad()
        return value
    raise TypeError(f"unsupported config type {kind}")


def _unknown(key: str, name: str, valid: Iterable[str]) -> UsageError:
    """Unknown ``key`` (last part ``name``): suggest the closest of ``valid`` with its prefix."""
    valid = sorted(valid)
    prefix = key[: len(key) - len(name)]
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
    where = f" in {prefix[:-1]!r}" if prefix else ""
    return UsageError(f"unknown config key {key!r}{hint} (valid keys{where}: {', '.join(valid)})")


def _build_section(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}"
        if name not in fields:
            raise _unknown(key, name, fields)
        kwargs[name] = _coerce(key, value, hints[name])
        check = fields[name].metadata.get("check")
        if check is not None and not check[0](kwargs[name]):
            raise UsageError(f"config key {key!r} must be {check[1]}, got {value!r}")
    return cls(**kwargs)


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """A validated :class:`Config` from nested mappings (missing keys take their defaults)."""
    if not isinstance(values, Mapping):
        raise UsageError("the config must be a mapping of sections (data:, model:, method:, ...)")
    hints = _hints(Config)
    sections = {}
    for name, section in values.items():
        if name not in hints:
            raise _unknown(str(name), str(name), hints)
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            raise UsageError(f"config section {name!r} must be a mapping of keys, got {section!r}")
        sections[name] = _build_section(hints[name], section, name)
    config = Config(**sections)
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    for key in ("thresholds", "target_sparsities"):
        for v in getattr(config.eval, key):
            if not 0 <= v <= (1 if key == "target_sparsities" else math.inf):
                raise UsageError(f"config key 'eval.{key}' has an out-of-range value {v!r}")
    if config.schedule.warmup_epochs > config.schedule.epochs:
        raise UsageError(
            f"schedule.warmup_epochs ({config.schedule.warmup_epochs:g}) exceeds "
            f"schedule.epochs ({config.schedule.epochs})"
        )
    from rewa.methods import check_method  # methods import torch models; config need not

    m = config.method
    check_method(m.name, lr=m.lr, momentum=m.momentum, base=m.base, options=m.options)


# ---------------------------------------------------------------- overrides


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` (``section.options.name=value`` for option dicts)."""
    if "=" not in assignment:
        raise UsageError(f"--set expects key=value, got {assignment!r}")
    dotted, text = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise UsageError(f"--set key must look like section.key, got {dotted!r}")
    value = parse_yaml(text, f"--set {dotted}") if text.strip() else ""
    hints = _hints(Config)
    if parts[0] not in hints:
        raise _unknown(parts[0], parts[0], hints)
    section_fields = _hints(hints[parts[0]])
    if parts[1] not in section_fields:
        raise _unknown(dotted, parts[1], section_fields)
    is_dict = typing.get_origin(section_fields[parts[1]]) is dict
    if len(parts) > (3 if is_dict else 2):
        raise UsageError(f"--set key {dotted!r} is too deep")
    target = values.setdefault(parts[0], {})
    if target is None:
        target = values[parts[0]] = {}
    if len(parts) == 3:
        options = target.get(parts[1]) or {}
        target[parts[1]] = {**options, parts[2]: value}
    else:
        target[parts[1]] = value


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """The config in YAML file ``path`` (defaults when None), with ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file {str(path)!r} not found")
        values = parse_yaml(path.read_text(), str(path)) or {}
        if not isinstance(values, dict):
            raise UsageError(f"{path}: expected a mapping of sections, got {type(values).__name__}")
    for assignment in overrides:
        apply_override(values, assignment)
    return config_from_dict(values)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": {}} -> {"a.b": 1} (an empty mapping has no keys)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ between two config dicts, ignoring :data:`NON_RUN_KEYS`."""

    def relevant(key: str) -> bool:
        return not any(key == k or key.startswith(k + ".") for k in NON_RUN_KEYS)

    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if relevant(k) and not _same(fa.get(k), fb.get(k)))


def _same(a: Any, b: Any) -> bool:
    """Equal values; floats equal to rounding (0.1 * 0.1 is the lr 0.01 written by hand)."""
    floats = isinstance(a, float) or isinstance(b, float)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    if floats and numbers:
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b
