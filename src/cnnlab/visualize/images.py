"""Input images for the experiments: files, scikit-image's sample photos, CIFAR-10 test images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.errors import UserError

log = logging.getLogger("cnnlab")

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
#: ``size=None`` keeps a user's image as it is only up to this long side: the optimizations and attributions run a
#: network with gradients on the whole image, whose memory grows with the pixel count: a phone photo would not fit.
#: An explicit ``size`` is always honoured.
MAX_SIDE = 1024


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = arr[..., :3]
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()
    return (t / 255.0 if arr.dtype == np.uint8 else t).clamp(0, 1).unsqueeze(0)


def resize(img: torch.Tensor, size: int | Sequence[int] | None) -> torch.Tensor:
    """``(B, 3, H, W)`` -> shorter side ``size`` (int, aspect kept) or exactly ``(h, w)``; None keeps it."""
    if size is None:
        return img
    h, w = img.shape[-2:]
    if isinstance(size, int):
        s = size / min(h, w)
        out = (max(1, round(h * s)), max(1, round(w * s)))
    else:
        out = (int(size[0]), int(size[1]))
    return F.interpolate(img, size=out, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def load_image(spec: str, size: int | Sequence[int] | None = None) -> torch.Tensor:
    """``spec`` -> ``(1, 3, H, W)`` in [0, 1], resized by :func:`resize` (``size=None``: long side at most ``MAX_SIDE``).

    ``spec``: an image file path, or ``skimage:<name>`` (astronaut, chelsea, coffee, ...).
    """
    return _bounded(_read(spec), size)


def _bounded(img: torch.Tensor, size: int | Sequence[int] | None) -> torch.Tensor:
    h, w = img.shape[-2:]
    if size is None and max(h, w) > MAX_SIDE:
        out = (max(1, round(h * MAX_SIDE / max(h, w))), max(1, round(w * MAX_SIDE / max(h, w))))
        log.warning("image of %dx%d px runs at %dx%d (long side %d); pass viz.size=<px> for another size", w, h, out[1], out[0], MAX_SIDE)
        return resize(img, out)
    return resize(img, size)


def _read(spec: str) -> torch.Tensor:
    spec = str(spec)
    if spec.startswith("skimage:"):
        import skimage.data

        name = spec.split(":", 1)[1]
        if name not in SKIMAGE_PHOTOS:
            raise UserError(f"unknown scikit-image photo {name!r}: choose one of {list(SKIMAGE_PHOTOS)}")
        return _to_tensor(getattr(skimage.data, name)())
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"image {path} does not exist: pass an image file or skimage:<name> ({', '.join(SKIMAGE_PHOTOS)})")
    from cnnlab.io.images import open_image

    return _to_tensor(np.asarray(open_image(path)))


def cifar_test_images(count: int = 10, data_dir: str | None = None, per_class: bool = True, offset: int = 0,
                      ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``count`` CIFAR-10 test images ``(N, 3, 32, 32)`` in [0, 1], labels and class names.

    ``per_class``: cycle through the classes (the first test image of each class, then the second ...).
    The archive is found in ``data_dir`` or ``$CNNLAB_DATA`` (see ``ImageDataModule``).
    """
    from cnnlab.data import ImageDataModule

    dm = ImageDataModule(name="cifar10", data_dir=str(data_dir or "data"), progress=False, val_fraction=0.0)
    dm.setup()
    test = dm.splits["test"]
    labels = test.labels
    if per_class:
        from cnnlab.data.datamodule import round_robin_by_class

        idx = round_robin_by_class(labels, count, offset)
    else:
        idx = torch.arange(offset, min(offset + count, len(labels)))
    return test.images[idx].float() / 255.0, labels[idx].long(), list(dm.classes)
