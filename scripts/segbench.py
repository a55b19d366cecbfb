"""The set-up the segmentation benchmarks share (``from segbench import ...``; the scripts directory is on
``sys.path`` when a script runs): their common options, the random-init segmenter they time or train, CamVid at
a working size, and the JSON record (date, load, machine) each writes."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def add_common_args(p: argparse.ArgumentParser, size=(90, 120), width: int = 64, hidden: int = 1024) -> None:
    """``--size H W`` (working size), ``--width`` (VGG-CIFAR width), ``--hidden`` (head), ``--data-dir``, ``--out``."""
    p.add_argument("--size", type=int, nargs=2, default=list(size), help="working size: height width")
    p.add_argument("--width", type=int, default=width, help="VGG-CIFAR (vgg8) width of the random-init backbone")
    p.add_argument("--hidden", type=int, default=hidden, help="hidden units of the hypercolumn head")
    p.add_argument("--data-dir", default="data", help="where the CamVid cache lives (the archive: here or $CNNLAB_DATA)")
    p.add_argument("--out", default=None, help="also write the JSON record here")


def backbone_config(width: int) -> dict:
    """The random-init backbone every segmentation benchmark uses (``backbone=vgg_cifar`` at ``width``)."""
    return {"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 3, "width": width, "plan": "vgg8"}


def segmenter(width: int, hidden: int, **kwargs):
    """A random-init CamVid :class:`~cnnlab.models.segmenter.Segmenter` (11 classes) on :func:`backbone_config`."""
    from cnnlab.models.segmenter import Segmenter

    return Segmenter(backbone_config(width), num_classes=11, hidden=hidden, **kwargs)


def camvid(data_dir: str, size, **kwargs):
    """CamVid at working size ``size`` (set up; ``kwargs``: more SegmentationDataModule settings)."""
    from cnnlab.data.segmentation import SegmentationDataModule

    dm = SegmentationDataModule(data_dir=data_dir, image_size=list(size), progress=False, **kwargs)
    dm.setup()
    return dm


def record(**fields) -> dict:
    """The start of a benchmark's JSON record: date, load average at the start, CPU count, then ``fields``."""
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_start": os.getloadavg(), "cpus": os.cpu_count(), **fields}


def finish(out: dict, path: str | None) -> None:
    """Add the load average at the end, print the record and write it to ``path`` (when given)."""
    out["loadavg_end"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
