"""ReWA in PyTorch Lightning: `configure_optimizers` returns the optimizer and a scheduler, and
Lightning's automatic optimization calls `optimizer.step(closure)`, which ReWA supports.

    pip install pytorch-lightning
    python examples/lightning_rewa.py

A small network is fitted to a sparse linear target (10 of 200 features matter); the script
prints the sparsity ReWA reaches (about 87% of the weights at |x| <= 1e-3). With `--target S`,
`rewa.integrations.lightning.SparsityCallback` steers ReWA's decay so that training ends at S.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rewa
from rewa.integrations.lightning import SparsityCallback


class SparseRegression(pl.LightningModule):
    def __init__(self, features: int = 200, lr: float = 0.01, weight_decay: float = 0.03):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).squeeze(-1), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        # conv/linear weights under ReWA; biases in a plain SGD group (K=1, M=0)
        groups = rewa.param_groups(self, weight_decay=self.hparams.weight_decay)
        optimizer = rewa.ReWA(groups, lr=self.hparams.lr, K=9, M=2, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.trainer.estimated_stepping_batches
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def data(n: int = 1024, features: int = 200, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    beta = torch.zeros(features)
    beta[:10] = torch.linspace(1.0, 2.0, 10)
    return TensorDataset(x, x @ beta + 0.1 * torch.randn(n, generator=gen))


def main(epochs: int = 20, quiet: bool = False, target: float | None = None) -> dict:
    pl.seed_everything(0, verbose=False)
    model = SparseRegression()
    callback = SparsityCallback(target=target, every=5)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=not quiet, enable_model_summary=False, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(model, DataLoader(data(), batch_size=64, shuffle=True))
    report = rewa.sparsity_report(model.net)
    result = {"loss": float(trainer.callback_metrics["train_loss"]), "sparsity": report.sparsity,
              "below_1e-3": report.fraction_below(1e-3),
              "callback_state": callback.state_dict()}  # fmt: skip
    if not quiet:
        print(report.format())
        print(result)
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, help="target sparsity (default: none, fixed decay)")
    main(target=parser.parse_args().target)
