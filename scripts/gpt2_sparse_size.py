"""File sizes of a pruned GPT-2 (the 124M architecture, built from its config with random
weights: sizes depend on the sparsity pattern's count, not on training): transformers'
`save_pretrained` against `rewa.export.save_sparse(model, "model.safetensors")`, at 0 / 50 / 90 /
95% of the sparsified weights (every Conv1D of the blocks; embeddings, norms and the tied head
dense), and a check that the sparse file loads back into a fresh model with equal outputs.

    python scripts/gpt2_sparse_size.py --out results/export/gpt2_safetensors.md
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import rewa
from rewa.export import load_sparse, save_sparse
from rewa.provenance import provenance
from rewa.report.tables import markdown_table


def measure(sparsity: float, folder: Path) -> dict:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    if sparsity:
        rewa.prune_(model, sparsity=sparsity)
    model.save_pretrained(folder / "dense")
    dense = (folder / "dense" / "model.safetensors").stat().st_size
    sparse = save_sparse(model, folder / "model.safetensors")
    fresh = GPT2LMHeadModel(model.config).eval()
    fresh.load_state_dict(load_sparse(folder / "model.safetensors"))
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.no_grad():
        equal = bool(torch.equal(model(ids).logits, fresh(ids).logits))
    report = rewa.sparsity_report(model)
    return {
        "sparsity (blocks)": f"{report.sparsity:.3f}",
        "save_pretrained MB": f"{dense / 1e6:.1f}",
        "save_sparse MB": f"{sparse / 1e6:.1f}",
        "ratio": f"{dense / sparse:.2f}",
        "outputs equal": str(equal),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpt2_safetensors.md"))
    args = parser.parse_args()
    rows = []
    for s in (0.0, 0.5, 0.9, 0.95):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(s, Path(tmp)))
    text = (
        "# A pruned GPT-2 (124M architecture) saved dense and sparse\n\n"
        + (__doc__ or "").split("\n\n")[0]
        + "\n\n"
        + markdown_table(rows, list(rows[0]))
        + "\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in provenance().items())
        + "\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
