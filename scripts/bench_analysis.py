"""Time and peak memory of top-patch mining and t-SNE on the CIFAR-10 test split (10,000 images).

    flock /tmp/cnnlab-heavy.lock python scripts/bench_analysis.py --ckpt outputs/reference/supervised_cifar/checkpoints/last.ckpt

Peak memory is the resident-set growth above the level before each phase, sampled every 5 ms
(torch tensors are invisible to tracemalloc). Also times a second feature lookup from the on-disk
cache, which later analyses and runs reuse. Prints one JSON object; ``--out`` saves it.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from cnnlab.data.sources import CIFAR10_ARCHIVE, data_file
from cnnlab.io.files import write_json

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


@contextmanager
def measure(results: dict, name: str):
    base, peak, stop = rss(), [rss()], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    yield
    seconds = time.perf_counter() - t0
    stop.set()
    t.join()
    results[name] = {"seconds": round(seconds, 2), "peak_rss_growth_mib": round((max(peak[0], rss()) - base) / 2**20, 1)}
    print(name, results[name], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="outputs/reference/supervised_cifar/checkpoints/last.ckpt",
                    help="a Classifier checkpoint or trunk.pt (a random VGG trunk when missing)")
    ap.add_argument("--source", default=str(data_file(CIFAR10_ARCHIVE)))
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--limit", type=int, default=None, help="images of the test split (default all 10,000)")
    ap.add_argument("--tap", default="conv3_1")
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cnnlab.analysis import embedding as emb
    from cnnlab.analysis import patches as pt
    from cnnlab.analysis.context import AnalysisContext
    from cnnlab.backbones import VGGCifar
    from cnnlab.data import ImageDataModule
    from cnnlab.subject import from_backbone, load_subject

    if Path(args.ckpt).is_file():
        subject = load_subject(path=args.ckpt)
    else:
        print(f"{args.ckpt} not found: benchmarking a random VGG trunk")
        torch.manual_seed(0)
        subject = from_backbone(VGGCifar(width=64), color_space="rgb", method="random", source="random vgg_cifar")
    dm = ImageDataModule(name="cifar10", source=args.source, data_dir=args.data_dir, augment=[], progress=False,
                         color_space=subject.color_space)
    cache_dir = Path("outputs/bench_analysis/features")
    for f in cache_dir.glob("*.pt"):
        f.unlink()  # a cold first extraction every time
    ctx = AnalysisContext(subject, dm, "outputs/bench_analysis", limit=args.limit, batch_size=args.batch_size,
                          feature_cache_dir=cache_dir)
    n = len(ctx.dataset())
    bb = subject
    channels, h, w = bb.layer_shapes([args.tap], 32)[args.tap]
    res: dict = {"images": n, "tap": args.tap, "units": channels, "k": args.k, "checkpoint": subject.source,
                 "threads": args.threads, "torch": torch.__version__,
                 # what keeping every feature map of the tap would take, for scale
                 "all_maps_float32_mib": round(n * channels * h * w * 4 / 2**20, 1)}

    with measure(res, "top_patches"):
        found = pt.mine_top_patches(bb, ctx.batches(), args.tap, None, k=args.k, preprocess=ctx.preprocess)
    assert len(found) == channels
    last = bb.default_taps[-1]
    with measure(res, "features_first"):
        feats = ctx.features(last)
    ctx2 = AnalysisContext(subject, dm, "outputs/bench_analysis", limit=args.limit, batch_size=args.batch_size,
                           feature_cache_dir=cache_dir)
    with measure(res, "features_cached"):
        again = ctx2.features(last)
    assert torch.equal(again[last], feats[last])
    with measure(res, "tsne"):
        coords = emb.tsne_embed(feats[last], max_iter=args.max_iter, seed=0)
    res["tsne_dims_in"] = int(feats[last].shape[1])
    res["tsne_knn_label_agreement"] = round(emb.neighbour_purity(coords, feats["labels"].numpy(), k=10), 3)
    print(json.dumps(res, indent=2))
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
