"""Frozen-feature extraction with on-disk caches, shared by linear probes and analyses.

Features of a frozen backbone over a dataset are computed once, pooled to a bounded size per tap,
and saved next to the run, so later probes or analyses of the same trunk and data reuse them.

Two caches: ``io.cache.keyed_cache`` (one ``.pt`` of small feature sets, loaded whole) and
:class:`FeatureStore` (one directory per trunk and split, one float16 ``.npy`` per tap, written
batch by batch and read back memory-mapped: 49k CIFAR images x 9,216 dims are 0.9 GB per tap, which
need never be in memory all at once, let alone for every tap and split).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.io.files import atomic_dir, write_json
from cnnlab.io.progress import progress as show_progress
from cnnlab.taps import TappedNetwork


def pool_side(channels: int, height: int, target_dims: int | None) -> int:
    """Side ``s`` of the adaptive average pool that keeps ``channels * s * s`` near ``target_dims``.

    ``None`` or a target not above ``channels`` gives global pooling (s = 1); never exceeds ``height``.
    """
    if not target_dims or target_dims <= channels:
        return 1
    return max(1, min(height, int(math.sqrt(target_dims / channels))))


def pool_features(fmap: torch.Tensor, target_dims: int | None) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, C * s * s)`` by adaptive average pooling (see :func:`pool_side`)."""
    s = pool_side(fmap.shape[1], fmap.shape[2], target_dims)
    return F.adaptive_avg_pool2d(fmap, s).flatten(1)


@torch.no_grad()
def extract_features(backbone: TappedNetwork, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], taps: Sequence[str],
                     *args, **kwargs) -> dict[str, torch.Tensor]:
    """:func:`iter_features` (the same arguments) gathered: ``{tap: (N, D_tap)}`` pooled features (stored as its
    ``dtype`` to bound memory) and ``"labels": (N,)``."""
    out: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
    labels: list[torch.Tensor] = []
    for feats, y in iter_features(backbone, batches, taps, *args, **kwargs):
        for t, v in feats.items():
            out[t].append(v)
        labels.append(y)
    result = {t: torch.cat(v) for t, v in out.items()}
    result["labels"] = torch.cat(labels)
    return result


@torch.no_grad()
def iter_features(
    backbone: TappedNetwork,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    taps: Sequence[str],
    preprocess: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    target_dims: int | None = 9216,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float16,
    progress: str | None = None,
    total: int | None = None,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Run the frozen ``backbone`` over ``batches`` of ``(uint8 images, labels)``; ``preprocess`` turns a uint8 batch
    into model input (``dm.preprocess``). Yield ``({tap: (B, D_tap)}, labels (B,))`` per batch (CPU, ``dtype``),
    pooled to about ``target_dims`` (:func:`pool_features`); the backbone runs in eval mode.

    Its mode is restored when the iteration ends (or is abandoned).
    """
    taps = backbone.check_taps(taps)
    was_training = backbone.training
    backbone.eval().to(device)
    it = show_progress(batches, progress, total)
    try:
        for images, y in it:
            feats = backbone.forward_taps(preprocess(images.to(device)), taps)
            yield {t: pool_features(feats[t], target_dims).to("cpu", dtype) for t in taps}, y.cpu()
    finally:
        backbone.train(was_training)


def state_fingerprint(backbone: torch.nn.Module) -> str:
    """A short hash of the backbone's weights and buffers (the feature cache key)."""
    h = hashlib.sha1()
    for k, v in sorted(backbone.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def data_fingerprint(images: torch.Tensor | np.ndarray) -> str:
    """A short hash of a split's images (their bytes and shape): part of a feature key, labels left out."""
    a = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    h = hashlib.sha1(str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


def _tap_file(tap: str) -> str:
    return f"{tap}.npy"


class FeatureStore:
    """Pooled features on disk: ``root/<name>/{<tap>.npy (N, D_tap) float16, labels.npy (N,), meta.json}``.

    An entry belongs to a ``key`` (the trunk's :func:`state_fingerprint`, the taps, the pooling and the
    data): :meth:`get` returns the stored arrays when ``meta.json`` holds the same key and every tap,
    else computes them. Arrays come back memory-mapped (``np.load(mmap_mode="r")``), so a caller holds
    in memory only what it reads. Writing goes batch by batch into a temp directory beside the entry,
    renamed into place once complete: a crash leaves no half entry that could be read as a whole one.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def load(self, name: str, key: str, taps: Sequence[str]) -> dict[str, np.ndarray] | None:
        """``{tap: (N, D) memmap, "labels": (N,)}`` of entry ``name`` if it was written for ``key``, else None."""
        d = self.path(name)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("key") != key or not set(taps) <= set(meta.get("taps", [])):
            return None
        try:
            out = {t: np.load(d / _tap_file(t), mmap_mode="r") for t in taps}
            out["labels"] = np.load(d / "labels.npy")
        except (OSError, ValueError):
            return None
        if any(len(v) != meta["n"] for v in out.values()):
            return None
        return out

    def write(self, name: str, key: str, features: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]], n: int) -> Path:
        """Stream ``features`` (``({tap: (B, D)}, labels (B,))`` batches, ``n`` rows in all) into entry ``name``."""
        final = self.path(name)
        shutil.rmtree(final, ignore_errors=True)  # an entry for another key: stale, and atomic_dir renames onto an empty place
        with atomic_dir(final) as tmp:
            arrays: dict[str, np.ndarray] = {}
            labels = None  # (n,) class indices or (n, C) multi-label targets: shaped by the first batch
            i = 0
            for feats, y in features:
                b = len(y)
                if i + b > n:
                    raise ValueError(f"more than the {n} rows announced for feature entry {name}")
                for t, v in feats.items():
                    if t not in arrays:
                        arrays[t] = np.lib.format.open_memmap(tmp / _tap_file(t), mode="w+", dtype=np.float16, shape=(n, v.shape[1]))
                    arrays[t][i:i + b] = v.numpy().astype(np.float16, copy=False)
                if labels is None:
                    labels = np.empty((n, *y.shape[1:]), dtype=np.int64)
                labels[i:i + b] = y.numpy()
                i += b
            if i != n:
                raise ValueError(f"feature entry {name}: {i} rows written, {n} announced")
            for a in arrays.values():
                a.flush()
            np.save(tmp / "labels.npy", np.empty(0, dtype=np.int64) if labels is None else labels)
            dims = {t: int(a.shape[1]) for t, a in arrays.items()}
            del arrays
            write_json(tmp / "meta.json", {"key": key, "taps": list(dims), "dims": dims, "n": n, "dtype": "float16"})
        return final

    def get(self, name: str, key: str, taps: Sequence[str], compute: Callable[[], Iterable], n: int) -> dict[str, np.ndarray]:
        """The stored features of ``name`` for ``key``; computed with ``compute()`` (batches) and stored first if absent."""
        found = self.load(name, key, taps)
        if found is not None:
            return found
        self.write(name, key, compute(), n)
        return self.load(name, key, taps)

    def remove(self, name: str) -> None:
        shutil.rmtree(self.path(name), ignore_errors=True)
