"""Natural-image Fourier spectra: the magnitude MACO fixes, and how far an image's spectrum is from it.

MACO (Fel et al. 2023) keeps an image's Fourier magnitude at the average magnitude of natural
images and optimizes only the phase. The magnitude is estimated once per (source, size) and cached
as ``<cache_dir>/spectra/<source>_<H>x<W>.pt``. It lives in the space a ``MacoImage`` is decoded from:
``rgb = sigmoid(color @ s)``, so natural images are mapped to ``s = color^-1 (4 (rgb - 0.5))`` (the
sigmoid's linearization at gray) before the FFT.

Sources: ``cifar10`` (the CIFAR-10 training images, resized when the size is not 32), ``paintings``
(random crops of the paintings in ``images/`` of the data directory or ``$CNNLAB_DATA``), or a directory of images; ``auto`` is
CIFAR-10 up to 32 px and the paintings above.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.color import color_matrix
from cnnlab.errors import UserError
from cnnlab.io.cache import keyed_cache
from cnnlab.io.images import IMAGE_SUFFIXES, load_image

def to_decorrelated(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> the decorrelated space ``s`` of ``rgb = sigmoid(color @ s)`` (linearized)."""
    inv = torch.linalg.inv(color_matrix()).to(rgb)
    return torch.einsum("ij,bjhw->bihw", inv, 4.0 * (rgb - 0.5))


def mean_magnitude(images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``(N, 3, H, W)`` in [0, 1] -> ``(3, H, W // 2 + 1)`` mean |rfft2| (orthonormal) in the decorrelated space."""
    total = torch.zeros(3, images.shape[-2], images.shape[-1] // 2 + 1, dtype=torch.float64)
    for i in range(0, len(images), batch_size):
        s = to_decorrelated(images[i:i + batch_size].float())
        total += torch.fft.rfft2(s, norm="ortho").abs().sum(0).double()
    return (total / len(images)).float()


def _cifar_images(size: tuple[int, int], data_dir: str, limit: int) -> torch.Tensor:
    from cnnlab.data import ImageDataModule

    dm = ImageDataModule(name="cifar10", data_dir=str(data_dir), progress=False, val_fraction=0.0)
    dm.setup()
    x = dm.splits["train"].images[:limit].float() / 255
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return x


def _crops(folder: Path, size: tuple[int, int], limit: int, seed: int = 0) -> torch.Tensor:
    """Random crops of ``size`` from every image in ``folder`` (each resized to twice the crop's longer side)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise UserError(f"no images in {folder} to estimate a natural spectrum from: point viz.spectrum at a folder of image files, "
                        "put paintings in images/ of the data directory or of $CNNLAB_DATA, or use cifar10")
    g = torch.Generator().manual_seed(seed)
    h, w = size
    per_file = max(1, limit // len(files))
    out = []
    for f in files:
        img = load_image(str(f), 2 * max(h, w))
        H, W = img.shape[-2:]
        for _ in range(per_file):
            y = int(torch.randint(0, H - h + 1, (1,), generator=g))
            x = int(torch.randint(0, W - w + 1, (1,), generator=g))
            out.append(img[..., y:y + h, x:x + w])
    return torch.cat(out)


def natural_images(source: str, size: tuple[int, int], data_dir: str = "data", limit: int = 5000) -> torch.Tensor:
    """Up to ``limit`` natural images ``(N, 3, H, W)`` in [0, 1] of ``size`` from ``source`` (see the module doc)."""
    if source == "cifar10":
        return _cifar_images(size, data_dir, limit)
    if source == "paintings":
        from cnnlab.data.sources import data_file

        return _crops(data_file("images", data_dir), size, min(limit, 300))
    return _crops(Path(source).expanduser(), size, min(limit, 300))


def resolve_source(source: str, size: tuple[int, int]) -> str:
    return ("cifar10" if max(size) <= 32 else "paintings") if source == "auto" else source


def natural_magnitude(size: int | tuple[int, int], source: str = "auto", data_dir: str = "data", cache_dir: str | None = None) -> torch.Tensor:
    """The cached mean magnitude spectrum ``(3, H, W // 2 + 1)`` of natural images at ``size``."""
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    source = resolve_source(source, size)
    tag = source if source in ("cifar10", "paintings") else "dir-" + Path(source).expanduser().resolve().name
    path = Path(cache_dir or data_dir) / "spectra" / f"{tag}_{size[0]}x{size[1]}.pt"
    return keyed_cache(path, path.stem, lambda: mean_magnitude(natural_images(source, size, data_dir)))


# --------------------------------------------------------------------------------- distance to natural images
def radial_log_power(images: torch.Tensor, bins: int | None = None) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, R)`` log10 of the radially averaged power spectrum of the gray image (DC left out)."""
    gray = images.float().mean(1)
    gray = gray - gray.mean((-2, -1), keepdim=True)
    power = torch.fft.rfft2(gray, norm="ortho").abs().pow(2)
    h, w = gray.shape[-2:]
    fy = torch.fft.fftfreq(h).view(-1, 1)
    fx = torch.fft.rfftfreq(w).view(1, -1)
    radius = torch.sqrt(fx**2 + fy**2)
    bins = bins or min(h, w) // 2
    idx = (radius / 0.5 * bins).long().clamp(max=bins)  # 0.5 cycles/pixel is the Nyquist limit
    flat = power.flatten(1)
    sums = torch.zeros(flat.shape[0], bins + 1).index_add_(1, idx.flatten(), flat)
    counts = torch.zeros(bins + 1).index_add_(0, idx.flatten(), torch.ones(idx.numel()))
    return torch.log10(sums[:, 1:bins] / counts[1:bins] + 1e-12)  # no DC bin, no corner bin beyond Nyquist


def spectrum_distance(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(B,)`` RMS difference (in decades) of each image's radial log power spectrum from ``reference`` ``(R,)``."""
    return (radial_log_power(images) - reference).pow(2).mean(1).sqrt()
