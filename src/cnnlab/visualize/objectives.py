"""Objectives: small functions of named activations that add and scale like numbers.

Every objective is a *loss* (the optimizer minimizes it): "maximize a class score" is the negative
score. ``acts`` maps layer names to activations; ``logits`` is the network output and ``input`` the
image before robustness transforms (for image priors)::

    obj = class_logit([3, 5]) + 1e-2 * l2() + 0.5 * tv(beta=2)
    obj.layers   # {"logits", "input"}: the hooks a run needs
    obj(acts)    # scalar tensor
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from cnnlab.visualize import regularizers as R
from cnnlab.hooks import INPUT, LOGITS

Acts = Mapping[str, torch.Tensor]


class Objective:
    """``fn(acts) -> scalar`` plus the layer names it reads; ``+``, ``-``, ``*`` by numbers, ``sum()`` work."""

    def __init__(self, fn: Callable[[Acts], torch.Tensor], layers: Sequence[str] = (), name: str = "objective"):
        self.fn, self.layers, self.name = fn, frozenset(layers), name

    def __call__(self, acts: Acts) -> torch.Tensor:
        return self.fn(acts)

    def __add__(self, other) -> "Objective":
        if isinstance(other, (int, float)):
            return Objective(lambda a: self(a) + other, self.layers, f"{self.name} + {other}")
        return Objective(lambda a: self(a) + other(a), self.layers | other.layers, f"{self.name} + {other.name}")

    def __radd__(self, other) -> "Objective":  # sum([...]) starts from 0
        return self if isinstance(other, (int, float)) and other == 0 else self.__add__(other)

    def __mul__(self, k: float) -> "Objective":
        k = float(k)
        return Objective(lambda a: k * self(a), self.layers, f"{k:g} * ({self.name})")

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return self * -1.0

    def __sub__(self, other) -> "Objective":
        return self + (-other if isinstance(other, Objective) else -float(other))

    def __truediv__(self, k: float) -> "Objective":
        return self * (1.0 / float(k))

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _per_image(index: int | Sequence[int], batch: int, device) -> torch.Tensor:
    """One index per image: an int applies to all, a sequence must have one entry per image."""
    idx = torch.as_tensor(index, device=device).long().flatten()
    if idx.numel() == 1:
        return idx.expand(batch)
    if idx.numel() != batch:
        raise ValueError(f"{idx.numel()} indices for a batch of {batch} images")
    return idx


# --------------------------------------------------------------------------------- units
def class_logit(classes: int | Sequence[int]) -> Objective:
    """Maximize the score before softmax of class ``classes[b]`` for image b (Simonyan et al.)."""

    def fn(a):
        z = a[LOGITS]
        return -z.gather(1, _per_image(classes, z.shape[0], z.device)[:, None]).mean()

    return Objective(fn, [LOGITS], f"class_logit({classes})")


def channel(layer: str, channels: int | Sequence[int]) -> Objective:
    """Maximize the mean activation of channel ``channels[b]`` at ``layer`` for image b."""

    def fn(a):
        h = a[layer]
        if h.dim() == 2:
            h = h[:, :, None, None]
        idx = _per_image(channels, h.shape[0], h.device)
        return -h[torch.arange(h.shape[0], device=h.device), idx].mean()

    return Objective(fn, [layer], f"channel({layer}, {channels})")


def neuron(layer: str, channels: int | Sequence[int], y: int | None = None, x: int | None = None) -> Objective:
    """Maximize one unit: channel ``channels[b]`` at spatial position (y, x) (default: the centre)."""

    def fn(a):
        h = a[layer]
        if h.dim() == 2:
            h = h[:, :, None, None]
        yy = h.shape[2] // 2 if y is None else y
        xx = h.shape[3] // 2 if x is None else x
        idx = _per_image(channels, h.shape[0], h.device)
        return -h[torch.arange(h.shape[0], device=h.device), idx, yy, xx].mean()

    return Objective(fn, [layer], f"neuron({layer}, {channels})")


def layer_l2(layer: str) -> Objective:
    """DeepDream: maximize ``0.5 * ||a||^2`` per image (its gradient at the layer is ``a`` itself)."""

    def fn(a):
        h = a[layer]
        return -0.5 * h.pow(2).sum() / h.shape[0]

    return Objective(fn, [layer], f"layer_l2({layer})")


# --------------------------------------------------------------------------------- reconstruction
def feature_reconstruction(layer: str, target: torch.Tensor) -> Objective:
    """Mahendran & Vedaldi: ``||phi(x) - phi0||^2 / ||phi0||^2`` per image, averaged."""
    target = target.detach()

    def fn(a):
        h = a[layer]
        t = target.to(h.device).expand_as(h)
        num = (h - t).flatten(1).pow(2).sum(1)
        den = t.flatten(1).pow(2).sum(1).clamp_min(1e-12)
        return (num / den).mean()

    return Objective(fn, [layer], f"reconstruct({layer})")


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of feature maps; 0 at the content image."""
    return F.mse_loss(features, target.expand_as(features))


def gram(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, C)`` Gram matrices ``F F^T / (H W)`` (symmetric, positive semi-definite)."""
    f = features.flatten(2)
    return f @ f.transpose(1, 2) / f.shape[2]


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of Gram matrices; 0 between identical features."""
    g = gram(features)
    return (g - target_gram.expand_as(g)).pow(2).mean()


def content(layer: str, target: torch.Tensor) -> Objective:
    target = target.detach()
    return Objective(lambda a: content_loss(a[layer], target.to(a[layer].device)), [layer], f"content({layer})")


def style(layers: Sequence[str], target_grams: Mapping[str, torch.Tensor], weights: Sequence[float] | None = None) -> Objective:
    """Gatys et al.: weighted sum of Gram-matrix losses over ``layers`` (default: equal weights summing to 1)."""
    layers = list(layers)
    weights = list(weights) if weights is not None else [1.0 / len(layers)] * len(layers)
    grams = {k: v.detach() for k, v in target_grams.items()}

    def fn(a):
        return sum(w * style_loss(a[l], grams[l].to(a[l].device)) for l, w in zip(layers, weights))

    return Objective(fn, layers, f"style({','.join(layers)})")


# --------------------------------------------------------------------------------- classification
def cross_entropy(classes: int | Sequence[int], towards: bool = True) -> Objective:
    """Cross-entropy towards class ``classes[b]`` (targeted, fooling), or away from it (``towards=False``)."""

    def fn(a):
        z = a[LOGITS]
        ce = F.cross_entropy(z, _per_image(classes, z.shape[0], z.device))
        return ce if towards else -ce

    return Objective(fn, [LOGITS], f"ce({'to' if towards else 'away'} {classes})")


# --------------------------------------------------------------------------------- image priors
def l2(center: float = 0.5) -> Objective:
    return Objective(lambda a: R.l2_norm(a[INPUT], center), [INPUT], "l2")


def alpha(alpha: float = 6.0, center: float = 0.5) -> Objective:
    return Objective(lambda a: R.alpha_norm(a[INPUT], alpha, center), [INPUT], f"alpha_norm({alpha})")


def tv(beta: float = 2.0) -> Objective:
    return Objective(lambda a: R.total_variation(a[INPUT], beta), [INPUT], f"tv({beta})")
