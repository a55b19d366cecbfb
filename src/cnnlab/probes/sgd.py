"""The short SGD probe on cached features: one BatchNorm + linear head per tap, a fixed number of epochs.

This was the project's probe before :func:`cnnlab.probes.linear.fit_linear_probe` (L-BFGS to convergence,
weight decay chosen on validation). It stays as the baseline the benchmarks compare against
(``scripts/bench_probes.py``, ``scripts/bench_probe_cache.py``); nothing in the pipeline uses it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from cnnlab.probes.heads import ProbeHeads


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
