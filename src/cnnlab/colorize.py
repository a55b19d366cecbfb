"""``cnnlab-colorize``: colorize an image or a folder of images with a trained colorization checkpoint.

    cnnlab-colorize photo.jpg --ckpt outputs/colorize_cifar/runs/<dir>/checkpoints/last.ckpt
    cnnlab-colorize photos/ --ckpt <ckpt> --out colorized/ --panel

Each input becomes ``<out>/<name>_color.png`` (with ``--panel``: gray | colorized side by side, and
the original too when it had colour). Colour inputs are reduced to the model's input channel first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cnnlab.cli import exit_on_user_error
from cnnlab.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_rgb(path: Path, size: int | None = None) -> torch.Tensor:
    """An image file -> ``(1, 3, H, W)`` float RGB in [0, 1] (shorter side resized to ``size`` if given)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size:
                scale = size / min(im.size)
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path} is not a readable image ({type(err).__name__}): pass image files ({', '.join(IMAGE_SUFFIXES)})") from err
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


def list_inputs(path: Path) -> list[Path]:
    if not path.exists():
        raise UserError(f"{path} does not exist: pass an image file or a folder of images")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}): pass an image or a folder of images")
    return files


def save_png(img: torch.Tensor, path: Path) -> None:
    arr = (img.clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)


def colorize_files(inputs: list[Path], ckpt: str | Path, out_dir: Path, size: int | None = None,
                   temperature: float | None = None, panel: bool = False) -> list[Path]:
    from cnnlab.models import load_module
    from cnnlab.models.colorizer import Colorizer

    model = load_module(ckpt, expect=Colorizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in inputs:
        rgb = read_rgb(path, size)
        x = model.model_input(rgb)
        pred = model.colorize(x, temperature=temperature)
        if panel:
            from cnnlab.colorization.decode import gray_from_input

            parts = [gray_from_input(x, model.input_space).expand(-1, 3, -1, -1), pred]
            if (rgb.amax(1) - rgb.amin(1)).max() > 2 / 255:  # the original had colour: show it as truth
                parts.append(rgb)
            pred = torch.cat(parts, dim=3)
        target = out_dir / f"{path.stem}_color.png"
        save_png(pred, target)
        written.append(target)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnlab-colorize", description="Colorize images with a trained colorization checkpoint.")
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("--ckpt", required=True, help="a colorization checkpoint (.ckpt from a cnnlab-train colorization run)")
    p.add_argument("--out", default="colorized", help="output folder (default: colorized/)")
    p.add_argument("--size", type=int, default=None, help="resize the shorter side to this many pixels first")
    p.add_argument("--temperature", type=float, default=None,
                   help="Lab bins only: annealed-mean temperature (default 0.38 from the checkpoint; 1 = expectation)")
    p.add_argument("--panel", action="store_true", help="save gray | colorized (| original) side by side")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    written = colorize_files(list_inputs(Path(args.input).expanduser()), args.ckpt, Path(args.out).expanduser(),
                             args.size, args.temperature, args.panel)
    for w in written:
        print(w)


if __name__ == "__main__":
    main()
