"""The short SGD probe against L-BFGS to convergence, side by side on real CIFAR-10 features of two trunks.

Trunks: a random init (BatchNorm statistics calibrated on training images, as cnnlab-gap does) and the same
init briefly trained as a supervised classifier on the probe's training images. Both are frozen, their
features extracted once into a FeatureStore, then per tap, on the same features:

- ``sgd``: the project's former probe (cnnlab.probes.sgd.train_probe_heads: BN + linear head, SGD with
  Nesterov momentum, cosine schedule, wd 5e-4) for ``--sgd-steps`` steps (190 = the quick budget's
  10 epochs of 5,000 images at batch 256), scored on the validation split;
- ``lbfgs``: fit_linear_probe (its default weight-decay grid, chosen on the validation split, L-BFGS to its
  tolerance);
- ``knn``: weighted cosine kNN, k = 200, T = 0.1.

Reported: validation top-1 (the test split is not read), fit seconds, L-BFGS iterations and convergence.

    python scripts/bench_probes.py --n-train 3000 --n-val 1000 --taps conv2_2 conv3_2 conv4_2

``--end-to-end`` instead times ``probe_trunk_cached`` on the random trunk as cnnlab-gap calls it (features of the
train, val and the whole test split stored on disk, linear + kNN per tap, test read once) and prints its timing:

    python scripts/bench_probes.py --end-to-end --n-train 5000 --n-val 1000 --taps conv1_2 conv2_2 conv3_2 conv4_2
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.backbones import VGGCifar, freeze, save_trunk
from cnnlab.data import ImageDataModule
from cnnlab.data.sources import CIFAR10_ARCHIVE, data_file
from cnnlab.features import FeatureStore, iter_features
from cnnlab.io.files import write_json
from cnnlab.probes import calibrate_batchnorm, fit_linear_probe, knn_accuracy, probe_trunk_cached
from cnnlab.probes.sgd import train_probe_heads


def train_briefly(net: VGGCifar, dm: ImageDataModule, epochs: int, seed: int = 0) -> VGGCifar:
    """A few epochs of supervised training (SGD 0.05, the classifier's default) of ``net`` on ``dm``'s train split."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(net.out_dim, dm.num_classes)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    net.train()
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        ds = dm.splits["train"]
        perm = torch.randperm(len(ds), generator=g)
        for i in range(0, len(ds) - 63, 64):
            idx = perm[i:i + 64]
            x = dm.preprocess(ds.images[idx], train=True)
            loss = F.cross_entropy(head(net(x)), ds.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--taps", nargs="+", default=["conv2_2", "conv3_2", "conv4_2"])
    ap.add_argument("--target-dims", type=int, default=9216)
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--sgd-steps", type=int, default=190)
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--end-to-end", action="store_true", help="time probe_trunk_cached on the random trunk instead")
    ap.add_argument("--weight-decays", type=float, nargs="+", default=None, help="the L-BFGS grid (default: the probe's)")
    args = ap.parse_args()
    archive = str(data_file(CIFAR10_ARCHIVE))
    dm = ImageDataModule(name="cifar10", source=archive, data_dir=args.data_dir, color_space="L", train_limit=args.n_train,
                         val_fraction=args.n_val / 50_000, augment=["crop", "flip"], progress=False)
    dm.setup()
    pre = lambda u: dm.preprocess(u, train=False)  # noqa: E731
    torch.manual_seed(0)
    random = VGGCifar(1, width=args.width)
    calibrate_batchnorm(random, dm.loader("train", 256), pre, max_batches=20)
    if args.end_to_end:
        return end_to_end(args, dm, random)
    t0 = time.perf_counter()
    trained = VGGCifar(1, width=args.width)
    trained.load_state_dict(random.state_dict())
    trained = train_briefly(trained, dm, args.train_epochs)
    t_train = time.perf_counter() - t0
    results = {"n_train": len(dm.splits["train"]), "n_val": len(dm.splits["val"]), "sgd_steps": args.sgd_steps,
               "threads": torch.get_num_threads(), "load": os.getloadavg(), "train_s": t_train, "trunks": {}}
    print(f"{results['n_train']} train / {results['n_val']} val images, width {args.width}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.1f}; supervised trunk trained {args.train_epochs} epochs in {t_train:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(tmp)
        for name, net in (("random", random), ("trained", trained)):
            net = freeze(net)
            t0 = time.perf_counter()
            feats = {s: store.get(f"{name}_{s}", name, args.taps, lambda s=s: iter_features(
                net, dm.loader(s, 500), args.taps, pre, args.target_dims), len(dm.splits[s])) for s in ("train", "val")}
            t_feat = time.perf_counter() - t0
            tr, va = feats["train"], feats["val"]
            n = len(tr["labels"])
            steps_per_epoch = max(1, n // 256)
            epochs = max(1, math.ceil(args.sgd_steps / steps_per_epoch))
            t0 = time.perf_counter()
            sgd = train_probe_heads({t: torch.from_numpy(np.array(tr[t])) for t in args.taps} | {"labels": torch.from_numpy(tr["labels"])},
                                    {t: torch.from_numpy(np.array(va[t])) for t in args.taps} | {"labels": torch.from_numpy(va["labels"])},
                                    args.taps, num_classes=10, epochs=epochs)["test"]
            t_sgd = (time.perf_counter() - t0) / len(args.taps)  # all heads train in one loop: per-tap share
            rows = {}
            grid = {"weight_decays": tuple(args.weight_decays)} if args.weight_decays else {}
            for t in args.taps:
                t0 = time.perf_counter()
                fit = fit_linear_probe(tr[t], tr["labels"], va[t], va["labels"], 10, **grid)
                t_lbfgs = time.perf_counter() - t0
                t0 = time.perf_counter()
                knn = knn_accuracy(tr[t], tr["labels"], va[t], va["labels"], 10)
                t_knn = time.perf_counter() - t0
                evals = sum(f["evaluations"] for f in fit.fits.values())
                rows[t] = {"dims": int(tr[t].shape[1]), "sgd_val": sgd[t], "sgd_s": t_sgd, "sgd_steps": epochs * steps_per_epoch,
                           "lbfgs_val": fit.val_acc, "lbfgs_s": t_lbfgs, "lbfgs_wd": fit.weight_decay, "lbfgs_grid": fit.grid,
                           "lbfgs_iterations": {wd: f["iterations"] for wd, f in fit.fits.items()}, "lbfgs_evaluations": evals,
                           "lbfgs_converged": all(f["converged"] for f in fit.fits.values()), "knn_val": knn, "knn_s": t_knn}
                print(f"{name:8s} {t:8s} D={rows[t]['dims']:5d}  sgd {sgd[t]:.3f} ({t_sgd:5.1f} s, {epochs * steps_per_epoch} steps)  "
                      f"lbfgs {fit.val_acc:.3f} ({t_lbfgs:5.1f} s, wd {fit.weight_decay:g}, {evals} evaluations, "
                      f"{'converged' if rows[t]['lbfgs_converged'] else 'NOT converged'})  knn {knn:.3f} ({t_knn:.1f} s)", flush=True)
            results["trunks"][name] = {"features_s": t_feat, "taps": rows}
    results["load_after"] = os.getloadavg()
    print(f"load after: {os.getloadavg()[0]:.1f}")
    if args.out:
        write_json(args.out, results)


def end_to_end(args, dm: ImageDataModule, random: VGGCifar) -> None:
    grid = {"weight_decays": tuple(args.weight_decays)} if args.weight_decays else {}
    with tempfile.TemporaryDirectory() as tmp:
        trunk = save_trunk(os.path.join(tmp, "trunk.pt"), random, "L", "random")
        t0 = time.perf_counter()
        res = probe_trunk_cached(trunk, dm, taps=args.taps, target_dims=args.target_dims, cache_dir=os.path.join(tmp, "features"), **grid)
        total = time.perf_counter() - t0
    print(f"probe_trunk_cached: {res['n_train']} train / {res['n_val']} val / {res['n_test']} test images, taps {res['taps']}, "
          f"dims {res['dims']}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    print(f"total {total:.1f} s; " + ", ".join(f"{k} {v:.1f} s" for k, v in res["timing"].items()))
    for t in res["taps"]:
        lin, knn = res["linear"][t], res["knn"][t]
        evals = sum(f["evaluations"] for f in lin["fits"].values())
        print(f"  {t}: linear val {lin['val']:.3f} test {lin['test']:.3f} (wd {lin['weight_decay']:g}, {evals} evaluations, "
              f"{'converged' if lin['converged'] else 'NOT converged'}), kNN val {knn['val']:.3f} test {knn['test']:.3f}")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    if args.out:
        write_json(args.out, {"total_s": total, "load": os.getloadavg(), **res})


if __name__ == "__main__":
    main()
