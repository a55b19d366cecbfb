"""Colorization benchmarks: sparse vs dense hypercolumn training steps, and Lightning vs a plain loop.

    python scripts/bench_colorization.py side-by-side --out outputs/bench/colorization_side_by_side.json
    python scripts/bench_colorization.py sparse-dense --out outputs/bench/colorization_sparse_dense.json
    python scripts/bench_colorization.py lightning --out outputs/bench/colorization_lightning.json

side-by-side (one process, for a machine shared with other jobs): sparse and dense training steps
(forward, loss, backward, Adam) of the same Colorizer, alternated step by step so both see the same
load; median step time. Memory: bytes of the tensors autograd saves for backward in one step
(deterministic, measured with saved-tensor hooks), split into the backbone + tap part and the
hypercolumn head part; the head part is reported for several K at a fixed size and for several
sizes at a fixed K, to show what it grows with. Then Lightning ``trainer.fit`` against a plain
loop calling the same ``training_step``, alternated, best of the repeats; ratio plain / Lightning time.

sparse-dense (older, one process per mode): peak RSS above the RSS after the model is built.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

import torch

from cnnlab.io.files import write_json

CASES = {
    "vgg_cifar@32": ({"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 1, "width": 32}, 32, 32),
    "resnet18@128": ({"_target_": "cnnlab.backbones.TorchvisionBackbone", "arch": "resnet18", "in_channels": 1}, 128, 4),
}
#: side-by-side cases: (backbone, image size, batch); a CIFAR net run on larger random images
SIDE_CASES = {
    "vgg_cifar_w16@32": ({"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 1, "width": 16}, 32, 16),
    "vgg_cifar_w16@128": ({"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 1, "width": 16}, 128, 4),
}


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def _sd_model(backbone: dict, k: int, hidden: int):
    from cnnlab.models.colorizer import Colorizer

    torch.manual_seed(0)
    model = Colorizer(backbone, samples_per_image=k, hidden=hidden)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def _memory(model, rgb: torch.Tensor) -> dict:
    """Saved-for-backward MiB of the backbone + taps, and of sparse / dense training beyond that."""
    trunk = saved_bytes(lambda: model.tap_maps(model.model_input(rgb)))
    sparse = saved_bytes(lambda: model.sparse_loss(rgb))
    dense = saved_bytes(lambda: model.dense_loss(rgb))
    mib = 2**20
    return {"trunk_mib": trunk / mib, "sparse_head_mib": (sparse - trunk) / mib, "dense_head_mib": (dense - trunk) / mib}


def side_by_side(steps: int, k: int, hidden: int, repeats: int, lightning_hidden: int = 256) -> dict:
    out: dict = {"samples_per_image": k, "hidden": hidden, "steps": steps, "cases": {}}
    for case, (backbone, size, batch) in SIDE_CASES.items():
        model, opt = _sd_model(backbone, k, hidden)
        rgb = torch.rand(batch, 3, size, size)
        times: dict[str, list[float]] = {"sparse": [], "dense": []}
        for i in range(steps + 1):  # alternate the modes; step 0 of each is a warm-up
            for mode in ("sparse", "dense"):
                t = time.perf_counter()
                loss = model.dense_loss(rgb) if mode == "dense" else model.sparse_loss(rgb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if i:
                    times[mode].append(time.perf_counter() - t)
        row = {"batch": batch, "size": size, "sparse_step_s": statistics.median(times["sparse"]),
               "dense_step_s": statistics.median(times["dense"]), **_memory(model, rgb)}
        row["speedup_sparse"] = row["dense_step_s"] / row["sparse_step_s"]
        row["head_memory_ratio_dense_over_sparse"] = row["dense_head_mib"] / row["sparse_head_mib"]
        out["cases"][case] = row
        print(case, json.dumps(row), flush=True)
    # what the head's memory grows with: K at a fixed size, size at a fixed K
    backbone = SIDE_CASES["vgg_cifar_w16@32"][0]
    growth = []
    for kk, size in ((64, 64), (128, 64), (256, 64), (128, 32), (128, 128)):
        model, _ = _sd_model(backbone, kk, hidden)
        rgb = torch.rand(2, 3, size, size)
        growth.append({"k": kk, "size": size, "batch": 2, **_memory(model, rgb)})
        print("memory", json.dumps(growth[-1]), flush=True)
    out["memory_growth"] = growth
    out["lightning"] = lightning_vs_plain(max(steps, 10), repeats, lightning_hidden)
    return out


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


def lightning_vs_plain(steps: int, repeats: int = 2, hidden: int = 256) -> dict:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from steptimer import StepTimer
    from cnnlab.models.colorizer import Colorizer

    backbone, size, batch = CASES["vgg_cifar@32"]
    data = torch.rand(batch * steps, 3, size, size)

    def make():
        torch.manual_seed(0)
        return Colorizer({**backbone, "width": 16}, hidden=hidden, optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3})

    warmup = 3
    clock = time.process_time  # CPU time of this process at one thread: neighbours on a shared machine barely matter

    def plain() -> float:
        model = make()
        opt = model.configure_optimizers()
        for i, (x,) in enumerate(DataLoader(TensorDataset(data), batch_size=batch)):
            if i == warmup:
                t = clock()
            loss = model.training_step((x, None), i)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return clock() - t

    def lightning() -> float:
        model = make()
        model.log = lambda *a, **k: None  # the plain loop logs nothing either
        timer = StepTimer(warmup, clock=clock)
        trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[timer],
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(model, DataLoader(TensorDataset(data), batch_size=batch))
        return timer.seconds

    torch.set_num_threads(1)
    plain(), lightning()  # warm-up
    p, lt = [], []
    for _ in range(repeats):  # alternated, so both see the same load on a shared machine
        p.append(plain())
        lt.append(lightning())
    res = {"steps": steps, "repeats": repeats, "batch": batch, "width": 16, "hidden": hidden, "plain_s": min(p), "lightning_s": min(lt),
           "plain_all_s": p, "lightning_all_s": lt, "ratio_plain_over_lightning": min(p) / min(lt)}
    print(json.dumps(res))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["side-by-side", "sparse-dense", "lightning"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lightning-hidden", type=int, default=256)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.what == "side-by-side":
        res = side_by_side(a.steps, a.k, a.hidden, a.repeats, a.lightning_hidden)
    elif a.what == "sparse-dense":
        res = sparse_dense(a.steps, a.k)
    else:
        res = lightning_vs_plain(max(a.steps, 10), a.repeats, a.lightning_hidden)
    res["torch_threads"] = torch.get_num_threads()
    if a.out:
        write_json(a.out, res)


if __name__ == "__main__":
    main()
