"""A frozen network seen from RGB images in [0, 1], with its layers by name.

Every visualization and attack works on RGB images in [0, 1]. ``Network`` puts whatever the wrapped
model needs in the forward path: colour conversion (a lightness-only colorization trunk takes Lab L)
and input normalization (torchvision models expect ImageNet statistics; cnnlab backbones normalize
themselves). Layers are addressed by name: cnnlab backbones by tap (``conv3_2``, ``layer2``),
torchvision models by module name (``features.21``) and, for VGG, by ``conv{b}_{i}`` / ``pool{b}``
aliases (the ReLU after each conv, as Gatys et al. use them). ``logits`` is the network output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from cnnlab.color import convert
from cnnlab.errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: the pseudo-layer holding the network output
LOGITS = "logits"
#: the pseudo-layer holding the image before robustness transforms (for image regularizers)
INPUT = "input"


class Network(nn.Module):
    """``forward(rgb (B, 3, H, W) in [0, 1]) -> output (B, K)``, frozen and in eval mode.

    ``layers``: name -> submodule of ``model`` whose output a forward hook can read.
    ``has_logits``: whether the output is class scores (a classifier) or pooled features (a trunk).
    """

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module] | None = None, color_space: str = "rgb",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 classes: Sequence[str] | None = None, image_size: int = 32, has_logits: bool = True, name: str = "network"):
        super().__init__()
        self.model = model
        self.color_space = color_space
        self.classes = list(classes) if classes is not None else None
        self.image_size = int(image_size)
        self.has_logits = has_logits
        self.name = name
        if mean is not None:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        else:
            self.mean = self.std = None
        # a plain dict: the modules are already registered inside ``model`` (no duplicate state)
        object.__setattr__(self, "_layers", dict(layers if layers is not None else _module_names(model)))
        self.freeze()

    def freeze(self) -> "Network":
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Network":
        # frozen for good: BatchNorm statistics and dropout must not change under a Trainer
        return super().train(False)

    # ----------------------------------------------------------------------------- forward
    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] -> what the model takes (colour space, normalization)."""
        x = convert(rgb, self.color_space) if self.color_space != "rgb" else rgb
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(rgb))

    # ----------------------------------------------------------------------------- layers
    @property
    def layer_names(self) -> list[str]:
        return ([LOGITS] if self.has_logits else []) + list(self._layers)

    def layer(self, name: str) -> nn.Module:
        if name not in self._layers:
            raise UserError(f"unknown layer {name!r} for {self.name}: available layers are {self.layer_names}")
        return self._layers[name]

    def check_layers(self, names: Sequence[str]) -> list[str]:
        for n in names:
            if n == LOGITS:
                if not self.has_logits:
                    raise UserError(f"{self.name} has no class scores (a feature trunk): pick a layer from {self.layer_names}")
            elif n != INPUT:
                self.layer(n)
        return list(names)

    def class_index(self, c: int | str) -> int:
        """A class given by index or name -> its index (a one-line error for unknown classes)."""
        if not self.has_logits:
            raise UserError(f"{self.name} has no classes (a feature trunk): use a channel or layer objective instead")
        n = self.num_classes
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if self.classes and c in self.classes:
                return self.classes.index(c)
            raise UserError(f"unknown class {c!r} for {self.name}: choose an index in [0, {n}) or one of {self.classes}")
        i = int(c)
        if not 0 <= i < n:
            raise UserError(f"class index {i} out of range for {self.name}: choose an index in [0, {n})" +
                            (f" or a name from {self.classes}" if self.classes else ""))
        return i

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        with torch.no_grad():
            p = next(self.model.parameters())
            return int(self(torch.zeros(1, 3, self.image_size, self.image_size, device=p.device)).shape[1])

    def class_name(self, i: int) -> str:
        return self.classes[i] if self.classes and i < len(self.classes) else str(i)


def _module_names(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name}


def vgg_aliases(features: nn.Sequential, prefix: str = "features") -> dict[str, nn.Module]:
    """``conv{b}_{i}`` -> the ReLU after that conv, ``pool{b}`` -> the b-th max-pool of a torchvision VGG."""
    out, block, idx, pending = {}, 1, 1, False
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            pending = True
        elif isinstance(layer, nn.ReLU) and pending:
            out[f"conv{block}_{idx}"] = layer
            idx, pending = idx + 1, False
        elif isinstance(layer, nn.MaxPool2d):
            out[f"pool{block}"] = layer
            block, idx = block + 1, 1
    return out


# --------------------------------------------------------------------------------- loaders
def from_classifier(module, name: str | None = None) -> Network:
    """A cnnlab ``Classifier`` (e.g. from ``load_module``): layers are its backbone taps."""
    backbone = module.backbone
    info = getattr(module, "data_info", {}) or {}
    layers = {tap: backbone.stages[tap] for tap in backbone.tap_names}
    return Network(module, layers, color_space=info.get("color_space", "rgb" if backbone.in_channels == 3 else "L"),
                   classes=info.get("classes"), image_size=info.get("image_size", 32), name=name or f"classifier({backbone.arch})")


def from_backbone(backbone, color_space: str = "rgb", name: str | None = None) -> Network:
    """A cnnlab ``Backbone`` (e.g. a colorization trunk): no class scores, layers are its taps."""
    layers = {tap: backbone.stages[tap] for tap in backbone.tap_names}
    return Network(backbone, layers, color_space=color_space, has_logits=False, name=name or f"trunk({backbone.arch})")


def from_torchvision(arch: str, weights: str | None = None, num_classes: int = 1000, image_size: int = 224,
                     classes: Sequence[str] | None = None) -> Network:
    """A torchvision classifier (weights from a local state_dict file, or random when ``weights`` is None)."""
    from cnnlab.backbones import load_torchvision_model

    model = load_torchvision_model(arch, weights, num_classes=num_classes)
    layers = _module_names(model)
    if arch.startswith("vgg"):
        layers.update(vgg_aliases(model.features))
    label = f"{arch}({'random weights' if not weights else Path(str(weights)).name})"
    return Network(model, layers, mean=IMAGENET_MEAN, std=IMAGENET_STD, classes=classes, image_size=image_size, name=label)


def load_network(checkpoint: str | None = None, trunk: str | None = None, arch: str | None = None,
                 weights: str | None = None, num_classes: int = 1000, image_size: int = 224, **_ignored) -> Network:
    """Exactly one of: a cnnlab classifier ``checkpoint`` (.ckpt), a ``trunk`` file, or a torchvision ``arch``."""
    given = [k for k, v in (("checkpoint", checkpoint), ("trunk", trunk), ("arch", arch)) if v]
    if len(given) != 1:
        raise UserError(f"give exactly one of network.checkpoint, network.trunk, network.arch (got {given or 'none'})")
    if checkpoint:
        from cnnlab.models import Classifier, load_module

        module = load_module(checkpoint, expect=Classifier)
        return from_classifier(module, name=f"classifier {Path(checkpoint).name}")
    if trunk:
        from cnnlab.backbones import load_trunk

        backbone, meta = load_trunk(trunk)
        return from_backbone(backbone, color_space=meta["color_space"], name=f"{meta.get('method', '')} trunk {meta['arch']}")
    return from_torchvision(arch, weights, num_classes=num_classes, image_size=image_size)
