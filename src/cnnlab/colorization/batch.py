"""One batch of colour images in every form colorization needs, each converted at most once.

The data module delivers RGB or Lab (``data.color_space=lab``: no conversion at all for Lab-L input
and Lab-bin targets); the model input, the colour targets, the truth for the metrics and the
baselines' lightness are all read from here.
"""

from __future__ import annotations

from functools import cached_property

import torch

from cnnlab.color import lab_to_rgb, rgb_to_gray, rgb_to_hue_chroma, rgb_to_lab
from cnnlab.colorization.bins import image_has_colour
from cnnlab.errors import UserError

#: what the data module may deliver to a colorizer
BATCH_SPACES = ("rgb", "lab")


class ColourBatch:
    """Images ``(B, 3, H, W)`` in ``space`` (rgb in [0, 1] or raw Lab) seen through ``input_space`` (L | gray)."""

    def __init__(self, images: torch.Tensor, space: str = "rgb", input_space: str = "L"):
        if images.dim() != 4 or images.shape[1] != 3:
            raise UserError(f"colorization needs colour batches (B, 3, H, W) but got {tuple(images.shape)}: "
                            "set data.color_space=lab (or rgb)")
        if space not in BATCH_SPACES:
            raise UserError(f"colorization reads data.color_space in {list(BATCH_SPACES)}, not {space!r}")
        self.space, self.input_space = space, input_space
        if space == "rgb":
            self.rgb = images
        else:
            self.lab = images

    @cached_property
    def rgb(self) -> torch.Tensor:
        """``(B, 3, H, W)`` sRGB in [0, 1]."""
        return lab_to_rgb(self.lab)

    @cached_property
    def lab(self) -> torch.Tensor:
        """``(B, 3, H, W)`` Lab, L in [0, 100]."""
        return rgb_to_lab(self.rgb)

    @property
    def ab(self) -> torch.Tensor:
        """``(B, 2, H, W)``: the true colour."""
        return self.lab[:, 1:]

    @cached_property
    def x(self) -> torch.Tensor:
        """The backbone's input ``(B, 1, H, W)`` in [0, 1]: Lab L / 100 or the mean of RGB."""
        return self.lab[:, :1] / 100.0 if self.input_space == "L" else rgb_to_gray(self.rgb)

    @cached_property
    def colour(self) -> torch.Tensor:
        """``(B,)`` bool: the image has colour (all-gray images carry no colour target)."""
        return image_has_colour(self.ab)

    def targets(self, family: str) -> torch.Tensor:
        """The target map ``(B, 2, H, W)``: (hue, chroma) for ``hue_chroma``, (a, b) for ``lab_bins``."""
        if family == "hue_chroma":
            return torch.stack(rgb_to_hue_chroma(self.rgb), 1)
        return self.ab
