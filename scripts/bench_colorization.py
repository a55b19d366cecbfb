"""Colorization benchmarks: sparse vs dense hypercolumn training steps, and Lightning vs a plain loop.

    python scripts/bench_colorization.py sparse-dense --out outputs/bench/colorization_sparse_dense.json
    python scripts/bench_colorization.py lightning --out outputs/bench/colorization_lightning.json

Sparse vs dense: the same Colorizer step (forward, loss, backward, optimizer) with K sampled pixels
per image against the full dense hypercolumn, each mode in its own process so its peak RSS
(resource.ru_maxrss, above the RSS after the model is built) is its own; median step time.
Lightning vs plain loop: ``trainer.fit`` for N steps against a hand-written loop calling the same
``training_step``; throughput ratio (plain / Lightning time).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

import torch

CASES = {
    "vgg_cifar@32": ({"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 1, "width": 32}, 32, 32),
    "resnet18@128": ({"_target_": "cnnlab.backbones.TorchvisionBackbone", "arch": "resnet18", "in_channels": 1}, 128, 4),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _step_child(case: str, dense: bool, steps: int, k: int, queue) -> None:
    from cnnlab.models.colorizer import Colorizer

    torch.manual_seed(0)
    backbone, size, batch = CASES[case]
    model = Colorizer(backbone, samples_per_image=k, dense_training=dense)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rgb = torch.rand(batch, 3, size, size)
    base = _rss_mb()
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss = model.dense_loss(rgb) if dense else model.sparse_loss(rgb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    queue.put({"step_s": statistics.median(times[1:]), "peak_rss_above_model_mb": peak - base, "batch": batch, "size": size})


def sparse_dense(steps: int, k: int) -> dict:
    ctx = mp.get_context("spawn")
    out = {}
    for case in CASES:
        row = {}
        for mode in ("sparse", "dense"):
            q = ctx.Queue()
            p = ctx.Process(target=_step_child, args=(case, mode == "dense", steps, k, q))
            p.start()
            row[mode] = q.get()
            p.join()
        row["speedup_sparse"] = row["dense"]["step_s"] / row["sparse"]["step_s"]
        row["memory_ratio_dense_over_sparse"] = row["dense"]["peak_rss_above_model_mb"] / max(1.0, row["sparse"]["peak_rss_above_model_mb"])
        out[case] = row
        print(case, json.dumps(row))
    return {"samples_per_image": k, "steps": steps, "cases": out}


def lightning_vs_plain(steps: int) -> dict:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from cnnlab.models.colorizer import Colorizer

    backbone, size, batch = CASES["vgg_cifar@32"]
    data = torch.rand(batch * steps, 3, size, size)

    def make():
        torch.manual_seed(0)
        return Colorizer({**backbone, "width": 16}, optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3})

    def plain() -> float:
        model = make()
        opt = model.configure_optimizers()
        t = time.perf_counter()
        for (x,) in DataLoader(TensorDataset(data), batch_size=batch):
            loss = model.training_step((x, None), 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t

    def lightning() -> float:
        model = make()
        model.log = lambda *a, **k: None  # the plain loop logs nothing either
        trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        t = time.perf_counter()
        trainer.fit(model, DataLoader(TensorDataset(data), batch_size=batch))
        return time.perf_counter() - t

    plain(), lightning()  # warm-up
    p = [plain() for _ in range(2)]
    lt = [lightning() for _ in range(2)]
    res = {"steps": steps, "plain_s": min(p), "lightning_s": min(lt), "ratio_plain_over_lightning": min(p) / min(lt)}
    print(json.dumps(res))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["sparse-dense", "lightning"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    res = sparse_dense(a.steps, a.k) if a.what == "sparse-dense" else lightning_vs_plain(max(a.steps, 10))
    res["torch_threads"] = torch.get_num_threads()
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
