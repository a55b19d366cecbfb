"""Decode image datasets once into a compact uint8 cache.

Every source (an ImageFolder directory, a ``.tar.gz``/``.zip`` archive of one, torchvision's
CIFAR-10 / STL-10 files, the synthetic generator) ends up as the same on-disk layout::

    <cache_dir>/<key>/meta.json
    <cache_dir>/<key>/<split>_images.npy   uint8, (N, 3, S, S), memory-mapped on load
    <cache_dir>/<key>/<split>_labels.npy   int64, (N,)

The key hashes the source (path, size, mtime; for a directory also every subdirectory's mtime, which
changes when an image is added, removed or renamed) and the image size, so a changed source or size
builds a new cache and an unchanged one is reused. The images skipped as corrupt are recorded in
``meta.json``, so a cached run reports them (or fails on them with ``on_corrupt=fail``) exactly as the
run that built the cache did. Writes go to a temporary directory that is renamed into place
(:func:`cnnlab.io.files.atomic_dir`), so concurrent builders (DDP ranks) never see a half-written cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from cnnlab.errors import UserError
from cnnlab.io.files import atomic_dir
from cnnlab.io.images import IMAGE_SUFFIXES, rgb_image

log = logging.getLogger(__name__)

#: split directory names recognised inside an ImageFolder, mapped to the split they become
SPLIT_DIRS = {"train": "train", "test": "test", "val": "test", "valid": "test", "validation": "test"}
CACHE_VERSION = 1


@dataclass
class CachedSplit:
    images: np.ndarray  # (N, 3, S, S) uint8, usually a read-only memmap
    labels: np.ndarray  # (N,) int64


@dataclass
class CachedDataset:
    path: Path
    classes: list[str]
    splits: dict[str, CachedSplit]
    meta: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def cache_key(name: str, source: Path | None, image_size: int, extra: str = "") -> str:
    """A directory name that changes whenever the source file/dir or the image size changes."""
    h = hashlib.sha1(f"v{CACHE_VERSION}|{image_size}|{extra}".encode())
    if source is not None:
        st = source.stat()
        h.update(f"{source.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode())
        if source.is_dir():  # the top directory's mtime misses images added to a class directory
            for d in sorted(p for p in source.rglob("*") if p.is_dir()):
                h.update(f"|{d.relative_to(source)}|{d.stat().st_mtime_ns}".encode())
    return f"{name}-{image_size}px-{h.hexdigest()[:10]}"


def load_cache(path: Path) -> CachedDataset:
    meta = json.loads((path / "meta.json").read_text())
    splits = {
        s: CachedSplit(
            images=np.load(path / f"{s}_images.npy", mmap_mode="r"),
            labels=np.load(path / f"{s}_labels.npy"),
        )
        for s in meta["splits"]
    }
    return CachedDataset(path=path, classes=meta["classes"], splits=splits, meta=meta)


def write_cache(path: Path, classes: list[str], splits: dict[str, CachedSplit], meta: dict) -> CachedDataset:
    """Atomically write a cache directory (temp dir + rename: a cache is several files, not one)."""
    with atomic_dir(path, first_wins=True) as tmp:
        for s, split in splits.items():
            np.save(tmp / f"{s}_images.npy", np.ascontiguousarray(split.images, dtype=np.uint8))
            np.save(tmp / f"{s}_labels.npy", np.asarray(split.labels, dtype=np.int64))
        meta = dict(meta, classes=classes, splits=sorted(splits), version=CACHE_VERSION,
                    counts={s: int(len(v.labels)) for s, v in splits.items()})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return load_cache(path)


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """JPEG/PNG bytes -> ``(3, S, S)`` uint8: RGB, shorter side resized to S, centre-cropped."""
    im = rgb_image(io.BytesIO(data))
    w, h = im.size
    if (w, h) != (image_size, image_size):
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _split_class(parts: tuple[str, ...]) -> tuple[str | None, str] | None:
    """Find (split, class) in an image path's directory parts, or None if it is not ImageFolder-shaped."""
    dirs = parts[:-1]
    if not dirs:
        return None
    for i, d in enumerate(dirs[:-1]):
        if d.lower() in SPLIT_DIRS and i == len(dirs) - 2:
            return SPLIT_DIRS[d.lower()], dirs[-1]
    return None, dirs[-1]


def _iter_archive(path: Path) -> Iterator[tuple[tuple[str, ...], bytes]]:
    """The image members of an archive, which is verified whole as it is read: a damaged archive raises a
    :class:`UserError` (after the last member, or at the damaged one), so it never becomes a smaller dataset."""
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        yield from _iter_tar(path, compressed=not name.endswith(".tar"))
    elif name.endswith(".zip"):
        yield from _iter_zip(path)
    else:
        raise UserError(f"{path} is not a directory, .tar.gz, .tgz, .tar or .zip: point data.source at an ImageFolder")


def _damaged(path: Path, why: str, after: str | None) -> UserError:
    where = f" after member {after}" if after else " at its start"
    return UserError(f"archive {path} is damaged{where} ({why}): copy or download it again; no dataset cache was written")


def _iter_tar(path: Path, compressed: bool) -> Iterator[tuple[tuple[str, ...], bytes]]:
    """Members of a tar (gzip-compressed or not), streamed. ``tarfile`` ends quietly at a damaged header, and its
    stream reader never checks the gzip checksum: so gzip is read by :mod:`gzip` (CRC and length checked at the
    end), and what follows the last member must be the archive's zero padding and nothing else."""
    last = None
    try:
        with open(path, "rb") as raw, (gzip.GzipFile(fileobj=raw) if compressed else raw) as stream, \
                tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES):
                    f = tar.extractfile(m)
                    if f is not None:
                        yield tuple(Path(m.name).parts), f.read()
                last = m.name
            # tar stopped at its end-of-archive marker, or at a header it could not read: only zeros may follow
            while chunk := tar.fileobj.read(1 << 20):
                if chunk.count(0) != len(chunk):
                    raise _damaged(path, "a member header does not read; the members after it would be lost", last)
    except UserError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise _damaged(path, f"{type(err).__name__}: {err}", last) from err


def _iter_zip(path: Path) -> Iterator[tuple[tuple[str, ...], bytes]]:
    """Members of a zip; a member that does not decompress or fails its CRC is the archive's damage, not a
    corrupt image to skip."""
    last = None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir() and info.filename.lower().endswith(IMAGE_SUFFIXES):
                    try:
                        data = zf.read(info)
                    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                        raise UserError(f"archive {path} is damaged: member {info.filename} does not read "
                                        f"({type(err).__name__}: {err}); copy or download it again; no dataset "
                                        "cache was written") from err
                    yield tuple(Path(info.filename).parts), data
                last = info.filename
    except UserError:
        raise
    except (zipfile.BadZipFile, OSError) as err:
        raise _damaged(path, f"{type(err).__name__}: {err}", last) from err


def _iter_directory(path: Path) -> Iterator[tuple[tuple[str, ...], bytes]]:
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            yield tuple(p.relative_to(path).parts), p.read_bytes()


def build_imagefolder_cache(
    source: Path,
    cache_dir: Path,
    image_size: int,
    name: str = "imagefolder",
    on_corrupt: str = "skip",
    progress: bool = True,
) -> CachedDataset:
    """Decode an ImageFolder (directory or archive) into the uint8 cache, reusing an existing one.

    The ImageFolder may have split directories (``train/``, ``test/`` or ``val/``) above the class
    directories, or only class directories (then everything is ``train``).
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise UserError(f"data source {source} does not exist: set data.source to an ImageFolder directory or archive")
    if on_corrupt not in ("skip", "fail"):
        raise UserError(f"data.on_corrupt must be 'skip' or 'fail', got {on_corrupt!r}")
    path = Path(cache_dir) / cache_key(name, source, image_size)
    if (path / "meta.json").exists():
        cached = load_cache(path)
        _report_corrupt(cached.meta.get("corrupt_skipped", []), source, on_corrupt)
        return cached

    items = _iter_directory(source) if source.is_dir() else _iter_archive(source)
    per_split: dict[str, list[tuple[str, np.ndarray]]] = {}
    corrupt: list[str] = []
    seen_any = False
    for parts, data in _progress(items, f"decoding {source.name}", progress):
        seen_any = True
        sc = _split_class(parts)
        if sc is None:
            continue
        split, cls = sc
        try:
            img = decode_image(data, image_size)
        except DecompressionBombError as err:  # not corrupt, but not an image to decode blindly either
            raise UserError(f"image {'/'.join(parts)} in {source} is too large to decode safely ({err}): "
                            "shrink or remove it") from err
        except (UnidentifiedImageError, OSError, ValueError) as err:
            if on_corrupt == "fail":
                raise _corrupt_error("/".join(parts), source, str(err)) from err
            corrupt.append("/".join(parts))
            continue
        per_split.setdefault(split or "train", []).append((cls, img))
    if not seen_any or not per_split:
        raise UserError(
            f"{source} holds no images in ImageFolder layout (<class>/<image> or <split>/<class>/<image>): "
            "point data.source at an ImageFolder"
        )
    _report_corrupt(corrupt, source, on_corrupt)

    class_sets = {s: sorted({c for c, _ in v}) for s, v in per_split.items()}
    classes = class_sets.get("train") or next(iter(class_sets.values()))
    for s, cs in class_sets.items():
        if cs != classes:
            missing = sorted(set(classes) ^ set(cs))
            raise UserError(
                f"classes differ between splits of {source}: {s!r} vs 'train' differ in {missing[:5]}; "
                "every split needs the same class directories"
            )
    index = {c: i for i, c in enumerate(classes)}
    splits = {
        s: CachedSplit(
            images=np.stack([img for _, img in v]),
            labels=np.array([index[c] for c, _ in v], dtype=np.int64),
        )
        for s, v in per_split.items()
    }
    meta = {"source": str(source.resolve()), "image_size": image_size, "name": name, "corrupt_skipped": corrupt}
    return write_cache(path, classes, splits, meta)


def _corrupt_error(name: str, source: Path, reason: str) -> UserError:
    return UserError(f"corrupt image {name} in {source} ({reason}); remove it or set data.on_corrupt=skip")


def _report_corrupt(corrupt: list[str], source: Path, on_corrupt: str) -> None:
    """What the images skipped as corrupt mean for this run: an error with ``on_corrupt=fail``, else a warning."""
    if corrupt and on_corrupt == "fail":
        raise _corrupt_error(corrupt[0], source, f"one of {len(corrupt)} that do not decode")
    if corrupt:
        log.warning("skipped %d corrupt image(s) in %s, e.g. %s", len(corrupt), source, corrupt[0])


def _progress(items: Iterable, description: str, enabled: bool) -> Iterable:
    if not enabled:
        yield from items
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed} images"),
                  TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task(description, total=None)
        for n, item in enumerate(items, 1):
            yield item
            if n % 500 == 0:
                bar.update(task, completed=n)
