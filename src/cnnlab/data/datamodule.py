"""A LightningDataModule over the uint8 image cache with batched, on-device augmentation.

Batches leave the DataLoader as ``uint8 (B, 3, H, W)`` tensors (cheap to index, pin and move) and
are turned into float model input on the training device in :meth:`on_after_batch_transfer`:
random crop + flip with kornia during training, then conversion to the configured colour space.
"""

from __future__ import annotations

import logging
from typing import Sequence

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from cnnlab.color import channels_of, convert
from cnnlab.data import sources
from cnnlab.data.base import SplitDataModule, check_label_fraction, seeded
from cnnlab.data.cache import CachedDataset
from cnnlab.errors import UserError

log = logging.getLogger(__name__)


class TensorImageDataset(Dataset):
    """uint8 images ``(N, 3, H, W)`` and labels ``(N,)``, fetched a whole batch at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: Sequence[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx]


def balanced_subset(labels: np.ndarray, fraction: float | None = None, count: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced random subset: ``fraction`` of each class, or ``count`` in total.

    Every class keeps at least one example. The result is sorted and depends only on the arguments.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picked = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        k = round(len(idx) * fraction) if fraction is not None else round(count / len(classes))
        picked.append(rng.permutation(idx)[: max(1, min(len(idx), k))])
    return np.sort(np.concatenate(picked))


def round_robin_by_class(labels: torch.Tensor, count: int, offset: int = 0) -> torch.Tensor:
    """``count`` indices cycling through the classes in label order: the first image of each class, then the second...

    ``offset`` skips that many images of every class first. Fewer come back when the classes run out.
    """
    per_class = [torch.nonzero(labels == c).flatten()[offset:] for c in torch.unique(labels)]
    picked, rank = [], 0
    while len(picked) < count and any(rank < len(idx) for idx in per_class):
        picked += [int(idx[rank]) for idx in per_class if rank < len(idx)]
        rank += 1
    return torch.tensor(picked[:count], dtype=torch.long)


def build_augment(names: Sequence[str], image_size: int, crop_padding: int = 4) -> nn.Module:
    """kornia augmentations by name: ``crop`` (pad + random crop), ``flip``, ``resized_crop``, ``jitter``."""
    table = {
        "crop": lambda: K.RandomCrop((image_size, image_size), padding=crop_padding, padding_mode="reflect"),
        "flip": lambda: K.RandomHorizontalFlip(),
        "resized_crop": lambda: K.RandomResizedCrop((image_size, image_size), scale=(0.35, 1.0)),
        "jitter": lambda: K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UserError(f"unknown augmentation(s) {unknown}: choose from {sorted(table)} (data.augment)")
    if "crop" in names and not 0 <= crop_padding < image_size:
        # reflect padding mirrors the image inside itself, so it needs fewer pixels than the image has
        raise UserError(f"data.crop_padding={crop_padding} does not fit data.image_size={image_size}: the crop pads by "
                        "reflection, so give 0 <= data.crop_padding < data.image_size (e.g. image_size // 8)")
    return nn.Sequential(*[table[n]() for n in names])


class ImageDataModule(SplitDataModule):
    """CIFAR-10, STL-10, any ImageFolder (directory or archive) or synthetic images.

    Splits: ``train`` (optionally a class-balanced ``label_fraction`` of it), ``val`` (a
    deterministic stratified ``val_fraction`` held out from train, independent of the run seed) and
    ``test`` (the dataset's own test split).
    """

    def __init__(
        self,
        name: str = "cifar10",
        source: str | None = None,
        data_dir: str = "data",
        image_size: int = 32,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        label_fraction: float = 1.0,
        label_seed: int = 0,
        train_limit: int | None = None,
        test_limit: int | None = None,
        shuffle_seed: int = 0,
        color_space: str = "rgb",
        augment: Sequence[str] = ("crop", "flip"),
        crop_padding: int = 4,
        num_workers: int = 0,
        download: bool = True,
        on_corrupt: str = "skip",
        synthetic: dict | None = None,
        progress: bool = True,
    ):
        super().__init__()
        check_label_fraction(label_fraction)
        if not 0.0 <= float(val_fraction) < 1.0:
            raise UserError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        channels_of(color_space)
        self.save_hyperparameters(logger=False)
        self.train_augment = build_augment(list(augment), image_size, crop_padding)

    # ----------------------------------------------------------------------------- set-up
    def _load(self) -> CachedDataset:
        if self._data is None:
            h = self.hparams
            syn = dict(h.synthetic or {})
            self._data = sources.resolve(
                h.name, h.data_dir, h.image_size, source=h.source, download=h.download, on_corrupt=h.on_corrupt,
                synthetic_train=syn.get("n_train", 2000), synthetic_test=syn.get("n_test", 500),
                synthetic_classes=syn.get("num_classes", 10), synthetic_seed=syn.get("seed", 0), progress=h.progress,
            )
        return self._data

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        h, data = self.hparams, self._load()
        if "train" not in data.splits:
            raise UserError(f"{data.meta.get('source')} has no train split: add a train/ directory to the ImageFolder")
        train = data.splits["train"]
        labels = train.labels
        pool = np.arange(len(labels))
        if h.val_fraction > 0:
            val_idx = balanced_subset(labels, fraction=h.val_fraction, seed=h.split_seed)
            pool = np.setdiff1d(pool, val_idx)
        else:
            val_idx = np.array([], dtype=np.int64)
        if h.train_limit:
            pool = pool[balanced_subset(labels[pool], count=h.train_limit, seed=h.split_seed)]
        if h.label_fraction < 1.0:
            pool = pool[balanced_subset(labels[pool], fraction=h.label_fraction, seed=h.label_seed)]
        images = torch.from_numpy(np.array(train.images))  # copy: the cache is a read-only memmap
        labels_t = torch.from_numpy(labels)
        self.splits["train"] = TensorImageDataset(images[pool], labels_t[pool])
        self.splits["val"] = TensorImageDataset(images[val_idx], labels_t[val_idx])
        # a folder without test/ has no test split (never the validation split under another name: numbers chosen
        # on val would be reported as test); asking for it raises (``require``)
        if "test" in data.splits:
            test = data.splits["test"]
            self.splits["test"] = TensorImageDataset(torch.from_numpy(np.array(test.images)), torch.from_numpy(test.labels))
        if len(self.splits["val"]) == 0 and "test" in self.splits:
            # val_fraction=0 (test-only readers); every consumer that chooses on val refuses it (check_selection, probes)
            self.splits["val"] = self.splits["test"]
        if h.get("test_limit") and "test" in self.splits and h.test_limit < len(self.splits["test"]):
            # quick runs only: a fixed class-balanced part of the test split; reported numbers use all of it
            test = self.splits["test"]
            keep = torch.from_numpy(balanced_subset(test.labels.numpy(), count=h.test_limit, seed=h.split_seed))
            self.splits["test"] = TensorImageDataset(test.images[keep], test.labels[keep])
        for name, ds in self.splits.items():
            if len(ds) == 0:
                knobs = "data.val_fraction" if name == "val" else "data.source, data.train_limit and data.label_fraction"
                raise UserError(f"the {name} split is empty: check {knobs}")

    # ----------------------------------------------------------------------------- on device
    def preprocess(self, images: torch.Tensor, train: bool = False, seed: int | None = None) -> torch.Tensor:
        """``uint8 (B, 3, H, W)`` -> float model input in the configured colour space.

        ``seed`` fixes the random augmentation of this batch without touching the global RNG.
        """
        x = images.float().div_(255.0)
        if train and len(self.train_augment):
            with seeded(seed, x.device):
                x = self.train_augment(x)
        return convert(x, self.hparams.color_space)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        seed = self.training_seed()
        return self.preprocess(images, train=seed is not None, seed=seed), labels


def cifar_test_images(count: int = 10, data_dir: str | None = None, per_class: bool = True, offset: int = 0,
                      ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``count`` CIFAR-10 test images ``(N, 3, 32, 32)`` in [0, 1], labels and class names.

    ``per_class``: cycle through the classes (the first test image of each class, then the second ...).
    The archive is found in ``data_dir`` or ``$CNNLAB_DATA`` (see ``ImageDataModule``). For figures and
    visualizations: a fixed, class-balanced handful of test images.
    """
    dm = ImageDataModule(name="cifar10", data_dir=str(data_dir or "data"), progress=False, val_fraction=0.0)
    dm.setup()
    test = dm.splits["test"]
    labels = test.labels
    if per_class:
        idx = round_robin_by_class(labels, count, offset)
    else:
        idx = torch.arange(offset, min(offset + count, len(labels)))
    return test.images[idx].float() / 255.0, labels[idx].long(), list(dm.classes)
