"""Backbones for 32-pixel images: a VGG-style net with BatchNorm and a CIFAR ResNet-18."""

from __future__ import annotations

from torch import nn

from cnnlab.backbones.base import Backbone, conv_bn_relu

#: VGG-style plan: numbers are conv widths (in units of ``width``), "M" is a 2x2 max-pool
VGG_PLANS = {
    "vgg8": [1, 1, "M", 2, 2, "M", 4, 4, "M", 8, 8],
    "vgg11": [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8],
}


class VGGCifar(Backbone):
    """VGG-style CIFAR net, conv-BN-ReLU blocks; taps ``conv{block}_{i}`` and ``pool{block}``.

    ``vgg8`` (default) has four blocks at strides 1, 2, 4, 8, mirroring the four tap levels of the
    hypercolumn colorization network for 32-px images.
    """

    arch = "vgg_cifar"

    def __init__(self, in_channels: int = 3, width: int = 64, plan: str = "vgg8"):
        super().__init__(in_channels)
        self.arch_kwargs = {"width": width, "plan": plan}
        block, idx, cin = 1, 1, in_channels
        for item in VGG_PLANS[plan]:
            if item == "M":
                self.stages[f"pool{block}"] = nn.MaxPool2d(2)
                block, idx = block + 1, 1
                continue
            cout = int(item) * width
            self.stages[f"conv{block}_{idx}"] = conv_bn_relu(cin, cout)
            self.default_taps.append(f"conv{block}_{idx}")
            cin, idx = cout, idx + 1


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18Cifar(Backbone):
    """ResNet-18 for 32-px images (3x3 stem, no max-pool); taps ``stem``, ``layer1`` ... ``layer4``."""

    arch = "resnet18_cifar"

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__(in_channels)
        self.arch_kwargs = {"width": width}
        self.stages["stem"] = conv_bn_relu(in_channels, width)
        cin = width
        for i, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)], start=1):
            cout = width * mult
            self.stages[f"layer{i}"] = nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
            cin = cout
        self.default_taps = ["stem", "layer1", "layer2", "layer3", "layer4"]
