"""ReWA in the Hugging Face transformers Trainer: pass `optimizers=(rewa.ReWA(...), scheduler)`.

    pip install transformers accelerate
    python examples/transformers_rewa.py

A small classifier (any nn.Module whose forward returns a loss works with the Trainer) is trained
on synthetic data (8 of 64 features matter) with ReWA-AdamW on its linear weights; the script
prints the sparsity reached (about 90% of the weights at |x| <= 1e-3, 93% accuracy).
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments, get_cosine_schedule_with_warmup

import rewa


class Classifier(nn.Module):
    def __init__(self, features: int = 64, classes: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 128), nn.GELU(), nn.Linear(128, classes))

    def forward(self, features, labels=None):
        logits = self.net(features)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class Blobs(Dataset):
    """Four Gaussian classes that differ in 8 of 64 features."""

    def __init__(self, n: int = 2048, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=gen)
        centers = torch.zeros(4, 64)
        centers[:, :8] = 2.0 * torch.randn(4, 8, generator=gen)
        self.features = centers[self.labels] + torch.randn(n, 64, generator=gen)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"features": self.features[i], "labels": self.labels[i]}


def main(epochs: int = 20, quiet: bool = False) -> dict[str, float]:
    torch.manual_seed(0)
    model = Classifier()
    dataset = Blobs()
    batch = 64
    steps = epochs * len(dataset) // batch
    # On an AdamW base: M = 0 with eps > 0 (Adam already adapts per coordinate), K = 9
    optimizer = rewa.ReWA(
        rewa.param_groups(model, weight_decay=1.0), lr=2e-3, base="adamw", K=9, M=0, eps=1e-3
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, steps // 10, steps)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=batch,
            report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
            disable_tqdm=quiet, seed=0,
        )  # fmt: skip
        trainer = Trainer(
            model=model, args=args, train_dataset=dataset, optimizers=(optimizer, scheduler)
        )
        trainer.train()
    model.eval()
    with torch.no_grad():
        logits = model(dataset.features)["logits"]
    report = rewa.sparsity_report(model)
    result = {
        "train_accuracy": float((logits.argmax(1) == dataset.labels).float().mean()),
        "sparsity": report.sparsity,
        "below_1e-3": report.fraction_below(1e-3),
    }
    if not quiet:
        print(report.format())
        print(result)
    return result


if __name__ == "__main__":
    main()
