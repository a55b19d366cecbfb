"""Linear probes with and without the feature cache: time for E probe epochs on the same trunk and data.

Without the cache, every epoch runs the frozen trunk over every image and then the heads (what
``cnnlab-train model=linear_probe`` does); with it, the trunk runs once (``extract_features``) and
every epoch only trains the heads on the stored features (``cnnlab.probes.sgd.train_probe_heads``).
Both are timed side by side in one process.

    python scripts/bench_probe_cache.py --n 1000 --epochs 10 --width 16
"""

from __future__ import annotations

import argparse
import time

import torch

from cnnlab.backbones import VGGCifar, freeze
from cnnlab.features import extract_features, pool_features
from cnnlab.probes import ProbeHeads, calibrate_batchnorm, probe_dims
from cnnlab.probes.sgd import train_probe_heads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--target-dims", type=int, default=9216)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    images = (torch.rand(args.n, 3, 32, 32) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (args.n,))
    pre = lambda u: u.float().div(255).mean(1, keepdim=True)  # noqa: E731 - one lightness-like channel
    trunk = VGGCifar(1, width=args.width)
    calibrate_batchnorm(trunk, [images[:256]], pre)
    trunk = freeze(trunk)
    taps = trunk.default_taps
    batches = [(images[i:i + args.batch_size], labels[i:i + args.batch_size]) for i in range(0, args.n, args.batch_size)]

    # cached: one trunk pass, then E epochs of heads on the features
    t0 = time.perf_counter()
    feats = extract_features(trunk, batches, taps, pre, args.target_dims)
    t_extract = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_probe_heads(feats, feats, taps, num_classes=10, epochs=args.epochs, batch_size=args.batch_size)
    t_heads = time.perf_counter() - t0
    cached = t_extract + t_heads

    # uncached: every epoch runs the trunk again (same heads, same optimizer)
    heads = ProbeHeads(probe_dims(trunk, taps, 32, args.target_dims), 10)
    opt = torch.optim.SGD(heads.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for x, y in batches:
            with torch.no_grad():
                fm = trunk.forward_taps(pre(x), taps)
                f = {t: pool_features(fm[t], args.target_dims) for t in taps}
            loss = sum(torch.nn.functional.cross_entropy(v, y) for v in heads(f).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    uncached = time.perf_counter() - t0
    dims = sum(feats[t].shape[1] for t in taps)
    print(f"vgg_cifar width {args.width}, {len(taps)} taps, {dims} pooled dims per image, {args.n} images, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads")
    print(f"cached:   {cached:7.1f} s  (extract once {t_extract:.1f} s + heads {t_heads:.1f} s)")
    print(f"uncached: {uncached:7.1f} s  (trunk + heads every epoch)")
    print(f"speed-up: {uncached / cached:.1f}x; feature memory {feats[taps[0]].element_size() * dims * args.n / 2**20:.0f} MiB (float16)")


if __name__ == "__main__":
    main()
