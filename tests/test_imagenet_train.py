"""The trainer on an ImageFolder dataset (tiny generated JPEGs, Pillow backend), and the per-rank
sharding of its DataLoader batches (ranks simulated in one process)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from rewa.errors import UsageError
from rewa.train import distributed, load_config, train
from rewa.train.datasets import eval_batches, load_data, split_size, train_batches

Image = pytest.importorskip("PIL.Image")

CLASSES = {"n01": (200, 40, 40), "n02": (40, 200, 40), "n03": (40, 40, 200)}
N_TRAIN, N_VAL = 8, 3  # per class


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for name, colour in CLASSES.items():
            for i in range(n):
                size = (40 + 4 * (i % 3), 32 + 4 * (i % 2))
                noise = torch.randint(
                    0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=gen
                )
                image = Image.blend(
                    Image.new("RGB", size, colour), Image.fromarray(noise.numpy()), 0.3
                )
                path = root / split / name / f"{name}_{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path, quality=90)
    return root


def config(folder: Path, *extra: str):
    return load_config(
        None,
        [
            "data.dataset=imagenet",
            f"data.data_dir={folder}",
            "data.backend=pillow",
            "data.workers=0",
            "data.image_size=32",
            "data.resize=36",
            "data.batch_size=8",
            "data.eval_batch_size=4",
            "model.name=tiny",
            "model.channels_last=true",
            "method.lr=0.05",
            "method.options={K: 3, M: 2, weight_decay: 1.0e-3}",
            "schedule.epochs=1",
            "train.threads=1",
            "eval.thresholds=[1.0e-3, 0.1]",
            "eval.target_sparsities=[0.5]",
            "eval.plots=false",
            "output.progress=false",
            "output.tensorboard=false",
            *extra,
        ],
    )


def test_trains_one_epoch_on_an_image_folder(folder, tmp_path):
    run = tmp_path / "run"
    result = train(config(folder), run, echo=lambda _: None, progress=False)
    record = result["record"]
    assert record["epoch"] == 1 and record["step"] == 3 * N_TRAIN // 8
    assert 0 <= record["val_acc"] <= 1 and record["train_loss"] > 0
    evaluation = json.loads((run / "eval.json").read_text())
    # val/ is the evaluation split; there is no separate test split for an image folder
    assert evaluation["split_sizes"] == {"val": 3 * N_VAL}
    assert (run / "checkpoint.pt").exists() and (run / "eval.md").exists()


def image_keys(batches) -> list[list[str]]:
    """Per step: the sorted sha256 of each (image, label) of the batch."""
    steps = []
    for inputs, labels in batches:
        steps.append(
            sorted(
                hashlib.sha256(x.contiguous().numpy().tobytes() + bytes([int(y)])).hexdigest()
                for x, y in zip(inputs, labels, strict=True)
            )
        )
    return steps


def as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


def batches_of(cfg, data, monkeypatch, rank: int, world: int, epoch: int, split=None):
    as_rank(monkeypatch, rank, world)
    if split is None:
        batches = train_batches(cfg, data, torch.device("cpu"))
        batches.set_epoch(epoch)
    else:
        batches = eval_batches(cfg, data, split, torch.device("cpu"))
    return image_keys(batches)


def test_ranks_share_each_global_batch_and_augmentation(folder, monkeypatch):
    cfg = config(folder)
    data = load_data(cfg)
    for epoch in (0, 1):
        one = batches_of(cfg, data, monkeypatch, 0, 1, epoch)
        two = [batches_of(cfg, data, monkeypatch, r, 2, epoch) for r in range(2)]
        assert len(one) == 3 and all(len(step) == 8 for step in one)
        assert all(len(step) == 4 for rank in two for step in rank)  # per-rank batch 4
        # rank batches are disjoint and together the single-process global batch, same pixels
        for k, step in enumerate(one):
            assert sorted(two[0][k] + two[1][k]) == step
            assert not set(two[0][k]) & set(two[1][k])
    assert batches_of(cfg, data, monkeypatch, 0, 1, 0) != batches_of(
        cfg, data, monkeypatch, 0, 1, 1
    )


def test_augmentation_does_not_depend_on_workers(folder, monkeypatch):
    with_workers = config(folder, "data.workers=2")
    data = load_data(with_workers)
    a = batches_of(with_workers, data, monkeypatch, 0, 1, 0)
    assert a == batches_of(config(folder), data, monkeypatch, 0, 1, 0)


def test_evaluation_shards_count_every_image_once(folder, monkeypatch):
    cfg = config(folder)
    data = load_data(cfg)
    whole = [k for step in batches_of(cfg, data, monkeypatch, 0, 1, 0, "val") for k in step]
    parts = [
        [k for step in batches_of(cfg, data, monkeypatch, r, 2, 0, "val") for k in step]
        for r in range(2)
    ]
    assert len(whole) == 3 * N_VAL and sorted(parts[0] + parts[1]) == sorted(whole)
    assert abs(len(parts[0]) - len(parts[1])) <= 1
    as_rank(monkeypatch, 1, 2)
    assert split_size(eval_batches(cfg, data, "val", torch.device("cpu"))) == 3 * N_VAL
    assert eval_batches(cfg, data, "test", torch.device("cpu")) is None


def test_global_batch_must_divide_over_ranks(folder, monkeypatch):
    cfg = config(folder, "data.batch_size=9")
    data = load_data(cfg)
    as_rank(monkeypatch, 0, 2)
    with pytest.raises(UsageError, match=r"global batch.*divisible by the number of processes"):
        train_batches(cfg, data, torch.device("cpu"))
    as_rank(monkeypatch, 0, 1)
    with pytest.raises(UsageError, match="larger than the training set"):
        train_batches(config(folder, "data.batch_size=64"), data, torch.device("cpu"))


def test_runs_from_before_the_folder_keys_still_resume(tmp_path):
    from rewa.train.rundir import prepare

    cfg = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml")
    stored = cfg.to_dict()
    for key in ("workers", "backend", "image_size", "resize"):  # added by the ImageNet pipeline
        del stored["data"][key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    assert prepare(tmp_path, cfg, resume=True, force=False) is True
    stored["data"]["batch_size"] += 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    with pytest.raises(UsageError, match="different run"):
        prepare(tmp_path, cfg, resume=True, force=False)
