"""The trainer end to end on a tiny generated CIFAR: it learns, writes every artifact, and the
evaluation sweep and report follow their definitions."""

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from rewa.cli import main
from rewa.data.cifar import write_fake_cifar
from rewa.train import checkpoint, load_config, train
from rewa.train.evaluation import accuracy_at_sparsity, threshold_sweep
from rewa.train.trainer import lr_factor

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
QUIET = ["output.progress=false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_fake_cifar(tmp_path_factory.mktemp("cifar"), n_train=600, n_test=200)


def tiny(data_dir, *overrides):
    return load_config(TINY, [f"data.data_dir={data_dir}", *QUIET, *overrides])


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("run") / "tiny"
    result = train(tiny(data_dir), root, echo=lambda _: None)
    return root, result


def test_two_epochs_learn_and_write_every_artifact(finished_run):
    root, result = finished_run
    for name in [
        "config.yaml",
        "run.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "checkpoint.prev.pt",
        "eval.json",
        "eval.md",
        "accuracy_sparsity.png",
        "layer_sparsity.png",
        "weight_histogram.png",
        "training_curves.png",
    ]:
        assert (root / name).is_file(), name
    epochs = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(r["images_per_s"] > 0 for r in epochs)
    assert epochs[-1]["val_acc"] > 0.2  # 10 classes: chance is 0.1
    evaluation = json.loads((root / "eval.json").read_text())
    assert evaluation["final"]["test_acc"] > 0.2
    assert evaluation["epoch"] == 2 and "never best-test" in evaluation["weights"]
    assert evaluation["provenance"]["commit"] is not None
    sweep = evaluation["sweep"]
    assert sweep[0]["threshold"] == 0 and sweep[0]["source"] == "as trained"
    assert [p["sparsity"] for p in sweep] == sorted(p["sparsity"] for p in sweep)
    assert evaluation["at_sparsity"]["test"]["0.9"]["sparsity"] >= 0.9
    assert result["eval"]["final"] == evaluation["final"]


def test_eval_command_recomputes_the_same_numbers(finished_run, capsys):
    root, _ = finished_run
    before = json.loads((root / "eval.json").read_text())
    assert main(["eval", str(root), "--quiet", "--no-plots"]) == 0
    after = json.loads((root / "eval.json").read_text())
    assert after["sweep"] == before["sweep"]


def test_report_table(finished_run, tmp_path, capsys):
    root, _ = finished_run
    assert main(["report", str(root), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "comparison.csv").read_text().splitlines()))
    assert rows[0]["method"] == "rewa" and "K=3" in rows[0]["options"]
    assert float(rows[0]["sparsity@90%"]) >= 0.9
    assert (tmp_path / "accuracy_sparsity.png").is_file()
    assert "not interpolated" in (tmp_path / "comparison.md").read_text()
    assert "| tiny" in capsys.readouterr().out


def test_report_of_an_unfinished_run_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no eval.json" in capsys.readouterr().err


def test_reparameterized_method_is_folded_for_evaluation(data_dir, tmp_path):
    config = tiny(
        data_dir, "schedule.epochs=1", "method.name=spred", "method.options={}", "eval.plots=false"
    )
    result = train(config, tmp_path / "spred", echo=lambda _: None)
    assert result["eval"]["layers"]["total"] == 1528  # every conv/linear weight, folded back
    assert result["eval"]["final"]["test_acc"] > 0.1


@pytest.mark.usefixtures("compiler_works")
def test_compiled_model_trains_as_the_eager_one(data_dir, tmp_path):
    results, models = {}, {}
    for compiled in (False, True):
        config = tiny(
            data_dir, "schedule.epochs=1", "eval.plots=false", f"model.compile={compiled}"
        )
        results[compiled] = train(config, tmp_path / str(compiled), echo=lambda _: None)["eval"]
        models[compiled] = checkpoint.load(tmp_path / str(compiled) / "checkpoint.pt")["model"]
    assert models[True].keys() == models[False].keys()  # the plain module's names, loadable
    for name, tensor in models[False].items():
        torch.testing.assert_close(models[True][name], tensor, rtol=1e-3, atol=1e-5, msg=name)
    eager, compiled = results[False]["final"], results[True]["final"]
    assert compiled["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-4)


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10, True) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, True) == 1.0
    assert lr_factor(10, 100, 10, True) == 1.0
    assert lr_factor(55, 100, 10, True) == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, True) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_factor(50, 100, 0, False) == 1.0


class Fixed(nn.Module):
    """A linear classifier with chosen weights (no bias): logits = W x."""

    def __init__(self, weight):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.fc.weight.data.copy_(weight)

    def forward(self, x):
        return self.fc(x)


def test_threshold_sweep_follows_its_definition():
    # class 0 is decided by x0 (weight 1.0), class 1 by x1 (weight 0.01); pruning at τ >= 0.01
    # kills class 1, so accuracy drops from 1 to 0.5 on a balanced set
    weight = torch.tensor([[1.0, 0.0, 0.001, 0.0], [0.0, 0.01, 0.0, 0.0001]])
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    batches = [(x, torch.tensor([0, 1]))]
    points = threshold_sweep(
        Fixed(weight),
        {"test": batches},
        thresholds=[1e-5, 1e-3, 1e-2, 0.5],
        target_sparsities=[0.75],
        device=torch.device("cpu"),
    )
    by_tau = {p["threshold"]: p for p in points}
    assert by_tau[0.0]["sparsity"] == 4 / 8 and by_tau[0.0]["test_acc"] == 1.0
    assert by_tau[1e-5]["sparsity"] == 4 / 8
    assert by_tau[1e-3]["sparsity"] == 6 / 8 and by_tau[1e-3]["test_acc"] == 1.0
    assert by_tau[1e-2]["sparsity"] == 7 / 8 and by_tau[1e-2]["test_acc"] == 0.5
    assert by_tau[0.5]["sparsity"] == 7 / 8
    # the global-magnitude threshold of 75% is the 6th smallest magnitude, 0.001
    assert [p["source"] for p in points if p["threshold"] == 1e-3] == ["fixed"]
    hit = accuracy_at_sparsity(points, 0.75, "test")
    assert hit == {"sparsity": 0.75, "accuracy": 1.0, "threshold": 1e-3}
    assert accuracy_at_sparsity(points, 0.99, "test") is None
    assert Fixed(weight).fc.weight.count_nonzero() == 4  # the sweep worked on copies


def test_train_cli_rejects_a_typo_in_one_line(capsys):
    assert main(["train", "--config", str(TINY), "--set", "method.lrr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean 'method.lr'" in err and "\n" not in err


def test_print_config(capsys):
    assert main(["train", "--config", str(TINY), "--print-config", "--seed", "7"]) == 0
    assert "seed: 7" in capsys.readouterr().out


def test_resuming_a_complete_run_only_evaluates_and_warns_about_empty_layers(
    finished_run, data_dir, tmp_path
):
    # a run killed during its final evaluation: complete checkpoint, no eval.json; and a layer
    # that the method emptied entirely
    root = tmp_path / "copy"
    shutil.copytree(finished_run[0], root)
    (root / "eval.json").unlink()
    state = checkpoint.load(root / checkpoint.LATEST)
    state["model"]["conv2.weight"].zero_()
    checkpoint.save(root, state)
    messages = []
    train(tiny(data_dir, "eval.plots=false"), root, resume=True, echo=messages.append)
    assert any("already complete" in m for m in messages)
    assert any(m.startswith("WARNING: layer conv2.weight is entirely zero") for m in messages)
    evaluation = json.loads((root / "eval.json").read_text())
    assert evaluation["empty_layers"] == ["conv2.weight"]
    assert "entirely zero layers" in (root / "eval.md").read_text()
    assert checkpoint.load(root / checkpoint.LATEST)["step"] == state["step"]  # no training
