"""A small LLaMA-style decoder for character-level language modelling.

Pre-norm blocks with RMSNorm, rotary position embedding on queries and keys, causal
self-attention through ``torch.nn.functional.scaled_dot_product_attention``, and a SwiGLU MLP;
no biases. ``forward(tokens)`` maps (B, T) token ids to (B, T, vocab) logits.

The attention and MLP matrices are the weights a sparse method acts on; the token embedding, the
norms and the output head are not (the head is marked ``rewa_sparsify = False``, so
:func:`rewa.sparsity.weight_modules` and :func:`rewa.param_groups` leave it to the plain group).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (x.float() * scale).type_as(x) * self.weight


def rotary_tables(length: int, head_dim: int, device, base: float = 10000.0):
    """cos and sin of the rotation angles, each (length, head_dim / 2)."""
    inverse = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(length, device=device).float(), inverse)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each consecutive pair of features of ``x`` (B, H, T, D) by its position's angle."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp_norm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class LlamaLM(nn.Module):
    """Token embedding, ``layers`` blocks, a final RMSNorm and a linear head."""

    def __init__(
        self, vocab: int, *, dim: int = 192, layers: int = 6, heads: int = 6, hidden: int = 0
    ) -> None:
        super().__init__()
        hidden = hidden or 64 * math.ceil(8 * dim / 3 / 64)  # LLaMA's 2/3 of 4·dim, rounded
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.rewa_sparsify = False  # embeddings, norms and the head stay dense
        self._rotary: dict[tuple[int, torch.device], tuple[Tensor, Tensor]] = {}
        self.reset_parameters(layers)

    def reset_parameters(self, layers: int) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = (
                    0.02 / math.sqrt(2 * layers)
                    if name.endswith(("proj.weight", "down.weight"))
                    else 0.02
                )
                nn.init.normal_(p, std=std)

    def rotary(self, length: int, device) -> tuple[Tensor, Tensor]:
        key = (length, torch.device(device))
        if key not in self._rotary:
            head_dim = self.embed.embedding_dim // self.heads
            self._rotary[key] = rotary_tables(length, head_dim, device)
        return self._rotary[key]

    def forward(self, tokens: Tensor) -> Tensor:
        cos, sin = self.rotary(tokens.shape[1], tokens.device)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))


@torch.no_grad()
@torch.no_grad()
def generate(
    model: LlamaLM,
    prompt: Tensor,
    tokens: int,
    *,
    context: int = 128,
    temperature: float = 0.8,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue the 1-d token sequence ``prompt`` by ``tokens`` sampled tokens (the last
    ``context`` tokens condition each one); returns prompt + continuation."""
    was_training = model.training
    model.eval()
    out = prompt.clone()
    for _ in range(tokens):
        logits = model(out[-context:][None])[0, -1].float() / max(temperature, 1e-6)
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1)
        out = torch.cat([out, torch.multinomial(probs.cpu(), 1, generator=generator).to(out)])
    model.train(was_training)
    return out


def llama(
    num_classes: int, dim: int = 192, layers: int = 6, heads: int = 6, hidden: int = 0
) -> LlamaLM:
    """A LLaMA-style decoder over a vocabulary of ``num_classes`` tokens."""
    return LlamaLM(num_classes, dim=dim, layers=layers, heads=heads, hidden=hidden)
