"""Backbones with named feature taps, a registry, and the trunk file format."""

from __future__ import annotations

from functools import partial

from cnnlab.backbones.base import Backbone, InputNorm, no_inplace_relu
from cnnlab.backbones.cifar import ResNet18Cifar, VGGCifar
from cnnlab.backbones.trunk import backbone_from_trunk, build_backbone, load_trunk, read_trunk, save_trunk
from cnnlab.backbones.tv import TorchvisionBackbone, load_torchvision_model

#: arch name -> constructor taking ``in_channels`` and architecture kwargs
BACKBONES = {
    "vgg_cifar": VGGCifar,
    "resnet18_cifar": ResNet18Cifar,
    "vgg16_bn": partial(TorchvisionBackbone, arch="vgg16_bn"),
    "vgg16": partial(TorchvisionBackbone, arch="vgg16"),
    "alexnet": partial(TorchvisionBackbone, arch="alexnet"),
    "resnet18": partial(TorchvisionBackbone, arch="resnet18"),
}

__all__ = [
    "BACKBONES", "Backbone", "InputNorm", "ResNet18Cifar", "TorchvisionBackbone", "VGGCifar",
    "backbone_from_trunk", "build_backbone", "load_torchvision_model", "load_trunk", "no_inplace_relu", "read_trunk", "save_trunk",
]
