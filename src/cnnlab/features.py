"""Frozen-feature extraction with an on-disk cache, shared by linear probes and analyses.

Features of a frozen backbone over a dataset are computed once, pooled to a bounded size per tap,
and saved next to the run, so later probes or analyses of the same trunk and data reuse them.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from cnnlab.backbones import Backbone
from cnnlab.io.files import atomic_save


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
def extract_features(
    backbone: Backbone,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    taps: Sequence[str],
    preprocess: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    target_dims: int | None = 9216,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float16,
    progress: str | None = None,
    total: int | None = None,
) -> dict[str, torch.Tensor]:
    """Run the frozen ``backbone`` (eval mode) over ``batches`` of ``(uint8 images, labels)``.

    Returns ``{tap: (N, D_tap)}`` pooled features (stored as ``dtype`` to bound memory) and
    ``"labels": (N,)``. ``preprocess`` turns a uint8 batch into model input (``dm.preprocess``).
    """
    taps = backbone.check_taps(taps)
    was_training = backbone.training
    backbone.eval().to(device)
    out: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
    labels: list[torch.Tensor] = []
    it = batches
    if progress:
        from rich.progress import track

        it = track(batches, description=progress, total=total, transient=True)
    for images, y in it:
        feats = backbone.forward_taps(preprocess(images.to(device)), taps)
        for t in taps:
            out[t].append(pool_features(feats[t], target_dims).to("cpu", dtype))
        labels.append(y.cpu())
    backbone.train(was_training)
    result = {t: torch.cat(v) for t, v in out.items()}
    result["labels"] = torch.cat(labels)
    return result


def state_fingerprint(backbone: Backbone) -> str:
    """A short hash of the backbone's weights and buffers (the feature cache key)."""
    h = hashlib.sha1()
    for k, v in sorted(backbone.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def cached_features(cache_file: str | Path, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Load ``cache_file`` if it was written for ``key``; else ``compute()`` and save it atomically."""
    cache_file = Path(cache_file)
    if cache_file.is_file():
        data = torch.load(cache_file, map_location="cpu", weights_only=True)
        if data.get("key") == key:
            return data["features"]
    feats = compute()
    atomic_save(cache_file, lambda tmp: torch.save({"key": key, "features": feats}, tmp))
    return feats
