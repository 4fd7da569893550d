"""The trainer under torchrun (2 CPU processes, gloo): resume on another world size, DDP replicas
bit-identical, and the same result as one process with the same global batch.

One torchrun launch does it all (process start-up dominates the time): a single-process run is
trained in this process for 2 epochs; its epoch-1 checkpoint is then resumed by
``torchrun --nproc_per_node 2 -m rewa train --resume``, which must end where the single-process
run ended.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rewa.data.cifar import write_fake_cifar
from rewa.train import checkpoint, load_config, train
from rewa.train.distributed import fingerprint

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def overrides(data_dir: Path) -> list[str]:
    return [
        f"data.data_dir={data_dir}",
        "data.val_size=64",
        "data.batch_size=32",  # global: 16 per process under torchrun
        "model.options.batchnorm=false",  # BN statistics are per rank; without BN DDP == 1 process
        "schedule.epochs=2",
        "eval.plots=false",
        "output.progress=false",
    ]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    payload = checkpoint.load(run_dir / checkpoint.LATEST)
    assert payload["finished"]
    return payload["model"]


@pytest.mark.slow
def test_torchrun_resume_on_two_processes_matches_one_process(tmp_path):
    data = write_fake_cifar(tmp_path / "data", n_train=320, n_test=64)
    sets = overrides(data)
    single = tmp_path / "single"
    train(load_config(TINY, sets), single, echo=lambda _: None, progress=False)

    # the epoch-1 state of the single-process run, as an interrupted run directory
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("config.yaml", "run.json", "metrics.jsonl"):
        shutil.copy(single / name, resumed / name)
    shutil.copy(single / checkpoint.PREVIOUS, resumed / checkpoint.LATEST)
    assert checkpoint.load(resumed / checkpoint.LATEST)["epoch"] == 1

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", "rewa", "train", "--config", str(TINY), "--run-dir", str(resumed),
               "--resume", "--quiet"]  # fmt: skip
    for s in sets:
        command += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed from" in done.stdout and done.stdout.count("epoch 2/2:") == 1  # rank 0 only

    # every rank ended with the same bits (sha256 gathered at the end of the epoch) ...
    last = metrics(resumed)[-1]
    final = weights(resumed)
    assert last["kind"] == "epoch" and last["epoch"] == 2
    assert last["replicas_identical"] is True
    assert last["replica_sha256"] == fingerprint(final.values())
    # ... equal to one process with the same global batch, up to the order of float sums
    reference = weights(single)
    for name, value in reference.items():
        torch.testing.assert_close(final[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # metrics are reduced over ranks: the same numbers as one process, nothing counted twice
    ref_last = metrics(single)[-1]
    assert last["train_loss"] == pytest.approx(ref_last["train_loss"], rel=1e-5)
    assert last["train_acc"] == ref_last["train_acc"]
    assert last["val_acc"] == ref_last["val_acc"]
    evaluation = json.loads((resumed / "eval.json").read_text())
    assert evaluation["split_sizes"] == {"val": 64, "test": 64}
    reference_eval = json.loads((single / "eval.json").read_text())
    for point, ref in zip(evaluation["sweep"], reference_eval["sweep"], strict=True):
        assert point["val_acc"] == pytest.approx(ref["val_acc"], abs=1 / 64 + 1e-9)
    sessions = json.loads((resumed / "run.json").read_text())["sessions"]
    assert [s["world_size"] for s in sessions] == [1, 2]
