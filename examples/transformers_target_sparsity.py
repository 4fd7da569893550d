"""A transformers causal LM (GPT-2 or Llama, built from a small config) trained by the `Trainer`
with ReWA, steered to a target sparsity by `rewa.integrations.transformers.SparsityCallback`.

    pip install -e '.[integrations]'
    python examples/transformers_target_sparsity.py --model gpt2 --target 0.8

`rewa.param_groups` puts every projection under ReWA (GPT-2's `Conv1D` too) and keeps the
embeddings, norms and the (tied) LM head in a plain AdamW group. The data is a synthetic
language (each token follows from the two before it), so the script needs no download; a real
model and corpus plug in the same way (`from_pretrained`, a tokenized dataset).
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
    get_cosine_schedule_with_warmup,
)

import rewa
from rewa.integrations.transformers import SparsityCallback

VOCAB, LENGTH = 64, 32


def build(name: str) -> torch.nn.Module:
    if name == "gpt2":
        config = GPT2Config(
            vocab_size=VOCAB, n_positions=LENGTH, n_embd=64, n_layer=2, n_head=4,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        return GPT2LMHeadModel(config)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=LENGTH,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config)


class Sequences(Dataset):
    """Token t[i] = (a·t[i−1] + b·t[i−2] + c) mod VOCAB with one (a, b, c) per sequence family."""

    def __init__(self, n: int = 512, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        rules = torch.randint(1, VOCAB, (4, 3), generator=gen)
        self.tokens = torch.empty(n, LENGTH, dtype=torch.long)
        for i in range(n):
            a, b, c = rules[i % 4].tolist()
            seq = torch.randint(0, VOCAB, (2,), generator=gen).tolist()
            while len(seq) < LENGTH:
                seq.append((a * seq[-1] + b * seq[-2] + c) % VOCAB)
            self.tokens[i] = torch.tensor(seq)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def main(model_name: str = "gpt2", target: float = 0.8, epochs: int = 20, quiet: bool = False):
    torch.manual_seed(0)
    model = build(model_name)
    dataset = Sequences()
    batch = 32
    steps = epochs * len(dataset) // batch
    optimizer = rewa.ReWA(
        rewa.param_groups(model, weight_decay=0.1), lr=3e-3, base="adamw", K=9, M=2
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, steps // 10, steps)
    callback = SparsityCallback(target=target, every=5)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=batch,
            report_to=[], save_strategy="no", logging_steps=10, use_cpu=True,
            disable_tqdm=quiet, seed=0,
        )  # fmt: skip
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            optimizers=(optimizer, scheduler),
            callbacks=[callback],
        )
        trainer.train()
    report = rewa.sparsity_report(model)
    logged = [h for h in trainer.state.log_history if "sparsity_below_0.001" in h]
    result = {
        "below_1e-3": report.fraction_below(1e-3),
        "first_loss": next(h["loss"] for h in trainer.state.log_history if "loss" in h),
        "last_loss": [h["loss"] for h in trainer.state.log_history if "loss" in h][-1],
        "logged": len(logged),
    }
    if not quiet:
        print(report.format())
        print(result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--epochs", type=int, default=20)
    a = parser.parse_args()
    main(a.model, a.target, a.epochs)
