"""Resolve a dataset name + source into a :class:`~cnnlab.data.cache.CachedDataset`.

Never hangs on a download: torchvision downloads are tried only when the host answers within a
few seconds, and a dataset that is absent and cannot be downloaded raises a :class:`UserError`
that says which file to put where.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

from cnnlab.data import synthetic
from cnnlab.data.cache import CachedDataset, CachedSplit, build_imagefolder_cache, cache_key, load_cache, write_cache
from cnnlab.errors import UserError

DATASETS = ("cifar10", "stl10", "tinyimagenet", "imagefolder", "synthetic")
CIFAR10_ARCHIVE = "cifar10-jpg.tar.gz"
TINYIMAGENET_ARCHIVE = "tinyimagenet32-jpg.tar.gz"
#: environment variable naming an extra directory searched for dataset archives
DATA_ENV = "CNNLAB_DATA"


def network_available(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def search_dirs(data_dir: Path) -> list[Path]:
    dirs = [Path(data_dir)]
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]))
    return dirs


def resolve(
    name: str,
    data_dir: str | Path,
    image_size: int,
    source: str | Path | None = None,
    download: bool = True,
    on_corrupt: str = "skip",
    synthetic_train: int = 2000,
    synthetic_test: int = 500,
    synthetic_classes: int = 10,
    synthetic_seed: int = 0,
    progress: bool = True,
) -> CachedDataset:
    data_dir = Path(data_dir).expanduser()
    cache_dir = data_dir / "cache"
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: choose one of {list(DATASETS)} (data.name)")
    if source not in (None, "", "auto"):
        return build_imagefolder_cache(Path(source), cache_dir, image_size, name=name, on_corrupt=on_corrupt, progress=progress)
    if name == "imagefolder":
        raise UserError("data=imagefolder needs data.source=<ImageFolder directory or .tar.gz/.zip archive>")
    if name == "synthetic":
        return _synthetic(cache_dir, image_size, synthetic_train, synthetic_test, synthetic_classes, synthetic_seed)
    if name == "tinyimagenet":
        return _tinyimagenet(data_dir, cache_dir, image_size, on_corrupt, progress)
    if name == "cifar10":
        return _cifar10(data_dir, cache_dir, image_size, download, on_corrupt, progress)
    return _stl10(data_dir, cache_dir, image_size, download)


def _synthetic(cache_dir: Path, image_size: int, n_train: int, n_test: int, classes: int, seed: int) -> CachedDataset:
    path = cache_dir / cache_key("synthetic", None, image_size, extra=f"{n_train}|{n_test}|{classes}|{seed}")
    if (path / "meta.json").exists():
        return load_cache(path)
    xtr, ytr = synthetic.generate(n_train, image_size, classes, seed)
    xte, yte = synthetic.generate(n_test, image_size, classes, seed + 1_000_003)
    names = list(synthetic.SHAPES[:classes])
    return write_cache(path, names, {"train": CachedSplit(xtr, ytr), "test": CachedSplit(xte, yte)},
                       {"source": "synthetic", "image_size": image_size, "name": "synthetic"})


def _tinyimagenet(data_dir: Path, cache_dir: Path, image_size: int, on_corrupt: str, progress: bool) -> CachedDataset:
    for d in search_dirs(data_dir):
        if (d / TINYIMAGENET_ARCHIVE).is_file():
            return build_imagefolder_cache(d / TINYIMAGENET_ARCHIVE, cache_dir, image_size, name="tinyimagenet",
                                           on_corrupt=on_corrupt, progress=progress)
    raise UserError(f"Tiny-ImageNet not found: put {TINYIMAGENET_ARCHIVE} (ImageFolder JPEGs, train/ and val/) in {data_dir} "
                    f"or in ${DATA_ENV}, or point data.source at an ImageFolder of it")


def _cifar10(data_dir: Path, cache_dir: Path, image_size: int, download: bool, on_corrupt: str, progress: bool) -> CachedDataset:
    for d in search_dirs(data_dir):
        archive = d / CIFAR10_ARCHIVE
        if archive.is_file():
            return build_imagefolder_cache(archive, cache_dir, image_size, name="cifar10", on_corrupt=on_corrupt, progress=progress)
    batches = data_dir / "cifar-10-batches-py"
    if not batches.is_dir():
        if not (download and network_available("www.cs.toronto.edu")):
            raise UserError(
                f"CIFAR-10 not found: put {CIFAR10_ARCHIVE} (ImageFolder JPEGs) in {data_dir} or in ${DATA_ENV}, "
                f"or point data.source at it, or run once with network access so torchvision downloads it"
            )
    from torchvision.datasets import CIFAR10

    path = cache_dir / cache_key("cifar10-torchvision", None, image_size, extra=str(batches.resolve()))
    if (path / "meta.json").exists():
        return load_cache(path)
    splits = {}
    for split, train in (("train", True), ("test", False)):
        ds = CIFAR10(str(data_dir), train=train, download=download)
        images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
        splits[split] = CachedSplit(_resize(images, image_size), np.asarray(ds.targets))
    return write_cache(path, list(ds.classes), splits, {"source": str(batches), "image_size": image_size, "name": "cifar10"})


def _stl10(data_dir: Path, cache_dir: Path, image_size: int, download: bool) -> CachedDataset:
    folder = data_dir / "stl10_binary"
    if not folder.is_dir() and not (download and network_available("ai.stanford.edu", 80)):
        raise UserError(
            f"STL-10 not found in {folder}: run once with network access so torchvision downloads it, "
            "or convert it to an ImageFolder and use data=imagefolder data.source=<dir>"
        )
    from torchvision.datasets import STL10

    path = cache_dir / cache_key("stl10", None, image_size, extra=str(folder.resolve()))
    if (path / "meta.json").exists():
        return load_cache(path)
    splits = {}
    for split in ("train", "test"):
        ds = STL10(str(data_dir), split=split, download=download)
        splits[split] = CachedSplit(_resize(ds.data, image_size), np.asarray(ds.labels, dtype=np.int64))
    return write_cache(path, list(ds.classes), splits, {"source": str(folder), "image_size": image_size, "name": "stl10"})


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(N, 3, H, W)`` uint8 square images to ``size`` (no-op when they already match)."""
    if images.shape[-1] == size:
        return images
    import torch
    import torch.nn.functional as F

    out = []
    for chunk in np.array_split(images, max(1, len(images) // 1024)):
        t = F.interpolate(torch.from_numpy(chunk).float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(t.round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)
