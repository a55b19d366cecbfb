"""Small images made visible in figures: nearest-neighbour enlargement (every pixel stays a crisp square)."""

from __future__ import annotations

import math

import torch


def upscale(images: torch.Tensor, factor: int) -> torch.Tensor:
    """``(..., H, W)`` -> ``(..., factor * H, factor * W)``, each pixel repeated (3x3 kernels, 32-px images)."""
    return images.repeat_interleave(factor, dim=-1).repeat_interleave(factor, dim=-2) if factor > 1 else images


def enlarge(images: torch.Tensor, min_side: int) -> torch.Tensor:
    """Upscale by the smallest whole factor that makes the height at least ``min_side`` (larger images are kept)."""
    return upscale(images, math.ceil(min_side / images.shape[-2]))
