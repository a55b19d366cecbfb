"""A procedurally generated image-classification dataset for fast tests.

Each class is a shape with a class-specific hue on a dim, noisy background, at a random position
and size. Classes are separable from shape alone (so an L-only network can classify them) and
colour is predictable from shape (so colorization has something to learn).
"""

from __future__ import annotations

import colorsys

import numpy as np

SHAPES = ("disk", "square", "ring", "hstripes", "vstripes", "cross", "triangle", "diamond", "checker", "dot_grid")


def _mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    inside = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == "disk":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return inside
    if shape == "ring":
        d = np.sqrt(dy**2 + dx**2)
        return (d <= r) & (d >= 0.55 * r)
    if shape == "hstripes":
        return inside & ((yy // 3) % 2 == 0)
    if shape == "vstripes":
        return inside & ((xx // 3) % 2 == 0)
    if shape == "cross":
        return inside & ((np.abs(dy) <= r / 3) | (np.abs(dx) <= r / 3))
    if shape == "triangle":
        return inside & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if shape == "checker":
        return inside & (((yy // 4) + (xx // 4)) % 2 == 0)
    return inside & ((yy % 4 == 0) | (yy % 4 == 1)) & ((xx % 4 == 0) | (xx % 4 == 1))


def generate(n: int, image_size: int = 32, num_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``images (n, 3, S, S) uint8`` and balanced ``labels (n,) int64``."""
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPES)}")
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    for i, c in enumerate(labels):
        hue = (c / num_classes + rng.normal(0, 0.02)) % 1.0
        fg = np.array(colorsys.hsv_to_rgb(hue, 0.8, rng.uniform(0.7, 1.0)), dtype=np.float32)
        bg_level = rng.uniform(0.05, 0.35)
        bg = np.array(colorsys.hsv_to_rgb(rng.uniform(), 0.15, bg_level), dtype=np.float32)
        r = rng.uniform(0.25, 0.4) * image_size
        cy, cx = rng.uniform(r, image_size - r, size=2)
        m = _mask(SHAPES[c], yy, xx, cy, cx, r)[None]
        img = np.where(m, fg[:, None, None], bg[:, None, None])
        img = img + rng.normal(0, 0.03, size=img.shape)
        images[i] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def generate_multilabel(n: int, image_size: int = 32, num_classes: int = 5, per_image: int = 2, seed: int = 0,
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label shapes: ``images (n, 3, S, S) uint8`` showing 1..``per_image`` distinct classes' shapes (each in its
    class's hue, in its own quadrant-sized cell) and their ``(n, num_classes)`` int64 multi-hot targets."""
    if not 1 <= per_image <= min(num_classes, 4):
        raise ValueError("per_image must be in 1..min(num_classes, 4) (one shape per quadrant)")
    rng = np.random.default_rng(seed)
    half = image_size // 2
    yy, xx = np.mgrid[0:half, 0:half].astype(np.float32)
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    targets = np.zeros((n, num_classes), dtype=np.int64)
    for i in range(n):
        img = np.empty((3, image_size, image_size), dtype=np.float32)
        img[:] = np.array(colorsys.hsv_to_rgb(rng.uniform(), 0.15, rng.uniform(0.05, 0.35)), dtype=np.float32)[:, None, None]
        shown = rng.choice(num_classes, size=rng.integers(1, per_image + 1), replace=False)
        for c, cell in zip(shown, rng.permutation(4)):
            r = rng.uniform(0.3, 0.45) * half
            cy, cx = rng.uniform(r, half - r, size=2)
            fg = np.array(colorsys.hsv_to_rgb(c / num_classes, 0.8, rng.uniform(0.7, 1.0)), dtype=np.float32)
            oy, ox = (cell // 2) * half, (cell % 2) * half
            patch = img[:, oy:oy + half, ox:ox + half]
            img[:, oy:oy + half, ox:ox + half] = np.where(_mask(SHAPES[c], yy, xx, cy, cx, r)[None], fg[:, None, None], patch)
            targets[i, c] = 1
        img += rng.normal(0, 0.03, size=img.shape)
        images[i] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return images, targets
