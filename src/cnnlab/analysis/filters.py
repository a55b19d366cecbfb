"""Filter weights as images: the first layer in colour (or gray), deeper layers as per-input-channel kernels."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.backbones import Backbone
from cnnlab.errors import UserError, close_matches


def conv_layers(model) -> list[tuple[str, nn.Conv2d]]:
    """Every ``nn.Conv2d`` in execution order.

    ``model``: a cnnlab :class:`Backbone` or a :class:`~cnnlab.subject.Subject` built on one (names
    ``<tap>.<path>``), or any other subject (its module names, e.g. ``layer1.0.conv1``).
    """
    backbone = model if isinstance(model, Backbone) else model.backbone
    if backbone is None:
        return [(name, m) for name, m in model.model.named_modules() if isinstance(m, nn.Conv2d)]
    return [(f"{tap}.{name}" if name else tap, m) for tap, stage in backbone.stages.items()
            for name, m in stage.named_modules() if isinstance(m, nn.Conv2d)]


def find_conv(model, layer: str | None = None) -> tuple[str, nn.Conv2d]:
    """The conv named ``layer`` (a full name, or a layer whose first conv is meant); ``None``: the first conv."""
    convs = conv_layers(model)
    if not convs:
        raise UserError(f"{model.arch} has no Conv2d layers to draw")
    if layer is None:
        return convs[0]
    for name, m in convs:
        if name == layer or name.startswith(f"{layer}."):
            return name, m
    raise UserError(close_matches(layer, [n for n, _ in convs], "conv layer", of=model.arch) + " (or a layer that contains one)")


def normalize_filters(weight: torch.Tensor, per_filter: bool = True) -> torch.Tensor:
    """``(N, C, k, k)`` weights -> images in [0, 1], 0.5 = zero weight (symmetric scaling keeps sign visible)."""
    w = weight.detach().float().cpu()
    dims = (1, 2, 3) if per_filter else (0, 1, 2, 3)
    scale = w.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12)
    return 0.5 + 0.5 * w / scale


def first_layer_images(weight: torch.Tensor) -> torch.Tensor:
    """First-layer ``(N, C_in, k, k)`` filters as ``(N, C_in, k, k)`` images in [0, 1] (RGB when C_in = 3, else gray)."""
    if weight.shape[1] not in (1, 3):
        raise UserError(f"a first-layer filter grid needs 1 or 3 input channels, got {weight.shape[1]}: draw it with layer kernels instead")
    return normalize_filters(weight)


def kernel_images(weight: torch.Tensor, max_out: int = 16, max_in: int = 16) -> torch.Tensor:
    """A deeper layer's kernels ``(N, C_in, k, k)`` -> gray tiles ``(n_out * n_in, 1, k, k)``, one row per output filter.

    Each output filter is scaled on its own so weak filters stay visible.
    """
    w = normalize_filters(weight[:max_out, :max_in])
    return w.reshape(-1, 1, *w.shape[2:])

