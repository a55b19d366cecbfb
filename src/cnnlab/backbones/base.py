"""The backbone contract shared by every architecture.

A backbone is a chain of named *stages*. Each stage's output is a *tap* that colorization
hypercolumns, linear probes and visualizations can read by name. The first stage normalizes the
raw input (RGB or one lightness channel in [0, 1]), so callers never normalize by hand.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.taps import dry_run_shapes

#: per-channel input statistics used by the built-in normalization (CIFAR-10 RGB, and its mean gray)
RGB_MEAN, RGB_STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)
GRAY_MEAN, GRAY_STD = (0.473,), (0.239,)


class InputNorm(nn.Module):
    """``(x - mean) / std`` per channel, with fixed buffers (part of the checkpoint)."""

    def __init__(self, in_channels: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        mean = mean or (RGB_MEAN if in_channels == 3 else GRAY_MEAN * in_channels)
        std = std or (RGB_STD if in_channels == 3 else GRAY_STD * in_channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Backbone(nn.Module):
    """Named stages run in order; every stage output is a tap (a :class:`~cnnlab.taps.TappedNetwork`).

    Subclasses fill ``self.stages`` (an ``nn.ModuleDict`` in execution order) and set
    ``default_taps`` (the taps worth probing: usually each conv block's output).
    """

    arch: str = "backbone"

    def __init__(self, in_channels: int):
        super().__init__()
        if in_channels not in (1, 3):
            raise UserError(f"in_channels must be 1 (lightness) or 3 (RGB), got {in_channels}")
        self.in_channels = in_channels
        self.input_norm = InputNorm(in_channels)
        self.stages = nn.ModuleDict()
        self.default_taps: list[str] = []
        self.arch_kwargs: dict = {}
        self._tap_shapes: dict[tuple, dict[str, tuple[int, int, int]]] = {}

    # ----------------------------------------------------------------------------- taps
    @property
    def tap_names(self) -> list[str]:
        return list(self.stages.keys())

    def check_taps(self, taps: Iterable[str]) -> list[str]:
        taps = list(taps)
        unknown = [t for t in taps if t not in self.stages]
        if unknown:
            raise UserError(f"unknown tap(s) {unknown} for {self.arch}: available taps are {self.tap_names}")
        return taps

    def forward_taps(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run the stages up to the deepest requested tap; ``{tap: (B, C, h, w)}``."""
        wanted = set(self.check_taps(taps))
        out: dict[str, torch.Tensor] = {}
        h = self.input_norm(x)
        for name, stage in self.stages.items():
            h = stage(h)
            if name in wanted:
                out[name] = h
                if len(out) == len(wanted):
                    break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> globally average-pooled last-stage features ``(B, out_dim)``."""
        h = self.input_norm(x)
        for stage in self.stages.values():
            h = stage(h)
        return h.mean(dim=(2, 3))

    @property
    def out_dim(self) -> int:
        return self.tap_shapes(self._probe_size())[self.tap_names[-1]][0]

    def _probe_size(self) -> int:
        return 32

    def tap_channels(self) -> dict[str, int]:
        """``{tap: channels}`` of every tap (a dry run at a size the architecture accepts)."""
        return {name: shape[0] for name, shape in self.tap_shapes(self._probe_size()).items()}

    @torch.no_grad()
    def tap_shapes(self, image_size: int) -> dict[str, tuple[int, int, int]]:
        """``{tap: (C, h, w)}`` for a square input of ``image_size`` pixels (a dry run, cached)."""
        key = (image_size,)
        if key not in self._tap_shapes:
            was_training = self.training
            self.eval()
            shapes = dry_run_shapes(lambda x: self.forward_taps(x, self.tap_names), self.in_channels, image_size,
                                    next(self.parameters()))
            self.train(was_training)
            self._tap_shapes[key] = shapes
        return self._tap_shapes[key]

    def tap_strides(self, image_size: int) -> dict[str, int]:
        """Approximate stride of each tap relative to the input (``image_size / h``)."""
        return {k: max(1, round(image_size / s[1])) for k, s in self.tap_shapes(image_size).items()}


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    # ReLU is out of place: attribution and guided-backprop hooks need the pre-activation intact
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=False),
    )


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode (BatchNorm uses its running statistics)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def no_inplace_relu(module: nn.Module) -> nn.Module:
    """Switch every ``nn.ReLU(inplace=True)`` in ``module`` to out-of-place (for backward hooks)."""
    for m in module.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return module
