"""Checking that a trunk is the one an experiment asked for, and calibrating a random one's BatchNorm."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from cnnlab.errors import UserError


def check_trunk_matches(meta: dict, path: str | Path, arch: str | None = None, arch_kwargs: dict | None = None,
                        color_space: str | None = None) -> None:
    """One-line :class:`UserError` if a trunk's architecture or input type differs from what is expected.

    ``meta`` is the trunk file's metadata (``load_trunk(...)[1]`` or ``read_trunk``).
    """
    if arch is not None and meta["arch"] != arch:
        raise UserError(f"{path} is a {meta['arch']} trunk but this experiment uses {arch}: pass a trunk of the same architecture")
    if arch_kwargs:
        diff = {k: (meta["arch_kwargs"].get(k), v) for k, v in arch_kwargs.items() if meta["arch_kwargs"].get(k) != v}
        if diff:
            got = ", ".join(f"{k}={a!r} (expected {b!r})" for k, (a, b) in diff.items())
            raise UserError(f"{path} has a different architecture: {got}; retrain it with the same backbone settings")
    if color_space is not None and meta["color_space"] != color_space:
        raise UserError(
            f"{path} takes {meta['color_space']!r} input but the data delivers {color_space!r}: set data.color_space={meta['color_space']}"
        )


@torch.no_grad()
def calibrate_batchnorm(backbone: nn.Module, batches: Iterable, preprocess: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                        max_batches: int | None = None) -> int:
    """Set every BatchNorm's running statistics to the averages over ``batches`` (images only, no labels).

    A freshly initialised network has running mean 0 and variance 1, so in eval mode each BatchNorm is
    the identity and activations shrink layer after layer (to ~1e-4 after eight VGG stages): a frozen
    "random" trunk would then be scored on vanishing features rather than on random ones. Calibrating
    the statistics on unlabelled training images gives the random baseline normalised activations, as
    the network would have in training mode. Returns the number of images used; weights are untouched.
    """
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = backbone.training
    backbone.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    seen = 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        backbone(preprocess(images))
        seen += len(images)
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    backbone.train(was_training)
    return seen
