"""`rewa train --target-sparsity`, `rewa prune` (+ masked fine-tuning) and `rewa export` end to end
on a tiny generated CIFAR, through the real command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rewa.cli import main
from rewa.data.cifar import write_fake_cifar
from rewa.experiments.prune_cli import exported_model, plain_model, read_source
from rewa.masks import Masks
from rewa.sparsity import effective_weights, normalized_magnitudes, sparsity_report
from rewa.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def sets(data_dir: Path, *extra: str) -> list[str]:
    out = []
    for s in (f"data.data_dir={data_dir}", "output.progress=false", "eval.plots=false", *extra):
        out += ["--set", s]
    return out


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_fake_cifar(tmp_path_factory.mktemp("cifar"), n_train=400, n_test=100)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs") / "rewa"
    assert run("train", "--config", TINY, "--run-dir", root, "--quiet", *sets(data_dir)) == 0
    return root


# ---------------------------------------------------------------- target sparsity in the trainer


def test_target_sparsity_resumes_its_controller_bit_for_bit(data_dir, tmp_path):
    # gentle gains: on 27 steps the default gains saturate the multiplier (nothing to resume)
    args = ["--config", TINY, "--quiet", "--target-sparsity", "0.5",
            *sets(data_dir, "sparsity.every=2", "schedule.epochs=3",
                  "sparsity.controller={kp: 0.5, ki: 2.0}")]  # fmt: skip
    full = tmp_path / "full"
    assert run("train", "--run-dir", full, *args) == 0
    records = metrics(full)
    assert all("control_multiplier" in r and "control_measured" in r for r in records)
    assert records[-1]["control_target"] == 0.5
    strengths = [r["control_strength"] for r in records]
    assert strengths == sorted(strengths) and len(set(strengths)) == 3  # κ raised every epoch
    assert 1.0 < records[-1]["control_multiplier"] < 1000.0  # not saturated
    # the same run interrupted after epoch 2 (its previous checkpoint), then resumed
    cut = tmp_path / "cut"
    cut.mkdir()
    for name in ("config.yaml", "run.json", "metrics.jsonl"):
        shutil.copy(full / name, cut / name)
    shutil.copy(full / checkpoint.PREVIOUS, cut / checkpoint.LATEST)
    assert checkpoint.load(cut / checkpoint.LATEST)["epoch"] == 2
    assert run("train", "--run-dir", cut, "--resume", *args) == 0
    a = checkpoint.load(full / checkpoint.LATEST)
    b = checkpoint.load(cut / checkpoint.LATEST)
    assert a["hooks"]["control"] == b["hooks"]["control"]
    for name, value in a["model"].items():
        assert torch.equal(b["model"][name], value), name


def test_target_sparsity_can_measure_relative_to_each_layer(data_dir, tmp_path):
    run_dir = tmp_path / "rms"
    relative = sets(data_dir, "sparsity.normalize=rms", "sparsity.threshold=0.05")
    args = ["--config", TINY, "--run-dir", run_dir, "--quiet", "--target-sparsity", "0.5"]
    assert run("train", *args, *relative) == 0
    model = plain_model(read_source(run_dir))
    weights = [w for _, w in effective_weights(model)]
    relative = sparsity_report(normalized_magnitudes(weights, "rms"), (0.05,))
    assert metrics(run_dir)[-1]["control_measured"] == pytest.approx(relative.fraction_below(0.05))
    # its final evaluation also reads it pruned by that relative magnitude
    evaluation = json.loads((run_dir / "eval.json").read_text())
    normalized = evaluation["at_sparsity_normalized"]
    targets = evaluation["config"]["eval"]["target_sparsities"]
    assert normalized["normalize"] == "rms" and targets
    assert [p["target"] for p in normalized["points"]] == targets
    assert all(p["sparsity"] >= p["target"] - 1e-9 for p in normalized["points"])
    assert "pruned by |x| / rms(layer)" in (run_dir / "eval.md").read_text()
    # `rewa prune` prunes such a run by the same relative magnitude unless told otherwise
    assert run("prune", run_dir, "--sparsity", "0.8", "--no-eval", "--quiet") == 0
    rule = json.loads((run_dir / "pruned_s0.8_rms" / "prune.json").read_text())["pruned"]["rule"]
    assert rule == "global magnitude of |x| / rms(layer), sparsity 0.8"
    assert run("prune", run_dir, "--sparsity", "0.8", "--normalize", "none", "--no-eval",
               "--quiet") == 0  # fmt: skip
    rule = json.loads((run_dir / "pruned_s0.8" / "prune.json").read_text())["pruned"]["rule"]
    assert rule == "global magnitude of |x|, sparsity 0.8"


def test_target_sparsity_config_errors_are_one_line(data_dir, tmp_path, capsys):
    base = ["train", "--config", TINY, "--run-dir", tmp_path / "x", "--quiet", *sets(data_dir)]
    gmp = ["--set", "method.name=gmp", "--set", "method.options={}"]
    assert run(*base, "--target-sparsity", "0.9", *gmp) == 2
    assert "cannot control method 'gmp'" in capsys.readouterr().err
    assert run(*base, "--target-sparsity", "1.0") == 2
    assert "sparsity.target" in capsys.readouterr().err
    assert run(*base, "--target-sparsity", "0.9", "--set", "sparsity.controller={kd: 1}") == 2
    assert "unknown controller option 'kd'" in capsys.readouterr().err


def test_summarize_tabulates_requested_vs_achieved_and_the_finetuned_model(
    data_dir, trained, tmp_path, capsys
):
    controlled = tmp_path / "target"
    args = ["--config", TINY, "--run-dir", controlled, "--quiet", "--target-sparsity", "0.5",
            *sets(data_dir, "sparsity.every=2", "schedule.epochs=3",
                  "sparsity.controller={kp: 0.5, ki: 2.0}")]  # fmt: skip
    assert run("train", *args) == 0
    assert "WARNING" not in capsys.readouterr().out
    prune = ["prune", controlled, "--threshold", "1e-3", "--finetune-epochs", "1",
             "--out", controlled / "pruned", "--quiet", "--set", "eval.plots=false"]  # fmt: skip
    assert run(*prune) == 0
    # the l1 penalty's strength is an option (a float), ReWA's that of a parameter group (a list)
    l1 = tmp_path / "l1"
    l1_args = ["--config", TINY, "--run-dir", l1, "--quiet", "--target-sparsity", "0.5",
               *sets(data_dir, "method.name=l1", "method.options={lam: 1.0e-4}")]  # fmt: skip
    assert run("train", *l1_args) == 0
    assert "WARNING: 'l1' is a penalty applied by subgradient" in capsys.readouterr().out
    out = tmp_path / "report"
    assert run("target-sparsity", "summarize", trained, controlled, l1, "--out", out) == 0
    rows = {r["run"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    evaluation = json.loads((controlled / "eval.json").read_text())
    at_tau = next(p for p in evaluation["sweep"] if p["threshold"] == 1e-3)
    row = rows["target"]
    assert row["requested"] == 0.5 and row["achieved"] == at_tau["sparsity"]
    assert row["error_points"] == pytest.approx(100 * (at_tau["sparsity"] - 0.5))
    assert row["test_acc_pruned"] == at_tau["test_acc"]
    prune = json.loads((controlled / "pruned" / "prune.json").read_text())
    assert row["test_acc_finetuned"] == prune["finetune"]["test_acc"]
    assert row["final_strength"] > row["base_strength"] == 1e-3  # the controller raised κ
    assert [s["torch"] for s in row["training_sessions"]] == [torch.__version__]
    reference = rows["rewa"]
    assert reference["requested"] is None and reference["final_strength"] == 1e-3
    assert "test_acc_finetuned" not in reference
    assert rows["l1"]["method"] == "l1" and rows["l1"]["base_strength"] == 1e-4
    assert (out / "trajectories.png").stat().st_size > 0
    lines = (out / "results.md").read_text().splitlines()
    names = [ln.split("|")[1].strip() for ln in lines if ln.startswith("| ")]
    assert names == ["run", "rewa", "target", "l1"]


# ---------------------------------------------------------------- prune, fine-tune, export


@pytest.fixture(scope="module")
def pruned(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "p"
    code = run("prune", trained, "--sparsity", "0.8", "--finetune-epochs", "1", "--out", out,
               "--quiet", "--set", "eval.plots=false")  # fmt: skip
    assert code == 0
    return out


def test_prune_writes_masks_allocation_and_accuracy(pruned):
    result = json.loads((pruned / "prune.json").read_text())
    facts = result["pruned"]
    assert facts["sparsity"] >= 0.8
    assert 0.0 <= facts["test_acc"] <= 1.0 and "val_acc" in facts
    assert result["provenance"]["commit"]
    layers = [r["layer"] for r in result["allocation"]]
    assert layers[-1].startswith("TOTAL") and "fc.weight" in layers
    assert (pruned / "allocation.csv").read_text().startswith("layer,weights,nonzeros")
    source = read_source(pruned)
    assert source.kind == "pruned"
    model = plain_model(source)
    masks = Masks.from_state_dict(source.payload["masks"])
    assert masks.sparsity == pytest.approx(facts["sparsity"]) and masks.check(model) == 0


def test_prune_re_estimates_batchnorm_on_training_images(trained, tmp_path):
    """--bn-recalibrate: the pruned model's BatchNorm statistics are recomputed from training
    images (so they differ from the trained ones), both accuracies are reported, and pruned.pt
    keeps the new statistics with the masks intact."""
    out = tmp_path / "bn"
    assert run("prune", trained, "--sparsity", "0.8", "--bn-recalibrate", "64", "--out", out,
               "--quiet") == 0  # fmt: skip
    facts = json.loads((out / "prune.json").read_text())["pruned"]
    bn = facts["bn_recalibrated"]
    assert bn["images"] == 64 and 0 <= bn["val_acc"] <= 1 and 0 <= bn["test_acc"] <= 1
    assert "BatchNorm statistics re-estimated on 64" in (out / "prune.md").read_text()
    stored = checkpoint.load(out / "pruned.pt")["model"]
    trained_state = checkpoint.load(trained / checkpoint.LATEST)["model"]
    assert not torch.equal(stored["bn1.running_mean"], trained_state["bn1.running_mean"])
    masks = Masks.from_state_dict(checkpoint.load(out / "pruned.pt")["masks"])
    assert masks.check(plain_model(read_source(out))) == 0


def test_prune_relative_to_each_layer(trained):
    assert run("prune", trained, "--sparsity", "0.8", "--normalize", "rms", "--no-eval",
               "--quiet") == 0  # fmt: skip
    out = trained / "pruned_s0.8_rms"  # the default: next to the checkpoint
    facts = json.loads((out / "prune.json").read_text())["pruned"]
    assert facts["rule"] == "global magnitude of |x| / rms(layer), sparsity 0.8"
    stored = Masks.from_state_dict(checkpoint.load(out / "pruned.pt")["masks"])
    expected = Masks.from_model(plain_model(read_source(trained)), sparsity=0.8, normalize="rms")
    for name, kept in expected.masks.items():
        assert torch.equal(stored.masks[name], kept), name


def test_recalibrate_batchnorm_computes_the_average_batch_statistics():
    from rewa.train.evaluation import recalibrate_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    batches = [(torch.randn(8, 3, 6, 6) * 3 + 1, None) for _ in range(4)]
    assert recalibrate_batchnorm(net, batches, images=16) == 16  # stops after 16 images
    assert net[1].momentum == 0.1 and not net.training
    with torch.no_grad():
        outs = [net[0](x) for x, _ in batches[:2]]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3)) for o in outs]).mean(0)  # unbiased, as BatchNorm keeps
    torch.testing.assert_close(net[1].running_mean, mean)
    torch.testing.assert_close(net[1].running_var, var)


def test_masked_finetuning_keeps_the_masks(pruned):
    ft = json.loads((pruned / "prune.json").read_text())["finetune"]
    assert ft["masks_hold"] is True and ft["method"] == "dense" and ft["epochs"] == 1
    run_dir = pruned / "finetune"
    payload = checkpoint.load(run_dir / checkpoint.LATEST)
    masks = Masks.from_state_dict(payload["hooks"]["masks"]["masks"])
    before = checkpoint.load(pruned / "pruned.pt")["model"]
    for name, keep in masks.masks.items():
        assert payload["model"][name][~keep].eq(0).all(), name
        assert not torch.equal(payload["model"][name][keep], before[name][keep]), name
    assert metrics(run_dir)[-1]["mask_sparsity"] == pytest.approx(masks.sparsity)


def test_several_finetune_lrs_are_chosen_between_on_validation(trained, tmp_path):
    """--finetune-lr A B: a second fine-tuning of the same pruned model (the first lr's, from an
    earlier prune, reused as it was with --resume), the one of best validation accuracy reported."""
    out = tmp_path / "p"
    base = ["prune", trained, "--sparsity", "0.8", "--finetune-epochs", "1", "--out", out,
            "--quiet", "--set", "eval.plots=false"]  # fmt: skip
    assert run(*base) == 0
    first = (out / "finetune" / "metrics.jsonl").read_text()
    default_lr = json.loads((out / "prune.json").read_text())["finetune"]["lr"]
    assert run(*base, "--finetune-lr", default_lr, 0.3 * default_lr, "--resume") == 0
    assert (out / "finetune" / "metrics.jsonl").read_text() == first  # not trained again
    result = json.loads((out / "prune.json").read_text())
    trials = result["finetune_trials"]
    assert [t["lr"] for t in trials] == pytest.approx([default_lr, 0.3 * default_lr])
    dirs = ["finetune", f"finetune_lr{0.3 * default_lr:g}"]
    assert [Path(t["run_dir"]).name for t in trials] == dirs
    assert all(t["masks_hold"] for t in trials)
    losses = [metrics(Path(t["run_dir"]))[-1]["train_loss"] for t in trials]
    assert losses[0] != losses[1]  # two fine-tunings, not one twice
    best = max(trials, key=lambda t: t["val_acc"])
    assert result["finetune"] == {**best, "chosen_on": "val_acc"}
    assert "chosen on validation accuracy among lr" in (out / "prune.md").read_text()


def test_finetune_lrs_must_differ_and_need_a_validation_split(trained, tmp_path, capsys):
    base = ["prune", trained, "--sparsity", "0.8", "--finetune-epochs", "1", "--quiet"]
    assert run(*base, "--out", tmp_path / "a", "--finetune-lr", "0.01", "0.01") == 2
    assert "--finetune-lr values repeat: 0.01 0.01" in capsys.readouterr().err
    assert run(*base, "--out", tmp_path / "b", "--finetune-lr", "0.01", "0.001",
               "--set", "data.val_size=0") == 2  # fmt: skip
    assert "data.val_size=0" in capsys.readouterr().err


def test_export_round_trip_is_exact_and_smaller(pruned, tmp_path, capsys):
    out = tmp_path / "export"
    code = run("export", pruned / "finetune", "--out", out, "--batch-sizes", "1,4",
               "--repeats", "2")  # fmt: skip
    assert code == 0
    result = json.loads((out / "export.json").read_text())
    assert result["round_trip_outputs_identical"] is True
    assert result["accuracy"]["equal"] is True
    assert result["tensor_bytes"]["sparse"] < 0.5 * result["tensor_bytes"]["dense"]
    assert set(result["files_bytes"]) == {"model_dense.pt", "model_sparse.pt"}
    assert [r["batch"] for r in result["latency"]["rows"]] == [1, 4]
    assert all(r["max_abs_output_diff"] < 1e-4 for r in result["latency"]["rows"])
    dense_state = torch.load(out / "model_dense.pt", weights_only=True)
    model = exported_model(out / "model_sparse.pt")
    for name, value in model.state_dict().items():
        assert torch.equal(dense_state[name], value), name
    assert "CPU inference latency" in capsys.readouterr().out


def test_cli_errors_are_one_line(trained, tmp_path, capsys):
    assert run("prune", tmp_path / "nowhere", "--sparsity", "0.5") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    assert run("prune", trained, "--threshold", "1e-3", "--out", tmp_path / "full") == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: exactly one of --sparsity / --threshold
        run("prune", trained, "--sparsity", "0.5", "--threshold", "0.1")
    assert "not allowed with argument" in capsys.readouterr().err
    assert run("export", tmp_path / "full", "--out", tmp_path / "e") == 2
    assert "holds no checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------- masks under DDP


def test_masked_finetuning_on_two_processes_keeps_identical_sparse_replicas(
    pruned, data_dir, tmp_path
):
    """torchrun, 2 CPU processes (gloo): fine-tuning from the pruned checkpoint keeps the masks on
    both ranks and the replicas bit-identical (checked by the trainer's replica fingerprint)."""
    run_dir = tmp_path / "ddp"
    cli = ["-m", "rewa", "train", "--config", str(TINY), "--run-dir", str(run_dir), "--quiet",
           *map(str, sets(data_dir, f"sparsity.finetune_from={pruned / 'pruned.pt'}",
                          "method.name=dense", "method.options={weight_decay: 5.0e-4}",
                          "schedule.epochs=1", "eval.test=false"))]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", *cli]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    last = metrics(run_dir)[-1]
    assert last["replicas_identical"] is True
    payload = checkpoint.load(run_dir / checkpoint.LATEST)
    masks = Masks.from_state_dict(payload["hooks"]["masks"]["masks"])
    for name, keep in masks.masks.items():
        assert payload["model"][name][~keep].eq(0).all(), name


# ---------------------------------------------------------------- warm start


def test_init_from_starts_from_the_trained_weights_with_a_fresh_optimizer(
    trained, data_dir, tmp_path
):
    """--init-from: a new run (ReWA here) starts from the weights
    of a trained run, BatchNorm statistics included, with a fresh optimizer state; a resumed
    run does not read the source again; another architecture is a one-line error."""
    run_dir = tmp_path / "warm"
    args = ["train", "--config", TINY, "--run-dir", run_dir, "--quiet", "--init-from", trained,
            *sets(data_dir, "method.lr=1e-9", "schedule.epochs=1")]  # fmt: skip
    assert run(*args) == 0
    source = checkpoint.load(trained / checkpoint.LATEST)["model"]
    warm = checkpoint.load(run_dir / checkpoint.LATEST)
    for name in ("conv1.weight", "fc.weight"):  # lr 1e-9: one epoch barely moves them
        torch.testing.assert_close(warm["model"][name], source[name], rtol=0, atol=1e-6)
    assert warm["optimizer"]["state"][0]["step"] == warm["step"]  # fresh: this run's steps only
    info = json.loads((run_dir / "run.json").read_text())["sessions"][0]["init_from"]
    assert info["path"].endswith("checkpoint.pt") and info["method"] == "rewa"
    moved = tmp_path / "moved"
    trained.rename(moved)
    try:  # resuming a finished run: the init source is not needed any more
        assert run(*args, "--resume") == 0
    finally:
        moved.rename(trained)


def test_init_from_another_model_is_a_one_line_error(trained, data_dir, tmp_path, capsys):
    args = ["train", "--config", TINY, "--run-dir", tmp_path / "w", "--quiet", "--init-from",
            trained, *sets(data_dir, "model.options={width: 16}")]  # fmt: skip
    assert run(*args) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit this run's" in err and "\n" not in err
    assert not (tmp_path / "w").exists()
