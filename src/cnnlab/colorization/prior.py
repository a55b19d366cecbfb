"""The empirical ab prior of the training images, computed once and cached on disk.

The cache key hashes the dataset name, the number and shape of the images, a sample of their
bytes and the bin lattice, so a different subset or image size gets its own file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from cnnlab.color import rgb_to_lab
from cnnlab.colorization.bins import GRAY_AB_THRESHOLD, accumulate_ab_counts, image_has_colour
from cnnlab.errors import UserError
from cnnlab.io.cache import keyed_cache

log = logging.getLogger(__name__)


def _key(images: torch.Tensor, name: str, centers: torch.Tensor, max_images: int) -> str:
    h = hashlib.sha1()
    h.update(f"{name}|{tuple(images.shape)}|{max_images}|{centers.shape[0]}".encode())
    h.update(centers.numpy().tobytes())
    step = max(1, len(images) // 64)
    h.update(images[::step].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def compute_ab_stats(images: torch.Tensor, centers: torch.Tensor, max_images: int = 10000, chunk: int = 1000) -> dict:
    """uint8 RGB images ``(N, 3, H, W)`` -> ``{"counts": (Q,), "mean_ab": (2,), "gray_fraction": float, "images": n}``.

    Uses an evenly spaced subset of at most ``max_images`` images; all-gray images are left out
    (they carry no colour) and counted in ``gray_fraction``. Raises :class:`UserError` when every
    image is gray.
    """
    step = max(1, -(-len(images) // max_images))
    subset = images[::step]
    counts = torch.zeros(centers.shape[0], dtype=torch.float64)
    ab_sum, pixels, gray = torch.zeros(2, dtype=torch.float64), 0, 0
    for i in range(0, len(subset), chunk):
        lab = rgb_to_lab(subset[i:i + chunk].float() / 255.0)
        colour = image_has_colour(lab[:, 1:])
        gray += int((~colour).sum())
        if colour.any():
            c, s, n = accumulate_ab_counts(lab[colour], centers)
            counts += c
            ab_sum += s
            pixels += n
    if pixels == 0:
        raise UserError(
            f"all {len(subset)} training images are gray (|ab| <= {GRAY_AB_THRESHOLD} everywhere): "
            "colorization needs colour images; check data.source"
        )
    frac = gray / len(subset)
    if frac > 0:
        log.warning("%d of %d training images are all gray: they get zero weight in the colorization loss", gray, len(subset))
    return {"counts": counts, "mean_ab": (ab_sum / pixels).float(), "gray_fraction": frac, "images": len(subset)}


def cached_ab_stats(images: torch.Tensor, centers: torch.Tensor, name: str, cache_dir: str | Path | None,
                    max_images: int = 10000) -> dict:
    """:func:`compute_ab_stats`, read from / written to ``<cache_dir>/ab_prior_<name>_<key>.pt`` when a dir is given."""
    if cache_dir is None:
        return compute_ab_stats(images, centers, max_images)
    key = _key(images, name, centers, max_images)
    return keyed_cache(Path(cache_dir) / f"ab_prior_{name}_{key}.pt", key,
                       lambda: compute_ab_stats(images, centers, max_images))


class BindColorizerToData(pl.Callback):
    """Tells a colorizer what its data module delivers, before any step.

    It reads the batches' colour space (rgb or lab) and, once, fits the ab prior on the training split
    (cached under ``data_dir``); the prior then travels in the checkpoint, so a loaded model is not refitted.
    """

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)
        pl_module.batch_space = getattr(dm, "color_space", "rgb")
        if bool(pl_module.prior_ready):
            return
        splits = getattr(dm, "splits", None)
        if not splits or "train" not in splits:
            log.warning("no training images to compute the ab prior from: using a uniform prior")
            return
        h = dm.hparams
        cache = Path(h.data_dir) / "colorization" if pl_module.hparams.prior_cache and h.get("data_dir") else None
        stats = pl_module.fit_prior(splits["train"].images, f"{h.name}_{h.image_size}", cache)
        log.info("ab prior from %d training images (%.1f%% all gray)", stats["images"], 100 * stats["gray_fraction"])
