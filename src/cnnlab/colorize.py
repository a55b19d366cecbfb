"""``cnnlab-colorize``: colorize an image or a folder of images with a trained colorization checkpoint.

    cnnlab-colorize photos/ --panel          # the reference colorizer (cnnlab-train experiment=reference_colorizer)
    cnnlab-colorize photo.jpg --ckpt outputs/colorize_cifar/runs/<dir>/checkpoints/best.ckpt
    cnnlab-colorize photos/ --ckpt <ckpt> --out colorized/ --panel

Each input becomes ``<out>/<name>_color.png`` at the input's full resolution (with ``--panel``: gray input |
colorized side by side, and the original too when it had colour, each captioned). The model predicts the colour at a
working size (the scale it was trained at, or ``--size``); that colour is upsampled and recombined with
the photo's own full-resolution lightness, so every detail stays and memory does not grow with the photo.

Nothing is lost: an output never replaces an input or another input's result (names are made unique),
every file is written atomically, and a rerun skips inputs whose result is already there (``--overwrite``
to redo them). An unreadable image in a folder is skipped with a warning (``--on-error fail`` to stop).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.cli import add_working_size, exit_on_user_error
from cnnlab.color import lab_to_rgb, rgb_to_lab
from cnnlab.config import PROJECT_ROOT
from cnnlab.hypercolumn import grid_bands, grid_map, pixel_centers, sample_hypercolumns
from cnnlab.errors import UserError
from cnnlab.io.images import IMAGE_SUFFIXES, open_image, png_text, resize, to_tensor, write_png
from cnnlab.reference import COLORIZER, is_reference, require

#: PNG text key naming the input an output was made from (how reruns recognise their own results)
SOURCE_KEY = "cnnlab-colorize-source"
#: pixels of the full-resolution image converted at a time (colour conversions run in bands of rows)
BAND_PIXELS = 1 << 18
#: the working size when a checkpoint does not say what it was trained at
FALLBACK_SIZE = 224


def source_of(path: Path) -> str | None:
    """The input a cnnlab-colorize output was made from (None: not one of ours)."""
    return png_text(path).get(SOURCE_KEY) if path.suffix.lower() == ".png" else None


def list_inputs(path: Path) -> list[Path]:
    """An image file, or the images of a folder (without the results of earlier runs), sorted."""
    if not path.exists():
        raise UserError(f"{path} does not exist: pass an image file or a folder of images")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and source_of(p) is None)
    if not files:
        raise UserError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}): pass an image or a folder of images")
    return files


def _names(path: Path):
    yield f"{path.stem}_color.png"
    tag = f"{path.stem}_{path.suffix.lstrip('.').lower()}_color"
    yield f"{tag}.png"
    k = 2
    while True:
        yield f"{tag}_{k}.png"
        k += 1


def plan_outputs(inputs: list[Path], out_dir: Path) -> list[tuple[Path, bool]]:
    """``[(output path, already done)]`` per input: never an input, never another input's result, never a
    file this tool did not write for that input. Deterministic, so a rerun finds the same names."""
    inputs_at = {p.resolve() for p in inputs}
    claimed: set[Path] = set()
    plan = []
    for path in inputs:
        source = str(path.resolve())
        for name in _names(path):
            target = (out_dir / name).resolve()
            if target in inputs_at or target in claimed:
                continue
            if not target.exists() or source_of(target) == source:
                break
        claimed.add(target)
        plan.append((target, target.exists()))
    return plan


def recombine(rgb8: np.ndarray, ab: torch.Tensor | None) -> np.ndarray:
    """The lightness of ``rgb8 (H, W, 3)`` uint8 + ab ``(1, 2, h, w)`` at any size (None: gray) -> ``(H, W, 3)`` uint8.

    One band of rows at a time: the ab is sampled bilinearly at the band's pixel centres (what upsampling
    to ``(H, W)`` gives), so memory beyond the input and output images is set by :data:`BAND_PIXELS`.
    """
    h, w = rgb8.shape[:2]
    out = np.empty((h, w, 3), dtype=np.uint8)
    for pix in grid_bands(h, w, 1, BAND_PIXELS):
        rows = slice(int(pix[0, 0]), int(pix[-1, 0]) + 1)
        band = torch.from_numpy(rgb8[rows].copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        light = rgb_to_lab(band)[:, :1]
        band_ab = (torch.zeros(1, 2, *light.shape[-2:]) if ab is None else
                   grid_map(sample_hypercolumns([ab], pixel_centers(pix, h, w).unsqueeze(0)), w))
        rgb = lab_to_rgb(torch.cat([light, band_ab], 1))
        out[rows] = rgb[0].mul_(255).round_().to(torch.uint8).permute(1, 2, 0).numpy()
    return out


@torch.no_grad()
def colorize_image(model, im: Image.Image, size: int | None = None, full_resolution: bool = False,
                   temperature: float | None = None, panel: bool = False) -> np.ndarray:
    """An RGB PIL image -> the colorized ``(H, W, 3)`` uint8 image at its full resolution (or the panel).

    The model sees the image with its shorter side at ``size`` (default: the size it was trained at;
    never upscaled), or the whole image with ``full_resolution``.
    """
    from cnnlab.colorization.batch import ColourBatch

    work = None if full_resolution else (size or model.data_info.get("image_size") or FALLBACK_SIZE)
    small = resize(to_tensor(im), work if work and work < min(im.size) else None)
    x = ColourBatch(small, "rgb", model.input_space).x
    ab = model.predict_lab(x, temperature)[:, 1:]
    del x, small
    rgb8 = np.asarray(im)
    result = recombine(rgb8, ab)
    if not panel:
        return result
    from cnnlab.figures import captioned_row

    parts, captions = [recombine(rgb8, None), result], ["gray input (its lightness)", "colorized"]
    if int((rgb8.max(2).astype(np.int16) - rgb8.min(2)).max()) > 2:  # the original had colour: show it as truth
        parts.append(rgb8)
        captions.append("original")
    return captioned_row(parts, captions)


def _progress(items: list, enabled: bool):
    from rich.console import Console

    from cnnlab.io.progress import progress

    # on stderr: stdout lists the written files
    yield from progress(items, "colorizing" if enabled else None, console=Console(stderr=True))


def colorize_files(inputs: list[Path], ckpt: str | Path, out_dir: Path, size: int | None = None,
                   temperature: float | None = None, panel: bool = False, full_resolution: bool = False,
                   overwrite: bool = False, on_error: str = "skip", progress: bool = False) -> dict[str, list[Path]]:
    """Colorize ``inputs`` into ``out_dir``; ``{"written": [...], "done": [...], "skipped": [...]}`` (paths).

    ``done``: outputs already there from an earlier run (kept unless ``overwrite``); ``skipped``: unreadable
    inputs (``on_error="fail"`` raises instead).
    """
    from cnnlab.models import load_module
    from cnnlab.models.colorizer import Colorizer

    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file: pass a folder for the colorized images")
    if is_reference(ckpt, COLORIZER):
        require(ckpt, COLORIZER, "pass --ckpt <a colorization run>/checkpoints/best.ckpt")
    model = load_module(ckpt, expect=Colorizer)
    result: dict[str, list[Path]] = {"written": [], "done": [], "skipped": []}
    with _writing(out_dir, result["written"]):
        out_dir.mkdir(parents=True, exist_ok=True)
    for path, (target, done) in _progress(list(zip(inputs, plan_outputs(inputs, out_dir))), progress):
        if done and not overwrite:
            result["done"].append(target)
            continue
        try:
            im = open_image(path)
            image = _colorize_one(model, path, im, size, full_resolution, temperature, panel)
        except UserError as err:
            if on_error == "fail" or len(inputs) == 1:
                raise
            print(f"warning: skipped {err}", file=sys.stderr)
            result["skipped"].append(path)
            continue
        with _writing(target, result["written"]):
            write_png(target, image, text={SOURCE_KEY: str(path.resolve())})
        result["written"].append(target)
    if result["skipped"]:
        print(f"warning: skipped {len(result['skipped'])} of {len(inputs)} images that could not be read",
              file=sys.stderr)
    return result


def _colorize_one(model, path: Path, im: Image.Image, *args) -> np.ndarray:
    """:func:`colorize_image`, with an image too small for the model's pooling as the input's own problem."""
    try:
        return colorize_image(model, im, *args)
    except RuntimeError as err:
        if "too small" not in str(err):
            raise
        raise UserError(f"{path} is {im.size[0]}x{im.size[1]} pixels, too small for this model: pass a larger image") from None


@contextlib.contextmanager
def _writing(target: Path, written: list[Path]):
    """A full disk, the file-size limit or a read-only / forbidden --out as one line; what was written stays."""
    from cnnlab.errors import os_error

    try:
        yield
    except OSError as err:
        mapped = os_error(err, target)
        if mapped is None:
            raise
        kept = f"; the {len(written)} image(s) written before it are kept, and a rerun skips them" if written else ""
        raise UserError(f"{mapped}{kept}") from err


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnlab-colorize", description="Colorize images with a trained colorization checkpoint.")
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("--ckpt", default=str(COLORIZER.path(PROJECT_ROOT / "outputs")),
                   help="a colorization checkpoint (.ckpt from a cnnlab-train colorization run); default: the reference "
                        f"colorizer, built once by `{COLORIZER.command}`")
    p.add_argument("--out", default="colorized", help="output folder (default: colorized/); may be the input folder")
    add_working_size(p, "; the output keeps the input's full resolution")
    p.add_argument("--full-resolution", action="store_true",
                   help="run the model on the whole image instead (memory grows with the image: the backbone is not tiled)")
    p.add_argument("--temperature", type=float, default=None,
                   help="Lab bins only: annealed-mean temperature (default: the checkpoint's model.lab.temperature; 1 = expectation)")
    p.add_argument("--panel", action="store_true", help="save gray | colorized (| original) side by side")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose result an earlier run already wrote")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="an unreadable image in a folder: skip it with a warning (default) or stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for folders")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.temperature is not None and args.temperature <= 0:
        raise UserError(f"--temperature {args.temperature}: pass a positive temperature (1 = the expectation)")
    source = Path(args.input).expanduser()
    inputs = list_inputs(source)
    result = colorize_files(inputs, args.ckpt, Path(args.out).expanduser(), args.size, args.temperature, args.panel,
                            args.full_resolution, args.overwrite, args.on_error,
                            progress=source.is_dir() and not args.no_progress and sys.stderr.isatty())
    for w in result["written"]:
        print(w)
    if result["done"]:
        print(f"{len(result['done'])} already colorized in {args.out} (--overwrite to redo them)", file=sys.stderr)
    if inputs and not result["written"] and not result["done"]:
        raise UserError(f"none of the {len(inputs)} images in {source} could be read: pass image files")


if __name__ == "__main__":
    main()
