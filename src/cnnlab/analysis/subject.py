"""What an analysis inspects: a backbone, optionally a classifier head, and the data it expects.

Any checkpoint the project produces works: a ``Classifier`` Lightning checkpoint (backbone + head,
with colour space, image size and class names recorded) or a trunk file (backbone only, e.g. a
colorization trunk that takes lightness input). Analyses that need class scores call
:meth:`Subject.classifier`, which is a one-line error for a bare trunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab.backbones import Backbone, load_trunk, no_inplace_relu
from cnnlab.errors import UserError


@dataclass
class Subject:
    backbone: Backbone
    color_space: str
    source: str
    head: nn.Module | None = None
    classes: list[str] = field(default_factory=list)
    image_size: int | None = None
    method: str = "unknown"

    def __post_init__(self) -> None:
        # hooks (guided backprop, deconvnet) need every ReLU out of place
        no_inplace_relu(self.backbone)
        self.backbone.eval()
        if self.head is not None:
            self.head.eval()

    @property
    def has_head(self) -> bool:
        return self.head is not None

    def classifier(self, analysis: str = "this analysis") -> nn.Module:
        """``(B, C, H, W)`` model input -> logits ``(B, K)``; a :class:`UserError` for a bare trunk."""
        if self.head is None:
            raise UserError(
                f"{analysis} needs class scores but {self.source} ({self.method}) has no classifier head: "
                "pass a Classifier checkpoint (checkpoints/last.ckpt of a supervised run) or drop that analysis"
            )
        return nn.Sequential(self.backbone, self.head).eval()

    def check_tap(self, tap: str) -> str:
        return self.backbone.check_taps([tap])[0]

    def class_name(self, k: int) -> str:
        return self.classes[k] if 0 <= k < len(self.classes) else str(k)


def load_subject(path: str | Path) -> Subject:
    """A :class:`Subject` from a Classifier checkpoint (``.ckpt``) or a trunk file (``trunk.pt``)."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass ckpt=<run dir>/checkpoints/last.ckpt or <run dir>/trunk.pt")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        raise UserError(f"cannot read {path} ({type(err).__name__}): pass a cnnlab checkpoint or trunk.pt") from err
    if isinstance(raw, dict) and raw.get("format") == "cnnlab-trunk":
        backbone, meta = load_trunk(path, data=raw)
        info = meta.get("info") or {}
        return Subject(backbone=backbone, color_space=meta["color_space"], source=str(path), method=meta.get("method", "unknown"),
                       image_size=info.get("image_size"), classes=list(info.get("classes") or []))
    if isinstance(raw, dict) and "cnnlab_class" in raw:
        from cnnlab.models import Classifier, load_module

        module = load_module(path)
        backbone = getattr(module, "backbone", None)
        if not isinstance(backbone, Backbone):
            raise UserError(f"{path} holds a {type(module).__name__} without a backbone: pass a Classifier checkpoint or a trunk.pt")
        info = module.data_info or {}
        # only a Classifier's head gives class scores (a colorizer's head predicts colours)
        head = module.head if isinstance(module, Classifier) else None
        color_space = info.get("color_space") if head is not None else None
        if not color_space:
            color_space = module.trunk_color_space() if hasattr(module, "trunk_color_space") else ("rgb" if backbone.in_channels == 3 else "L")
        return Subject(backbone=backbone, head=head, color_space=color_space,
                       source=str(path), classes=list(info.get("classes") or []), image_size=info.get("image_size"),
                       method=getattr(module, "method", type(module).__name__))
    raise UserError(f"{path} is neither a cnnlab Lightning checkpoint nor a trunk file: pass checkpoints/last.ckpt or trunk.pt of a cnnlab-train run")
