"""One linear classifier per tap: BatchNorm (no affine) then Linear, as in the linear-probe protocol.

The BatchNorm puts taps whose activations differ in scale by orders of magnitude on one footing, so a
single learning rate suits every head.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cnnlab.features import pool_side
from cnnlab.taps import TappedNetwork


def probe_dims(backbone: TappedNetwork, taps: Sequence[str], image_size: int, target_dims: int | None) -> dict[str, int]:
    """``{tap: D}``: the length of each tap's pooled feature vector (see :func:`cnnlab.features.pool_features`)."""
    shapes = backbone.tap_shapes(image_size)
    dims = {}
    for t in backbone.check_taps(taps):
        c, h, _ = shapes[t]
        s = pool_side(c, h, target_dims)
        dims[t] = c * s * s
    return dims


class ProbeHeads(nn.Module):
    """``{tap: (B, D_tap)}`` pooled features -> ``{tap: (B, num_classes)}`` logits, one head per tap."""

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__()
        # ModuleDict keys may not contain dots; tap names never do, but keep the order explicit
        self.taps = list(dims)
        self.heads = nn.ModuleDict({
            t: nn.Sequential(nn.BatchNorm1d(d, affine=False), nn.Linear(d, num_classes)) for t, d in dims.items()
        })

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self.heads[t](feats[t].float()) for t in self.taps}
