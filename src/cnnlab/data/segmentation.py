"""Semantic segmentation data: image + label-map pairs in a uint8 cache, augmented jointly on the device.

Sources, all decoded once into the same cache (``<data_dir>/cache/<key>/``)::

    <split>_images.npy  uint8 (N, 3, h, w)    frames at the working size ``image_size = (h, w)``
    <split>_masks.npy   uint8 (N, h, w)       label maps at the working size (nearest neighbour)
    <split>_full.npy    uint8 (N, Hmax, Wmax) val/test label maps at full resolution, padded with ``ignore_index``
    <split>_sizes.npy   int64 (N, 2)          each frame's full (H, W)
    meta.json           classes, frame names, ignore_index

- ``camvid``: ``camvid-jpg.tar.gz`` (``camvid/{train,val,test}/{images,labels}/``, ``camvid/classes.txt``) found
  in ``data.source``, ``paths.data_dir`` or ``$CNNLAB_DATA`` (like CIFAR-10);
- ``voc``: PASCAL VOC 2012 through ``torchvision.datasets.VOCSegmentation`` (downloaded when a network is
  there); its ``val`` is the test split (VOC's test labels are not public) and val is held out from train;
- ``segfolder``: any folder or archive of ``[<split>/]images/<name>.<ext>`` + ``[<split>/]labels/<name>.png`` and a
  ``classes.txt`` (one class name per line, line i = label value i), via ``data.source``.

Batches leave the loader as ``(uint8 images (B, 3, h, w), uint8 masks (B, H, W), sizes (B, 2))``: training
masks are at the working size, val/test masks at full resolution (scores are computed there: predictions
are upsampled, the CamVid benchmark's convention). :meth:`SegmentationDataModule.on_after_batch_transfer`
turns them into float input in ``color_space`` and long masks, with random scale + crop + flip applied
identically to frame and mask during training (kornia; nearest neighbour for the mask).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from cnnlab.color import channels_of, convert
from cnnlab.data.base import SplitDataModule, check_label_fraction, seeded
from cnnlab.data.cache import _iter_archive, _iter_directory, cache_key
from cnnlab.data.sources import DATA_ENV, network_available, search_dirs
from cnnlab.errors import UserError
from cnnlab.io.files import atomic_dir
from cnnlab.io.images import to_rgb

log = logging.getLogger(__name__)

DATASETS = ("camvid", "voc", "segfolder")
CAMVID_ARCHIVE = "camvid-jpg.tar.gz"
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
SPLITS = ("train", "val", "test")
#: splits scored at full resolution (their full-size label maps are kept)
FULL_RES_SPLITS = ("val", "test")
CACHE_VERSION = 1


@dataclass
class SegSplit:
    images: np.ndarray  # (N, 3, h, w) uint8
    masks: np.ndarray  # (N, h, w) uint8, working size
    sizes: np.ndarray  # (N, 2) int64, full (H, W)
    names: list[str]
    full: np.ndarray | None = None  # (N, Hmax, Wmax) uint8, full resolution padded with ignore_index


@dataclass
class SegData:
    classes: list[str]
    ignore_index: int
    splits: dict[str, SegSplit]
    meta: dict


# ----------------------------------------------------------------------------- decoding
def decode_pair(image: Image.Image, mask: Image.Image, size: tuple[int, int], num_classes: int, ignore_index: int,
                name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame and its label map -> ``(image (3, h, w) uint8, mask (h, w) uint8, full mask (H, W) uint8)``.

    Refuses (one line naming ``name``) a label map that is not one channel of class indices, whose size
    differs from the frame's, or that holds values that are neither a class nor ``ignore_index``.
    """
    if mask.mode not in ("L", "P", "I", "I;16"):
        raise UserError(f"label map of {name} is {mask.mode}, not class indices: store each label map as a "
                        "one-channel PNG whose pixel value is the class index")
    full = np.asarray(mask)
    if image.size != mask.size:
        raise UserError(f"label map of {name} is {mask.size[0]}x{mask.size[1]} but its image is "
                        f"{image.size[0]}x{image.size[1]}: give every image a label map of the same size")
    values = np.unique(full)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_index)]
    if bad:
        raise UserError(f"label map of {name} holds values {bad[:5]} outside the {num_classes} classes and void "
                        f"({ignore_index}): fix the label map or set data.ignore_index")
    full = full.astype(np.uint8)
    h, w = size
    img = np.asarray(to_rgb(image).resize((w, h), Image.BILINEAR), dtype=np.uint8).transpose(2, 0, 1)
    small = np.asarray(Image.fromarray(full).resize((w, h), Image.NEAREST), dtype=np.uint8)
    return img, small, full


def _pairs_from_files(items: Iterator[tuple[tuple[str, ...], bytes]], source: Path
                      ) -> Iterator[tuple[str, str, Image.Image, Image.Image]]:
    """``(parts, bytes)`` of ``[..]/[<split>/]{images,labels}/<name>.<ext>`` files -> ``(split, name, image, mask)``.

    An image without a label map (or a label map without an image) is refused with its name.
    """
    found: dict[tuple[str, str], dict[str, tuple[str, bytes]]] = {}
    for parts, data in items:
        if len(parts) < 2 or parts[-2] not in ("images", "labels"):
            continue
        split = parts[-3].lower() if len(parts) >= 3 and parts[-3].lower() in SPLITS else "train"
        stem = Path(parts[-1]).stem
        found.setdefault((split, stem), {})[parts[-2]] = ("/".join(parts), data)
    if not found:
        raise UserError(f"{source} holds no images/ + labels/ folders ([<split>/]images/<name>.jpg with "
                        "[<split>/]labels/<name>.png): point data.source at a segmentation folder")
    for (split, stem), files in sorted(found.items()):
        if "labels" not in files:
            raise UserError(f"image {files['images'][0]} in {source} has no label map: add "
                            f"{split}/labels/{stem}.png or remove the image")
        if "images" not in files:
            raise UserError(f"label map {files['labels'][0]} in {source} has no image: add its image or remove it")
        name = files["images"][0]
        try:
            image = Image.open(io.BytesIO(files["images"][1]))
            image.load()
            mask = Image.open(io.BytesIO(files["labels"][1]))
            mask.load()
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise UserError(f"{name} or its label map in {source} does not decode ({type(err).__name__}): "
                            "replace or remove the pair") from err
        yield split, name, image, mask


def _read_classes(source: Path) -> list[str]:
    """The ``classes.txt`` of a segmentation folder or archive (one name per line)."""
    text = None
    if source.is_dir():
        hits = sorted(source.rglob("classes.txt"), key=lambda p: len(p.parts))
        text = hits[0].read_text() if hits else None
    else:
        import tarfile
        import zipfile

        if source.name.lower().endswith(".zip"):
            with zipfile.ZipFile(source) as zf:
                names = sorted((n for n in zf.namelist() if n.endswith("classes.txt")), key=len)
                text = zf.read(names[0]).decode() if names else None
        else:
            try:
                with tarfile.open(source, "r|*") as tar:
                    for m in tar:
                        if m.isfile() and Path(m.name).name == "classes.txt":
                            text = tar.extractfile(m).read().decode()
                            break
            except (tarfile.TarError, EOFError, OSError) as err:
                raise UserError(f"cannot read archive {source}: {err}; check the file is a complete .tar.gz") from err
    names = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not names:
        raise UserError(f"{source} has no classes.txt: add one (line i = the name of label value i)")
    return names


# ----------------------------------------------------------------------------- the cache
def _cache_dir(data_dir: str | Path, name: str, source: Path | None, size: tuple[int, int], ignore_index: int,
               extra: str = "") -> Path:
    key = cache_key(name, source, f"{size[0]}x{size[1]}", extra=f"seg{CACHE_VERSION}|{ignore_index}|{extra}")
    return Path(data_dir).expanduser() / "cache" / key


def load_seg_cache(path: Path) -> SegData:
    meta = json.loads((path / "meta.json").read_text())
    splits = {}
    for s in meta["splits"]:
        full = path / f"{s}_full.npy"
        splits[s] = SegSplit(np.load(path / f"{s}_images.npy", mmap_mode="r"), np.load(path / f"{s}_masks.npy", mmap_mode="r"),
                             np.load(path / f"{s}_sizes.npy"), meta["names"][s],
                             np.load(full, mmap_mode="r") if full.exists() else None)
    return SegData(meta["classes"], meta["ignore_index"], splits, meta)


def build_seg_cache(path: Path, pairs, classes: list[str], size: tuple[int, int], ignore_index: int, meta: dict,
                    progress: bool = False) -> SegData:
    """Decode ``(split, name, image, mask)`` pairs into the cache at ``path`` (atomically) and load it."""
    per: dict[str, dict[str, list]] = {}
    for split, name, image, mask in pairs:
        img, small, full = decode_pair(image, mask, size, len(classes), ignore_index, name)
        d = per.setdefault(split, {"images": [], "masks": [], "full": [], "names": []})
        d["images"].append(img)
        d["masks"].append(small)
        d["full"].append(full if split in FULL_RES_SPLITS else None)
        d["names"].append(name)
    if "train" not in per:
        raise UserError(f"{meta.get('source')} has no training frames: add train/images + train/labels")
    # two gap workers (or DDP ranks) may decode the same source at once: the first to publish wins
    with atomic_dir(path, first_wins=True) as tmp:
        for s, d in per.items():
            np.save(tmp / f"{s}_images.npy", np.stack(d["images"]))
            np.save(tmp / f"{s}_masks.npy", np.stack(d["masks"]))
            sizes = np.array([(m.shape[0], m.shape[1]) for m in d["masks"]] if s not in FULL_RES_SPLITS else
                             [f.shape for f in d["full"]], dtype=np.int64)
            np.save(tmp / f"{s}_sizes.npy", sizes)
            if s in FULL_RES_SPLITS:
                out = np.full((len(sizes), *sizes.max(0)), ignore_index, dtype=np.uint8)
                for i, f in enumerate(d["full"]):
                    out[i, :f.shape[0], :f.shape[1]] = f
                np.save(tmp / f"{s}_full.npy", out)
        (tmp / "meta.json").write_text(json.dumps(dict(meta, classes=classes, ignore_index=ignore_index, splits=sorted(per),
                                                       names={s: d["names"] for s, d in per.items()},
                                                       image_size=list(size), version=CACHE_VERSION)))
    return load_seg_cache(path)


def resolve_segmentation(name: str, data_dir: str | Path, size: tuple[int, int], ignore_index: int,
                         source: str | Path | None = None, download: bool = True, progress: bool = False) -> SegData:
    """A segmentation dataset by name (``camvid`` | ``voc`` | ``segfolder``) -> its decoded cache."""
    if name not in DATASETS:
        raise UserError(f"unknown segmentation dataset {name!r}: choose one of {list(DATASETS)} (data.name)")
    data_dir = Path(data_dir).expanduser()
    if source in (None, "", "auto") and name == "camvid":
        source = next((d / CAMVID_ARCHIVE for d in search_dirs(data_dir) if (d / CAMVID_ARCHIVE).is_file()), None)
        if source is None:
            raise UserError(f"CamVid not found: put {CAMVID_ARCHIVE} in {data_dir} or in ${DATA_ENV}, "
                            "or point data.source at a folder of images/ + labels/")
    if name == "voc" and source in (None, "", "auto"):
        return _voc(data_dir, size, ignore_index, download, progress)
    if source in (None, "", "auto"):
        raise UserError("data=segfolder needs data.source=<folder or archive of images/ + labels/ and classes.txt>")
    source = Path(source).expanduser()
    if not source.exists():
        raise UserError(f"data source {source} does not exist: set data.source to a folder or archive of images/ + labels/")
    path = _cache_dir(data_dir, name, source, size, ignore_index)
    if (path / "meta.json").exists():
        return load_seg_cache(path)
    classes = _read_classes(source)
    from cnnlab.data.cache import _progress

    items = _iter_directory(source) if source.is_dir() else _iter_archive(source)
    pairs = _pairs_from_files(_progress(items, f"decoding {source.name}", progress), source)
    return build_seg_cache(path, pairs, classes, size, ignore_index, {"source": str(source.resolve()), "name": name})


def _voc(data_dir: Path, size: tuple[int, int], ignore_index: int, download: bool, progress: bool) -> SegData:
    root = data_dir / "VOCdevkit" / "VOC2012"
    if not root.is_dir() and not (download and network_available("host.robots.ox.ac.uk", 80)):
        raise UserError(f"PASCAL VOC 2012 not found in {root}: run once with network access so torchvision downloads "
                        "it, or convert it to images/ + labels/ and use data=segfolder data.source=<dir>")
    path = _cache_dir(data_dir, "voc", None, size, ignore_index, extra=str(root.resolve()))
    if (path / "meta.json").exists():
        return load_seg_cache(path)
    from torchvision.datasets import VOCSegmentation

    def pairs():
        # VOC's test labels are not public: its val split is the test split here (val is held out from train)
        for image_set, split in (("train", "train"), ("val", "test")):
            ds = VOCSegmentation(str(data_dir), year="2012", image_set=image_set, download=download)
            for i, image_file in enumerate(ds.images):
                yield split, image_file, *ds[i]

    return build_seg_cache(path, pairs(), VOC_CLASSES, size, ignore_index, {"source": str(root), "name": "voc"})


# ----------------------------------------------------------------------------- splits and loaders
class SegmentationDataset(Dataset):
    """Frames ``(N, 3, h, w)`` uint8, masks ``(N, H, W)`` uint8 and full sizes ``(N, 2)``, a batch at a time."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, sizes: torch.Tensor, names: Sequence[str]):
        self.images, self.masks, self.sizes, self.names = images, masks, sizes, list(names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.masks[i], self.sizes[i]

    def __getitems__(self, indices: Sequence[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.masks[idx], self.sizes[idx]


def frame_subset(n: int, fraction: float | None, seed: int, count: int | None = None) -> np.ndarray:
    """Sorted indices of ``round(n * fraction)`` (or ``count``) frames, at least one and at most ``n``: a function of
    the arguments alone."""
    k = max(1, min(n, round(n * fraction) if count is None else int(count)))
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def joint_augment(image_size: tuple[int, int], crop_scale: Sequence[float], flip: bool):
    """Random scale + crop (to ``image_size``, aspect kept within 3/4..4/3) and flip, applied to a frame and its
    mask alike (kornia; masks are resampled nearest-neighbour). Call as ``aug(images, masks)`` with float masks."""
    import kornia.augmentation as K

    h, w = image_size
    ops = [K.RandomResizedCrop((h, w), scale=tuple(crop_scale), ratio=(0.75 * w / h, 4 / 3 * w / h))]
    if flip:
        ops.append(K.RandomHorizontalFlip())
    return K.AugmentationSequential(*ops, data_keys=["input", "mask"])


def _size(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise UserError(f"data.image_size={list(image_size)}: give [height, width] in pixels, e.g. [90, 120]")
    return size


class SegmentationDataModule(SplitDataModule):
    """CamVid, PASCAL VOC 2012 or a folder of images/ + labels/, at a working size, with joint augmentation.

    Splits: ``train`` (a seeded ``label_fraction`` of its frames), ``val`` (the dataset's own; held out from
    train by ``val_fraction`` and ``split_seed`` only where it has none) and ``test`` (all of it, or a fixed
    ``test_limit`` frames of it for quick runs). ``val_limit`` keeps a fixed subset of the val frames the same way
    (plumbing checks: every val and test frame is scored at full resolution, most of a tiny run's time).
    """

    def __init__(
        self,
        name: str = "camvid",
        source: str | None = None,
        data_dir: str = "data",
        image_size: Sequence[int] | int = (90, 120),
        ignore_index: int = 11,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        label_fraction: float = 1.0,
        label_seed: int = 0,
        test_limit: int | None = None,
        val_limit: int | None = None,
        shuffle_seed: int = 0,
        color_space: str = "rgb",
        augment: bool = True,
        crop_scale: Sequence[float] = (0.35, 1.0),
        flip: bool = True,
        num_workers: int = 0,
        download: bool = True,
        progress: bool = True,
    ):
        super().__init__()
        check_label_fraction(label_fraction)
        channels_of(color_space)
        self.size = _size(image_size)
        self.save_hyperparameters(logger=False)
        # plain lists: these travel into trunk files and checkpoints, which are read back with torch's weights-only loader
        self.hparams.image_size, self.hparams.crop_scale = list(self.size), [float(s) for s in crop_scale]
        self.augment = joint_augment(self.size, crop_scale, flip) if augment else None

    @property
    def ignore_index(self) -> int:
        return self.hparams.ignore_index

    def _load(self) -> SegData:
        if self._data is None:
            h = self.hparams
            self._data = resolve_segmentation(h.name, h.data_dir, self.size, h.ignore_index, h.source, h.download,
                                              h.progress)
        return self._data

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        h, data = self.hparams, self._load()

        def make(split: SegSplit, idx: np.ndarray, full: bool) -> SegmentationDataset:
            masks = split.full if full and split.full is not None else split.masks
            return SegmentationDataset(torch.from_numpy(np.array(split.images[idx])), torch.from_numpy(np.array(masks[idx])),
                                       torch.from_numpy(split.sizes[idx] if full else np.tile(self.size, (len(idx), 1))),
                                       [split.names[i] for i in idx])

        train = data.splits["train"]
        pool = np.arange(len(train.names))
        if "val" in data.splits:
            val = data.splits["val"]
            self.splits["val"] = make(val, self._limited(len(val.names), h.val_limit), full=True)
        else:  # held out from train, independent of the run seed; scored at the working size (no full maps kept)
            if not h.val_fraction > 0:
                raise UserError(f"{data.meta.get('source')} has no val split: set data.val_fraction > 0 to hold frames out of train")
            val_idx = frame_subset(len(pool), h.val_fraction, h.split_seed)
            pool = np.setdiff1d(pool, val_idx)
            self.splits["val"] = make(train, val_idx[self._limited(len(val_idx), h.val_limit)], full=False)
        if h.label_fraction < 1.0:
            pool = pool[frame_subset(len(pool), h.label_fraction, h.label_seed)]
        self.splits["train"] = make(train, pool, full=False)
        if "test" in data.splits:
            test = data.splits["test"]
            self.splits["test"] = make(test, self._limited(len(test.names), h.test_limit), full=True)
        for name, ds in self.splits.items():
            if len(ds) == 0:
                raise UserError(f"the {name} split of {data.meta.get('source')} is empty: add frames to it "
                                "or lower data.val_fraction")

    def _limited(self, n: int, limit: int | None) -> np.ndarray:
        """Indices of all ``n`` frames of a split, or of a fixed ``limit`` of them: quick runs only, a subset that is part
        of the data settings (so a checkpoint's evaluation scores the same frames); reported numbers use all of them."""
        if limit and limit < n:
            return frame_subset(n, None, self.hparams.split_seed, count=limit)
        return np.arange(n)

    def loader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """An unshuffled loader over ``split`` outside the Trainer (``batch_size`` default: ``data.eval_batch_size``:
        val/test frames are scored at full resolution, as in the Trainer)."""
        return super().loader(split, batch_size or self.hparams.eval_batch_size)

    # ----------------------------------------------------------------------------- on device
    def preprocess(self, images: torch.Tensor, masks: torch.Tensor, train: bool = False, seed: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8 (B, 3, h, w)`` frames and ``uint8 (B, H, W)`` masks -> float input in ``color_space`` and long masks.

        With ``train`` the pair is augmented jointly; ``seed`` fixes that augmentation without touching the global RNG.
        """
        x = images.float().div_(255.0)
        if train and self.augment is not None:
            with seeded(seed, x.device):
                x, m = self.augment(x, masks[:, None].float())
            masks = m[:, 0].round().to(torch.uint8)
        return convert(x, self.hparams.color_space), masks.long()

    def preprocess_images(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 (B, 3, h, w)`` frames -> float input in ``color_space`` (no augmentation; e.g. BatchNorm calibration)."""
        return convert(images.float().div_(255.0), self.hparams.color_space)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, masks, sizes = batch
        seed = self.training_seed()
        return (*self.preprocess(images, masks, train=seed is not None, seed=seed), sizes)
