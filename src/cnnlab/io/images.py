"""Reading and writing images: one reader for every image a user may hand in, one PNG writer.

Every PIL mode becomes 8-bit RGB the way a viewer shows it: 16- and 32-bit grayscale are scaled
from their full range (``convert("RGB")`` would clip them, turning a 16-bit PNG white), palette
and transparent images are composited on white, CMYK is converted, and EXIF orientation is
applied, so a phone photo comes out upright.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Mapping

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from cnnlab.errors import UserError
from cnnlab.io.files import atomic_save

#: file suffixes read as images (lower case), for folders and archives of images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")

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


def resize_shorter(im: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side has ``size`` pixels (aspect kept, bicubic with antialiasing)."""
    scale = size / min(im.size)
    target = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im if target == im.size else im.resize(target, Image.BICUBIC)


def to_tensor(im: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> ``(1, 3, H, W)`` float in [0, 1]."""
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def read_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """A user's image file -> ``(1, 3, H, W)`` RGB in [0, 1] (shorter side resized to ``size`` if given)."""
    im = open_image(path)
    return to_tensor(resize_shorter(im, size) if size else im)


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


def png_text(path: str | Path) -> dict[str, str]:
    """The text chunks of a PNG file (``{}`` for any other or unreadable file); reads the header only."""
    try:
        with Image.open(path) as im:
            # text chunks written before the pixel data are in ``info`` without decoding the image
            return {k: v for k, v in im.info.items() if isinstance(v, str)} if im.format == "PNG" else {}
    except (UnidentifiedImageError, OSError, ValueError):
        return {}
