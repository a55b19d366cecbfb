"""The exported-trunk file format: a pretrained backbone that other runs load directly.

A trunk file is a ``torch.save``-d dict::

    {
      "format": "cnnlab-trunk", "version": 1,
      "arch": "vgg_cifar",                 # key of BACKBONES
      "arch_kwargs": {"width": 64, ...},   # constructor arguments besides in_channels
      "in_channels": 1,
      "color_space": "L",                  # what the data module must deliver: rgb | gray | L
      "taps": ["conv1_1", ...],            # the backbone's default taps
      "method": "colorization",            # what trained it: supervised | colorization | random
      "state_dict": {...},                 # backbone weights, input normalization included
      "info": {...},                       # free-form: run dir, metrics, image size
    }
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from cnnlab.backbones.base import Backbone
from cnnlab.backbones.cifar import ResNet18Cifar, VGGCifar
from cnnlab.backbones.tv import TorchvisionBackbone
from cnnlab.errors import UserError
from cnnlab.io.files import atomic_save

TRUNK_FORMAT, TRUNK_VERSION = "cnnlab-trunk", 1

#: arch name -> constructor taking ``in_channels`` and architecture kwargs (what a trunk file's ``arch`` names)
BACKBONES = {
    "vgg_cifar": VGGCifar,
    "resnet18_cifar": ResNet18Cifar,
    "vgg16_bn": partial(TorchvisionBackbone, arch="vgg16_bn"),
    "vgg16": partial(TorchvisionBackbone, arch="vgg16"),
    "alexnet": partial(TorchvisionBackbone, arch="alexnet"),
    "resnet18": partial(TorchvisionBackbone, arch="resnet18"),
}


def trunk_dict(backbone: Backbone, color_space: str, method: str, info: dict | None = None) -> dict[str, Any]:
    return {
        "format": TRUNK_FORMAT,
        "version": TRUNK_VERSION,
        "arch": backbone.arch,
        "arch_kwargs": dict(backbone.arch_kwargs),
        "in_channels": backbone.in_channels,
        "color_space": color_space,
        "taps": list(backbone.default_taps),
        "method": method,
        "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "info": info or {},
    }


def save_trunk(path: str | Path, backbone: Backbone, color_space: str, method: str, info: dict | None = None) -> Path:
    """Write ``backbone`` as a trunk file (atomically: a temp file renamed into place)."""
    return atomic_save(path, lambda tmp: torch.save(trunk_dict(backbone, color_space, method, info), tmp))


def read_trunk(path: str | Path) -> dict[str, Any]:
    """Load and validate a trunk file's dict; raises a one-line :class:`UserError` if it is not one."""
    from cnnlab.io.checkpoints import TRUNK, read_cnnlab_file

    return read_cnnlab_file(path, expect=TRUNK)[1]


def load_trunk(path: str | Path, expect_arch: str | None = None, expect_color_space: str | None = None,
               data: dict | None = None) -> tuple[Backbone, dict]:
    """Rebuild the backbone stored in a trunk file; returns ``(backbone, metadata)``.

    ``expect_*`` make a mismatch a clear error instead of a shape error deep in a run. ``data``: the file's
    dict when the caller has already read it (``read_trunk``, ``read_cnnlab_file``): the file is not read again.
    """
    if data is None:
        data = read_trunk(path)
    elif data.get("format") != TRUNK_FORMAT:
        raise UserError(f"{path} is not a cnnlab trunk file: pass the trunk.pt written by a cnnlab-train run")
    if expect_arch is not None and data["arch"] != expect_arch:
        raise UserError(f"{path} holds a {data['arch']} trunk but {expect_arch} was asked for: pass a matching trunk or backbone")
    if expect_color_space is not None and data["color_space"] != expect_color_space:
        raise UserError(
            f"{path} expects {data['color_space']!r} input but the data delivers {expect_color_space!r}: "
            f"set data.color_space={data['color_space']}"
        )
    backbone = build_backbone(data["arch"], in_channels=data["in_channels"], **data["arch_kwargs"])
    backbone.load_state_dict(data["state_dict"])
    meta = {k: v for k, v in data.items() if k != "state_dict"}
    return backbone, meta


def backbone_from_trunk(path: str | Path, in_channels: int | None = None) -> Backbone:
    """Config entry point (``backbone=trunk``): the backbone of a trunk file, checked against the data's channels."""
    backbone, meta = load_trunk(path)
    if in_channels is not None and in_channels != backbone.in_channels:
        raise UserError(
            f"{path} takes {backbone.in_channels}-channel input ({meta['color_space']}) but the data delivers {in_channels} channels: "
            f"set data.color_space={meta['color_space']}"
        )
    return backbone


def build_backbone(arch: str, in_channels: int = 3, **kwargs) -> Backbone:
    if arch not in BACKBONES:
        raise UserError(f"unknown backbone {arch!r}: choose one of {sorted(BACKBONES)}")
    return BACKBONES[arch](in_channels=in_channels, **kwargs)
