"""LightningModules: one per method on a small shared base."""

from cnnlab.models.base import CnnlabModule, make_backbone
from cnnlab.models.classifier import Classifier

__all__ = ["Classifier", "CnnlabModule", "make_backbone"]
