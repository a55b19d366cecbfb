"""The model under inspection: a frozen network seen from RGB images in [0, 1], with its layers by name.

Every visualization, attack and analysis works on RGB images in [0, 1]. ``Subject`` puts whatever the
wrapped model needs in the forward path: colour conversion (a lightness-only colorization trunk takes
Lab L) and input normalization (torchvision models expect ImageNet statistics; cnnlab backbones
normalize themselves). Layers are addressed by name: cnnlab backbones by tap (``conv3_2``, ``layer2``),
torchvision models by module name (``features.21``, ``layer3.1.conv2``) and, for VGG, by
``conv{b}_{i}`` / ``pool{b}`` aliases (the ReLU after each conv, as Gatys et al. use them). ``logits``
is the network output.

A subject comes from one of (see :func:`load_subject`):

- a cnnlab ``Classifier`` checkpoint: backbone taps, head, colour space, image size and class names;
- a trunk file, or another cnnlab checkpoint with a backbone (a colorizer): taps only, no class scores;
- any torchvision classification architecture by name, with random weights, a local state_dict or
  torchvision's download; ImageNet class names from the weight metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from cnnlab.backbones import Backbone, freeze, no_inplace_relu
from cnnlab.color import convert
from cnnlab.errors import UserError, close_matches
from cnnlab.hooks import INPUT, LOGITS, LayerCapture
from cnnlab.taps import dry_run_shapes

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Subject(nn.Module):
    """``forward(rgb (B, 3, H, W) in [0, 1]) -> output (B, K)``, frozen and in eval mode for good.

    A :class:`~cnnlab.taps.TappedNetwork` whose taps are its named layers, fed RGB.

    ``layers``: name -> submodule of ``model`` whose output a forward hook reads. ``has_logits``: whether
    the output is class scores (a classifier) or pooled features (a trunk). ``taps``: the layers worth
    analysing in order (a cnnlab backbone's default taps; for other models the main blocks, found by a
    dry run). ``backbone``: the cnnlab backbone when there is one (analytic receptive fields); ``head``: the
    module that gives the class scores, when there is one (labels of the sanity check's layers). ``multilabel``:
    the class scores are independent logistic outputs (several classes per image, PASCAL VOC's task), not a softmax.
    """

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module] | None = None, color_space: str = "rgb",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 classes: Sequence[str] | None = None, image_size: int = 32, has_logits: bool = True, name: str = "network",
                 taps: Sequence[str] | None = None, backbone: Backbone | None = None, method: str = "unknown",
                 source: str = "", arch: str | None = None, head: nn.Module | None = None, multilabel: bool = False):
        super().__init__()
        # hooks (guided backprop, deconvnet, captured activations) need every ReLU out of place
        self.model = no_inplace_relu(model)
        self.color_space = color_space
        self.classes = list(classes) if classes else []
        self.image_size = int(image_size)
        self.has_logits = has_logits
        self.multilabel = bool(multilabel)
        self.name, self.method, self.source = name, method, source or name
        self.arch = arch or (backbone.arch if backbone is not None else type(model).__name__)
        if mean is not None:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        else:
            self.mean = self.std = None
        # plain containers: the modules are already registered inside ``model`` (no duplicate state)
        object.__setattr__(self, "backbone", backbone)
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "_layers", dict(layers if layers is not None else _module_names(model)))
        self._taps = list(taps) if taps is not None else None
        #: how the training data were split, where the file records it (``held_out_split``); None otherwise
        self.data_split: dict | None = None
        self.freeze()

    def freeze(self) -> "Subject":
        return freeze(self)

    def train(self, mode: bool = True) -> "Subject":
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

    def forward_taps(self, rgb: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{tap: activation}`` of named layers for RGB input; the forward pass stops at the last one needed."""
        with LayerCapture(self, list(taps)) as cap:
            return cap.run(rgb)

    # ----------------------------------------------------------------------------- layers
    @property
    def layer_names(self) -> list[str]:
        return ([LOGITS] if self.has_logits else []) + list(self._layers)

    @property
    def tap_names(self) -> list[str]:
        return list(self._layers)

    def layer(self, name: str) -> nn.Module:
        if name not in self._layers:
            raise UserError(close_matches(name, self.layer_names, "layer", of=self.name) +
                            " (list them with list_layers=true)")
        return self._layers[name]

    def check_layers(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        for n in names:
            if n == LOGITS:
                if not self.has_logits:
                    raise UserError(f"{self.name} has no class scores (a feature trunk): pick a layer from {self.tap_names[:12]}")
            elif n != INPUT:
                self.layer(n)
        return names

    def check_taps(self, taps: Iterable[str]) -> list[str]:
        """The :class:`~cnnlab.taps.TappedNetwork` check: a subject's taps are its layers (see :meth:`check_layers`)."""
        return self.check_layers(taps)

    @property
    def default_taps(self) -> list[str]:
        """The layers worth analysing, in order (the blocks of the main path with a spatial output)."""
        if self._taps is None:
            blocks = [n for n in _block_names(self.model) if n in self._layers]
            shapes = self.layer_shapes(blocks, stop_early=False)
            self._taps = [n for n in blocks if n in shapes and len(shapes[n]) == 3 and min(shapes[n][1:]) > 1]
        return self._taps

    @torch.no_grad()
    def layer_shapes(self, names: Sequence[str] | None = None, image_size: int | None = None,
                     stop_early: bool = True) -> dict[str, tuple[int, ...]]:
        """``{layer: output shape without the batch}`` for a square input (a dry run); layers that did not run are left out."""
        names = list(self._layers) if names is None else list(names)
        s = int(image_size or self.image_size)
        device = next(iter(self.buffers()), next(self.model.parameters(), torch.zeros(()))).device
        with LayerCapture(self, names, stop_early=stop_early) as cap:
            return dry_run_shapes(cap.run, 3, s, torch.zeros((), device=device))  # RGB in float32, on the model's device

    def tap_shapes(self, image_size: int) -> dict[str, tuple[int, ...]]:
        """``{tap: (C, h, w)}`` for a square ``image_size`` input (:meth:`layer_shapes` of every tap)."""
        return self.layer_shapes(self.tap_names, image_size)

    def describe_layers(self) -> str:
        """One line per layer: name, module type and output shape at the subject's image size (for picking a layer)."""
        shapes = self.layer_shapes(stop_early=False)
        width = max(len(n) for n in self.layer_names)
        lines = [f"layers of {self.name} (output shapes for {self.image_size}x{self.image_size} input; * = default analysis taps):"]
        if self.has_logits:
            lines.append(f"  {LOGITS:<{width}}  class scores ({self.num_classes} classes)")
        taps = set(self.default_taps)
        for n, m in self._layers.items():
            shape = "x".join(map(str, shapes[n])) if n in shapes else "not run in eval mode"
            lines.append(f"{'*' if n in taps else ' '} {n:<{width}}  {type(m).__name__:<22} {shape}")
        return "\n".join(lines)

    # ----------------------------------------------------------------------------- classes
    def classifier(self, analysis: str = "this analysis") -> "Subject":
        """Itself (RGB -> logits), or a one-line :class:`UserError` for a bare trunk."""
        if not self.has_logits:
            raise UserError(
                f"{analysis} needs class scores but {self.source} ({self.method}) has no classifier head: "
                "pass a Classifier checkpoint (checkpoints/last.ckpt of a supervised run) or drop that analysis"
            )
        return self

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, K)`` -> probabilities ``(B, K)``: softmax over classes, or per-class sigmoid when
        multi-label."""
        return logits.sigmoid() if self.multilabel else logits.softmax(1)

    def single_label(self, what: str) -> "Subject":
        """Itself, or a one-line :class:`UserError` when ``what`` (which takes one class per image) meets a
        multi-label classifier."""
        if self.multilabel:
            raise UserError(f"{what} assumes one class per image, but {self.source} is a multi-label classifier "
                            "(one logistic output per class): use a single-label classifier, or its trunk "
                            "(<run>/trunk.pt) where a trunk will do")
        return self

    def class_index(self, c: int | str) -> int:
        """A class given by index or name -> its index (a one-line error for unknown classes)."""
        if not self.has_logits:
            raise UserError(f"{self.name} has no classes (a feature trunk): use a channel or layer objective instead")
        n = self.num_classes
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c in self.classes:
                return self.classes.index(c)
            raise UserError(close_matches(c, self.classes, "class", of=self.name) if self.classes
                            else f"unknown class {c!r} for {self.name}: it has no class names, choose an index in [0, {n})")
        i = int(c)
        if not 0 <= i < n:
            raise UserError(f"class index {i} out of range for {self.name}: choose an index in [0, {n})" +
                            (f" or a name such as {self.classes[0]!r}" if self.classes else ""))
        return i

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        with torch.no_grad():
            p = next(self.model.parameters())
            return int(self(torch.zeros(1, 3, self.image_size, self.image_size, device=p.device)).shape[1])

    def class_name(self, i: int) -> str:
        return self.classes[i] if 0 <= i < len(self.classes) else str(i)


def _module_names(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name}


def _block_names(model: nn.Module) -> list[str]:
    """The main blocks: the children of ``model.features`` where it has one (VGG, DenseNet, MobileNet, ...), else its children."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [f"features.{n}" for n, _ in features.named_children()]
    return [n for n, _ in model.named_children()]


# --------------------------------------------------------------------------------- builders
def from_classifier(module, source: str = "") -> Subject:
    """A cnnlab ``Classifier`` (e.g. from ``load_module``): layers are its backbone taps."""
    backbone = module.backbone
    info = getattr(module, "data_info", {}) or {}
    return Subject(module, _taps(backbone), color_space=info.get("color_space") or _color_space(backbone),
                   classes=info.get("classes"), image_size=info.get("image_size") or 32, taps=backbone.default_taps,
                   backbone=backbone, head=module.head, method=getattr(module, "method", "supervised"), source=source,
                   multilabel=getattr(module, "multilabel", False),
                   name=f"classifier {Path(source).name}" if source else f"classifier({backbone.arch})")


def from_backbone(backbone: Backbone, color_space: str | None = None, method: str = "unknown", source: str = "",
                  image_size: int | None = None, classes: Sequence[str] | None = None, head: nn.Module | None = None) -> Subject:
    """A cnnlab ``Backbone`` (e.g. a colorization trunk): layers are its taps; class scores only with a ``head``
    (a module on the pooled features, e.g. ``nn.Linear(backbone.out_dim, K)``)."""
    model = backbone if head is None else nn.Sequential(backbone, head)
    return Subject(model, _taps(backbone), color_space=color_space or _color_space(backbone), has_logits=head is not None,
                   image_size=image_size or 32, classes=classes, taps=backbone.default_taps, backbone=backbone, head=head,
                   method=method, source=source, name=f"{method} {'network' if head is not None else 'trunk'} {backbone.arch}")


def from_torchvision(arch: str, weights: str | None = None, num_classes: int = 1000, image_size: int = 224) -> Subject:
    """Any torchvision classifier (random weights when ``weights`` is None); layers are its module names."""
    from cnnlab.backbones.tv import imagenet_classes, load_torchvision_model, vgg_aliases

    model = load_torchvision_model(arch, weights, num_classes=num_classes)
    layers = _module_names(model)
    if arch.startswith("vgg"):
        layers.update(vgg_aliases(model.features))
    classes = imagenet_classes(arch, weights) if num_classes == 1000 else None
    label = f"{arch}({'random weights' if not weights else Path(str(weights)).name})"
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return Subject(model, layers, mean=IMAGENET_MEAN, std=IMAGENET_STD, classes=classes, image_size=image_size,
                   name=label, method="torchvision" if weights else "random", source=label, arch=arch,
                   head=linears[-1] if linears else None)


def _taps(backbone: Backbone) -> dict[str, nn.Module]:
    return {tap: backbone.stages[tap] for tap in backbone.tap_names}


def _color_space(backbone: Backbone) -> str:
    return "rgb" if backbone.in_channels == 3 else "L"


def subject_from_file(path: str | Path, expect: str | Iterable[str] = ("trunk", "checkpoint")) -> Subject:
    """A :class:`Subject` from a cnnlab checkpoint or trunk file, read once."""
    from cnnlab.backbones import load_trunk
    from cnnlab.io.checkpoints import TRUNK, read_cnnlab_file
    from cnnlab.models import Classifier
    from cnnlab.models.loading import module_from_checkpoint

    kind, data = read_cnnlab_file(path, expect=expect)
    source = str(path)
    if kind == TRUNK:
        backbone, meta = load_trunk(path, data=data)
        info = meta.get("info") or {}
        return from_backbone(backbone, meta["color_space"], meta.get("method", "unknown"), source,
                             image_size=info.get("image_size"), classes=info.get("classes"))
    module = module_from_checkpoint(data, path)
    if isinstance(module, Classifier):
        subject = from_classifier(module, source)
        subject.data_split = held_out_split(data)
        return subject
    backbone = getattr(module, "backbone", None)
    if not isinstance(backbone, Backbone):
        raise UserError(f"{path} holds a {type(module).__name__} without a backbone: pass a Classifier checkpoint or a trunk.pt")
    # only a Classifier's head gives class scores (a colorizer's head predicts colours)
    color_space = module.trunk_color_space() if hasattr(module, "trunk_color_space") else None
    info = module.data_info or {}
    return from_backbone(backbone, color_space, getattr(module, "method", type(module).__name__), source,
                         image_size=info.get("image_size"))


#: the data-module settings that decide which training images a run held out as its validation split
SPLIT_KEYS = ("name", "source", "val_fraction", "split_seed")


def held_out_split(checkpoint: dict) -> dict | None:
    """``{name, source, val_fraction, split_seed}`` of the data module a Lightning checkpoint was trained with, or None.

    With these, ``ImageDataModule`` rebuilds exactly the validation images the network did not train on
    (the split is stratified and depends on nothing else: not on the run seed, ``train_limit`` or ``label_fraction``).
    """
    hp = checkpoint.get("datamodule_hyper_parameters") or {}
    if not all(k in hp for k in SPLIT_KEYS):
        return None
    return {k: hp[k] for k in SPLIT_KEYS}


def load_subject(checkpoint: str | None = None, trunk: str | None = None, arch: str | None = None, weights: str | None = None,
                 num_classes: int = 1000, image_size: int = 224, path: str | None = None) -> Subject:
    """Exactly one of: a cnnlab ``checkpoint`` (.ckpt), a ``trunk`` file, any cnnlab file ``path`` or a torchvision ``arch``.

    ``weights``, ``num_classes`` and ``image_size`` apply to torchvision architectures (cnnlab files record their own).
    """
    given = [k for k, v in (("checkpoint", checkpoint), ("trunk", trunk), ("path", path), ("arch", arch)) if v]
    if len(given) != 1:
        raise UserError(f"give exactly one network: a checkpoint, a trunk file or a torchvision arch (got {given or 'none'})")
    if arch:
        return from_torchvision(str(arch), weights, num_classes=int(num_classes), image_size=int(image_size))
    if checkpoint:
        return subject_from_file(checkpoint, expect="checkpoint")
    if trunk:
        return subject_from_file(trunk, expect="trunk")
    return subject_from_file(path)

