"""Occlusion sensitivity (Zeiler & Fergus): the class probability as a gray square slides over the image."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.io.progress import progress as show_progress


def occlusion_positions(size: int, patch: int, stride: int) -> list[int]:
    """Top-left offsets along one axis; the last one is flush with the border so every pixel gets covered."""
    if patch > size:
        raise UserError(f"occlusion patch {patch} is larger than the image ({size} px): lower the occlusion size")
    pos = list(range(0, size - patch + 1, stride))
    if pos[-1] != size - patch:
        pos.append(size - patch)
    return pos


@torch.no_grad()
def occlusion_map(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor | int,
    patch: int = 8,
    stride: int = 2,
    fill: float | torch.Tensor = 0.5,
    output: str = "prob",
    chunk: int = 256,
    progress: str | None = None,
) -> torch.Tensor:
    """``images (B, C, H, W)`` model input -> ``(B, n_y, n_x)`` class probability (or logit) per occluder position.

    Entry ``[b, a, c]`` is the model's output for class ``target[b]`` when the square at offset
    ``(ys[a], xs[c])`` (see :func:`occlusion_positions`) is replaced by ``fill`` (a value or a per-channel
    ``(C,)`` tensor in model-input space, e.g. gray). Occluded copies are evaluated ``chunk`` at a time.
    ``progress``: the title of a bar over the images (with the time left).
    """
    if output not in ("prob", "logit"):
        raise UserError(f"occlusion output must be 'prob' or 'logit', got {output!r}")
    b, c, h, w = images.shape
    target = torch.as_tensor(target, device=images.device).long().expand(b)
    ys, xs = occlusion_positions(h, patch, stride), occlusion_positions(w, patch, stride)
    fill_t = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(-1, 1, 1).expand(c, patch, patch)
    out = torch.empty(b, len(ys), len(xs))
    offsets = [(a, y, q, x) for a, y in enumerate(ys) for q, x in enumerate(xs)]
    for i in show_progress(range(b), progress):
        for s in range(0, len(offsets), chunk):
            part = offsets[s:s + chunk]
            batch = images[i:i + 1].repeat(len(part), 1, 1, 1)
            for n, (_, y, _, x) in enumerate(part):
                batch[n, :, y:y + patch, x:x + patch] = fill_t
            logits = model(batch)
            vals = logits.softmax(1) if output == "prob" else logits
            vals = vals[:, target[i]].cpu()
            for n, (a, _, q, _) in enumerate(part):
                out[i, a, q] = vals[n]
    return out


def occlusion_heatmap(prob_map: torch.Tensor, size: tuple[int, int], patch: int, stride: int) -> torch.Tensor:
    """Spread ``(n_y, n_x)`` occluder values back to pixels ``(H, W)``: each pixel averages the positions covering it."""
    h, w = size
    ys, xs = occlusion_positions(h, patch, stride), occlusion_positions(w, patch, stride)
    acc, cnt = torch.zeros(h, w), torch.zeros(h, w)
    for a, y in enumerate(ys):
        for q, x in enumerate(xs):
            acc[y:y + patch, x:x + patch] += prob_map[a, q]
            cnt[y:y + patch, x:x + patch] += 1
    return acc / cnt.clamp_min(1)
