"""Segmentation speed and memory: sparse vs dense hypercolumn training steps, dense inference's peak RSS, and the data
pipeline against the model's consumption.

    python scripts/bench_segmentation.py --out outputs/bench/segmentation.json
    python scripts/bench_segmentation.py --size 90 120 --batch 8 --steps 6 --width 64 --hidden 1024
    python scripts/bench_segmentation.py --parts pipeline --steps 10 --data-dir data --out outputs/bench/seg_pipeline.json

1. ``train``: training step (forward, backward, Adam step) of a random-init :class:`~cnnlab.models.segmenter.Segmenter`
   on CamVid-shaped input at the working size, sparse (``samples_per_image`` sampled pixels) and dense (every
   pixel), alternated step by step in one process so machine load hits both alike; CPU time per step
   (``time.process_time``) and the ratio.
2. ``memory``: dense inference at 360x480 (CamVid's full size): ``cnnlab-segment``'s path (the model at its working
   size, logits upsampled to the full frame in row bands) and the model run on the whole 360x480 frame, each in a
   fresh child process reporting its peak RSS (``VmHWM``) and the RSS after the model is built.
3. ``pipeline``: the real CamVid training loader (uint8 frames and masks from the cache, the training sampler, moved
   to the device) with the joint scale + crop + flip on the device, exactly what the Trainer runs per batch
   (``on_after_batch_transfer``), against the model's sparse training step on the batch it delivered, alternated
   batch by batch in one process on ``--device``; wall and CPU seconds of each, medians, and loader / model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from segbench import add_common_args, camvid, finish, record, segmenter

CHILD = r"""
import json, sys, time
import torch
from PIL import Image
from cnnlab.segment import segment_image

def status_mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

mode, width, hidden, h, w, scripts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
sys.path.insert(0, scripts)
from segbench import segmenter
torch.manual_seed(0)
model = segmenter(width, hidden).eval()
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


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def training_steps(size, batch: int, steps: int, width: int, hidden: int, samples: int) -> dict:
    import torch

    torch.manual_seed(0)
    h, w = size
    x = torch.rand(batch, 3, h, w)
    masks = torch.randint(0, 12, (batch, h, w))
    result = {}
    models = {}
    for mode in ("sparse", "dense"):
        torch.manual_seed(0)
        model = segmenter(width, hidden, samples_per_image=samples).train()
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
    med = {m: median(v) for m, v in result.items()}
    return {"size": list(size), "batch": batch, "width": width, "hidden": hidden, "samples_per_image": samples,
            "steps": steps, "sparse_cpu_s_per_step": med["sparse"], "dense_cpu_s_per_step": med["dense"],
            "dense_over_sparse": med["dense"] / med["sparse"], "all": result}


def pipeline(data_dir: str, size, batch: int, steps: int, width: int, hidden: int, samples: int, device: str) -> dict:
    """The training loader + on-device joint augmentation against the sparse training step, batch by batch."""
    import torch

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    dm = camvid(data_dir, size, batch_size=batch)
    torch.manual_seed(0)
    model = segmenter(width, hidden, samples_per_image=samples).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def batches():
        epoch = 0
        while True:  # epochs of the training loader as the Trainer runs them (a new order each epoch)
            loader = dm.train_dataloader()
            loader.sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    source = batches()
    times = {"loader": [], "model": []}

    def timed(fn):
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        return out, (time.perf_counter() - wall, time.process_time() - cpu)

    def deliver(i):
        images, masks, _ = next(source)
        return dm.preprocess(images.to(dev, non_blocking=True), masks.to(dev, non_blocking=True), train=True, seed=i)

    def step(x, m):
        loss = model.sparse_loss(x, m)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(steps + 2):  # the first two of each are warm-up
        (x, m), t_load = timed(lambda: deliver(i))
        _, t_step = timed(lambda: step(x, m))
        if i >= 2:
            times["loader"].append(t_load)
            times["model"].append(t_step)
    med = {k: {"wall_s": median([t[0] for t in v]), "cpu_s": median([t[1] for t in v])} for k, v in times.items()}
    return {"device": str(dev), "size": list(size), "batch": batch, "width": width, "hidden": hidden,
            "samples_per_image": samples, "steps": steps, "train_frames": len(dm.splits["train"]),
            "loader": med["loader"], "model": med["model"],
            "loader_over_model_wall": med["loader"]["wall_s"] / med["model"]["wall_s"],
            "loader_over_model_cpu": med["loader"]["cpu_s"] / med["model"]["cpu_s"],
            "all": {k: [list(t) for t in v] for k, v in times.items()}}


PARTS = ("train", "memory", "pipeline")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--device", default="cpu", help="pipeline: the training device (cpu | cuda)")
    args = p.parse_args()
    out = record(parts=args.parts)
    if "train" in args.parts:
        out["train"] = training_steps(tuple(args.size), args.batch, args.steps, args.width, args.hidden, args.samples)
    if "pipeline" in args.parts:
        out["pipeline"] = pipeline(args.data_dir, args.size, args.batch, args.steps, args.width, args.hidden,
                                   args.samples, args.device)
    if "memory" in args.parts:
        out["memory"] = []
        scripts = str(Path(__file__).resolve().parent)
        for mode in ("working", "full"):
            proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.width), str(args.hidden), *map(str, args.size),
                                   scripts], capture_output=True, text=True, check=True)
            out["memory"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    finish(out, args.out)


if __name__ == "__main__":
    main()
