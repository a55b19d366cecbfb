"""Segmentation speed and memory: sparse vs dense hypercolumn training steps, and dense inference's peak RSS.

    python scripts/bench_segmentation.py --out outputs/bench/segmentation.json
    python scripts/bench_segmentation.py --size 90 120 --batch 8 --steps 6 --width 64 --hidden 1024

1. Training step (forward, backward, Adam step) of a random-init :class:`~cnnlab.models.segmenter.Segmenter` on
   CamVid-shaped input at the working size, sparse (``samples_per_image`` sampled pixels) and dense (every
   pixel), alternated step by step in one process so machine load hits both alike; CPU time per step
   (``time.process_time``) and the ratio.
2. Dense inference at 360x480 (CamVid's full size): ``cnnlab-segment``'s path (the model at its working size,
   logits upsampled to the full frame in row bands) and the model run on the whole 360x480 frame, each in a fresh
   child process reporting its peak RSS (``VmHWM``) and the RSS after the model is built.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch
from PIL import Image
from cnnlab.models.segmenter import Segmenter
from cnnlab.segment import segment_image

def status_mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

mode, width, hidden, h, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
model = Segmenter({"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 3, "width": width, "plan": "vgg8"},
                  num_classes=11, hidden=hidden).eval()
model.data_info = {"image_size": [h, w], "color_space": "rgb"}
im = Image.fromarray((torch.rand(360, 480, 3) * 255).to(torch.uint8).numpy())
base = status_mib("VmRSS")
t = time.perf_counter()
if mode == "working":
    labels = segment_image(model, im)
else:
    with torch.no_grad():
        labels = model(torch.rand(1, 3, 360, 480)).argmax(1)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its parent's peak
print(json.dumps({"mode": mode, "rss_after_model_mib": base, "peak_rss_mib": status_mib("VmHWM"),
                  "wall_s": time.perf_counter() - t, "labels_shape": list(labels.shape)}))
"""


def training_steps(size, batch: int, steps: int, width: int, hidden: int, samples: int) -> dict:
    import torch

    from cnnlab.models.segmenter import Segmenter

    torch.manual_seed(0)
    h, w = size
    x = torch.rand(batch, 3, h, w)
    masks = torch.randint(0, 12, (batch, h, w))
    result = {}
    models = {}
    for mode in ("sparse", "dense"):
        torch.manual_seed(0)
        model = Segmenter({"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 3, "width": width, "plan": "vgg8"},
                          num_classes=11, hidden=hidden, samples_per_image=samples).train()
        models[mode] = (model, torch.optim.Adam(model.parameters(), 1e-3))
        result[mode] = []

    def step(mode):
        model, opt = models[mode]
        t = time.process_time()
        loss = model.sparse_loss(x, masks) if mode == "sparse" else model.dense_loss(x, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.process_time() - t

    for _ in range(2):  # warm-up
        step("sparse"), step("dense")
    for _ in range(steps):
        for mode in ("sparse", "dense"):
            result[mode].append(step(mode))
    med = {m: sorted(v)[len(v) // 2] for m, v in result.items()}
    return {"size": list(size), "batch": batch, "width": width, "hidden": hidden, "samples_per_image": samples,
            "steps": steps, "sparse_cpu_s_per_step": med["sparse"], "dense_cpu_s_per_step": med["dense"],
            "dense_over_sparse": med["dense"] / med["sparse"], "all": result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=2, default=[90, 120])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--memory-only", action="store_true", help="skip the training steps")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import os

    load = os.getloadavg()
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_start": load, "cpus": os.cpu_count(),
           "train": None if args.memory_only else
           training_steps(tuple(args.size), args.batch, args.steps, args.width, args.hidden, args.samples)}
    out["memory"] = []
    for mode in ("working", "full"):
        proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.width), str(args.hidden), *map(str, args.size)],
                              capture_output=True, text=True, check=True)
        out["memory"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out["loadavg_end"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
