"""Batch augmentation as tensor ops on the images' device: random crop with padding, horizontal
flip, normalization. No per-image Python loop."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_flip_params(
    n: int,
    padding: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw (top, left, flip) for ``n`` images: offsets in [0, 2·padding] into the padded image
    and a flip flag. Drawn on the generator's device (CPU without a generator); a pure function
    of the generator's state."""
    device = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return top, left, flip


def apply_crop_flip(
    images: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int = 4
) -> Tensor:
    """Zero-pad ``images`` (B, C, H, W) by ``padding`` pixels, cut the H×W window at
    (``top[b]``, ``left[b]``) of each image and mirror it horizontally where ``flip[b]``."""
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    b, c, h, w = images.shape
    device = images.device
    top, left, flip = top.to(device), left.to(device), flip.to(device)
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    hp, wp = padded.shape[-2:]
    rows = top[:, None] + torch.arange(h, device=device)  # (B, H)
    cols = torch.arange(w, device=device)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + left[:, None]  # (B, W)
    # One gather over flattened pixels (several times faster than 4-D advanced indexing).
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, hp * wp).gather(2, flat).view(b, c, h, w)


def random_crop_flip(
    images: Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop (zero padding of ``padding`` pixels, then a random H×W window) and random
    horizontal flip of each image of a batch (B, C, H, W), uint8 or float, on the batch's device.
    Deterministic given ``generator``; its device may differ from the batch's."""
    top, left, flip = crop_flip_params(images.shape[0], padding, generator)
    return apply_crop_flip(images, top, left, flip, padding)


def normalize(
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """uint8 images (B, C, H, W) in [0, 255] → ``(x / 255 − mean) / std`` per channel, as
    ``dtype`` (computed in float32 at least)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"normalize expects uint8 images, got {images.dtype}")
    compute = torch.promote_types(dtype, torch.float32)
    mean_t = torch.tensor(mean, dtype=compute, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=compute, device=images.device).view(1, -1, 1, 1)
    out = (images.to(compute) / 255.0 - mean_t) / std_t
    return out.to(dtype)
