import pytest
import torch
from torch import nn

from rewa import ReWA
from rewa.errors import UsageError
from rewa.methods import build_method


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_rewa_method_builds_rewa_with_plain_group():
    m = build_method("rewa", net(), lr=0.1, options={"K": 3, "weight_decay": 1e-3})
    assert isinstance(m.optimizer, ReWA)
    sparse, plain = m.optimizer.param_groups
    assert (sparse["K"], sparse["weight_decay"]) == (3, 1e-3)
    assert (plain["K"], plain["M"]) == (1.0, 0.0)


def test_dense_method_is_torch_sgd():
    m = build_method(
        "dense", net(), lr=0.1, options={"weight_decay": 1e-3, "other_weight_decay": 0.0}
    )
    assert type(m.optimizer) is torch.optim.SGD
    assert [g["weight_decay"] for g in m.optimizer.param_groups] == [1e-3, 0.0]
    m = build_method("dense", net(), lr=0.1, base="adamw")
    assert type(m.optimizer) is torch.optim.AdamW


def test_unknown_method_or_option_lists_valid_ones():
    with pytest.raises(UsageError, match=r"valid: .*rewa"):
        build_method("nope", net(), lr=0.1)
    with pytest.raises(UsageError, match=r"valid: .*weight_decay"):
        build_method("rewa", net(), lr=0.1, options={"weight_decy": 1e-4})
