"""Hypercolumns: the features of several backbone taps at a pixel, concatenated (one head, two uses:
colorization and semantic segmentation run the same :class:`HypercolumnModel` machinery).

Training samples them *sparsely*: each tap map is bilinearly sampled with ``F.grid_sample`` at K
random pixel centres per image, so the head's cost and memory grow with K, not with H*W, and
gradients flow back to the four neighbouring cells of every tap. Inference runs the same head
*densely* as 1x1 convolutions over taps upsampled to the image size (bilinear, ``align_corners=False``,
which agrees exactly with the sparse sampling at pixel centres).

Coordinates: pixel ``(y, x)`` of an ``H x W`` image has its centre at normalized
``((2x + 1) / W - 1, (2y + 1) / H - 1)``; a tap of any stride sees the same normalized point.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def random_pixels(batch: int, k: int, height: int, width: int, margin: int = 0,
                  generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``(B, K, 2)`` long pixel indices ``(y, x)``, uniform over the image minus a ``margin``-pixel border."""
    margin = min(margin, (min(height, width) - 1) // 2)
    y = torch.randint(margin, height - margin, (batch, k), generator=generator, device=device)
    x = torch.randint(margin, width - margin, (batch, k), generator=generator, device=device)
    return torch.stack([y, x], -1)


def _grid(ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], -1)


def grid_pixels(height: int, width: int, stride: int = 1, device=None) -> torch.Tensor:
    """``(P, 2)`` long pixel indices ``(y, x)`` of a regular grid (every ``stride``-th pixel), row-major."""
    return _grid(torch.arange(stride // 2, height, stride, device=device),
                 torch.arange(stride // 2, width, stride, device=device))


def grid_bands(height: int, width: int, stride: int, max_pixels: int, device=None) -> Iterator[torch.Tensor]:
    """:func:`grid_pixels` in bands of whole grid rows of at most ``max_pixels`` pixels (at least one row).

    Yields ``(P_i, 2)`` in row-major order, one band at a time (never the whole grid): running a dense
    head band by band bounds its memory by ``max_pixels`` whatever the image size, and each band
    reshapes to a ``(rows_i, grid width)`` map.
    """
    ys = torch.arange(stride // 2, height, stride, device=device)
    xs = torch.arange(stride // 2, width, stride, device=device)
    for band in ys.split(max(1, max_pixels // max(1, len(xs)))):
        yield _grid(band, xs)


def grid_map(values: torch.Tensor, grid_width: int) -> torch.Tensor:
    """Per-pixel values ``(B, P, C)`` of whole grid rows -> maps ``(B, C, P / grid_width, grid_width)``."""
    return values.transpose(1, 2).reshape(values.shape[0], values.shape[2], -1, grid_width)


def pixel_centers(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel indices ``(..., 2)`` ``(y, x)`` -> ``grid_sample`` coordinates ``(..., 2)`` ``(x, y)`` in [-1, 1]."""
    y = (2 * pixels[..., 0].float() + 1) / height - 1
    x = (2 * pixels[..., 1].float() + 1) / width - 1
    return torch.stack([x, y], -1)


def gather_pixels(image: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Values of ``image (B, C, H, W)`` at ``pixels (B, K, 2)`` -> ``(B, K, C)`` (exact, no interpolation)."""
    b, c, h, w = image.shape
    flat = (pixels[..., 0] * w + pixels[..., 1]).unsqueeze(1).expand(b, c, -1)
    return image.flatten(2).gather(2, flat).transpose(1, 2)


def sample_hypercolumns(taps: Sequence[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of each tap ``(B, C_i, h_i, w_i)`` at ``coords (B, K, 2)`` -> ``(B, K, sum C_i)``.

    Border padding matches ``F.interpolate``'s edge handling, so this equals the dense hypercolumn.
    """
    grid = coords.unsqueeze(1).to(taps[0].dtype)  # (B, 1, K, 2)
    cols = [F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0] for t in taps]
    return torch.cat(cols, 1).transpose(1, 2)


def dense_hypercolumns(taps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Every tap upsampled to ``size`` and concatenated: ``(B, sum C_i, H, W)``."""
    return torch.cat([t if t.shape[-2:] == tuple(size) else
                      F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in taps], 1)


class TapNorm(nn.Module):
    """Per-tap BatchNorm (no affine) on the tap maps at their own resolution.

    Tap scales differ by orders of magnitude (a ReLU map of 16 channels next to one of 512); this
    brings every channel to zero mean and unit variance before the head. It runs before sampling,
    and a per-channel affine map commutes with bilinear interpolation, so sparse and dense
    hypercolumns see identical features in training and in eval mode.
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.norms = nn.ModuleList([nn.BatchNorm2d(c, affine=False) for c in channels])

    def forward(self, taps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [norm(t) for norm, t in zip(self.norms, taps)]


class HypercolumnHead(nn.Module):
    """hypercolumn ``(..., D)`` -> FC(hidden) -> ReLU -> dropout -> one linear layer per output group.

    :meth:`forward` runs on sampled hypercolumns ``(N, D)``; :meth:`dense` runs the same weights as
    1x1 convolutions over ``(B, D, H, W)``. (Projecting coarse taps before upsampling is
    mathematically equal, but measured slower on CPU: upsampling ``hidden`` channels is memory-bound.)
    """

    def __init__(self, in_dim: int, out_dims: Sequence[int], hidden: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.fc = nn.Linear(in_dim, hidden)
        self.dropout = dropout
        self.out = nn.Linear(hidden, sum(out_dims))
        self.out_dims = list(out_dims)

    def _tail(self, h: torch.Tensor, conv: bool) -> torch.Tensor:
        h = F.dropout(F.relu(h), self.dropout, self.training)
        if conv:
            return F.conv2d(h, self.out.weight[:, :, None, None], self.out.bias)
        return self.out(h)

    def forward(self, cols: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` -> logits ``(N, sum out_dims)``."""
        return self._tail(self.fc(cols), conv=False)

    def dense(self, cols: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W)`` -> logits ``(B, sum out_dims, H, W)`` (1x1 convolutions, same weights)."""
        return self._tail(F.conv2d(cols, self.fc.weight[:, :, None, None], self.fc.bias), conv=True)

    def split(self, logits: torch.Tensor, dim: int = -1) -> list[torch.Tensor]:
        """Logits -> one tensor per output group along ``dim``."""
        return list(logits.split(self.out_dims, dim=dim))


class HypercolumnModel:
    """The taps -> :class:`TapNorm` -> :class:`HypercolumnHead` path shared by the colorizer and the segmenter.

    A mixin for a module with ``backbone`` (a cnnlab Backbone) and ``hparams.eval_chunk_pixels``;
    :meth:`build_hypercolumn` adds ``taps``, ``tap_norm`` and ``head`` (their state_dict keys are
    ``tap_norm.*`` and ``head.*``). The input ``x`` is whatever the backbone takes, ``(B, C_in, H, W)``.
    """

    def build_hypercolumn(self, taps: Sequence[str] | None, out_dims: Sequence[int], hidden: int, dropout: float) -> None:
        """Check the taps (None: the backbone's defaults) and build the per-tap norm and the head."""
        from cnnlab.errors import UserError

        self.taps = self.backbone.check_taps(list(taps) if taps else self.backbone.default_taps)
        if not self.taps:
            raise UserError(f"{self.backbone.arch} has no default taps: set model.taps to some of {self.backbone.tap_names}")
        channels = [self.backbone.tap_channels()[t] for t in self.taps]
        self.tap_norm = TapNorm(channels)
        self.head = HypercolumnHead(sum(channels), out_dims, hidden=hidden, dropout=dropout)

    def tap_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Input ``(B, C_in, H, W)`` -> normalized tap maps ``[(B, C_i, h_i, w_i)]`` in ``self.taps`` order."""
        feats = self.backbone.forward_taps(x, self.taps)
        return self.tap_norm([feats[t] for t in self.taps])

    def sparse_logits(self, x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Input ``(B, C_in, H, W)``, pixels ``(B, K, 2)`` -> logits ``(B, K, O)`` from sampled hypercolumns."""
        return self.head(sample_hypercolumns(self.tap_maps(x), pixel_centers(pixels, *x.shape[-2:])))

    def grid_logits(self, x: torch.Tensor, stride: int = 1):
        """Yield ``(pixels (B, P, 2), logits (B, P, O))`` over whole rows of the ``stride`` grid of input
        ``(B, C_in, H, W)``, about ``eval_chunk_pixels`` at a time: memory beyond the backbone's tap maps is set
        by the chunk, not by the image."""
        b, _, h, w = x.shape
        maps = self.tap_maps(x)
        for pix in grid_bands(h, w, stride, max(1, self.hparams.eval_chunk_pixels // b), x.device):
            pix = pix.expand(b, -1, -1)
            yield pix, self.head(sample_hypercolumns(maps, pixel_centers(pix, h, w)))

    def banded_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Input ``(B, C_in, H, W)`` -> logits ``(B, O, H, W)`` at every pixel, the head run in bands (:meth:`grid_logits`)."""
        w = x.shape[-1]
        return torch.cat([grid_map(logits, w) for _, logits in self.grid_logits(x)], 2)

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Input ``(B, C_in, H, W)`` -> logits ``(B, O, H, W)`` at every pixel (1x1 convs over upsampled taps)."""
        return self.head.dense(dense_hypercolumns(self.tap_maps(x), x.shape[-2:]))
