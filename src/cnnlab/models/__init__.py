"""LightningModules: one per method on a small shared base."""

from cnnlab.models.base import CnnlabModule, make_backbone
from cnnlab.models.classifier import Classifier, MultiLabelClassifier
from cnnlab.models.loading import load_module

__all__ = ["Classifier", "CnnlabModule", "MultiLabelClassifier", "load_module", "make_backbone"]
