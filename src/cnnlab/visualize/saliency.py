"""Image-specific class saliency (Simonyan et al. 2014): |d score_c / d x|, max over colour channels."""

from __future__ import annotations

from typing import Callable

import torch


def saliency_map(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` images, ``target`` class (int or ``(B,)``) -> ``(B, H, W)`` saliency.

    The gradient of the class score *before softmax* with respect to the input pixels, absolute
    value, maximum over channels. ``model`` maps images to ``(B, K)`` scores; its parameters are
    left untouched (no gradient is accumulated in them).
    """
    x = images.detach().clone().requires_grad_(True)
    scores = model(x)
    t = torch.as_tensor(target, device=scores.device).long().flatten()
    if t.numel() == 1:
        t = t.expand(scores.shape[0])
    picked = scores.gather(1, t[:, None]).sum()
    (grad,) = torch.autograd.grad(picked, x)
    return grad.abs().amax(dim=1)
