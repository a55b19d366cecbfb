"""Maximally activating image patches: for chosen units of a tap, the top-k receptive-field crops over a dataset.

The dataset is streamed in batches; only a running top-k of (activation, image index, position) per
unit is kept, so memory is ``O(k * units)`` whatever the dataset size. Crops are cut afterwards from
the dataset by index. A crop contains the unit's whole receptive field (clipped at the image border)
and starts on the tap's stride grid, so running the backbone on the crop alone reproduces the
recorded activation at :attr:`Patch.pos_in_crop`. For networks without an analytic description (any
torchvision model) the receptive field is measured from the input gradient instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from cnnlab.backbones import Backbone
from cnnlab.errors import UserError
from cnnlab.io.progress import progress as show_progress
from cnnlab.taps import TappedNetwork

#: sub-modules that run beside the main path (their receptive field lies inside it)
SIDE_PATHS = ("shortcut", "downsample")


@dataclass(frozen=True)
class ReceptiveField:
    """Along one axis: output ``i`` of a tap sees inputs ``[start + i * jump, start + i * jump + size)``."""

    size: int
    jump: int
    start: float

    def span(self, i: int) -> tuple[int, int]:
        lo = self.start + i * self.jump
        return math.floor(lo), math.floor(lo) + self.size


def _pair(v) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


def receptive_fields(backbone: Backbone) -> dict[str, ReceptiveField]:
    """Analytic receptive field of every tap, walking each stage's convs and pools in order.

    Residual side paths (``shortcut``/``downsample``) are skipped: their field is inside the main path's.
    """
    size, jump, start = 1, 1, 0.0
    out = {}
    for tap, stage in backbone.stages.items():
        for name, m in stage.named_modules():
            if any(part in SIDE_PATHS for part in name.split(".")):
                continue
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
                p, d = _pair(m.padding), _pair(getattr(m, "dilation", 1))
                size += (k - 1) * d * jump
                start -= p * jump
                jump *= s
            elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                raise UserError(f"tap {tap!r} contains an adaptive pool: its receptive field is not fixed; choose an earlier tap")
        out[tap] = ReceptiveField(size, jump, start)
    return out


def receptive_field(model, tap: str, image_size: int) -> ReceptiveField:
    """The receptive field of ``tap``: analytic for a cnnlab backbone (or a subject built on one), else measured."""
    backbone = model if isinstance(model, Backbone) else getattr(model, "backbone", None)
    if backbone is not None:
        return receptive_fields(backbone)[tap]
    return measured_receptive_field(model, tap, image_size)


@torch.enable_grad()
def measured_receptive_field(subject, tap: str, image_size: int, samples: int = 4) -> ReceptiveField:
    """The field of the centre unit of ``tap`` (along the height) from the pixels its gradient reaches.

    The gradient is summed over a few random images, so that ReLUs switched off in one image do not hide part
    of the field; a field cut by the image border is extended symmetrically about the unit's centre.
    """
    device = next(subject.model.parameters()).device
    x = torch.rand(samples, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
    fmap = subject.forward_taps(x, [tap])[tap]
    if fmap.dim() != 4:
        raise UserError(f"layer {tap!r} of {subject.name} has no spatial map (shape {tuple(fmap.shape)}): choose a convolutional layer")
    i, j = fmap.shape[2] // 2, fmap.shape[3] // 2
    (grad,) = torch.autograd.grad(fmap[:, :, i, j].sum(), x)
    rows = torch.nonzero(grad.abs().sum(dim=(0, 1, 3)) > 0).flatten()
    jump = max(1, round(image_size / fmap.shape[2]))
    centre = (i + 0.5) * jump
    if len(rows) == 0:
        return ReceptiveField(1, jump, centre - 0.5 - i * jump)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    size = int(math.ceil(2 * max(hi - centre, centre - lo)))
    return ReceptiveField(size, jump, centre - size / 2 - i * jump)


@dataclass(frozen=True)
class Patch:
    unit: int
    rank: int
    activation: float
    index: int            # dataset index of the image
    pos: tuple[int, int]  # (i, j) in the tap's feature map
    box: tuple[int, int, int, int]  # (y0, y1, x0, x1) of the crop in the image
    pos_in_crop: tuple[int, int]    # (i, j) of the same unit when the crop alone is fed in


def crop_box(rf: ReceptiveField, i: int, j: int, height: int, width: int) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The crop holding the receptive field of output ``(i, j)``, aligned to the stride grid; and ``(i, j)`` inside it."""
    def axis(idx: int, n: int) -> tuple[int, int, int]:
        lo, hi = rf.span(idx)
        lo = max(0, lo) // rf.jump * rf.jump  # on the grid, so pools and strided convs see the same windows
        hi = min(n, math.ceil(hi / rf.jump) * rf.jump)
        return lo, max(hi, lo + 1), idx - lo // rf.jump

    y0, y1, ci = axis(i, height)
    x0, x1, cj = axis(j, width)
    return (y0, y1, x0, x1), (ci, cj)


class TopK:
    """A running top-k per unit of (value, image index, flat position): bounded memory over any stream."""

    def __init__(self, k: int, units: int):
        self.k = k
        self.values = torch.full((0, units), -math.inf)
        self.index = torch.zeros((0, units), dtype=torch.long)
        self.pos = torch.zeros((0, units), dtype=torch.long)

    def update(self, values: torch.Tensor, index: torch.Tensor, pos: torch.Tensor) -> None:
        """``values``, ``pos``: ``(B, U)``; ``index``: ``(B,)`` dataset indices."""
        v = torch.cat([self.values, values.float().cpu()])
        idx = torch.cat([self.index, index.cpu().view(-1, 1).expand_as(values)])
        p = torch.cat([self.pos, pos.cpu()])
        top = v.topk(min(self.k, len(v)), dim=0)
        self.values = top.values
        self.index = idx.gather(0, top.indices)
        self.pos = p.gather(0, top.indices)


@torch.no_grad()
def mine_top_patches(
    backbone: TappedNetwork,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    tap: str,
    units: Sequence[int] | None = None,
    k: int = 9,
    preprocess: Callable[[torch.Tensor], torch.Tensor] = lambda x: x.float() / 255,
    image_size: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
    progress: str | None = None,
    total: int | None = None,
) -> dict[int, list[Patch]]:
    """Top-``k`` patches per unit of ``tap`` (each image counts once per unit: its strongest position).

    ``backbone``: a :class:`~cnnlab.taps.TappedNetwork` (a cnnlab :class:`Backbone` or a
    :class:`~cnnlab.subject.Subject`); ``preprocess`` turns uint8 batches into its input. ``batches`` yield
    ``(uint8 images (B, 3, H, W), labels)`` in dataset order. Returns ``{unit: [Patch, ...]}`` best first.
    """
    backbone.check_taps([tap])
    backbone.eval().to(device)
    it = show_progress(batches, progress, total)
    top: TopK | None = None
    seen, width_map, size = 0, 0, image_size
    for images, _ in it:
        fmap = backbone.forward_taps(preprocess(images.to(device)), [tap])[tap]  # (B, C, h, w)
        if top is None:
            channels = fmap.shape[1]
            units = list(range(channels)) if units is None else list(units)
            bad = [u for u in units if not 0 <= u < channels]
            if bad:
                raise UserError(f"unknown unit(s) {bad} of tap {tap!r}: it has {channels} units (0..{channels - 1})")
            top = TopK(k, len(units))
            unit_idx = torch.as_tensor(units, device=fmap.device)
            width_map = fmap.shape[3]
            size = size or tuple(images.shape[2:])
        best, pos = fmap.index_select(1, unit_idx).flatten(2).max(dim=2)  # (B, U)
        top.update(best, torch.arange(seen, seen + len(images)), pos)
        seen += len(images)
    if top is None:
        raise UserError("the dataset is empty: nothing to mine patches from; check data.source and the split")
    rf = receptive_field(backbone, tap, size[0])
    out: dict[int, list[Patch]] = {}
    for col, unit in enumerate(units):
        patches = []
        for rank in range(top.values.shape[0]):
            p = int(top.pos[rank, col])
            i, j = divmod(p, width_map)
            box, in_crop = crop_box(rf, i, j, size[0], size[1])
            patches.append(Patch(unit, rank, float(top.values[rank, col]), int(top.index[rank, col]), (i, j), box, in_crop))
        out[unit] = patches
    return out


def crop(image: torch.Tensor, patch: Patch) -> torch.Tensor:
    """``(C, H, W)`` image -> the patch's crop ``(C, y1 - y0, x1 - x0)``."""
    y0, y1, x0, x1 = patch.box
    return image[..., y0:y1, x0:x1]


def pad_to(img: torch.Tensor, size: int, value: float = 1.0) -> torch.Tensor:
    """Centre a ``(C, h, w)`` crop on a ``(C, size, size)`` canvas (crops at borders are smaller)."""
    c, h, w = img.shape
    if h > size or w > size:
        img = torch.nn.functional.interpolate(img[None], size=(min(h, size), min(w, size)), mode="nearest")[0]
        c, h, w = img.shape
    canvas = torch.full((c, size, size), value, dtype=img.dtype)
    top, left = (size - h) // 2, (size - w) // 2
    canvas[:, top:top + h, left:left + w] = img
    return canvas


def patch_grid_images(patches: dict[int, list[Patch]], images: torch.Tensor, rf_size: int, image_size: int) -> torch.Tensor:
    """All crops, one row per unit, as float ``(units * k, 3, s, s)`` with ``s = min(rf_size, image_size)``."""
    s = min(rf_size, image_size)
    tiles = [pad_to(crop(images[p.index].float() / 255, p), s) for unit in patches for p in patches[unit]]
    return torch.stack(tiles)
