"""Reading and writing images: one reader for every image a user may hand in, one resize, one PNG writer.

Every PIL mode becomes 8-bit RGB the way a viewer shows it: 16- and 32-bit grayscale are scaled
from their full range (``convert("RGB")`` would clip them, turning a 16-bit PNG white), palette
and transparent images are composited on white, CMYK is converted, and EXIF orientation is
applied, so a phone photo comes out upright.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from cnnlab.errors import UserError
from cnnlab.io.files import atomic_save

#: file suffixes read as images (lower case), for folders and archives of images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")

#: scikit-image's sample photos, readable as ``skimage:<name>`` (see :func:`load_image`)
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
#: ``size=None`` keeps a user's image as it is only up to this long side (:func:`load_image`): optimizations and
#: attributions run a network with gradients on the whole image, whose memory grows with the pixel count: a phone
#: photo would not fit. An explicit ``size`` is always honoured.
MAX_SIDE = 1024

log = logging.getLogger("cnnlab")

#: full-scale value of the integer grayscale modes that ``convert("RGB")`` would clip at 255
_WIDE_GRAY = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def _wide_gray_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit ``L`` scaled from the mode's full range."""
    arr = np.asarray(im)
    if im.mode == "F":
        # float images: [0, 1] when they fit, else the 16-bit range (what a float TIFF of 16-bit data holds)
        scale = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 65535.0
    else:
        scale = float(_WIDE_GRAY[im.mode])
    out = np.clip(np.nan_to_num(arr.astype(np.float64) / scale), 0.0, 1.0)
    return Image.fromarray((out * 255.0).round().astype(np.uint8), "L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image -> upright 8-bit RGB (EXIF orientation applied; transparency composited on white)."""
    im = ImageOps.exif_transpose(im)
    if im.mode in _WIDE_GRAY or im.mode == "F":
        im = _wide_gray_to_l(im)
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im if im.mode == "RGB" else im.convert("RGB")


def rgb_image(source: str | Path | IO[bytes]) -> Image.Image:
    """An image file (path or binary file object) -> upright 8-bit RGB PIL image, fully decoded.

    Raises PIL's own errors (``UnidentifiedImageError``, ``OSError``, ``ValueError``) for a corrupt
    file: callers that skip bad images catch those; :func:`open_image` turns them into one line.
    """
    with Image.open(source) as im:
        im.load()
        return to_rgb(im)


def open_image(path: str | Path) -> Image.Image:
    """:func:`rgb_image` of a user's file, with a one-line :class:`UserError` when it is missing or unreadable."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"image {path} does not exist: pass an image file ({', '.join(IMAGE_SUFFIXES)})")
    try:
        return rgb_image(path)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"{path} is not a readable image ({type(err).__name__}): "
                        f"pass image files ({', '.join(IMAGE_SUFFIXES)})") from err


def to_tensor(im: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> ``(1, 3, H, W)`` float in [0, 1]."""
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def resize(img: torch.Tensor, size: int | Sequence[int] | None) -> torch.Tensor:
    """``(B, C, H, W)`` in [0, 1] -> shorter side ``size`` (int, aspect kept) or exactly ``(h, w)``; None keeps it.

    Bilinear with antialiasing (so a large photo shrinks without aliasing), clamped to [0, 1].
    """
    if size is None:
        return img
    h, w = img.shape[-2:]
    if isinstance(size, int):
        s = size / min(h, w)
        out = (max(1, round(h * s)), max(1, round(w * s)))
    else:
        out = (int(size[0]), int(size[1]))
    if out == (h, w):
        return img
    return F.interpolate(img, size=out, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def read_image(path: str | Path, size: int | Sequence[int] | None = None) -> torch.Tensor:
    """A user's image file -> ``(1, 3, H, W)`` RGB in [0, 1], resized by :func:`resize` when ``size`` is given."""
    return resize(to_tensor(open_image(path)), size)


def load_image(spec: str | Path, size: int | Sequence[int] | None = None) -> torch.Tensor:
    """``spec`` -> ``(1, 3, H, W)`` in [0, 1], resized by :func:`resize` (``size=None``: long side at most ``MAX_SIDE``).

    ``spec``: an image file path, or ``skimage:<name>`` (one of :data:`SKIMAGE_PHOTOS`).
    """
    spec = str(spec)
    if spec.startswith("skimage:"):
        import skimage.data

        name = spec.split(":", 1)[1]
        if name not in SKIMAGE_PHOTOS:
            raise UserError(f"unknown scikit-image photo {name!r}: choose one of {list(SKIMAGE_PHOTOS)}")
        img = to_tensor(to_rgb(Image.fromarray(getattr(skimage.data, name)())))
    else:
        img = to_tensor(open_image(spec))
    h, w = img.shape[-2:]
    if size is None and max(h, w) > MAX_SIDE:
        out = (max(1, round(h * MAX_SIDE / max(h, w))), max(1, round(w * MAX_SIDE / max(h, w))))
        log.warning("image of %dx%d px runs at %dx%d (long side %d); pass viz.size=<px> for another size",
                    w, h, out[1], out[0], MAX_SIDE)
        return resize(img, out)
    return resize(img, size)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` or ``(1, 3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8 array."""
    if img.dim() == 4:
        img = img[0]
    return img.detach().clamp(0, 1).mul(255).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def write_png(path: str | Path, image: torch.Tensor | np.ndarray, text: Mapping[str, str] | None = None) -> Path:
    """Write an RGB image (float tensor in [0, 1] or ``(H, W, 3)`` uint8 array) as PNG, atomically.

    ``text``: PNG text chunks (e.g. what produced the file), readable back with :func:`png_text`.
    """
    arr = to_uint8(image) if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    return atomic_save(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG", pnginfo=info))


def write_figure(path: str | Path, fig, dpi: float | None = 120, close: bool = True, **savefig_kwargs) -> Path:
    """Write a matplotlib figure as PNG, atomically (the one figure writer), and close it unless ``close=False``."""
    path = atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, **savefig_kwargs))
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def png_text(path: str | Path) -> dict[str, str]:
    """The text chunks of a PNG file (``{}`` for any other or unreadable file); reads the header only."""
    try:
        with Image.open(path) as im:
            # text chunks written before the pixel data are in ``info`` without decoding the image
            return {k: v for k, v in im.info.items() if isinstance(v, str)} if im.format == "PNG" else {}
    except (UnidentifiedImageError, OSError, ValueError):
        return {}
