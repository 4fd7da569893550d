"""The command a result records is the one that ran it."""

from __future__ import annotations

import sys

import pytest
import torch

from rewa.provenance import provenance


@pytest.mark.parametrize(
    "argv, command",
    [
        (["/venv/bin/rewa", "train", "--config", "c.yaml"], "rewa train --config c.yaml"),
        (["/repo/src/rewa/__main__.py", "prune", "run"], "rewa prune run"),
        (["scripts/sign_trap.py", "--out", "x.md"], "python scripts/sign_trap.py --out x.md"),
    ],
)
def test_provenance_records_the_running_command(monkeypatch, argv, command):
    monkeypatch.setattr(sys, "argv", argv)
    assert provenance()["command"] == command


def test_provenance_names_the_cpu_features_torch_detects(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert provenance()["cpu_features"] == ["avx2", "avx512"]
