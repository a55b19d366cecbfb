"""How coloured a colorizer's photos are: colourfulness of the gray input, the colorized photo and the original.

    python scripts/bench_colorfulness.py --out outputs/bench/colorfulness.json --figure docs/img/colorfulness.png

Photos: every image in ``$CNNLAB_DATA/images`` and scikit-image's colour photos (astronaut, chelsea, coffee,
rocket), colorized by ``cnnlab-colorize``'s own path (``colorize_image``: prediction at the trained size, recombined
with the photo's full-resolution lightness). Colourfulness is Hasler & Suesstrunk's M (2003) on 0-255 RGB:
sqrt(sd(rg)^2 + sd(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2), rg = R - G, yb = (R + G) / 2 - B; 0 for a gray image,
~15 "slightly", ~33 "moderately", ~45 "averagely" colourful by their scale. ``--panels`` writes the captioned
``--panel`` image of each photo too.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket")


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk's colourfulness of an ``(H, W, 3)`` uint8 RGB image."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def photos() -> dict[str, Image.Image]:
    import skimage.data

    from cnnlab.io.images import IMAGE_SUFFIXES, open_image

    found = {}
    folder = Path(os.environ.get("CNNLAB_DATA", "data")) / "images"
    for p in sorted(folder.glob("*")) if folder.is_dir() else []:
        if p.suffix.lower() in IMAGE_SUFFIXES:
            found[p.stem] = open_image(p)
    for name in SKIMAGE:
        found[f"skimage:{name}"] = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    return found


def main() -> None:
    import torch

    from cnnlab.colorize import colorize_image, recombine
    from cnnlab.config import PROJECT_ROOT
    from cnnlab.io.files import write_json
    from cnnlab.models import load_module
    from cnnlab.models.colorizer import Colorizer
    from cnnlab.reference import COLORIZER

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default=str(COLORIZER.path(PROJECT_ROOT / "outputs")))
    p.add_argument("--out", default="outputs/bench/colorfulness.json")
    p.add_argument("--figure", default=None, help="bar chart of the three colourfulness values per photo")
    p.add_argument("--panels", default=None, help="folder for each photo's captioned gray | colorized | original panel")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_module(args.ckpt, expect=Colorizer)
    rows = []
    for name, im in photos().items():
        rgb8 = np.asarray(im)
        colour = colorize_image(model, im)
        rows.append({"photo": name, "size": list(im.size), "gray": colourfulness(recombine(rgb8, None)),
                     "colorized": colourfulness(colour), "original": colourfulness(rgb8)})
        if args.panels:
            from cnnlab.io.images import write_png

            write_png(Path(args.panels) / f"{name.replace(':', '_')}_panel.png", colorize_image(model, im, panel=True))
        print(f"{name:22s} gray {rows[-1]['gray']:6.1f}  colorized {rows[-1]['colorized']:6.1f}  original {rows[-1]['original']:6.1f}")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("gray", "colorized", "original")}
    print(f"{'mean':22s} gray {mean['gray']:6.1f}  colorized {mean['colorized']:6.1f}  original {mean['original']:6.1f}")
    write_json(Path(args.out), {"ckpt": args.ckpt, "photos": rows, "mean": mean})
    if args.figure:
        figure(rows, Path(args.figure), Path(args.ckpt))


def figure(rows: list[dict], path: Path, ckpt: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnlab.io.files import atomic_save

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    x = np.arange(len(rows))
    for k, (key, colour) in enumerate((("gray", "0.6"), ("colorized", "tab:orange"), ("original", "tab:blue"))):
        ax.bar(x + (k - 1) * 0.27, [r[key] for r in rows], 0.27, label=f"{key} input" if key == "gray" else key, color=colour)
    ax.set_xticks(x, [r["photo"].replace("skimage:", "") for r in rows], rotation=20, fontsize=8)
    ax.set_ylabel("colourfulness (Hasler & Suesstrunk)")
    ax.set_title(f"How coloured the reference colorizer's photos are ({ckpt.parent.parent.name})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi))
    plt.close(fig)


if __name__ == "__main__":
    main()
