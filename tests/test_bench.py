"""The benchmark commands: parameter shapes, summaries, and small end-to-end runs."""

from __future__ import annotations

import itertools
import json
import platform
import re
import subprocess
import sys

import pytest
import torch

from rewa.bench.methods import DEFAULT_METHODS, MethodTrainer
from rewa.bench.shapes import PARAM_SETS, numel
from rewa.bench.timing import Summary
from rewa.cli import main
from rewa.methods import build_method
from rewa.models import build_model
from rewa.sparsity import sparsifiable_parameters

PUBLISHED_COUNTS = {"resnet20": 269_722, "resnet18": 11_173_962, "resnet50": 25_557_032}


@pytest.mark.parametrize("name,classes", [("resnet20", 10), ("resnet18", 10), ("resnet50", 1000)])
def test_generated_shapes_are_the_models_parameters(name, classes):
    shapes = PARAM_SETS[name]()
    assert numel(shapes) == PUBLISHED_COUNTS[name]
    model_shapes = [tuple(p.shape) for p in build_model(name, num_classes=classes).parameters()]
    assert sorted(shapes) == sorted(model_shapes)


def test_llama_shapes_are_the_language_models_parameters():
    model = build_model("llama", num_classes=65, dim=192, layers=6, heads=6)
    assert [tuple(p.shape) for p in model.parameters()] == PARAM_SETS["llama"]()
    assert numel(PARAM_SETS["llama"]()) == 2_681_664


def test_flat_set_is_one_10m_tensor():
    assert PARAM_SETS["flat10m"]() == [(10_000_000,)]


def test_summary_median_quartiles_min():
    s = Summary.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.median, s.p25, s.p75, s.min, s.n) == (3.0, 2.0, 4.0, 1.0, 5)
    assert Summary.of([7.0]).median == Summary.of([7.0]).p75 == 7.0


def test_bench_optim_writes_results(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "optim", "--sets", "resnet20", "--reps", "3", "--warmup", "0"]
    argv += ["--threads", "1", "--copy-elements", "100000"]
    argv += ["--no-compile", "--only", "rewa-sgd-single", "rewa-adamw-foreach"]
    argv += ["--profile", "rewa-sgd-single", "--out-dir", str(out), "--quiet"]
    argv += ["--allocator", "default"]  # steady would change this test process's malloc
    threads = torch.get_num_threads()
    assert main(argv) == 0
    assert torch.get_num_threads() == threads  # --threads applies to the benchmark only
    result = json.loads((out / "optim.json").read_text())
    assert result["threads"] == 1 and result["allocator"] == "default"
    rows = {r["optimizer"]: r for r in result["rows"]}
    assert set(rows) == {"adamw-foreach", "rewa-sgd-single", "rewa-adamw-foreach"}
    assert rows["adamw-foreach"]["vs_adamw_foreach"] == 1.0
    for row in rows.values():
        assert row["ms_median"] > 0 and row["gb_per_s"] > 0 and row["copy_fraction"] > 0
        assert row["numel"] == PUBLISHED_COUNTS["resnet20"]
    assert {"command", "commit", "cpu", "date"} <= set(result["provenance"])
    assert result["copy_gb_per_s"]["before"] > 0
    assert "aten::" in result["profiles"]["resnet20 / rewa-sgd-single"]
    assert re.search(r"\|\s*rewa-sgd-single\s*\|", (out / "optim.md").read_text())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_steady_allocator_sets_glibc_thresholds():
    code = "from rewa.bench.timing import steady_allocator; print(steady_allocator())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "glibc mallopt: mmap threshold 32 MiB, trim threshold 1 GiB"


def test_bench_train_writes_results(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "train", "--model", "tiny", "--batch-size", "8", "--steps", "2"]
    argv += ["--reps", "2", "--warmup", "1", "--threads", "1", "--out-dir", str(out), "--quiet"]
    assert main(argv) == 0
    result = json.loads((out / "train.json").read_text())
    rows = {r["optimizer"]: r for r in result["rows"]}
    assert set(rows) == {"SGD", "ReWA"}
    assert rows["SGD"]["overhead_vs_sgd"] == 0.0
    assert all(r["images_per_s"] > 0 and r["ms_opt_step"] > 0 for r in rows.values())
    assert (out / "train.md").exists() and (out / "train.csv").exists()


def test_bench_methods_times_every_method_against_the_first(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "methods", "--model", "tiny", "--batch-size", "4", "--steps", "1"]
    argv += ["--reps", "2", "--warmup", "1", "--threads", "1", "--out-dir", str(out), "--quiet"]
    assert main(argv) == 0
    result = json.loads((out / "methods.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == list(DEFAULT_METHODS) and result["reference"] == "dense"
    assert rows["dense"]["time_vs_dense"] == 1.0
    for row in rows.values():
        assert row["images_per_s"] > 0
        assert all(row[f"ms_{phase}"] > 0 for phase in ("forward", "backward", "step"))
    assert "time_vs_dense" in (out / "methods.md").read_text()


def test_bench_methods_runs_the_trainers_step_with_the_methods_hook():
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=10)
    method = build_method("gmp", model, lr=0.1, options={"target": 0.9, "start": 0.0, "end": 0.5})
    trainer = MethodTrainer("gmp", method, torch.device("cpu"), bf16=False)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    trainer.chunk(x, y, steps=4, total_steps=4)
    assert trainer.step == 4 and len(trainer.phase_seconds["step"]) == 4
    weights = [p for _, p in sparsifiable_parameters(model)]
    zeros = sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)
    assert zeros >= 0.9  # the ramp ended within the 4 steps: the hook pruned to the target


def test_bench_precision_times_every_setting(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "precision", "--model", "tiny", "--batch-size", "4", "--steps", "1"]
    argv += ["--reps", "2", "--threads", "1", "2", "--out-dir", str(out), "--quiet"]
    threads = torch.get_num_threads()
    assert main(argv) == 0
    assert torch.get_num_threads() == threads  # restored
    result = json.loads((out / "precision.json").read_text())
    combos = {(r["threads"], r["precision"], r["memory_format"]) for r in result["rows"]}
    assert len(combos) == 8 == len(result["rows"])
    assert max(r["vs_fastest"] for r in result["rows"]) == 1.0
    assert all(r["images_per_s"] > 0 for r in result["rows"])
    assert "native bf16" in (out / "precision.md").read_text()


def test_bench_precision_compile_times_each_setting_eager_and_compiled(tmp_path, monkeypatch):
    compiled, forwards = [], []

    def fake_compile(model):  # the wiring, not inductor (slow to compile on a CPU)
        compiled.append(model)
        model.register_forward_hook(lambda *_: forwards.append(model))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    out = tmp_path / "bench"
    argv = ["bench", "precision", "--model", "tiny", "--batch-size", "4", "--steps", "1"]
    argv += ["--reps", "1", "--threads", "1", "--precisions", "fp32", "--compile", "--warmup", "0"]
    assert main([*argv, "--out-dir", str(out), "--quiet"]) == 0
    rows = json.loads((out / "precision.json").read_text())["rows"]
    combos = {(r["memory_format"], r["model"]) for r in rows}
    formats, modes = ("contiguous", "channels_last"), ("eager", "torch.compile")
    assert combos == set(itertools.product(formats, modes))
    assert len(compiled) == 2 == len(rows) // 2  # one model per compiled setting
    assert len(forwards) == 2 * (2 + 1)  # warmed up 2 steps even with --warmup 0, then timed
    assert "| model " in (out / "precision.md").read_text()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["bench", "optim", "--only", "adam"], "unknown optimizer 'adam'"),
        (["bench", "optim", "--no-compile", "--only", "rewa-sgd-compiled"], "--no-compile"),
        (["bench", "methods", "--methods", "dense", "lasso"], "unknown method 'lasso'"),
        (["bench", "methods", "--methods", "dense", "str", "dense"], "named twice"),
    ],
)
def test_bench_bad_input_is_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bench_cuda_without_gpu_is_rejected(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "optim", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("bench", ["train", "methods", "precision"])
def test_bench_of_training_steps_refuses_the_language_model(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", bench, "--model", "llama"])  # random images are no token ids
    assert exit_info.value.code == 2
    assert "invalid choice: 'llama'" in capsys.readouterr().err
