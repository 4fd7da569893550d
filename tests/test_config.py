"""The training config: YAML + dotted overrides, every key validated with a one-line error."""

from pathlib import Path

import pytest

from rewa.errors import UsageError
from rewa.train.config import (
    Config,
    config_from_dict,
    load_config,
    parse_yaml,
    run_differences,
)

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides():
    config = load_config(None, ["method.lr=0.05", "method.options.K=3", "schedule.epochs=7"])
    assert config.method.lr == 0.05
    assert config.method.options == {"K": 3}
    assert config.schedule.epochs == 7
    assert config.data.batch_size == 128  # untouched default


def test_yaml_reads_exponent_floats_without_a_dot():
    # plain YAML 1.1 would read 1e-4 as the string "1e-4" and pass it to the optimizer
    assert parse_yaml("a: 1e-4\nb: 3\nc: 2.5E+2\nd: 1.2.3", "x") == {
        "a": 1e-4,
        "b": 3,
        "c": 250.0,
        "d": "1.2.3",
    }
    assert load_config(None, ["method.options.weight_decay=5e-4"]).method.options == {
        "weight_decay": 5e-4
    }


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  lr: 0.2\n  options: {K: 9, M: 2}\n")
    config = load_config(path, ["method.options.M=1"])
    assert config.method.lr == 0.2
    assert config.method.options == {"K": 9, "M": 1}


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.lrr=0.1", "did you mean 'method.lr'"),
        ("trian.seed=1", "did you mean 'train'"),
        ("schedule.epcohs=3", "did you mean 'schedule.epochs'"),
    ],
)
def test_unknown_key_suggests_the_closest_and_lists_valid_keys(override, message):
    with pytest.raises(UsageError, match=message) as err:
        load_config(None, [override])
    assert "valid keys" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  batch_sise: 64\n")
    with pytest.raises(UsageError, match=r"did you mean 'data\.batch_size'"):
        load_config(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("schedule.epochs=ten", "'schedule.epochs' must be an integer, got 'ten'"),
        ("schedule.epochs=2.5", "must be an integer"),
        ("method.lr=fast", "'method.lr' must be a number"),
        ("train.skip_nonfinite=1", "must be true or false"),
        ("model.options=3", "must be a mapping"),
        ("eval.thresholds=0.1", "must be a list of numbers"),
        ("method.lr=.nan", "must be finite"),
    ],
)
def test_wrong_type(override, message):
    with pytest.raises(UsageError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=0", "'data.batch_size' must be > 0, got 0"),
        ("method.lr=-0.1", "must be > 0"),
        ("method.momentum=1.0", r"must be in \[0, 1\)"),
        ("train.label_smoothing=1", r"must be in \[0, 1\)"),
        ("data.dataset=mnist", "must be one of cifar10, cifar100"),
        ("method.base=rmsprop", "must be one of sgd, adamw"),
        ("eval.target_sparsities=[0.5, 1.5]", "out-of-range"),
        ("schedule.warmup_epochs=100", "exceeds schedule.epochs"),
        ("sparsity.normalize=l2", "must be one of none, rms"),
    ],
)
def test_out_of_range(override, message):
    with pytest.raises(UsageError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("bad", ["method.lr", "lr=0.1", "method..lr=1", "method.lr.x=1"])
def test_malformed_override(bad):
    with pytest.raises(UsageError):
        load_config(None, [bad])


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(UsageError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("- 1\n- 2\n")
    with pytest.raises(UsageError, match="mapping"):
        load_config(path)


def test_yaml_round_trip():
    config = load_config(None, ["method.options.K=3", "eval.thresholds=[0.1, 0.2]"])
    again = config_from_dict(parse_yaml(config.to_yaml(), "x"))
    assert again == config


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_configs_load(path):
    assert isinstance(load_config(path), Config)


def test_published_recipe_config():
    c = load_config(ROOT / "configs/cifar10_resnet18_rewa.yaml")
    assert (c.method.name, c.method.lr, c.method.momentum) == ("rewa", 0.256, 0.875)
    assert c.method.options["K"] == 9 and c.method.options["M"] == 2
    assert c.method.options["weight_decay"] == 1e-4
    assert (c.schedule.epochs, c.schedule.warmup_epochs, c.schedule.cosine) == (100, 5, True)
    assert (c.data.batch_size, c.train.label_smoothing) == (256, 0.1)


STUDY = ["dense", "rewa", "l1prox", "l1", "gmp", "str", "spred", "rigl", "powerprop"]


def test_study_configs_differ_only_in_the_method():
    """The full-scale CIFAR-10 ResNet-20 study compares methods on equal terms: identical data,
    model, schedule, training and evaluation, and the same decay on biases and norm layers."""
    configs = {m: load_config(ROOT / f"configs/cifar10_resnet20_{m}.yaml") for m in STUDY}
    reference = configs["dense"].to_dict()
    for name, config in configs.items():
        values = config.to_dict()
        for section in reference:
            if section != "method":
                assert values[section] == reference[section], (name, section)
        method = values["method"]
        assert (method["base"], method["lr"], method["momentum"]) == ("sgd", 0.1, 0.9), name
        assert method["options"]["other_weight_decay"] == 5e-4, name
    assert reference["data"]["val_size"] == 5000 and reference["data"]["limit_train"] == 0
    assert reference["schedule"]["epochs"] >= 30
    assert configs["gmp"].method.options["weight_decay"] == 5e-4  # the dense run's decay


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("true", True), ("false", False)])
def test_bf16_takes_true_false_or_auto(value, expected):
    assert load_config(None, [f"model.bf16={value}"]).model.bf16 == expected
    with pytest.raises(UsageError, match="true, false or auto"):
        load_config(None, ["model.bf16=sometimes"])
    with pytest.raises(UsageError, match="must be true or false or a string"):
        load_config(None, ["model.bf16=1"])


@pytest.mark.parametrize("native", [True, False])
def test_bf16_auto_follows_the_device(monkeypatch, native):
    import torch

    from rewa.train import evaluation

    monkeypatch.setattr(evaluation, "_cpu_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert evaluation.use_bf16("auto", cpu) is native
    assert evaluation.use_bf16(True, cpu) is True and evaluation.use_bf16(False, cpu) is False
    assert evaluation.native_bf16(torch.device("meta")) is False


@pytest.mark.parametrize(
    "avx512_bf16, amx, native", [(False, False, False), (True, False, True), (False, True, True)]
)
def test_cpu_bf16_is_native_only_with_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, native):
    # oneDNN calls bf16 supported on any AVX512 CPU, where it is emulated and slower than float32
    import torch

    from rewa.train import evaluation

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert evaluation.native_bf16(torch.device("cpu")) is native


def test_run_differences_ignore_output_and_eval():
    a = load_config(None).to_dict()
    b = load_config(None, ["output.progress=false", "eval.plots=false", "train.threads=2"])
    assert run_differences(a, b.to_dict()) == []
    c = load_config(None, ["method.options.K=3", "method.lr=0.2"]).to_dict()
    assert run_differences(a, c) == ["method.lr", "method.options.K"]


def test_run_differences_see_through_float_rounding_only():
    """A run resumed with the lr typed by hand (0.01) is the one a default wrote (0.1 * 0.1)."""
    a = {"method": {"lr": 0.1 * 0.1, "momentum": 0.9, "nesterov": False, "epochs": 3}}
    assert run_differences(a, {"method": {"lr": 0.01, "momentum": 0.9, "nesterov": False,
                                          "epochs": 3.0}}) == []  # fmt: skip
    b = {"method": {"lr": 0.0100001, "momentum": 0.9, "nesterov": True, "epochs": 3}}
    assert run_differences(a, b) == ["method.lr", "method.nesterov"]
    assert run_differences({"x": 0.0}, {"x": 1e-300}) == ["x"]
    assert run_differences({"x": "0.01"}, {"x": 0.01}) == ["x"]
