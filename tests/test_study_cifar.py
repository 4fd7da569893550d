"""scripts/cifar10_resnet20.sh end to end at toy size (tiny model, generated CIFAR, one epoch):
the runs it trains, the prune/BatchNorm/fine-tune results it keeps, resuming, and the table and
plot of `rewa study cifar`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rewa.data.cifar import write_fake_cifar
from rewa.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "cifar10_resnet20.sh"
TOY = (
    "--set model.name=tiny --set model.options.width=4 --set data.val_size=100 "
    "--set data.batch_size=32 --set data.eval_batch_size=200 --set schedule.epochs=1 "
    "--set schedule.warmup_epochs=0.2 --set train.threads=1 --set output.tensorboard=false "
    "--set eval.plots=false"
)
ONLY = "dense rewa_1e-4 gmp_0.95 rewa_target_0.95"


def run_script(tmp_path: Path, data: Path, **more: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DATA": str(data),
        "RUNS": str(tmp_path / "runs"),
        "OUT": str(tmp_path / "out"),
        "EXTRA": TOY,
        "ONLY": ONLY,
        "BN_IMAGES": "64",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **more,
    }
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    data = write_fake_cifar(tmp / "cifar", n_train=400, n_test=100)
    done = run_script(tmp, data)
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp, data, done


def test_script_trains_prunes_and_keeps_the_small_files(study):
    tmp, _, _ = study
    runs = tmp / "out" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == sorted(ONLY.split())
    for name in ONLY.split():
        for f in ("config.yaml", "run.json", "metrics.jsonl", "eval.json"):
            assert (runs / name / f).is_file(), (name, f)
        assert not list((runs / name).glob("*.pt"))  # checkpoints stay in RUNS
    assert sorted(p.name for p in (runs / "dense").glob("prune_*")) == [
        "prune_0.9", "prune_0.95", "prune_0.98", "prune_0.99",
    ]  # fmt: skip
    assert [p.name for p in (runs / "gmp_0.95").glob("prune_*")] == ["prune_0.95"]
    result = json.loads((runs / "dense" / "prune_0.98" / "prune.json").read_text())
    assert result["pruned"]["sparsity"] >= 0.98
    assert result["pruned"]["bn_recalibrated"]["images"] == 64
    assert result["finetune"]["masks_hold"] is True and result["finetune"]["epochs"] == 1
    tried = [t["lr"] for t in result["finetune_trials"]]  # FT_LRS: each, chosen on validation
    assert tried == [0.01, 0.001] and result["finetune"]["lr"] in tried
    config = load_config(runs / "rewa_target_0.95" / "config.yaml")
    assert config.sparsity.target == 0.95 and config.method.options["weight_decay"] == 3e-5


def test_rerun_resumes_without_training_again(study):
    tmp, data, _ = study
    before = (tmp / "runs" / "dense" / "metrics.jsonl").read_text()
    again = run_script(tmp, data)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "training" not in again.stdout and "pruning" not in again.stdout
    assert (tmp / "runs" / "dense" / "metrics.jsonl").read_text() == before


def test_a_prune_of_an_older_protocol_is_redone_from_the_checkpoint(study):
    """A prune.json without finetune_trials (fine-tuned at one lr, before FT_LRS) is redone on the
    next run of the script: the same pruned model, the missing fine-tuning added, no training."""
    tmp, data, _ = study
    for root in (tmp / "runs", tmp / "out" / "runs"):
        path = root / "rewa_1e-4" / "prune_0.9" / "prune.json"
        result = json.loads(path.read_text())
        del result["finetune_trials"]
        path.write_text(json.dumps(result))
    again = run_script(tmp, data)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "training" not in again.stdout
    assert again.stdout.count("pruning") == 1 and "pruning rewa_1e-4 to 0.9" in again.stdout
    kept = tmp / "out" / "runs" / "rewa_1e-4" / "prune_0.9" / "prune.json"
    result = json.loads(kept.read_text())
    assert [t["lr"] for t in result["finetune_trials"]] == [0.01, 0.001]


def test_a_fresh_checkout_keeps_committed_runs_and_retrains_only_an_unfinished_one(study):
    """$RUNS (checkpoints) does not survive a new checkout; $OUT (committed) does."""
    tmp, data, _ = study
    fresh = tmp / "fresh"
    shutil.copytree(tmp / "out", fresh / "out")
    shutil.rmtree(fresh / "out" / "runs" / "dense" / "prune_0.99")
    again = run_script(fresh, data)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("training") == 1 and "training dense" in again.stdout
    assert "again:" in again.stdout
    pruned = sorted(p.name for p in (fresh / "runs" / "dense").glob("prune_*"))
    assert pruned == ["prune_0.9", "prune_0.95", "prune_0.98", "prune_0.99"]  # one model's prunes
    assert not (fresh / "runs" / "gmp_0.95").exists()


def test_gate_mode_trains_the_long_dense_runs_only_without_pruning_or_table(tmp_path):
    data = write_fake_cifar(tmp_path / "cifar", n_train=200, n_test=50)
    done = run_script(tmp_path, data, GATE="1", ONLY="")
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = (tmp_path / "out" / "gate" / "runs").iterdir()
    assert run.name == "dense_100ep" and (run / "eval.json").is_file()
    assert not list(run.glob("prune_*")) and not (tmp_path / "out" / "gate" / "results.md").exists()
    assert load_config(run / "config.yaml").schedule.epochs == 1  # EXTRA comes last


def test_seeds_mode_trains_a_table_run_again_with_another_seed_and_tables_it(tmp_path):
    data = write_fake_cifar(tmp_path / "cifar", n_train=200, n_test=50)
    done = run_script(tmp_path, data, SEEDS="1", ONLY="rewa_target_0.98_seed1")
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out" / "seeds"
    (run,) = (out / "runs").iterdir()
    assert run.name == "rewa_target_0.98_seed1"
    config = load_config(run / "config.yaml")
    assert config.train.seed == 1 and config.data.split_seed == 0
    assert (run / "prune_0.98" / "prune.json").is_file() and (out / "results.md").is_file()


def test_gate_and_seeds_modes_together_are_refused(tmp_path):
    done = run_script(tmp_path, tmp_path / "no-data", GATE="1", SEEDS="1")
    assert done.returncode == 2 and "one, then the other" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_table_selects_on_validation_and_reports_test(study):
    tmp, _, _ = study
    out = tmp / "out"
    text = (out / "results.md").read_text()
    assert "as pruned / BatchNorm re-estimated / after masked fine-tuning" in text
    for label in ("dense, then pruned", "ReWA K=9 M=2 (fixed κ)", "(κ steered to S)", "GMP"):
        assert label in text
    assert (out / "accuracy_sparsity.png").stat().st_size > 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 + 4 + 1 + 1  # dense and rewa at four sparsities, the others at one
    summary = json.loads((out / "results.json").read_text())
    assert summary["provenance"]["commit"]
    dense_90 = next(r for r in rows if r["run"] == "dense" and float(r["sparsity"]) == 0.9)
    cell = next(ln for ln in text.splitlines() if "dense, then pruned |" in ln)  # main table first
    oneshot = cell.split("|")[2].split("/")[0].strip()
    assert oneshot == f"{100 * float(dense_90['test_oneshot']):.1f}"
    assert dense_90["ft_lrs_tried"] == "0.01 0.001" and float(dense_90["ft_lr"]) in (0.01, 0.001)
    assert f"dense (lr {float(dense_90['ft_lr']):g} of 0.01 0.001)" in text


def test_selection_uses_validation_not_test():
    from rewa.experiments.study_cifar import select

    a = {"group": "rewa", "run": "a", "sparsity": 0.9, "val_oneshot": 0.80, "test_oneshot": 0.70}
    b = {"group": "rewa", "run": "b", "sparsity": 0.9, "val_oneshot": 0.75, "test_oneshot": 0.90}
    c = {"group": "rewa", "run": "c", "sparsity": 0.95, "val_oneshot": 0.5, "test_oneshot": 0.5}
    chosen = select([a, b, c])
    assert chosen[("rewa", 0.9, "oneshot")]["run"] == "a"
    assert chosen[("rewa", 0.95, "oneshot")]["run"] == "c"
    assert ("rewa", 0.9, "bn") not in chosen  # no BatchNorm numbers, no selection


def test_per_layer_allocation_of_each_methods_selected_pruned_run(study):
    tmp, _, _ = study
    out = tmp / "out"
    text = (out / "results.md").read_text()
    section = text.split("## Per-layer allocation")[1]
    table_99 = section.split("### 99%")[1].split("###")[0]
    assert "| layer" in table_99 and "dense" in table_99 and "gmp_0.95" not in table_99
    pruned = json.loads((out / "runs" / "dense" / "prune_0.99" / "prune.json").read_text())
    first = pruned["allocation"][0]
    layer = first["layer"].removesuffix(".weight")
    rows = [ln.split("|") for ln in table_99.splitlines() if ln.startswith("|")]
    row = next(cells for cells in rows if cells[1].strip() == layer)
    assert f"{100 * first['sparsity']:.1f}" in [c.strip() for c in row]
    kept = json.loads((out / "results.json").read_text())["allocation"]["0.99"]["dense"]
    assert kept[layer] == first["sparsity"]


def test_allocation_table_takes_the_as_pruned_selection_per_method():
    from rewa.experiments.study_cifar import allocation_table

    row = {"run": "b", "val_oneshot": 0.8}
    chosen = {("rewa", 0.9, "oneshot"): row, ("rewa", 0.9, "ft"): {"run": "c"},
              ("gmp", 0.95, "oneshot"): {"run": "g"}}  # fmt: skip
    allocation = {("b", 0.9): {"conv1": 0.5, "fc": 0.25}, ("c", 0.9): {"conv1": 0.0}}
    table = allocation_table(chosen, allocation, 0.9)
    assert [c.strip() for c in table.splitlines()[0].split("|")[1:-1]] == ["layer", "b"]
    assert "| conv1 | 50.0 |" in table and "|    fc | 25.0 |" in table
    assert allocation_table(chosen, allocation, 0.95) is None  # g has no allocation


def test_selected_fine_tuning_names_its_lr_and_the_lrs_tried():
    from rewa.experiments.study_cifar import _selected

    row = {"run": "a", "ft_lr": 0.001, "ft_lrs_tried": "0.01 0.001"}
    assert _selected(row, "ft") == "a (lr 0.001 of 0.01 0.001)"
    assert _selected({**row, "ft_lr": 0.01, "ft_lrs_tried": "0.01"}, "ft") == "a (lr 0.01)"
    assert _selected(row, "bn") == "a" and _selected(None, "ft") == "–"


def test_only_runs_of_the_pruned_runs_budget_are_compared_and_the_dense_one_is_best_on_val():
    from rewa.experiments.study_cifar import dense_reference, study_budget

    def run(name, group, epochs, val, prunes=()):
        return {"run": name, "group": group, "epochs": epochs, "unpruned_val": val,
                "prunes": {s: {} for s in prunes}}  # fmt: skip

    runs = [
        run("dense_100ep", "dense", 100, 0.90),
        run("dense_60ep", "dense", 60, 0.88),
        run("dense", "dense", 30, 0.86, ["0.9"]),
        run("dense_hand", "dense", 30, 0.87),
        run("rewa", "rewa", 30, 0.85, ["0.9", "0.95"]),
    ]
    assert study_budget(runs) == 30
    assert study_budget([r for r in runs if not r["prunes"]]) in (100, 60, 30)
    assert study_budget([]) is None
    assert dense_reference([r for r in runs if r["epochs"] == 30])["run"] == "dense_hand"
    assert dense_reference([runs[-1]]) is None


def test_warm_start_script_sparsifies_a_trained_run_with_rewa_and_gmp(study):
    """scripts/warm_start_cifar.sh from the study's dense run: ReWA steered to S (on |x|, and on
    |x| / rms(layer)) and GMP to S, each started from its weights, pruned to S with BatchNorm
    re-estimated, then the table."""
    tmp, data, _ = study
    init = tmp / "runs" / "dense"
    env = {
        **os.environ, "DATA": str(data), "INIT": str(init), "RUNS": str(tmp / "warm"),
        "OUT": str(tmp / "warm_out"), "TARGETS": "0.9", "EPOCHS": "1", "EXTRA": TOY,
        "BN_IMAGES": "64",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }  # fmt: skip
    script = ROOT / "scripts" / "warm_start_cifar.sh"
    done = subprocess.run(
        ["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    runs = tmp / "warm_out" / "runs"
    names = ["gmp_0.9", "rewa_rms_0.9", "rewa_target_0.9"]
    assert sorted(p.name for p in runs.iterdir()) == names
    for name in names:
        config = load_config(runs / name / "config.yaml")
        assert config.train.init_from == str(init) and config.method.lr == 0.01
        pruned = json.loads((runs / name / "prune_0.9" / "prune.json").read_text())["pruned"]
        assert pruned["sparsity"] >= 0.9 and pruned["bn_recalibrated"]["images"] == 64
    assert load_config(runs / "rewa_target_0.9" / "config.yaml").sparsity.target == 0.9
    relative = load_config(runs / "rewa_rms_0.9" / "config.yaml").sparsity
    assert (relative.target, relative.normalize, relative.threshold) == (0.9, "rms", 0.01)
    rule = json.loads((runs / "rewa_rms_0.9" / "prune_0.9" / "prune.json").read_text())
    assert "rms(layer)" in rule["pruned"]["rule"]
    table = json.loads((tmp / "warm_out" / "results.json").read_text())
    assert {r["run"]: r["group"] for r in table["runs"]} == {
        "gmp_0.9": "gmp", "rewa_target_0.9": "rewa-target", "rewa_rms_0.9": "rewa-target-rms",
    }  # fmt: skip
    assert (tmp / "warm_out" / "results.md").is_file()
    missing = dict(env, INIT=str(tmp / "nothing"))
    again = subprocess.run(["bash", str(script)], cwd=ROOT, env=missing, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert again.returncode == 2 and "no such run directory" in again.stderr


def test_the_legend_goes_on_the_fullest_panel_and_an_empty_figure_gets_none(recwarn):
    import matplotlib.pyplot as plt

    from rewa.report.curves import legend_on_fullest

    _, axes = plt.subplots(1, 3)
    axes[1].plot([0, 1], label="a")
    axes[1].plot([1, 0], label="b")
    axes[2].plot([0, 1], label="a")
    legend_on_fullest(axes)
    assert [ax.get_legend() is not None for ax in axes] == [False, True, False]
    _, axes = plt.subplots(1, 2)  # a study with no results yet
    legend_on_fullest(axes)
    assert all(ax.get_legend() is None for ax in axes)
    assert not [w for w in recwarn if "legend" in str(w.message).lower()]
    plt.close("all")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([True], "bf16"),
        ([False, False], "fp32"),
        ([False, True], "mixed"),
        ([None], "?"),
        ([], "?"),
    ],
)
def test_training_precision_reads_every_session_of_run_json(tmp_path, flags, expected):
    from rewa.report.runs import training_precision

    sessions = [{"device": "cpu"} if f is None else {"bf16": f} for f in flags]
    (tmp_path / "run.json").write_text(json.dumps({"sessions": sessions}))
    assert training_precision(tmp_path) == expected
    assert training_precision(tmp_path / "missing") == "?"


def test_training_machine_names_each_sessions_cpu_and_its_features(tmp_path):
    from rewa.report.runs import training_machine

    sessions = [
        {"cpu": "AMD EPYC"},
        {"cpu": "AMD EPYC", "cpu_features": ["avx2", "avx512", "avx512_bf16"]},
        {"cpu": "AMD EPYC", "cpu_features": ["avx2", "avx512", "avx512_bf16"]},
        {"cpu": "Intel Xeon", "gpu": "NVIDIA H200", "cpu_features": ["avx2"]},
    ]
    (tmp_path / "run.json").write_text(json.dumps({"sessions": sessions}))
    assert training_machine(tmp_path) == (
        "AMD EPYC; AMD EPYC (avx2+avx512+avx512_bf16); NVIDIA H200"
    )
    assert training_machine(tmp_path / "missing") == "?"
