"""Multi-label image classification data: PASCAL VOC 2007 through torchvision, or a folder of images/ + labels.txt.

Both are decoded once into the uint8 cache of :mod:`cnnlab.data.cache` (``<split>_labels.npy`` holds the ``(N, C)``
targets of :mod:`cnnlab.multilabel`: 1 present, 0 absent, -1 present only as difficult objects, ignored):

- ``voc2007``: ``torchvision.datasets.VOCDetection(year="2007")``, its ``train`` / ``val`` / ``test`` image sets (5,011
  train+val, 4,952 test images, 20 classes), found as ``VOCdevkit/VOC2007`` in ``paths.data_dir`` or ``$CNNLAB_DATA``,
  else downloaded by torchvision when a network is there. VOC's own ``val`` is the validation split (every choice),
  ``test`` is read once;
- a folder (``data.source``, any ``data.name``): ``classes.txt`` (one class name per line) and, per split,
  ``[<split>/]images/<file>`` with ``[<split>/]labels.txt``, one line per image: its file name, then the names of
  the classes it shows, separated by whitespace; ``?<class>`` marks a class shown only by difficult objects (ignored),
  a line with the file name alone an image that shows none of the classes. Every image needs its line and every
  line its image. Splits ``train``, ``val`` (else ``val_fraction`` of train is held out) and ``test`` (optional).

Images are resized to ``image_size`` x ``image_size`` whole (aspect not kept): a centre crop could cut out an
object its target names.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cnnlab.data.cache import CachedDataset, CachedSplit, _progress, cache_key, load_cache, write_cache
from cnnlab.data.datamodule import ImageDataModule, TensorImageDataset
from cnnlab.data.segmentation import VOC_CLASSES, _read_classes, frame_subset
from cnnlab.data.sources import DATA_ENV, data_file, network_available
from cnnlab.errors import UserError
from cnnlab.io.images import IMAGE_SUFFIXES, rgb_image
from cnnlab.multilabel import multi_hot

log = logging.getLogger(__name__)

#: VOC's 20 object classes (its segmentation classes without background)
VOC2007_CLASSES = VOC_CLASSES[1:]
VOC2007_DIR = "VOCdevkit/VOC2007"
LABELS_FILE = "labels.txt"
SPLITS = ("train", "val", "test")
#: the cache layout's version (bump when the decoding changes)
VERSION = "multilabel1"


def warp(image: Image.Image, size: int) -> np.ndarray:
    """An RGB PIL image -> ``(3, size, size)`` uint8, the whole image resized (every object stays in the frame)."""
    return np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.uint8).transpose(2, 0, 1)


def voc_objects(target: dict) -> list[tuple[str, bool]]:
    """``(name, difficult)`` of every object of an annotation as torchvision's ``VOCDetection`` parses it."""
    objects = target["annotation"].get("object") or []
    return [(str(o["name"]).strip(), str(o.get("difficult", "0")).strip() == "1") for o in objects]


def parse_labels_file(text: str, where: str) -> dict[str, list[tuple[str, bool]]]:
    """A ``labels.txt`` -> ``{file name: [(class, difficult), ...]}`` (see the module docs for the format)."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if words[0] in out:
            raise UserError(f"{where} line {n} labels {words[0]} a second time: give each image one line")
        out[words[0]] = [(w[1:], True) if w.startswith("?") else (w, False) for w in words[1:]]
    return out


def _folder_splits(source: Path) -> dict[str, Path]:
    found = {s: source / s for s in SPLITS if (source / s / "images").is_dir()}
    if not found and (source / "images").is_dir():
        found = {"train": source}
    if not found:
        raise UserError(f"{source} holds no images/ + {LABELS_FILE} ([<split>/]images/<file> with [<split>/]{LABELS_FILE}): "
                        "point data.source at a multi-label folder")
    return found


def _folder(source: Path, cache_dir: Path, size: int, on_corrupt: str, progress: bool) -> CachedDataset:
    """A multi-label folder (module docs) -> its cache; the key follows the images and the text files' contents."""
    if not source.is_dir():
        raise UserError(f"data source {source} is not a folder: a multi-label source is a folder of [<split>/]images/ + "
                        f"[<split>/]{LABELS_FILE} and classes.txt")
    splits = _folder_splits(source)
    texts = {}
    for split, d in splits.items():
        if not (d / LABELS_FILE).is_file():
            raise UserError(f"{d / 'images'} has no {LABELS_FILE} beside it: add one line per image (file name, then its classes)")
        texts[split] = (d / LABELS_FILE).read_text()
    classes = _read_classes(source)
    extra = hashlib.sha1(("\n".join(classes) + "".join(texts[s] for s in sorted(texts))).encode()).hexdigest()
    path = cache_dir / cache_key(f"{VERSION}-folder", source, size, extra=extra)
    if (path / "meta.json").exists():
        return load_cache(path)
    out, skipped = {}, []
    for split, d in splits.items():
        where = d / LABELS_FILE
        labels = parse_labels_file(texts[split], str(where))
        files = sorted(p for p in (d / "images").iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        unlabelled = [p.name for p in files if p.name not in labels]
        if unlabelled:
            raise UserError(f"image {d / 'images' / unlabelled[0]} has no line in {where} ({len(unlabelled)} such): add "
                            f"'{unlabelled[0]} <class> ...' (the file name alone: it shows none of the classes)")
        missing = sorted(set(labels) - {p.name for p in files})
        if missing:
            raise UserError(f"{where} labels {missing[0]}, which is not in {d / 'images'} ({len(missing)} such): add the image "
                            "or remove its line")
        images, targets = [], []
        for p in _progress(files, f"decoding {split} of {source.name}", progress):
            target = multi_hot(labels[p.name], classes, where=f"{where} ({p.name})")
            try:
                images.append(warp(rgb_image(io.BytesIO(p.read_bytes())), size))
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
                if on_corrupt == "fail":
                    raise UserError(f"corrupt image {p} ({type(err).__name__}); remove it or set data.on_corrupt=skip") from err
                skipped.append(str(p.relative_to(source)))
                continue
            targets.append(target.numpy())
        if images:
            out[split] = CachedSplit(np.stack(images), np.stack(targets))
    if skipped:
        log.warning("skipped %d corrupt image(s) in %s, e.g. %s", len(skipped), source, skipped[0])
    return write_cache(path, classes, out, {"source": str(source.resolve()), "image_size": size, "name": "multilabel",
                                            "corrupt_skipped": skipped})


def _voc2007(data_dir: Path, cache_dir: Path, size: int, download: bool, progress: bool) -> CachedDataset:
    devkit = data_file(VOC2007_DIR, data_dir)
    if not devkit.is_dir() and not (download and network_available("host.robots.ox.ac.uk", 80)):
        raise UserError(f"PASCAL VOC 2007 not found: put {VOC2007_DIR} (torchvision's layout) in {data_dir} or in ${DATA_ENV}, "
                        f"run once with network access so torchvision downloads it, or convert it to images/ + {LABELS_FILE} "
                        "and point data.source at that folder")
    path = cache_dir / cache_key(VERSION, None, size, extra=f"voc2007|{devkit.resolve()}")
    if (path / "meta.json").exists():
        return load_cache(path)
    from torchvision.datasets import VOCDetection

    root = devkit.parent.parent
    out = {}
    for split in SPLITS:
        # torchvision re-extracts its archive whenever download=True: only when the image set is not there yet
        fetch = download and not (devkit / "ImageSets" / "Main" / f"{split}.txt").is_file()
        ds = VOCDetection(str(root), year="2007", image_set=split, download=fetch)
        images, targets = [], []
        for i in _progress(range(len(ds)), f"decoding VOC 2007 {split}", progress):
            image, annotation = ds[i]
            images.append(warp(image, size))
            targets.append(multi_hot(voc_objects(annotation), VOC2007_CLASSES, where=ds.annotations[i]).numpy())
        out[split] = CachedSplit(np.stack(images), np.stack(targets))
    return write_cache(path, VOC2007_CLASSES, out, {"source": str(devkit), "image_size": size, "name": "voc2007"})


def resolve_multilabel(name: str, data_dir: str | Path, image_size: int, source: str | Path | None = None,
                       download: bool = True, on_corrupt: str = "skip", progress: bool = False) -> CachedDataset:
    """``voc2007`` (torchvision) or, with ``source``, a multi-label folder -> the decoded cache."""
    if not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"data.image_size={image_size}: multi-label images are square, give one side in pixels, e.g. 224")
    data_dir = Path(data_dir).expanduser()
    if source not in (None, "", "auto"):
        source = Path(source).expanduser()
        if not source.exists():
            raise UserError(f"data source {source} does not exist: set data.source to a folder of images/ + {LABELS_FILE}")
        return _folder(source, data_dir / "cache", image_size, on_corrupt, progress)
    if name != "voc2007":
        raise UserError(f"data.name={name!r} has no multi-label data of its own: use voc2007, or set data.source=<folder of "
                        f"images/ + {LABELS_FILE}>")
    return _voc2007(data_dir, data_dir / "cache", image_size, download, progress)


class MultiLabelDataModule(ImageDataModule):
    """:class:`ImageDataModule` (uint8 batches, on-device augmentation and colour space) over multi-label data: batch
    targets are ``(B, C)`` long in {1, 0, -1 (ignored)}.

    Splits: ``train`` (a seeded ``label_fraction`` of its images: subsets of whole images, as no class balance is
    defined for several labels), ``val`` (the data's own; held out from train by ``val_fraction`` and ``split_seed``
    only where it has none) and ``test`` (the data's own, if any). ``train_limit`` / ``test_limit``: seeded subsets.
    """

    #: batch targets are multi-hot (B, C), not class indices
    multilabel = True

    def _load(self) -> CachedDataset:
        if self._data is None:
            h = self.hparams
            self._data = resolve_multilabel(h.name, h.data_dir, h.image_size, h.source, h.download, h.on_corrupt, h.progress)
        return self._data

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        h, data = self.hparams, self._load()
        where = data.meta.get("source")
        if "train" not in data.splits:
            raise UserError(f"{where} has no training images: add train/images + train/{LABELS_FILE}")

        def make(split: str, idx: np.ndarray | None = None) -> TensorImageDataset:
            s = data.splits[split]
            idx = np.arange(len(s.labels)) if idx is None else idx
            return TensorImageDataset(torch.from_numpy(np.array(s.images[idx])), torch.from_numpy(np.array(s.labels[idx])))

        pool = np.arange(len(data.splits["train"].labels))
        if "val" in data.splits:
            self.splits["val"] = make("val")
        else:  # held out from train, independent of the run seed
            if not h.val_fraction > 0:
                raise UserError(f"{where} has no val split: set data.val_fraction > 0 to hold images out of train "
                                "(every choice is made on validation images)")
            val_idx = frame_subset(len(pool), h.val_fraction, h.split_seed)
            pool = np.setdiff1d(pool, val_idx)
            self.splits["val"] = make("train", val_idx)
        if h.train_limit and h.train_limit < len(pool):
            pool = pool[frame_subset(len(pool), h.train_limit / len(pool), h.split_seed)]
        if h.label_fraction < 1.0:
            pool = pool[frame_subset(len(pool), h.label_fraction, h.label_seed)]
        self.splits["train"] = make("train", pool)
        if "test" in data.splits:
            n = len(data.splits["test"].labels)
            # quick runs only: a fixed part of the test split; reported numbers use all of it
            keep = frame_subset(n, h.test_limit / n, h.split_seed) if h.get("test_limit") and h.test_limit < n else None
            self.splits["test"] = make("test", keep)
        for name, ds in self.splits.items():
            if len(ds) == 0:
                raise UserError(f"the {name} split of {where} is empty: add images to it or lower data.val_fraction")

    def require(self, split: str) -> None:
        self.setup()
        if split == "test" and "test" not in self.splits:
            raise UserError(f"{self._load().meta.get('source')} has no test split: add test/images + test/{LABELS_FILE}, "
                            "or run with test=false")
        super().require(split)
