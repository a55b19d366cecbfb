"""Robustness transforms: random pad / jitter / scale / rotate / roll applied before each forward.

The random parameters are drawn by ``resample()`` and then *fixed* until the next ``resample()``:
the optimization module draws once per optimizer step, so L-BFGS, which calls its closure several
times within a step, sees one deterministic function of the image.
"""

from __future__ import annotations

from typing import Sequence

import kornia
import torch
import torch.nn.functional as F
from torch import nn


class RandomTransforms(nn.Module):
    """``(B, 3, H, W) -> (B, 3, H', W')``: pad, then one affine warp (scale, rotation, translation), then roll.

    ``pad``: pixels added on each side (``pad_value`` gray, or ``"reflect"``); ``jitter``: translation
    in pixels, uniform in [-jitter, jitter]; ``scales``: scale factors to choose from; ``angles``: maximal
    rotation in degrees (uniform in [-angles, angles]); ``roll``: circular shift up to ``roll`` pixels
    (DeepDream's jitter: no border effects; only the network's view is shifted, never the image);
    ``out_size``: finally resize the network's view to this many pixels (None: keep the padded size).
    """

    def __init__(self, pad: int = 0, jitter: int = 0, scales: Sequence[float] = (1.0,), angles: float = 0.0,
                 roll: int = 0, pad_mode: str = "constant", pad_value: float = 0.5, out_size: int | None = None):
        super().__init__()
        self.out_size = out_size
        self.pad, self.jitter, self.scales, self.angles = int(pad), int(jitter), [float(s) for s in scales], float(angles)
        self.roll, self.pad_mode, self.pad_value = int(roll), pad_mode, pad_value
        self.params: dict[str, torch.Tensor] | None = None

    @property
    def identity(self) -> bool:
        return not (self.pad or self.jitter or self.roll or self.angles or self.out_size or any(s != 1.0 for s in self.scales))

    def resample(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Draw new random parameters (on the CPU generator) and keep them until the next call."""
        g = generator
        u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
        scales = torch.tensor(self.scales)[torch.randint(len(self.scales), (batch,), generator=g)]
        self.params = {
            "shift": (u(batch, 2) * 2 - 1) * self.jitter,
            "angle": (u(batch) * 2 - 1) * self.angles,
            "scale": scales,
            "roll": torch.randint(-self.roll, self.roll + 1, (2,), generator=g) if self.roll else torch.zeros(2, dtype=torch.long),
        }
        return self.params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        if self.params is None or self.params["angle"].shape[0] != x.shape[0]:
            self.resample(x.shape[0])
        p = {k: v.to(x.device) for k, v in self.params.items()}
        if self.pad:
            if self.pad_mode == "constant":
                x = F.pad(x, [self.pad] * 4, mode="constant", value=self.pad_value)
            else:
                x = F.pad(x, [self.pad] * 4, mode=self.pad_mode)
        if self.jitter or self.angles or any(s != 1.0 for s in self.scales):
            b, _, h, w = x.shape
            center = torch.tensor([[(w - 1) / 2.0, (h - 1) / 2.0]], device=x.device, dtype=x.dtype).expand(b, 2)
            scale = p["scale"].to(x.dtype).view(b, 1).expand(b, 2)
            m = kornia.geometry.transform.get_rotation_matrix2d(center, p["angle"].to(x.dtype), scale)
            m = torch.cat([m[:, :, :2], m[:, :, 2:] + p["shift"].to(x.dtype).view(b, 2, 1)], dim=2)
            x = kornia.geometry.transform.warp_affine(x, m, (h, w), padding_mode="reflection", align_corners=True)
        if self.roll:
            x = torch.roll(x, shifts=(int(p["roll"][0]), int(p["roll"][1])), dims=(2, 3))
        if self.out_size and tuple(x.shape[-2:]) != (self.out_size, self.out_size):
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return x

    def extra_repr(self) -> str:
        return f"pad={self.pad}, jitter={self.jitter}, scales={self.scales}, angles={self.angles}, roll={self.roll}"


def lucid_transforms(size: int, out_size: int | None = None) -> RandomTransforms:
    """The usual robustness set scaled to the image size (pad 1/8, jitter 1/16, scale +-10%, rotate +-10 deg)."""
    return RandomTransforms(pad=max(1, size // 8), jitter=max(1, size // 16), scales=[0.9, 0.95, 1.0, 1.05, 1.1],
                            angles=10.0, out_size=out_size)
