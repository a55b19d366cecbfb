"""Datasets: a uint8 cache of decoded images and a LightningDataModule over it."""

from cnnlab.data.datamodule import ImageDataModule, TensorImageDataset, balanced_subset

__all__ = ["ImageDataModule", "TensorImageDataset", "balanced_subset"]
