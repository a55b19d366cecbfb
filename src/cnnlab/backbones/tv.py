"""torchvision architectures (VGG-16-BN, AlexNet, ResNet-18) cut into named stages.

Weights come from a local state-dict file (no network needed), or from torchvision's download
(``weights=DEFAULT``) where a network is available.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from cnnlab.backbones.base import Backbone, no_inplace_relu
from cnnlab.errors import UserError

TV_ARCHS = ("vgg16_bn", "vgg16", "alexnet", "resnet18")


def load_torchvision_model(arch: str, weights: str | None = None, num_classes: int = 1000) -> nn.Module:
    """A full torchvision classifier with out-of-place ReLUs.

    ``weights``: None (random init), a path to a ``state_dict`` file, or a torchvision weight name
    such as ``DEFAULT`` (downloaded by torchvision; needs a network).
    """
    if arch not in TV_ARCHS:
        raise UserError(f"unknown torchvision architecture {arch!r}: choose one of {list(TV_ARCHS)}")
    builder = getattr(torchvision.models, arch)
    if weights and not Path(str(weights)).expanduser().exists() and not str(weights).endswith((".pt", ".pth", ".ckpt")):
        try:
            model = builder(weights=weights)
        except Exception as err:  # noqa: BLE001 - download errors come in many types
            raise UserError(
                f"could not get torchvision weights {weights!r} for {arch} ({type(err).__name__}: {err}); "
                "without a network, pass a local state_dict file as weights=<path>"
            ) from err
        return no_inplace_relu(model)
    model = builder(weights=None, num_classes=num_classes)
    if weights:
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise UserError(f"weights file {path} does not exist: pass a torchvision state_dict saved with torch.save")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        head_keys = [k for k in state if k.startswith(("classifier.", "fc."))]
        if num_classes != 1000 or any(state[k].shape != model.state_dict()[k].shape for k in head_keys if k in model.state_dict()):
            state = {k: v for k, v in state.items() if k not in head_keys}
        missing, unexpected = model.load_state_dict(state, strict=False)
        trunk_missing = [k for k in missing if not k.startswith(("classifier.", "fc."))]
        if trunk_missing or unexpected:
            raise UserError(
                f"{path} does not match torchvision {arch}: missing {trunk_missing[:3]}, unexpected {unexpected[:3]}; "
                "pass a state_dict of that architecture"
            )
    return no_inplace_relu(model)


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
