"""Feature-cache probing: run the frozen trunk over the data once, then train the heads on the features.

Training the heads on cached features costs one trunk pass per image instead of one per image per
epoch (the trunk dominates the cost; the heads are a few matrix products). The price: no data
augmentation during probe training.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from cnnlab.backbones import load_trunk
from cnnlab.features import cached_features, extract_features, state_fingerprint
from cnnlab.probes.heads import ProbeHeads
from cnnlab.probes.trunks import check_trunk_matches, freeze

log = logging.getLogger(__name__)


def _accuracy(heads: ProbeHeads, feats: dict[str, torch.Tensor], labels: torch.Tensor, batch_size: int, device) -> dict[str, float]:
    heads.eval()
    correct = {t: 0 for t in heads.taps}
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            out = heads({t: feats[t][i:i + batch_size].to(device) for t in heads.taps})
            y = labels[i:i + batch_size].to(device)
            for t, v in out.items():
                correct[t] += int((v.argmax(1) == y).sum())
    return {t: c / max(1, len(labels)) for t, c in correct.items()}


def train_probe_heads(
    train: dict[str, torch.Tensor],
    test: dict[str, torch.Tensor],
    taps: Sequence[str] | None = None,
    num_classes: int | None = None,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, float]]:
    """Train one BN + linear head per tap on cached features; all heads in the same loop.

    ``train`` / ``test``: ``{tap: (N, D_tap), "labels": (N,)}`` (as from :func:`extract_features`).
    SGD with Nesterov momentum and a cosine schedule. Returns ``{"train": {tap: top1}, "test": {tap: top1}}``.
    """
    taps = list(taps or [k for k in train if k != "labels"])
    y_train, y_test = train["labels"].long(), test["labels"].long()
    num_classes = num_classes or int(max(y_train.max(), y_test.max())) + 1
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    heads = ProbeHeads({t: train[t].shape[1] for t in taps}, num_classes).to(device)
    opt = torch.optim.SGD(heads.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    n = len(y_train)
    steps_per_epoch = max(1, n // batch_size) if n > batch_size else 1
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    for _ in range(epochs):
        heads.train()
        perm = torch.randperm(n, generator=g)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            out = heads({t: train[t][idx].to(device) for t in taps})
            y = y_train[idx].to(device)
            loss = torch.stack([F.cross_entropy(v, y) for v in out.values()]).sum()
            if not torch.isfinite(loss):
                raise FloatingPointError("non-finite probe loss: lower probe.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    eval_bs = max(batch_size, 1024)
    return {"train": _accuracy(heads, train, y_train, eval_bs, device), "test": _accuracy(heads, test, y_test, eval_bs, device)}


def probe_trunk_cached(
    trunk_path: str | Path,
    datamodule,
    taps: Sequence[str] | None = None,
    target_dims: int | None = 9216,
    cache_dir: str | Path | None = None,
    keep_cache: bool = True,
    expect_arch: str | None = None,
    expect_arch_kwargs: dict | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    **train_kwargs,
) -> dict:
    """Probe every tap of a trunk file on ``datamodule`` (train split to fit, test split to score).

    Features are cached in ``cache_dir/features_{train,test}.pt`` keyed by the trunk's weights, the
    taps, the pooling and the data, so a rerun on the same trunk skips the trunk entirely.
    Returns ``{"test": {tap: top1}, "train": {...}, "taps": [...], "dims": {...}, "trunk_fingerprint": ...}``.
    """
    backbone, meta = load_trunk(trunk_path)
    check_trunk_matches(meta, trunk_path, arch=expect_arch, arch_kwargs=expect_arch_kwargs, color_space=datamodule.color_space)
    backbone = freeze(backbone)
    taps = backbone.check_taps(list(taps) if taps else meta["taps"])
    datamodule.prepare_data()
    datamodule.setup()
    fp = state_fingerprint(backbone)
    h = datamodule.hparams
    feats = {}
    for split in ("train", "test"):
        ds = datamodule.splits[split]
        key = f"{fp}|{','.join(taps)}|{target_dims}|{h.name}|{datamodule.color_space}|{split}|{len(ds)}|{int(ds.labels.sum())}"

        def compute(split=split):
            loader = datamodule.loader(split, batch_size=h.eval_batch_size or 256)
            return extract_features(backbone, loader, taps, lambda u: datamodule.preprocess(u, train=False), target_dims,
                                    device=device, progress=f"features {split}" if progress else None, total=len(loader))

        if cache_dir is None:
            feats[split] = compute()
        else:
            feats[split] = cached_features(Path(cache_dir) / f"features_{split}.pt", key, compute)
    result = train_probe_heads(feats["train"], feats["test"], taps, num_classes=datamodule.num_classes, device=device, **train_kwargs)
    if cache_dir is not None and not keep_cache:
        for split in ("train", "test"):
            (Path(cache_dir) / f"features_{split}.pt").unlink(missing_ok=True)
    return {**result, "taps": taps, "dims": {t: int(feats["train"][t].shape[1]) for t in taps}, "trunk_fingerprint": fp,
            "n_train": len(feats["train"]["labels"]), "n_test": len(feats["test"]["labels"])}
