"""What every cnnlab data module shares: uint8 splits in memory, seeded loaders, seeded on-device augmentation.

:class:`ImageDataModule` (images + class labels) and :class:`~cnnlab.data.segmentation.SegmentationDataModule`
(frames + label maps) differ in what a split holds, how it is split and how a batch is augmented; this base holds
what they do alike: the colour-space properties, the loaders (a shuffling order that is a function of
``(shuffle_seed, epoch)`` alone), and the seed of each training batch's augmentation (a function of
``(shuffle_seed, step, rank)`` alone), so a resumed run sees exactly the batches an uninterrupted one would.

A subclass sets ``hparams`` (``save_hyperparameters``) with ``color_space``, ``batch_size``, ``eval_batch_size``,
``shuffle_seed`` and ``num_workers``, and implements ``_load()`` (the decoded cache: ``.classes``, ``.meta``) and
``setup()`` (fills ``self.splits``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, RandomSampler

from cnnlab.color import channels_of
from cnnlab.errors import UserError


def _passthrough(batch):
    return batch


class EpochSeededRandomSampler(RandomSampler):
    """A shuffling sampler whose order is a function of (seed, epoch) alone.

    A resumed run therefore sees exactly the batches an uninterrupted one would. It subclasses
    RandomSampler so Lightning still recognises it as shuffled when it swaps in a distributed sampler.
    """

    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=g).tolist()


def check_label_fraction(label_fraction: float) -> None:
    if not 0.0 < float(label_fraction) <= 1.0:
        raise UserError(f"data.label_fraction must be in (0, 1], got {label_fraction}")


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Random draws inside come from ``seed`` (None: the global RNG as it is), and the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


class SplitDataModule(pl.LightningDataModule):
    """The base of cnnlab's data modules: ``splits`` of uint8 tensors, their loaders and the training batch's seed."""

    #: labels are one class per image; the multi-label module (several present classes per image) says True
    multilabel = False

    def __init__(self):
        super().__init__()
        self._data = None
        self.splits: dict = {}

    # ----------------------------------------------------------------------------- what the data is
    @property
    def color_space(self) -> str:
        return self.hparams.color_space

    @property
    def channels(self) -> int:
        return channels_of(self.hparams.color_space)

    @property
    def classes(self) -> list[str]:
        return self._load().classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _load(self):
        """The decoded cache (loaded once): ``.classes``, ``.meta`` and its splits."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        self._load()

    # ----------------------------------------------------------------------------- loaders
    def require(self, split: str) -> None:
        """Raise one clear :class:`UserError` when the data has no ``split`` (a folder without ``test/``), so a run
        stops before training instead of at its end, and no other split ever stands in for it."""
        self.setup()
        if split not in self.splits:
            fix = " (a test/ or val/ directory beside train/), or run with test=false" if split == "test" else ""
            raise UserError(f"{self._load().meta.get('source')} has no {split} split: add one to the data{fix}")

    def _loader(self, split: str, train: bool) -> DataLoader:
        self.require(split)
        ds, h = self.splits[split], self.hparams
        bs = h.batch_size if train else (h.eval_batch_size or h.batch_size)
        return DataLoader(
            ds,
            batch_size=min(bs, len(ds)) if train else bs,
            sampler=EpochSeededRandomSampler(ds, seed=h.shuffle_seed) if train else None,
            drop_last=train and len(ds) > bs,
            collate_fn=_passthrough,
            num_workers=h.num_workers,
            persistent_workers=h.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def loader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """An unshuffled loader over ``split`` outside the Trainer (``batch_size`` default: ``data.batch_size``)."""
        self.setup()
        if split not in self.splits:
            raise UserError(f"unknown split {split!r}: choose one of {sorted(self.splits)}")
        return DataLoader(self.splits[split], batch_size=batch_size or self.hparams.batch_size, collate_fn=_passthrough)

    # ----------------------------------------------------------------------------- on device
    def training_seed(self) -> int | None:
        """The augmentation seed of the batch being moved to the device: a function of (shuffle_seed, global step, rank)
        alone while the Trainer trains, so a resumed run repeats it exactly; None outside training (no augmentation)."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return None
        from cnnlab.callbacks import step_seed

        return step_seed(self.hparams.shuffle_seed, trainer.global_step, trainer.global_rank, modulus=2**63)
