"""torchrun on 2 CPU processes (gloo): the trainer under DDP, distributed sparsity, ReWA on FSDP2.

One torchrun launch does everything (process start-up is what costs time), running
``tests/dist_worker.py``: each rank first measures sharded/replicated tensors and trains a small
FSDP2-sharded model with ReWA (compared here with single-process values of the same inputs), then
runs the real CLI, ``rewa train --resume`` (``rewa.cli.main``, what ``python -m rewa`` runs), on a
run directory holding epoch 1 of a single-process run trained in this process: the 2-process
continuation must end with bit-identical replicas, equal to the single-process run's epoch 2
(same global batch), with metrics reduced over ranks and nothing counted twice.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rewa
from rewa.data.cifar import write_fake_cifar
from rewa.sparsity import magnitude_threshold, sparsity_report
from rewa.train import checkpoint, load_config, train
from rewa.train.distributed import fingerprint

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker as w

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
WORKER = Path(__file__).parent / "dist_worker.py"


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


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    payload = checkpoint.load(run_dir / checkpoint.LATEST)
    assert payload["finished"]
    return payload["model"]


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("dist")
    sets = overrides(write_fake_cifar(tmp / "data", n_train=320, n_test=64))
    single = tmp / "single"
    train(load_config(TINY, sets), single, echo=lambda _: None, progress=False)
    # the epoch-1 state of the single-process run, as an interrupted run directory
    resumed = tmp / "resumed"
    resumed.mkdir()
    for name in ("config.yaml", "run.json", "metrics.jsonl"):
        shutil.copy(single / name, resumed / name)
    shutil.copy(single / checkpoint.PREVIOUS, resumed / checkpoint.LATEST)
    assert checkpoint.load(resumed / checkpoint.LATEST)["epoch"] == 1

    out = tmp / "out"
    out.mkdir()
    cli = ["train", "--config", str(TINY), "--run-dir", str(resumed), "--resume", "--quiet"]
    for s in sets:
        cli += ["--set", s]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(WORKER), str(out), *cli]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return {
        "ranks": [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)],
        "single": single,
        "resumed": resumed,
        "stdout": done.stdout,
    }


# ---------------------------------------------------------------- the trainer under torchrun


def test_resume_on_two_processes_matches_one_process(launch):
    single, resumed = launch["single"], launch["resumed"]
    out = launch["stdout"]
    assert "resumed from" in out and out.count("epoch 2/2:") == 1  # rank 0 alone logs
    # every rank ended with the same bits (sha256 gathered at the end of the epoch) ...
    last, final = metrics(resumed)[-1], final_weights(resumed)
    assert last["kind"] == "epoch" and last["epoch"] == 2
    assert last["replicas_identical"] is True
    assert last["replica_sha256"] == fingerprint(final.values())
    # ... equal to one process with the same global batch, up to the order of float sums
    for name, value in final_weights(single).items():
        torch.testing.assert_close(final[name], value, rtol=1e-5, atol=1e-6, msg=name)
    sessions = json.loads((resumed / "run.json").read_text())["sessions"]
    assert [s["world_size"] for s in sessions] == [1, 2]


def test_metrics_and_evaluation_are_reduced_over_ranks(launch):
    single, resumed = launch["single"], launch["resumed"]
    last, ref = metrics(resumed)[-1], metrics(single)[-1]
    assert last["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-5)
    assert last["train_acc"] == ref["train_acc"] and last["val_acc"] == ref["val_acc"]
    got = json.loads((resumed / "eval.json").read_text())
    want = json.loads((single / "eval.json").read_text())
    assert got["split_sizes"] == want["split_sizes"] == {"val": 64, "test": 64}  # not doubled
    for point, ref_point in zip(got["sweep"], want["sweep"], strict=True):
        assert point["sparsity"] == ref_point["sparsity"]
        assert point["val_acc"] == pytest.approx(ref_point["val_acc"], abs=1 / 64 + 1e-9)


def test_batchnorm_statistics_are_synced_from_rank_0(launch):
    for result in launch["ranks"]:
        assert result["bn_buffers_differ"] and result["bn_buffers_synced"]


# ---------------------------------------------------------------- sparsity over shards


def test_counts_are_summed_over_shards_never_over_replicas(launch):
    expected = w.report_counts(sparsity_report(w.tensors(), w.THRESHOLDS))
    assert sum(zeros for _, zeros, _ in expected) > 0  # the inputs do have zeros
    for result in launch["ranks"]:
        assert result["dtensor_sharded"] == expected
        assert result["dtensor_replicated"] == expected  # not doubled
        assert result["plain_replicated"] == expected  # DDP replicas: not doubled
        # manual plain shards (uneven pieces of the flattened tensors), sharded=True
        assert result["plain_sharded"] == expected


def test_global_threshold_over_shards_equals_single_process(launch):
    expected = [magnitude_threshold(w.tensors().values(), s) for s in w.SPARSITIES]
    assert expected[0] == -1.0 and expected[1] == 0.0 and expected[2] == 0.25  # zeros, ties
    assert len(set(expected)) == len(expected)
    for result in launch["ranks"]:
        assert result["threshold_dtensor"] == expected  # exactly: the same float32 value
        assert result["threshold_plain_sharded"] == expected


def test_sharded_threshold_on_one_process_is_kthvalue():
    for s in w.SPARSITIES:
        a = magnitude_threshold(w.tensors().values(), s)
        b = magnitude_threshold(w.tensors().values(), s, sharded=True)  # no process group
        assert a == b or (math.isnan(a) and math.isnan(b))


# ---------------------------------------------------------------- ReWA on FSDP2


def test_rewa_on_fsdp2_matches_one_process(launch):
    net = w.model()
    opt = rewa.ReWA(rewa.param_groups(net, weight_decay=1e-2), **w.REWA)
    data = w.batches(2 * w.STEPS)
    w.train(net, opt, data[: w.STEPS], 0, 1)
    trained = [p.detach().clone() for p in net.parameters()]
    threshold = rewa.prune_(net, sparsity=0.5)
    zeros = sparsity_report(net, ()).zeros
    w.train(net, opt, data[w.STEPS :], 0, 1)
    ranks = launch["ranks"]
    assert ranks[0]["fsdp_param_types"] == ["DTensor"]  # really sharded ...
    assert ranks[0]["fsdp_state_types"] == ["DTensor"]  # ... and so is ReWA's y
    for result in ranks:
        for got, want in zip(result["fsdp_trained"], trained, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert result["fsdp_prune_threshold"] == pytest.approx(threshold, rel=1e-5)
        assert result["fsdp_pruned_zeros"] == zeros
        # after pruning, y was re-derived from the pruned shards (else the pruned weights
        # would jump back to their old values at the next step)
        for got, want in zip(result["fsdp_final"], net.parameters(), strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- helpers on one process


def test_helpers_are_no_ops_on_one_process(monkeypatch):
    from rewa.train import distributed as d

    monkeypatch.setenv("WORLD_SIZE", "1")
    assert d.init_from_env("cpu") is False and not d.is_initialized()
    assert d.backend_for("cpu") == "gloo" and d.backend_for("cuda:0") == "nccl"
    assert d.on_main(lambda: 5) == 5 and d.broadcast_object({"a": 1}) == {"a": 1}
    assert d.per_rank_batch(7) == 7 and d.shard_range(10) == (0, 10)
    assert d.replica_check(torch.nn.Linear(2, 2), torch.optim.SGD([torch.zeros(1)], lr=0.1)) == {}


def test_fingerprint_sees_one_bit_and_shapes():
    a = torch.ones(3)
    b = a.clone()
    b[1] = torch.nextafter(b[1], torch.tensor(2.0))
    assert fingerprint([a]) == fingerprint([a.clone()]) != fingerprint([b])
    assert fingerprint([torch.zeros(2, 3)]) != fingerprint([torch.zeros(3, 2)])
    assert fingerprint([torch.zeros(2)]) != fingerprint([torch.zeros(2, dtype=torch.float64)])
