"""Training-loop benchmark: the Lightning path against a plain PyTorch loop doing the same work.

With ``--clock cpu`` (default) rates are images per CPU-second of this process at one thread, which
other jobs on a shared machine barely disturb; ``--clock wall`` uses wall time at the default threads.

Both sides train the same Classifier (same init, batch, optimizer, on-device kornia augmentation)
from the same in-memory uint8 data, for the same number of steps; runs alternate (A B A B ...) so
machine noise hits both alike. Also measures the data pipeline alone (loader + on-device
preprocessing) against the model's consumption rate.

    python scripts/bench_train.py [--data cifar10|synthetic] [--steps 60] [--repeats 3] [--width 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date

CLOCK = time.process_time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from steptimer import StepTimer
from cnnlab.io.files import write_json
from cnnlab.data import ImageDataModule
from cnnlab.data.sources import CIFAR10_ARCHIVE, data_file
from cnnlab.models import Classifier


def make_dm(args) -> ImageDataModule:
    kw = dict(batch_size=args.batch_size, progress=False, data_dir=args.data_dir, val_fraction=0.0)
    if args.data == "cifar10":
        dm = ImageDataModule(name="cifar10", source=str(data_file(CIFAR10_ARCHIVE)), **kw)
    else:
        dm = ImageDataModule(name="synthetic", synthetic={"n_train": 4096, "n_test": 256}, **kw)
    dm.setup()
    return dm


def make_model(args) -> Classifier:
    torch.manual_seed(0)
    return Classifier(
        backbone={"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 3, "width": args.width},
        num_classes=10, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9}, scheduler=None,
    )


def plain_loop(args, dm) -> float:
    model = make_model(args)
    opt = model.configure_optimizers()
    loader = dm.train_dataloader()
    model.train()
    seen, step, start = 0, 0, None
    while step < args.steps + args.warmup:
        for images, labels in loader:
            if step == args.warmup:
                start = CLOCK()
            x = dm.preprocess(images, train=True, seed=step)
            loss = F.cross_entropy(model(x), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(labels) if start is not None else 0
            if step >= args.steps + args.warmup:
                break
    return seen / (CLOCK() - start)


def lightning_loop(args, dm) -> float:
    model = make_model(args)
    timer = StepTimer(args.warmup, clock=CLOCK)
    trainer = pl.Trainer(
        max_steps=args.steps + args.warmup, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )
    trainer.fit(model, datamodule=dm)
    return timer.samples / timer.seconds


def pipeline_rate(args, dm) -> float:
    loader = dm.train_dataloader()
    seen, start = 0, CLOCK()
    for step, (images, labels) in enumerate(loader):
        dm.preprocess(images, train=True, seed=step)
        seen += len(labels)
        if step >= args.steps:
            break
    return seen / (CLOCK() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="cifar10", choices=["cifar10", "synthetic"])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    global CLOCK
    if args.clock == "cpu":
        torch.set_num_threads(1)  # CPU time of one thread measures our work, not the neighbours'
    else:
        CLOCK = time.perf_counter
    pl.seed_everything(0, verbose=False)
    dm = make_dm(args)
    plain, light, pipe = [], [], []
    for r in range(args.repeats):
        plain.append(plain_loop(args, dm))
        light.append(lightning_loop(args, dm))
        pipe.append(pipeline_rate(args, dm))
        print(f"repeat {r}: plain {plain[-1]:.0f} img/s, lightning {light[-1]:.0f} img/s, pipeline {pipe[-1]:.0f} img/s", flush=True)
    ratios = [lt / pt for lt, pt in zip(light, plain)]
    result = {
        "date": str(date.today()), "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}",
        "args": vars(args), "plain_img_s": plain, "lightning_img_s": light, "pipeline_img_s": pipe,
        "lightning_over_plain_median": statistics.median(ratios), "ratios": ratios,
        "pipeline_over_consumption_median": statistics.median(pipe) / statistics.median(plain),
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("args",)}, indent=2))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
