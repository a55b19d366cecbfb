"""``cnnlab-segment``: colour-coded label maps for a photo or a folder, from a trained segmentation checkpoint.

    cnnlab-segment frame.jpg --ckpt outputs/segment_camvid/runs/<dir>/checkpoints/last.ckpt
    cnnlab-segment frames/ --ckpt <ckpt> --out segmented/ --labels

Each input becomes ``<out>/<name>_seg.png`` at the input's full resolution, in the palette of
:func:`cnnlab.labelmaps.palette` (``--labels``: also ``<name>_labels.png``, the class index per pixel, and
``legend.png``). The model runs at its working size (the frame's shorter side at the size it was trained at,
or ``--size``); its logits are upsampled bilinearly to the full resolution one band of rows at a time, so
memory beyond the input and output images does not grow with the photo. An output never replaces an input;
existing outputs are kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from cnnlab.cli import add_working_size, exit_on_user_error
from cnnlab.errors import UserError
from cnnlab.hypercolumn import grid_bands, pixel_centers, sample_hypercolumns
from cnnlab.io.images import IMAGE_SUFFIXES, open_image, resize, to_tensor, write_png
from cnnlab.labelmaps import colour_labels_uint8, legend_image

#: full-resolution pixels labelled at a time
BAND_PIXELS = 1 << 18
SUFFIXES = ("_seg", "_labels")


def list_inputs(path: Path) -> list[Path]:
    """An image file, or the images of a folder (leaving out this command's own outputs), sorted."""
    if not path.exists():
        raise UserError(f"{path} does not exist: pass an image file or a folder of images")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.stem.endswith(SUFFIXES) and p.name != "legend.png")
    if not files:
        raise UserError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}): pass an image or a folder of images")
    return files


def full_resolution_labels(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Logits ``(1, C, h, w)`` -> labels ``(height, width)`` uint8 of the bilinearly upsampled logits, in row bands."""
    out = np.empty((height, width), dtype=np.uint8)
    for pix in grid_bands(height, width, 1, BAND_PIXELS):
        rows = slice(int(pix[0, 0]), int(pix[-1, 0]) + 1)
        band = sample_hypercolumns([logits], pixel_centers(pix, height, width).unsqueeze(0))[0]  # (P, C)
        out[rows] = band.argmax(1).reshape(-1, width).to(torch.uint8).numpy()
    return out


@torch.no_grad()
def segment_image(model, im, size: int | None = None) -> np.ndarray:
    """An RGB PIL image -> labels ``(H, W)`` uint8 at its full resolution."""
    from cnnlab.color import convert

    work = size or min(model.data_info.get("image_size") or [360])
    small = resize(to_tensor(im), work if work < min(im.size) else None)
    logits = model(convert(small, model.color_space))
    return full_resolution_labels(logits, im.height, im.width)


def segment_files(inputs: list[Path], ckpt: str | Path, out_dir: Path, size: int | None = None, labels: bool = False,
                  overwrite: bool = False) -> dict[str, list[Path]]:
    """Segment ``inputs`` into ``out_dir``; ``{"written": [...], "done": [...]}`` (output paths)."""
    from cnnlab.models import load_module
    from cnnlab.models.segmenter import Segmenter

    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file: pass a folder for the label maps")
    model = load_module(ckpt, expect=Segmenter)
    images = [open_image(p) for p in inputs[:1]]  # a first unreadable image fails before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    if labels:
        legend = (legend_image(model.class_names) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        write_png(out_dir / "legend.png", legend)
    result: dict[str, list[Path]] = {"written": [], "done": []}
    for i, path in enumerate(inputs):
        target = out_dir / f"{path.stem}_seg.png"
        if target.resolve() in {p.resolve() for p in inputs}:
            raise UserError(f"{target} is one of the inputs: pass another --out folder")
        if target.exists() and not overwrite:
            result["done"].append(target)
            continue
        pred = segment_image(model, images[0] if i == 0 else open_image(path), size)
        write_png(target, colour_labels_uint8(pred, model.num_classes))
        if labels:
            write_png(out_dir / f"{path.stem}_labels.png", pred)
        result["written"].append(target)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnlab-segment", description="Colour-coded label maps from a segmentation checkpoint.")
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("--ckpt", required=True, help="a segmentation checkpoint (.ckpt of a cnnlab-train experiment=segment_* run)")
    p.add_argument("--out", default="segmented", help="output folder (default: segmented/)")
    add_working_size(p, "; the label maps keep the input's full resolution")
    p.add_argument("--labels", action="store_true", help="also write <name>_labels.png (class index per pixel) and legend.png")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose label map is already there")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    inputs = list_inputs(Path(args.input).expanduser())
    result = segment_files(inputs, args.ckpt, Path(args.out).expanduser(), args.size, args.labels, args.overwrite)
    for w in result["written"]:
        print(w)
    if result["done"]:
        print(f"{len(result['done'])} already segmented in {args.out} (--overwrite to redo them)", file=sys.stderr)


if __name__ == "__main__":
    main()
