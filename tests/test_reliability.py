"""Fault injection (see tests/FAULTS.md): killed processes, corrupt checkpoints, non-finite
gradients, bad input, bf16 autocast. Each test states the guarantee it checks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rewa.cli import main
from rewa.data.cifar import write_fake_cifar
from rewa.errors import UsageError
from rewa.train import checkpoint, load_config, train
from rewa.train.rundir import RunLock
from rewa.train.trainer import NonFiniteError, Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
# 500 training images / batch 32 = 15 steps per epoch; 3 epochs = 45 steps
RUN = ["schedule.epochs=3", "eval.plots=false", "eval.test=false", "output.progress=false"]
MID_EPOCH_3 = 37  # a step in the middle of epoch 3: checkpoint.pt = epoch 2, .prev = epoch 1


def silent(_):
    pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_fake_cifar(tmp_path_factory.mktemp("cifar"), n_train=600, n_test=200)


def config(data_dir, *overrides):
    return load_config(TINY, [f"data.data_dir={data_dir}", *RUN, *overrides])


def cli_args(data_dir, run_dir, *extra):
    sets = [a for o in [f"data.data_dir={data_dir}", *RUN] for a in ("--set", o)]
    return ["train", "--config", str(TINY), *sets, "--run-dir", str(run_dir), "--quiet", *extra]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run: its final checkpoint is what every interrupted run must
    reproduce bit for bit."""
    root = tmp_path_factory.mktemp("reference") / "run"
    train(config(data_dir), root, echo=silent)
    return root, checkpoint.load(root / checkpoint.LATEST)


def assert_same_state(a, b):
    """Model weights, buffers and the full optimizer state are bit-identical."""
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for key in sa[i]:
            assert torch.equal(sa[i][key], sb[i][key]), (i, key)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(data_dir, reference, tmp_path):
    """A SIGKILL mid-epoch loses at most the current epoch; --resume reproduces the
    uninterrupted run exactly (CPU)."""
    root, pause_file = tmp_path / "run", tmp_path / "paused"
    env = {
        **os.environ,
        "REWA_TEST_PAUSE_AT_STEP": str(MID_EPOCH_3),
        "REWA_TEST_PAUSE_FILE": str(pause_file),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "rewa", *cli_args(data_dir, root)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not pause_file.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the training process never reached the pause"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed = checkpoint.load_latest_good(root)
    assert killed.payload["epoch"] == 2 and not killed.problems
    metrics = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in metrics) > 30  # step records of epoch 3 were written

    assert main(cli_args(data_dir, root, "--resume")) == 0
    assert_same_state(checkpoint.load(root / checkpoint.LATEST), reference[1])
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["kind"]) for r in records]
    assert len(keys) == len(set(keys))  # the killed epoch's records were not duplicated
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]


def test_nonfinite_stop_keeps_checkpoint_and_corrupt_latest_falls_back(
    data_dir, reference, tmp_path, monkeypatch, capsys
):
    """A NaN gradient without skip_nonfinite stops the run with a clear error and the last good
    checkpoint intact; a truncated newest checkpoint falls back to the previous one, and the
    resumed run still equals the uninterrupted one."""
    root = tmp_path / "run"
    monkeypatch.setenv("REWA_TEST_NONFINITE_STEPS", str(MID_EPOCH_3))
    with pytest.raises(NonFiniteError, match=r"non-finite gradient of .* at epoch 3, step 37"):
        train(config(data_dir), root, echo=silent)
    monkeypatch.delenv("REWA_TEST_NONFINITE_STEPS")
    assert checkpoint.load(root / checkpoint.LATEST)["epoch"] == 2

    latest = root / checkpoint.LATEST
    latest.write_bytes(latest.read_bytes()[:-1000])  # truncated, as by a full disk
    messages = []
    train(config(data_dir), root, resume=True, echo=messages.append)
    assert any("corrupt or truncated" in m and "falling back" in m for m in messages)
    assert (root / "checkpoint.pt.corrupt").exists()
    assert_same_state(checkpoint.load(root / checkpoint.LATEST), reference[1])


def test_a_valid_checkpoint_of_another_model_falls_back_in_one_line(
    data_dir, reference, tmp_path, monkeypatch
):
    """A newest checkpoint with a valid checksum from another run (a wider model) is not this
    run's: resume says so in one line and falls back to the previous one; when no checkpoint
    fits, the error is one line (issue 33, D5)."""
    root = tmp_path / "run"
    monkeypatch.setenv("REWA_TEST_NONFINITE_STEPS", str(MID_EPOCH_3))
    with pytest.raises(NonFiniteError):
        train(config(data_dir), root, echo=silent)
    monkeypatch.delenv("REWA_TEST_NONFINITE_STEPS")

    def widen(path):
        payload = checkpoint.load(path)
        name = next(k for k, v in payload["model"].items() if v.dim() == 4)
        wider = payload["model"][name]
        payload["model"][name] = torch.zeros(2 * wider.shape[0], *wider.shape[1:])
        checkpoint.atomic_write_bytes(path, checkpoint.encode(payload))
        return name

    name = widen(root / checkpoint.LATEST)
    messages = []
    train(config(data_dir), root, resume=True, echo=messages.append)
    assert any(f"does not fit this run: {name} has shape" in m for m in messages)
    assert any("falling back to checkpoint.prev.pt" in m for m in messages)
    assert_same_state(checkpoint.load(root / checkpoint.LATEST), reference[1])

    for path in (root / checkpoint.LATEST, root / checkpoint.PREVIOUS):
        widen(path)
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint") as err:
        train(config(data_dir), root, resume=True, echo=silent)
    assert "\n" not in str(err.value)


def test_deferred_nonfinite_check_stops_before_the_next_checkpoint(data_dir, tmp_path, monkeypatch):
    """On a GPU the loop checks for non-finite steps only at log steps and epoch ends (no host
    sync per step): a NaN step is still reported with its step, and no checkpoint is written
    after it."""
    monkeypatch.setattr(Trainer, "defer_host_syncs", lambda self: True)
    monkeypatch.setenv("REWA_TEST_NONFINITE_STEPS", str(MID_EPOCH_3))
    root = tmp_path / "run"
    with pytest.raises(
        NonFiniteError, match=rf"non-finite loss or gradient at epoch 3, step {MID_EPOCH_3}"
    ):
        train(config(data_dir), root, echo=silent)
    assert checkpoint.load(root / checkpoint.LATEST)["epoch"] == 2


def test_nonfinite_steps_are_skipped_and_counted(data_dir, tmp_path, monkeypatch):
    """With train.skip_nonfinite, steps with a NaN gradient are skipped (weights and ReWA state
    untouched by them) and counted in metrics.jsonl."""
    monkeypatch.setenv("REWA_TEST_NONFINITE_STEPS", "3,4,20")
    root = tmp_path / "run"
    messages = []
    cfg = config(data_dir, "train.skip_nonfinite=true", "schedule.epochs=2")
    train(cfg, root, echo=messages.append)
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["nonfinite_skipped_epoch"] for r in epochs] == [2, 1]
    assert epochs[-1]["nonfinite_skipped"] == 3
    assert sum("step skipped" in m for m in messages) == 3
    state = checkpoint.load(root / checkpoint.LATEST)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    for s in state["optimizer"]["state"].values():
        assert all(torch.isfinite(v).all() for v in s.values() if torch.is_tensor(v))


def test_existing_run_dir_is_never_overwritten_without_force(data_dir, reference, tmp_path, capsys):
    """Same run: refused without --resume/--force. Different config: refused, naming the
    difference. A non-empty directory that is not a run: refused. --force starts over."""
    root = reference[0]
    before = (root / checkpoint.LATEST).read_bytes()
    assert main(cli_args(data_dir, root)) == 2
    assert "already holds this run" in capsys.readouterr().err
    assert main(cli_args(data_dir, root, "--set", "method.lr=0.01", "--resume")) == 2
    assert "holds a different run (method.lr: 0.05 -> 0.01)" in capsys.readouterr().err
    assert (root / checkpoint.LATEST).read_bytes() == before

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(cli_args(data_dir, other)) == 2
    assert "holds no rewa run" in capsys.readouterr().err

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "notes.txt").write_text("mine")
    assert main(cli_args(data_dir, copy, "--set", "schedule.epochs=1", "--force")) == 0
    assert checkpoint.load(copy / checkpoint.LATEST)["epoch"] == 1
    assert (copy / "notes.txt").read_text() == "mine"  # --force removes only the run's files


def test_run_dir_lock_refuses_a_second_process(tmp_path):
    lock = RunLock.acquire(tmp_path)
    with pytest.raises(UsageError, match="in use by another rewa process"):
        RunLock.acquire(tmp_path)
    lock.release()
    RunLock.acquire(tmp_path).release()


def test_missing_dataset_is_a_one_line_error(tmp_path, capsys):
    args = cli_args(tmp_path / "nothing", tmp_path / "run")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "cifar10 not found in" in err and "\n" not in err
    assert not (tmp_path / "run").exists()  # a run that failed to start leaves no directory


def test_corrupt_dataset_file_is_a_one_line_error(data_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    batch = broken / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:5000])
    assert main(cli_args(broken, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert "data_batch_1" in err and "\n" not in err


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.options.KK=3", "no option 'KK'"),
        ("model.name=resnet7", "unknown model 'resnet7'"),
        ("method.name=adam", "unknown method 'adam'"),
        ("train.device=tpu", "unknown device"),
        ("method.options.K=-1", "ReWA: invalid K=-1; valid range: K >= 1"),
        ("method.options.weight_decay=abc", "weight_decay must be a real number, got 'abc'"),
        ("method.options.eps=-1e-3", "invalid eps=-0.001"),
        ("method.name=gmp", None),  # GMP's own options must be checked too: target below
    ],
)
def test_invalid_names_are_one_line_errors(data_dir, tmp_path, capsys, override, message):
    """Unknown names and bad method options: one line, before anything is created."""
    extra = ["--set", "method.options={target: abc}"] if message is None else []
    assert main(cli_args(data_dir, tmp_path / "run", "--set", override, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert (message or "option target must be a number") in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_bf16_autocast_keeps_rewa_state_float32_and_sparsity_close(data_dir, tmp_path):
    """bf16 autocast on CPU: parameters and ReWA's y stay float32, and the sparsity reached is
    close to float32 training (strong decay so that a fair share of weights is small)."""
    results = {}
    for bf16 in ("false", "true"):
        cfg = config(
            data_dir,
            "schedule.epochs=2",
            f"model.bf16={bf16}",
            "method.lr=0.1",
            "method.options={K: 9, M: 2, weight_decay: 0.03}",
        )
        root = tmp_path / bf16
        results[bf16] = train(cfg, root, echo=silent)["record"]
        state = checkpoint.load(root / checkpoint.LATEST)
        assert all(t.dtype == torch.float32 for k, t in state["model"].items() if "weight" in k)
        ys = [s["y"] for s in state["optimizer"]["state"].values() if "y" in s]
        assert ys and all(y.dtype == torch.float32 for y in ys)
    small = {k: r["below_0.001"] for k, r in results.items()}
    assert small["false"] > 0.1  # the decay did sparsify
    assert abs(small["true"] - small["false"]) < 0.03
