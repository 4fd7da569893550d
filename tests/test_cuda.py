"""Tests that need a CUDA GPU (marked ``cuda``; skipped without one). scripts/gpu_check.sh runs
them with ``pytest -m cuda`` on a lent GPU machine: the CUDA optimizer paths, the compiled step,
data on the device, bf16 + channels_last training without per-step host syncs, mixed precision
with a GradScaler, and sparsity/pruning of CUDA tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rewa
from rewa import ReWA
from rewa.data.batches import TensorBatches
from rewa.data.cifar import write_fake_cifar
from rewa.sparsity import prune_, sparsity_report
from rewa.train import load_config, train
from rewa.train.trainer import Trainer

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
SHAPES = [(64, 32, 3, 3), (10,), (128, 64), (1,), (32, 16, 3, 3)]
SGD = dict(base="sgd", K=9.0, M=2.0, eps=0.0, weight_decay=1e-2, momentum=0.9)
ADAMW = dict(base="adamw", K=2.25, M=1.25, eps=1e-4, weight_decay=1e-2)


def params_on(device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(*s, generator=gen, dtype=dtype) for s in SHAPES]
    return [t.to(device).requires_grad_() for t in tensors]


def run_steps(params, opt, steps=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
        opt.step()


@pytest.mark.parametrize("kw", [SGD, ADAMW], ids=["sgd", "adamw"])
def test_cuda_step_matches_the_cpu_step(kw):
    cpu, gpu = params_on("cpu", torch.float64), params_on(CUDA, torch.float64)
    run_steps(cpu, ReWA(cpu, lr=0.02, **kw))
    run_steps(gpu, ReWA(gpu, lr=0.02, **kw))
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("kw", [SGD, ADAMW], ids=["sgd", "adamw"])
def test_cuda_foreach_equals_single_tensor(kw):
    a, b = params_on(CUDA), params_on(CUDA)
    run_steps(a, ReWA(a, lr=0.02, foreach=True, **kw))
    run_steps(b, ReWA(b, lr=0.02, foreach=False, **kw))
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("kw", [SGD, ADAMW], ids=["sgd", "adamw"])
def test_cuda_compiled_step_equals_eager(kw):
    a, b = params_on(CUDA), params_on(CUDA)
    run_steps(a, ReWA(a, lr=0.02, **kw))
    run_steps(b, ReWA(b, lr=0.02, compile=True, **kw))
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-8)


def test_cuda_batches_equal_the_cpu_batches():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,), generator=gen)
    kw = dict(shuffle=True, augment=True, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3)
    cpu = TensorBatches(images, labels, 64, device="cpu", **kw)
    gpu = TensorBatches(images, labels, 64, device=CUDA, channels_last=True, **kw)
    cpu.set_epoch(2)
    gpu.set_epoch(2)
    for (x, y), (u, v) in zip(cpu, gpu, strict=True):
        assert torch.equal(u.cpu(), x) and torch.equal(v.cpu(), y)
        assert u.is_contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_fake_cifar(tmp_path_factory.mktemp("cifar"), n_train=600, n_test=200)


def tiny_config(data_dir, *extra):
    return load_config(
        None,
        [
            "model.name=tiny", f"data.data_dir={data_dir}", "data.val_size=100",
            "data.batch_size=64", "schedule.epochs=2", "train.device=cuda",
            "model.bf16=auto", "model.channels_last=true", "output.progress=false",
            "output.tensorboard=false", "eval.plots=false", "output.log_every=1000",
            "method.options={K: 9, M: 2, weight_decay: 1.0e-3}", *extra,
        ],
    )  # fmt: skip


def test_cuda_training_bf16_channels_last_has_no_host_sync_per_step(data_dir, tmp_path):
    """Every training step runs under torch.cuda.set_sync_debug_mode("error"): any host sync
    inside a step (.item(), a blocking copy, a data-dependent shape) raises."""
    original = Trainer.train_step
    steps = []

    def strict_step(self, *args):
        torch.cuda.set_sync_debug_mode("error")
        try:
            original(self, *args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        steps.append(self.step)

    Trainer.train_step = strict_step
    try:
        result = train(tiny_config(data_dir), tmp_path / "run", echo=lambda _: None)
    finally:
        Trainer.train_step = original
    assert len(steps) == 2 * (500 // 64)
    record = result["record"]
    assert record["train_loss"] == record["train_loss"] and 0 <= record["val_acc"] <= 1
    info = (tmp_path / "run" / "run.json").read_text()
    assert '"device": "cuda' in info and '"bf16": true' in info


def test_rewa_under_fp16_autocast_and_gradscaler():
    """fp16 autocast with a GradScaler: inf/NaN steps are skipped (weights and ReWA state
    untouched), unscale_ before clipping works, and training moves the weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).to(CUDA)
    opt = ReWA(rewa.param_groups(model, weight_decay=1e-4), lr=0.05, K=3, M=2)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    x, y = torch.randn(128, 32, device=CUDA), torch.randint(0, 4, (128,), device=CUDA)
    for step in range(20):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if step == 5:
            model[0].weight.grad.fill_(float("inf"))
            before = [p.detach().clone() for p in model.parameters()]
            y_before = opt.state[model[0].weight]["y"].clone()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        if step == 5:
            for p, b in zip(model.parameters(), before, strict=True):
                assert torch.equal(p.detach(), b)
            assert torch.equal(opt.state[model[0].weight]["y"], y_before)
    assert scaler.get_scale() < 2.0**10  # the inf step lowered the scale
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sparsity_report_and_prune_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 30 * 30, 10)).to(CUDA)
    prune_(model, sparsity=0.9)
    report = sparsity_report(model, (1e-3,))
    assert report.sparsity >= 0.9
    assert model[2].weight.is_cuda
