"""Colour-space conversions as pure, batched tensor functions (run on the training device).

All functions take and return float tensors of shape ``(B, C, H, W)``. RGB is in ``[0, 1]``.
Lab follows CIE L*a*b* (D65): ``L`` in ``[0, 100]``, ``a`` and ``b`` roughly in ``[-110, 110]``.
"""

from __future__ import annotations

import kornia.color as KC
import torch

from cnnlab.errors import UserError

#: colour spaces a data module can deliver, with their channel counts
COLOR_SPACES = {"rgb": 3, "lab": 3, "gray": 1, "L": 1}


def channels_of(color_space: str) -> int:
    """Number of channels of ``color_space`` (one of :data:`COLOR_SPACES`)."""
    if color_space not in COLOR_SPACES:
        raise UserError(
            f"unknown colour space {color_space!r}: choose one of {sorted(COLOR_SPACES)}"
        )
    return COLOR_SPACES[color_space]


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` sRGB in [0, 1] -> ``(B, 3, H, W)`` Lab (L in [0, 100])."""
    return KC.rgb_to_lab(rgb.clamp(0.0, 1.0))


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` Lab -> ``(B, 3, H, W)`` sRGB clipped to [0, 1]."""
    return KC.lab_to_rgb(lab, clip=True)


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, 1, H, W)``: the plain mean of R, G and B (as in hypercolumn colorization)."""
    return rgb.mean(dim=1, keepdim=True)


def rgb_to_lightness(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, 1, H, W)``: Lab L rescaled to [0, 1]."""
    return rgb_to_lab(rgb)[:, :1] / 100.0


def rgb_to_hue_chroma(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3, H, W)`` -> hue ``(B, H, W)`` in [0, 1) (HSV hue) and chroma ``(B, H, W)`` = max - min."""
    hsv = KC.rgb_to_hsv(rgb.clamp(0.0, 1.0))
    hue = hsv[:, 0] / (2 * torch.pi)
    chroma = rgb.amax(dim=1) - rgb.amin(dim=1)
    return hue.remainder(1.0), chroma


def convert(rgb: torch.Tensor, color_space: str) -> torch.Tensor:
    """Convert ``(B, 3, H, W)`` RGB in [0, 1] to ``color_space`` (see :data:`COLOR_SPACES`).

    ``lab`` is returned raw (L in [0, 100]); ``gray`` and ``L`` are in [0, 1].
    """
    channels_of(color_space)
    if color_space == "rgb":
        return rgb
    if color_space == "gray":
        return rgb_to_gray(rgb)
    if color_space == "L":
        return rgb_to_lightness(rgb)
    return rgb_to_lab(rgb)


#: square root of the colour covariance of natural images (ImageNet), as a 3x3 RGB mixing matrix;
#: optimizing in the decorrelated space it maps from balances the colour channels' step sizes
COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


def color_matrix() -> torch.Tensor:
    """The 3x3 map from the decorrelated colour space to RGB (columns of norm <= 1)."""
    return COLOR_CORRELATION_SQRT / COLOR_CORRELATION_SQRT.norm(dim=0).max()
