"""MACO against pixel and Fourier images, and against horama's MACO (docs/results.md "MACO vs pixel vs Fourier",
docs/benchmarks.md "MACO vs horama").

    PYTHONPATH=src python scripts/bench_maco.py compare --ckpt outputs/reference/supervised_cifar/checkpoints/best_epoch005.ckpt
    PYTHONPATH=src:../peers/robust python scripts/bench_maco.py horama --ckpt ...

compare: for a few classes and channels of the reference CIFAR-10 classifier (32 px) and channels of a
torchvision ResNet-18 with random weights (64 px), the ``featviz`` experiment with image=pixel, fourier and
maco (same objective, steps, Adam lr, robustness transforms, seed): the objective reached (the unit's
activation on the final image, no transforms; higher is better) and the image's power-spectrum distance to
natural images (RMS difference of the radial log10 power spectrum, in decades; lower is more natural). A
gallery row per network goes to ``--gallery`` (rows pixel, fourier, maco, MACO's transparency).
horama: horama's ``maco`` (a peer for this check only, installed into its own place: the ``bench`` extra)
and cnnlab's MACO on the same network, channel, image size and steps, each with its own optimizer and
transforms; both are fed the natural magnitude cnnlab estimates (horama would otherwise download its ImageNet
spectrum). The objective reached is measured the same way for both (mean activation of the channel on the
final image); speed as steps/s, run interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.io.files import write_json

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")
PARAMS = ("pixel", "fourier", "maco")


def _reference(ckpt: str):
    from cnnlab.subject import load_subject

    return load_subject(checkpoint=ckpt)


def _units_value(net, layer: str, units, images: torch.Tensor) -> list[float]:
    """The activation each image reaches for its unit (logit or mean channel activation), no transforms."""
    from cnnlab.hooks import LayerCapture

    with torch.no_grad():
        if layer == "logits":
            z = net(images)
            return [float(z[b, u]) for b, u in enumerate(units)]
        with LayerCapture(net, [layer]) as cap:
            h = cap.run(images)[layer]
        return [float(h[b, u].mean()) for b, u in enumerate(units)]


def natural_yardstick(size: int, data_dir: str) -> float:
    """The spectrum distance of held-out natural images to the same reference featviz uses: what "natural" scores.

    32 px: 500 CIFAR-10 test images against the training-image reference; larger: 64 random crops of
    scikit-image's photos against the paintings reference.
    """
    from cnnlab.io.images import SKIMAGE_PHOTOS, load_image
    from cnnlab.visualize.spectrum import natural_images, radial_log_power, resolve_source, spectrum_distance

    source = resolve_source("auto", (size, size))
    reference = radial_log_power(natural_images(source, (size, size), data_dir, limit=1000)).mean(0)
    if source == "cifar10":
        from cnnlab.data.datamodule import cifar_test_images

        held_out = cifar_test_images(500, data_dir, per_class=False)[0]
    else:
        g = torch.Generator().manual_seed(0)
        crops = []
        for name in SKIMAGE_PHOTOS:
            img = load_image(f"skimage:{name}", 2 * size)
            h, w = img.shape[-2:]
            for _ in range(16):
                y, x = (int(torch.randint(0, d - size + 1, (1,), generator=g)) for d in (h, w))
                crops.append(img[..., y:y + size, x:x + size])
        held_out = torch.cat(crops)
    return float(spectrum_distance(held_out, reference).mean())


def compare(args) -> dict:
    from cnnlab.tracking import save_grid
    from cnnlab.visualize.experiments import Context, render_units
    from cnnlab.subject import from_torchvision

    torch.set_num_threads(args.threads)
    cases = []
    if "reference" in args.networks:
        cases += [("reference", _reference(args.ckpt), "logits", [0, 3, 7, 9], 32), ("reference", None, "conv3_1", [0, 1, 2, 3], 32),
                  ("reference", None, "conv4_1", [0, 1, 2, 3], 32)]
    if "resnet18" in args.networks:
        torch.manual_seed(0)  # the random weights
        cases += [("resnet18-random", from_torchvision("resnet18", None, num_classes=1000, image_size=64), "layer2", [0, 1, 2, 3], 64),
                  ("resnet18-random", None, "layer3", [0, 1, 2, 3], 64)]
    out, gallery = {"steps": args.steps, "lr": args.lr, "threads": args.threads, "cases": []}, {}
    out["natural_yardstick"] = {str(s): natural_yardstick(s, args.data_dir) for s in sorted({c[4] for c in cases})}
    net = None
    for name, new_net, layer, units, size in cases:
        net = new_net or net
        row = {"network": name, "layer": layer, "units": units, "size": size}
        tiles = []
        for param in args.params:
            with tempfile.TemporaryDirectory() as tmp:
                ctx = Context(network=net, out_dir=Path(tmp), data_dir=args.data_dir, progress=False, seed=0)
                t = time.perf_counter()
                img, alpha, _, m = render_units(ctx, layer, units, param, size, args.steps, args.lr, robust=True)
                row[param] = {"objective": statistics.mean(-v for k, v in m.items() if k.startswith("objective/")),
                              "spectrum_distance": m["spectrum_distance"], "seconds": time.perf_counter() - t}
            tiles.append(img)
            if alpha is not None:
                tiles.append(alpha.expand(-1, 3, -1, -1))
        out["cases"].append(row)
        print(json.dumps(row), flush=True)
        gallery.setdefault(name, []).append((layer, tiles))
    if args.gallery:
        for name, blocks in gallery.items():
            rows = []
            for _layer, tiles in blocks:
                rows += tiles
            grid = torch.cat([F.interpolate(t, size=(64, 64), mode="nearest") for t in rows])
            path = Path(args.gallery) / f"maco_{name}.png"
            save_grid(grid, path, nrow=len(blocks[0][1][0]))
            print("saved", path, flush=True)
    return out


def horama_check(args) -> dict:
    import horama

    from cnnlab.visualize import objectives as O
    from cnnlab.hooks import LayerCapture
    from cnnlab.visualize.module import ImageOptimization, run_optimization
    from cnnlab.visualize.param import MacoImage
    import numpy as np

    from cnnlab.visualize.spectrum import natural_images, natural_magnitude, radial_log_power, resolve_source, spectrum_distance
    from cnnlab.visualize.transforms import lucid_transforms

    torch.set_num_threads(args.threads)
    net = _reference(args.ckpt)
    s, layer = args.size, args.layer
    magnitude = natural_magnitude(s, "auto", args.data_dir)
    reference = radial_log_power(natural_images(resolve_source("auto", (s, s)), (s, s), args.data_dir, 1000)).mean(0)
    out = {"size": s, "layer": layer, "channels": args.channels, "steps": args.steps, "threads": args.threads,
           "horama": horama.__version__, "runs": []}
    workdir = Path(tempfile.mkdtemp())
    np.save(workdir / horama.maco_fv.MACO_SPECTRUM_FILENAME, magnitude.numpy())  # found there, so never downloaded
    here = os.getcwd()
    for c in args.channels:
        for rep in range(args.repeats):
            torch.manual_seed(rep)
            with LayerCapture(net, [layer]) as cap:
                objective = lambda imgs: cap.run(imgs)[layer][:, c].mean()  # noqa: E731 - horama maximizes it
                os.chdir(workdir)
                try:
                    t = time.perf_counter()
                    img, _alpha = horama.maco(objective, total_steps=args.steps, learning_rate=1.0, image_size=s, model_input_size=32,
                                              noise=0.05, values_range=(0, 1), crops_per_iteration=6, box_size=(0.45, 0.5), device="cpu")
                    h_sec = time.perf_counter() - t
                finally:
                    os.chdir(here)
            h_img = img.detach()[None].clamp(0, 1)
            mod = ImageOptimization(net, MacoImage(magnitude, 1, seed=rep), O.channel(layer, c), lucid_transforms(s), "adam", args.lr, seed=rep)
            t = time.perf_counter()
            run_optimization(mod, args.steps, progress=False)
            c_sec = time.perf_counter() - t
            c_img = mod.result()
            run = {"channel": c, "repeat": rep,
                   "horama": {"objective": _units_value(net, layer, [c], h_img)[0], "steps_per_s": args.steps / h_sec,
                              "spectrum_distance": float(spectrum_distance(h_img, reference))},
                   "cnnlab": {"objective": _units_value(net, layer, [c], c_img)[0], "steps_per_s": args.steps / c_sec,
                              "spectrum_distance": float(spectrum_distance(c_img, reference))}}
            out["runs"].append(run)
            print(json.dumps(run), flush=True)
    for lib in ("horama", "cnnlab"):
        out[lib] = {k: statistics.mean(r[lib][k] for r in out["runs"]) for k in ("objective", "steps_per_s", "spectrum_distance")}
    out["speed_ratio_cnnlab_over_horama"] = statistics.median(r["cnnlab"]["steps_per_s"] / r["horama"]["steps_per_s"] for r in out["runs"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["compare", "horama"])
    p.add_argument("--ckpt", default="outputs/reference/supervised_cifar/checkpoints/best_epoch005.ckpt")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=64, help="horama: image size")
    p.add_argument("--layer", default="conv3_1", help="horama: layer")
    p.add_argument("--channels", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--networks", nargs="+", default=["reference", "resnet18"], choices=["reference", "resnet18"], help="compare: which")
    p.add_argument("--params", nargs="+", default=list(PARAMS), choices=PARAMS, help="compare: which parameterizations")
    p.add_argument("--gallery", default="", help="compare: folder for the gallery PNGs (e.g. docs/img)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    result = compare(args) if args.what == "compare" else horama_check(args)
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
