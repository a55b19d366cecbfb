"""Backbones with named feature taps, a registry, and the trunk file format."""

from __future__ import annotations

from cnnlab.backbones.base import Backbone, InputNorm, freeze, no_inplace_relu
from cnnlab.backbones.cifar import ResNet18Cifar, VGGCifar
from cnnlab.backbones.trunk import BACKBONES, backbone_from_trunk, build_backbone, load_trunk, read_trunk, save_trunk
from cnnlab.backbones.tv import TorchvisionBackbone, load_torchvision_model

__all__ = [
    "BACKBONES", "Backbone", "InputNorm", "ResNet18Cifar", "TorchvisionBackbone", "VGGCifar",
    "backbone_from_trunk", "build_backbone", "freeze", "load_torchvision_model", "load_trunk", "no_inplace_relu", "read_trunk", "save_trunk",
]
