"""The shared state of one analysis run: the subject, its data, the feature cache, figures and the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import torch

from cnnlab.analysis.report import Report, Section
from cnnlab.errors import UserError
from cnnlab.features import extract_features, state_fingerprint
from cnnlab.io.cache import keyed_cache
from cnnlab.subject import Subject

log = logging.getLogger("cnnlab")


class AnalysisContext:
    """Everything an analysis needs; features are computed once per (tap, pooling) and reused."""

    def __init__(self, subject: Subject, datamodule, out_dir: str | Path, split: str = "test", limit: int | None = None,
                 batch_size: int = 256, device: str = "cpu", feature_cache_dir: str | Path | None = None,
                 loggers: list | None = None, seed: int = 0, report: Report | None = None):
        self.subject, self.dm = subject, datamodule
        self.out_dir = Path(out_dir)
        self.split, self.limit, self.batch_size = split, limit, batch_size
        self.device = torch.device(device)
        self.feature_cache_dir = Path(feature_cache_dir) if feature_cache_dir else self.out_dir / "features"
        self.loggers = loggers or []
        self.seed = seed
        self.report = report or Report(f"cnnlab analyses of {subject.source}")
        self._features: dict[tuple, dict[str, torch.Tensor]] = {}
        self._dataset = None
        self._fingerprint: str | None = None
        self.figures: list[Path] = []

    # ----------------------------------------------------------------------------- data
    def dataset(self):
        """The split's ``TensorImageDataset`` (uint8 images), cut to ``limit`` images (class-balanced, fixed)."""
        if self._dataset is None:
            from cnnlab.data.datamodule import TensorImageDataset, balanced_subset

            self.dm.setup()
            if self.split not in self.dm.splits:
                raise UserError(f"unknown split {self.split!r}: choose one of {sorted(self.dm.splits)}")
            ds = self.dm.splits[self.split]
            if len(ds) == 0:
                raise UserError(f"the {self.split} split is empty: nothing to analyse; check data.source and the split")
            if self.limit is not None:
                if self.limit < 1:
                    raise UserError(f"limit must be at least 1 image, got {self.limit}")
                if self.limit < len(ds):
                    idx = torch.from_numpy(balanced_subset(ds.labels.numpy(), count=self.limit, seed=self.seed))[: self.limit]
                    ds = TensorImageDataset(ds.images[idx], ds.labels[idx])
            self._dataset = ds
        return self._dataset

    @property
    def images(self) -> torch.Tensor:
        return self.dataset().images

    @property
    def labels(self) -> torch.Tensor:
        return self.dataset().labels

    @property
    def classes(self) -> list[str]:
        """The names of the data's labels (a torchvision subject's ImageNet classes name its outputs, not these)."""
        self.dataset()
        return list(getattr(self.dm, "classes", None) or []) or self.subject.classes

    def sample_indices(self, n: int) -> torch.Tensor:
        """``n`` dataset indices spread over the classes (round robin, first images of each class): the example images."""
        from cnnlab.data.datamodule import round_robin_by_class

        return round_robin_by_class(self.labels, n)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = self.dataset()
        for s in range(0, len(ds), self.batch_size):
            yield ds.images[s:s + self.batch_size], ds.labels[s:s + self.batch_size]

    def num_batches(self) -> int:
        return -(-len(self.dataset()) // self.batch_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> RGB in [0, 1] on the device (the subject converts to what its model takes)."""
        return images.to(self.device).float() / 255

    def gray_fill(self) -> torch.Tensor:
        """Mid-gray RGB ``(3,)`` (0.5): the occluder and baseline colour, in the same space as :meth:`preprocess`."""
        return torch.full((3,), 0.5)

    def tap_or_default(self, tap: str | None, where: str = "middle") -> str:
        if tap is None:
            taps = self.subject.default_taps or self.subject.tap_names
            return taps[len(taps) // 2] if where == "middle" else taps[-1]
        return self.subject.check_taps([tap])[0]

    # ----------------------------------------------------------------------------- features
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = state_fingerprint(self.subject)
        return self._fingerprint

    def features(self, tap: str, target_dims: int | None = None) -> dict[str, torch.Tensor]:
        """``{tap: (N, D), "labels": (N,)}`` pooled features of the dataset, from memory, the disk cache or one pass."""
        tap = self.subject.check_taps([tap])[0]
        n = len(self.dataset())
        key = (tap, target_dims)
        if key not in self._features:
            tag = f"{self.fingerprint()}_{self.dm.hparams.name}_{self.split}_{n}_{self.seed}_{tap}_{target_dims or 'gap'}"
            self._features[key] = keyed_cache(
                self.feature_cache_dir / f"{tag}.pt", tag,
                lambda: extract_features(self.subject, self.batches(), [tap], preprocess=self.preprocess,
                                         target_dims=target_dims, device=self.device, dtype=torch.float32,
                                         progress=f"features {tap}", total=self.num_batches()),
            )
        return self._features[key]

    # ----------------------------------------------------------------------------- output
    def section(self, key: str, title: str, text: str = "") -> Section:
        return self.report.section(key, title, text)

    def save_figure(self, section: Section, name: str, figure, caption: str, nrow: int = 8, rows: list[str] | None = None,
                    cols: list[str] | None = None) -> Path:
        """Save a matplotlib figure or a ``(B, C, H, W)``/``(C, H, W)`` tensor in [0, 1] as ``analysis_<name>.png``.

        Every PNG says what it shows on its own: an image grid gets the section's title, the caption and the
        ``rows``/``cols`` labels (:func:`~cnnlab.figures.grid_figure`); a figure without a title gets the section's.
        The PNG goes to the run dir, into the report section and to every W&B logger.
        """
        from cnnlab.io.images import write_figure
        from cnnlab.tracking import log_images

        path = self.out_dir / f"analysis_{name}.png"
        if isinstance(figure, torch.Tensor):
            from cnnlab.figures import grid_figure

            imgs = figure if figure.dim() == 4 else figure[None]
            figure = grid_figure(imgs, nrow, section.title, rows, cols, caption=caption, min_tile=48,
                                 padding=1 if imgs.shape[-1] < 48 else 2)
        elif figure._suptitle is None:
            figure.suptitle(section.title, fontsize=10, weight="bold")
        write_figure(path, figure, dpi=figure.dpi, bbox_inches="tight")
        section.figures.append(_figure(path, caption))
        self.figures.append(path)
        log_images(self.loggers, f"analysis/{name}", [path], caption)
        return path


def _figure(path: Path, caption: str):
    from cnnlab.analysis.report import Figure

    return Figure(path, caption)

