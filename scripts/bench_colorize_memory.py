"""cnnlab-colorize memory: peak RSS and wall time against the photo's size, each size in a fresh process.

    python scripts/bench_colorize_memory.py --out outputs/bench/colorize_memory.json
    python scripts/bench_colorize_memory.py --ckpt <colorization .ckpt> --megapixels 0.5 2 12

Without ``--ckpt`` the model is a colorizer with the default head (hidden 1024, hue/chroma targets) on the
default CIFAR VGG (width 64), untrained, saved as a cnnlab checkpoint that says it was trained at 32 px:
memory and time do not depend on the weights. Each photo (4:3, a smooth pattern with noise, JPEG) is
colorized by :func:`cnnlab.colorize.colorize_image` in a child process, which reports its RSS after the
model is loaded, its peak RSS (``ru_maxrss``) and the wall time of reading, colorizing and writing the PNG.
``--full-resolution-megapixels`` adds runs of the model on the whole image (the backbone is not tiled).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from cnnlab.colorize import colorize_image, SOURCE_KEY
from cnnlab.io.images import open_image, write_png
from cnnlab.models import load_module

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

image, ckpt, out, full = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
model = load_module(ckpt)
base = rss_mib()
t = time.perf_counter()
im = open_image(image)
write_png(out, colorize_image(model, im, full_resolution=full), text={SOURCE_KEY: image})
wall = time.perf_counter() - t
print(json.dumps({"rss_after_model_mib": base, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "wall_s": wall, "pixels": im.width * im.height}))
"""


def make_checkpoint(path: Path) -> Path:
    import pytorch_lightning as pl
    import torch

    from cnnlab.models.colorizer import Colorizer

    torch.manual_seed(0)
    model = Colorizer({"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 1, "width": 64, "plan": "vgg8"})
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__, "cnnlab_class": "cnnlab.models.colorizer.Colorizer",
                "cnnlab_data": {"color_space": "lab", "image_size": 32, "name": "cifar10", "classes": []}}, path)
    return path


def make_photo(path: Path, megapixels: float) -> tuple[int, int]:
    from PIL import Image

    h = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
    w = int(round(h * 4 / 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 128 + 60 * np.sin(xx / 97.0) * np.cos(yy / 61.0)
    rgb = np.stack([base, base * 0.8 + 20, 255 - base], -1) + np.random.default_rng(0).normal(0, 8, (h, w, 3))
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=90)
    return w, h


def run_one(photo: Path, ckpt: Path, out: Path, full: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(photo), str(ckpt), str(out), "1" if full else "0"],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["peak_above_model_mib"] = row["peak_rss_mib"] - row["rss_after_model_mib"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None, help="a colorization checkpoint (default: an untrained default-head colorizer)")
    p.add_argument("--megapixels", type=float, nargs="+", default=[0.5, 1, 2, 4, 8, 12])
    p.add_argument("--full-resolution-megapixels", type=float, nargs="*", default=[0.5, 1])
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = Path(args.ckpt) if args.ckpt else make_checkpoint(tmp / "colorizer.ckpt")
        runs = [(mp, False) for mp in args.megapixels] + [(mp, True) for mp in args.full_resolution_megapixels]
        for mp, full in runs:
            photo = tmp / f"photo_{mp}.jpg"
            w, h = make_photo(photo, mp)
            row = {"megapixels": mp, "width": w, "height": h, "full_resolution": full,
                   **run_one(photo, ckpt, tmp / "out.png", full)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg(),
              "threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
    if args.out:
        from cnnlab.io.files import write_json

        write_json(args.out, result)


if __name__ == "__main__":
    main()
