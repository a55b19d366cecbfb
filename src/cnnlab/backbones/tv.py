"""torchvision classifiers: any architecture by name, and VGG-16(-BN), AlexNet, ResNet-18 cut into named stages.

Weights come from a local state-dict file (no network needed), or from torchvision's download
(``weights=DEFAULT`` or a weight name such as ``IMAGENET1K_V2``) where a network is available. The
ImageNet class names come with torchvision's weight metadata, which is part of the package (no download).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from cnnlab.backbones.base import Backbone, no_inplace_relu
from cnnlab.errors import UserError, close_matches

#: the architectures with named stages (``TorchvisionBackbone``, trainable as a cnnlab backbone)
TV_ARCHS = ("vgg16_bn", "vgg16", "alexnet", "resnet18")
_WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def torchvision_archs() -> list[str]:
    """Every torchvision classification model name (``torchvision.models.list_models``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> str:
    if arch not in torchvision_archs():
        raise UserError(close_matches(arch, torchvision_archs(), "torchvision architecture") +
                        " (the full list: torchvision.models.list_models(module=torchvision.models))")
    return arch


def weight_enum(arch: str, name: str):
    """``DEFAULT``, a member name (``IMAGENET1K_V1``) or a full name (``ResNet50_Weights.IMAGENET1K_V1``) -> the enum value."""
    enum = torchvision.models.get_model_weights(check_arch(arch))
    member = str(name).rsplit(".", 1)[-1]
    if member not in enum.__members__:
        raise UserError(close_matches(member, list(enum.__members__), f"weights for {arch}") +
                        " (or pass a local state_dict file as weights=<path>)")
    return enum[member]


def imagenet_classes(arch: str, weights: str | None = None) -> list[str] | None:
    """The class names in the weights' metadata (the DEFAULT weights' when ``weights`` is a file or None)."""
    enum = torchvision.models.get_model_weights(check_arch(arch))
    named = weights and not _is_weight_file(weights) and str(weights).rsplit(".", 1)[-1] in enum.__members__
    meta = (weight_enum(arch, weights) if named else enum.DEFAULT).meta
    return list(meta["categories"]) if meta.get("categories") else None


def _is_weight_file(weights: str) -> bool:
    return Path(str(weights)).expanduser().exists() or str(weights).endswith(_WEIGHT_FILE_SUFFIXES) or "/" in str(weights)


def load_torchvision_model(arch: str, weights: str | None = None, num_classes: int = 1000) -> nn.Module:
    """Any torchvision classifier, in eval mode, with out-of-place ReLUs.

    ``weights``: None (random init), a path to a ``state_dict`` file, or a torchvision weight name such as
    ``DEFAULT`` (downloaded by torchvision; needs a network).
    """
    check_arch(arch)
    if weights and not _is_weight_file(weights):
        chosen = weight_enum(arch, weights)
        try:
            model = torchvision.models.get_model(arch, weights=chosen)
        except Exception as err:  # noqa: BLE001 - download errors come in many types
            raise UserError(
                f"could not get torchvision weights {chosen} for {arch} ({type(err).__name__}: {err}); "
                "without a network, pass a local state_dict file as weights=<path>"
            ) from err
        return no_inplace_relu(model).eval()
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if weights:
        _load_state_file(model, arch, Path(str(weights)).expanduser())
    return no_inplace_relu(model).eval()


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Parameter-name prefixes of the class-score layers (the last ``nn.Linear``, and auxiliary heads)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    aux = [name for name, _ in model.named_children() if name.lower().startswith("aux")]
    return tuple(f"{n}." for n in linears[-1:] + aux)


def _load_state_file(model: nn.Module, arch: str, path: Path) -> None:
    """Load a ``state_dict`` file into ``model``; a head of another size (other classes) is left at its init."""
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: pass a torchvision state_dict saved with torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        raise UserError(f"cannot read {path} as a state_dict ({type(err).__name__}): pass a file saved with torch.save(model.state_dict())") from err
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state_dict: pass a file saved with torch.save(model.state_dict())")
    own, head = model.state_dict(), _head_prefixes(model)
    resized = [k for k, v in state.items() if k in own and getattr(v, "shape", None) != own[k].shape]
    state = {k: v for k, v in state.items() if k not in resized}
    missing, unexpected = model.load_state_dict(state, strict=False)
    trunk_missing = [k for k in missing if not k.startswith(head)]
    wrong = [k for k in resized if not k.startswith(head)]
    if trunk_missing or unexpected or wrong:
        raise UserError(
            f"{path} does not match torchvision {arch}: missing {trunk_missing[:3]}, unexpected {unexpected[:3]}, "
            f"other shapes {wrong[:3]}; pass a state_dict of that architecture"
        )


def vgg_aliases(features: nn.Sequential) -> dict[str, nn.Module]:
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


def _to_one_channel(conv: nn.Conv2d) -> nn.Conv2d:
    """A 1-channel copy of an RGB conv; pretrained filters are summed over colour (gray = R = G = B)."""
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


class TorchvisionBackbone(Backbone):
    """The convolutional trunk of a torchvision classifier, as named stages.

    Taps: VGG ``conv{b}_{i}`` / ``pool{b}``; AlexNet ``conv1`` ... ``conv5`` / ``pool{1,2,5}``;
    ResNet-18 ``stem``, ``pool``, ``layer1`` ... ``layer4``.
    """

    def __init__(self, arch: str = "resnet18", in_channels: int = 3, weights: str | None = None):
        super().__init__(in_channels)
        if arch not in TV_ARCHS:
            raise UserError(f"no named stages for torchvision {arch!r} as a trainable backbone: choose one of {list(TV_ARCHS)}")
        self.arch = arch
        self.arch_kwargs = {"arch": arch}
        model = load_torchvision_model(arch, weights)
        if arch.startswith("vgg"):
            self._split_vgg(model.features)
        elif arch == "alexnet":
            self._split_alexnet(model.features)
        else:
            self._split_resnet(model)

    def _first_conv(self, conv: nn.Conv2d) -> nn.Conv2d:
        return _to_one_channel(conv) if self.in_channels == 1 else conv

    def _split_vgg(self, features: nn.Sequential) -> None:
        block, idx, current = 1, 1, []
        for layer in features:
            if isinstance(layer, nn.Conv2d) and not self.stages and not current:
                layer = self._first_conv(layer)
            current.append(layer)
            if isinstance(layer, nn.ReLU):
                name = f"conv{block}_{idx}"
                self.stages[name] = nn.Sequential(*current)
                self.default_taps.append(name)
                current, idx = [], idx + 1
            elif isinstance(layer, nn.MaxPool2d):
                self.stages[f"pool{block}"] = nn.Sequential(*current)
                current, block, idx = [], block + 1, 1

    def _split_alexnet(self, features: nn.Sequential) -> None:
        conv_i, current = 0, []
        for layer in features:
            if isinstance(layer, nn.Conv2d):
                layer = self._first_conv(layer) if conv_i == 0 else layer
                conv_i += 1
            current.append(layer)
            if isinstance(layer, nn.ReLU):
                self.stages[f"conv{conv_i}"] = nn.Sequential(*current)
                self.default_taps.append(f"conv{conv_i}")
                current = []
            elif isinstance(layer, nn.MaxPool2d):
                self.stages[f"pool{conv_i}"] = nn.Sequential(*current)
                current = []

    def _split_resnet(self, model: nn.Module) -> None:
        self.stages["stem"] = nn.Sequential(self._first_conv(model.conv1), model.bn1, model.relu)
        self.stages["pool"] = model.maxpool
        for i in range(1, 5):
            self.stages[f"layer{i}"] = getattr(model, f"layer{i}")
        self.default_taps = ["stem", "layer1", "layer2", "layer3", "layer4"]

    def _probe_size(self) -> int:
        return 64
