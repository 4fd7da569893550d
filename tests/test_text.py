"""The character-level text task: tokenizing and splitting, training and evaluation windows, the
LLaMA-style decoder (causal, rotary, its head left dense), and `rewa train` end to end on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rewa
from rewa.cli import main
from rewa.data.text import TextBatches, TextEval, load_text
from rewa.errors import UsageError
from rewa.models import build_model
from rewa.models.llama import apply_rotary, generate, rotary_tables
from rewa.sparsity import weight_modules
from rewa.train import load_config, train

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 60


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    (folder / "input.txt").write_text(TEXT)
    return folder


def test_load_text_tokenizes_by_character_and_holds_out_the_end(text_dir):
    data = load_text(text_dir, download=False, val_fraction=0.1)
    assert data.vocab == sorted(set(TEXT)) and data.num_classes == len(set(TEXT))
    assert len(data.train_tokens) + len(data.val_tokens) == len(TEXT)
    assert len(data.val_tokens) == len(TEXT) - int(len(TEXT) * 0.9)
    assert data.decode(data.val_tokens) == TEXT[int(len(TEXT) * 0.9) :]
    assert torch.equal(data.encode(TEXT[:20]), data.train_tokens[:20])
    with pytest.raises(UsageError, match="not found"):
        load_text(text_dir / "nowhere", download=False)


def test_a_test_split_follows_validation_at_the_end_of_the_text(text_dir):
    """train | validation | test, contiguous and fixed (issue 34): 90/5/5 of the tokens."""
    whole = load_text(text_dir, download=False, val_fraction=0.1)
    data = load_text(text_dir, download=False, val_fraction=0.05, test_fraction=0.05)
    n = len(whole.train_tokens) + len(whole.val_tokens)
    assert len(data.test_tokens) == int(n * 0.05) and len(data.val_tokens) >= int(n * 0.05) - 1
    joined = torch.cat([data.train_tokens, data.val_tokens, data.test_tokens])
    assert torch.equal(joined, torch.cat([whole.train_tokens, whole.val_tokens]))
    assert len(whole.test_tokens) == 0
    with pytest.raises(UsageError, match="test_fraction"):
        load_text(text_dir, download=False, val_fraction=0.5, test_fraction=0.5)


def test_training_windows_are_next_token_pairs_and_reproducible(text_dir):
    data = load_text(text_dir, download=False)
    batches = TextBatches(data.train_tokens, 8, 16, seed=3)
    batches.set_epoch(1)
    first = list(batches)
    assert len(first) == len(data.train_tokens) // (8 * 16)
    for x, y in first:
        assert x.shape == y.shape == (8, 16)
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    again = list(batches)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    batches.set_epoch(2)
    assert not torch.equal(next(iter(batches))[0], first[0][0])
    # two ranks: their halves of each global batch are rank 0's batch of 16 windows
    single = TextBatches(data.train_tokens, 16, 16, seed=3)
    halves = [TextBatches(data.train_tokens, 8, 16, seed=3, rank=r, world_size=2) for r in (0, 1)]
    whole, a, b = next(iter(single)), next(iter(halves[0])), next(iter(halves[1]))
    assert torch.equal(torch.cat([a[0], b[0]]), whole[0])
    assert len(TextBatches(data.train_tokens, 8, 16, tokens_per_epoch=300)) == 2


def test_evaluation_windows_predict_every_token_once(text_dir):
    data = load_text(text_dir, download=False)
    eval_ = TextEval(data.val_tokens, 5, 16)
    targets = torch.cat([y.flatten() for _, y in eval_])
    assert len(targets) == eval_.total_examples == (len(data.val_tokens) - 1) // 16 * 16
    shards = [TextEval(data.val_tokens, 5, 16, rank=r, world_size=3) for r in range(3)]
    assert sum(len(s.starts) for s in shards) == (len(data.val_tokens) - 1) // 16


def test_decoder_is_causal_and_its_head_stays_dense():
    torch.manual_seed(0)
    model = build_model("llama", 30, dim=32, layers=2, heads=4)
    x = torch.randint(0, 30, (2, 12))
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % 30
    out_x, out_y = model(x), model(y)
    assert out_x.shape == (2, 12, 30)
    torch.testing.assert_close(out_x[:, :7], out_y[:, :7])
    assert not torch.allclose(out_x[:, 7:], out_y[:, 7:])
    names = [n for n, _ in weight_modules(model)]
    assert "head" not in names and len(names) == 2 * 5  # qkv, proj, gate, up, down per block
    groups = {g["name"]: g["params"] for g in rewa.param_groups(model)}
    assert any(p is model.head.weight for p in groups["plain"])
    assert any(p is model.embed.weight for p in groups["plain"])


def test_rotary_rotation_keeps_norms_and_encodes_relative_position():
    cos, sin = rotary_tables(10, 8, "cpu")
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    q_at = [apply_rotary(q.expand(1, 1, 10, 8), cos, sin)[0, 0, i] for i in range(10)]
    k_at = [apply_rotary(k.expand(1, 1, 10, 8), cos, sin)[0, 0, i] for i in range(10)]
    torch.testing.assert_close(q_at[3].norm(), q.norm())
    # the score depends only on the offset between the positions
    torch.testing.assert_close(q_at[5] @ k_at[2], q_at[8] @ k_at[5], rtol=1e-5, atol=1e-5)


def test_generate_continues_a_prompt_reproducibly():
    torch.manual_seed(0)
    model = build_model("llama", 20, dim=16, layers=1, heads=2)
    prompt = torch.tensor([1, 2, 3])
    a = generate(model, prompt, 10, generator=torch.Generator().manual_seed(5), top_k=5)
    b = generate(model, prompt, 10, generator=torch.Generator().manual_seed(5), top_k=5)
    assert torch.equal(a, b) and len(a) == 13 and torch.equal(a[:3], prompt)
    assert int(a.max()) < 20


@pytest.mark.parametrize("method", ["dense", "rewa"])
def test_rewa_train_runs_the_language_model_task(text_dir, tmp_path, method):
    config = load_config(
        None,
        [
            "data.dataset=tinyshakespeare", f"data.data_dir={text_dir}", "data.download=false",
            "data.batch_size=8", "data.block_size=16", "data.eval_batch_size=16",
            "model.name=llama", "model.options={dim: 16, layers: 1, heads: 2}",
            f"method.name={method}", "method.base=adamw", "method.lr=3e-3",
            "method.options={weight_decay: 0.1}", "schedule.epochs=2", "eval.test=false",
            "eval.thresholds=[]", "eval.target_sparsities=[0.5, 0.9]", "eval.plots=false",
            "output.progress=false", "output.tensorboard=false", "train.threads=1",
        ],
    )  # fmt: skip
    result = train(config, tmp_path / "run", echo=lambda _: None)
    record = result["record"]
    assert record["train_loss"] < 3.5 and 0 <= record["val_acc"] <= 1  # below log(vocab) = 3.2+
    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert evaluation["final"]["val_loss"] > 0 and "test_acc" not in evaluation["final"]
    assert evaluation["split_sizes"]["val"] == (len(TEXT) - int(len(TEXT) * 0.9) - 1) // 16 * 16
    at = evaluation["at_sparsity"]["val"]
    assert at["0.9"]["sparsity"] >= 0.9 and at["0.5"]["accuracy"] >= 0
    points = {round(p["sparsity"], 2): p for p in evaluation["sweep"]}
    assert points[0.9]["val_loss"] > points[0.0]["val_loss"]  # pruning 90% costs loss


@pytest.fixture(scope="module")
def lm_run(text_dir, tmp_path_factory):
    """A one-epoch ReWA run of the tiny language model."""
    config = load_config(
        None,
        [
            "data.dataset=tinyshakespeare", f"data.data_dir={text_dir}", "data.download=false",
            "data.batch_size=8", "data.block_size=16", "data.eval_batch_size=16",
            "data.val_fraction=0.05", "data.test_fraction=0.05", "eval.test=true",
            "model.name=llama", "model.options={dim: 16, layers: 1, heads: 2}",
            "method.name=rewa", "method.base=adamw", "method.lr=3e-3",
            "method.options={weight_decay: 0.1}", "schedule.epochs=1",
            "eval.thresholds=[]", "eval.target_sparsities=[]", "eval.plots=false",
            "output.progress=false", "output.tensorboard=false", "train.threads=1",
        ],
    )  # fmt: skip
    root = tmp_path_factory.mktemp("lm") / "run"
    train(config, root, echo=lambda _: None)
    return root


def test_a_language_model_run_reports_its_test_split(lm_run):
    final = json.loads((lm_run / "eval.json").read_text())["final"]
    assert final["test_loss"] > 0 and final["val_loss"] > 0


def test_rewa_export_of_a_language_model_run_feeds_it_tokens(lm_run, tmp_path):
    """`rewa export` on a language-model run checks the round trip on token ids (it fed images
    to a token model, with a traceback after writing half its files)."""
    out = tmp_path / "export"
    args = ["export", str(lm_run), "--out", str(out), "--batch-sizes", "1,2"]
    assert main([*args, "--repeats", "2"]) == 0
    result = json.loads((out / "export.json").read_text())
    assert result["round_trip_outputs_identical"]
    assert [r["batch"] for r in result["latency"]["rows"]] == [1, 2]
    assert result["latency"]["rows"][0]["max_abs_output_diff"] < 1e-4


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_rewa_prune_by_wanda_and_sparsegpt_from_calibration_batches(lm_run, tmp_path, criterion):
    out = tmp_path / criterion
    args = ["prune", str(lm_run), "--sparsity", "0.5", "--criterion", criterion]
    assert main([*args, "--calibration-batches", "2", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "prune.json").read_text())
    assert result["pruned"]["rule"].startswith(criterion)
    assert result["pruned"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "val_loss" in result["pruned"] and "test_loss" in result["pruned"]
    bad = ["prune", str(lm_run), "--threshold", "0.1", "--criterion", criterion]
    assert main([*bad, "--quiet", "--out", str(tmp_path / "bad")]) == 2  # needs --sparsity


def test_study_script_trains_prunes_fine_tunes_and_samples(text_dir, tmp_path):
    """scripts/tinyshakespeare.sh at toy size: two methods, pruning at 50-90% with the short
    masked fine-tuning, then `rewa study lm`: the table, the plot and text samples."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    toy = (
        "--set model.options.dim=16 --set model.options.layers=1 --set model.options.heads=2 "
        "--set data.batch_size=8 --set data.block_size=16 --set data.eval_batch_size=16 "
        "--set schedule.epochs=1 --set train.threads=1 --set output.tensorboard=false "
        "--set eval.plots=false --set data.download=false"
    )
    env = {
        **os.environ, "DATA": str(text_dir), "RUNS": str(tmp_path / "runs"),
        "OUT": str(tmp_path / "out"), "EXTRA": toy, "ONLY": "dense rewa",
        "FT_TOKENS": "256",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }  # fmt: skip
    done = subprocess.run(
        ["bash", str(root / "scripts" / "tinyshakespeare.sh")], cwd=root, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    text = (out / "results.md").read_text()
    assert "## One-shot prune" in text and "## After the short masked fine-tuning" in text
    assert "dense AdamW, then pruned" in text and "ReWA-AdamW K=9 M=2" in text
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["sparsity"] for r in rows} == {0.0, 0.5, 0.7, 0.8, 0.9}
    assert all(r["val_loss_ft"] is not None for r in rows if r["sparsity"] > 0)
    assert all(r["model_sparsity"] < r["pruned_sparsity"] for r in rows if r["sparsity"] > 0)
    samples = (out / "samples.md").read_text()
    assert samples.count("```") == 4 and "80% sparse + fine-tuned" in samples
    assert (out / "loss_sparsity.png").stat().st_size > 0
    prune = json.loads((out / "runs" / "rewa" / "prune_0.8" / "prune.json").read_text())
    assert prune["pruned"]["sparsity"] >= 0.8 and prune["finetune"]["masks_hold"] is True
    # a sparsity beyond the final evaluation's sweep, pruned afterwards, joins the table
    extra = out / "runs" / "rewa" / "prune_0.95"
    assert main(["prune", str(tmp_path / "runs" / "rewa"), "--sparsity", "0.95", "--out",
                 str(extra), "--data-dir", str(text_dir), "--quiet"]) == 0  # fmt: skip
    assert main(["study", "lm", str(out / "runs"), "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    extra_rows = [r for r in rows if r["sparsity"] == 0.95]
    assert [r["run"] for r in extra_rows] == ["rewa"] and extra_rows[0]["val_loss_oneshot"] > 0
    assert "95%" in (out / "results.md").read_text()
