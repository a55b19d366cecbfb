"""Benchmarks for the image-optimization modules and attacks (results go to docs/results.md and docs/benchmarks.md).

    python scripts/bench_visualize.py robustness --ckpt outputs/reference/supervised_cifar/checkpoints/last.ckpt
    python scripts/bench_visualize.py speed --ckpt ... [--lucent-site /tmp/lucent_site:/tmp/lucent_ipy]

robustness: clean accuracy on the CIFAR-10 test split, accuracy under FGSM (eps 8/255) and PGD-10
(eps 8/255, step 2/255, random start), mean L2 norm of the minimal-distortion attack, and the share of
classes whose fooling images reach 99% confidence.
speed: steps/s of ``ImageOptimization`` under a Lightning Trainer vs a plain PyTorch loop doing the same
steps with the same building blocks; optionally vs torch-lucent's ``render_vis`` (run in a subprocess
with lucent and its old kornia first on PYTHONPATH, never installed in the project's environment).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from cnnlab.io.files import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = ROOT / "outputs/reference/supervised_cifar/checkpoints/last.ckpt"
warnings.filterwarnings("ignore")


def _network(ckpt: str):
    from cnnlab.subject import load_subject

    return load_subject(checkpoint=ckpt)


def _test_split(data_dir: str):
    from cnnlab.data import ImageDataModule

    dm = ImageDataModule(name="cifar10", data_dir=data_dir, progress=False, val_fraction=0.0)
    dm.setup()
    test = dm.splits["test"]
    return test.images, test.labels.long()


def robustness(args) -> dict:
    from cnnlab.visualize import attacks as A

    torch.set_num_threads(args.threads)
    net = _network(args.ckpt)
    images, labels = _test_split(args.data_dir)
    x_all = images.float() / 255
    g = torch.Generator().manual_seed(0)
    out = {"checkpoint": str(args.ckpt), "n_test": len(labels)}
    t = time.perf_counter()
    parts = set(args.parts)
    if "clean" in parts:
        out["clean_acc"] = float((A.predict(net, x_all) == labels).float().mean())

    def subset(n):
        idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))[:n].sort().values
        return x_all[idx], labels[idx]

    eps, step = 8 / 255, 2 / 255
    if "fgsm" in parts:
        x, y = subset(args.n_fgsm)
        adv = torch.cat([A.fgsm(net, x[i:i + 250], y[i:i + 250], eps) for i in range(0, len(x), 250)])
        out.update(n_fgsm=len(x), fgsm_acc=float((A.predict(net, adv) == y).float().mean()),
                   clean_acc_fgsm_subset=float((A.predict(net, x) == y).float().mean()))
    if "pgd" in parts:
        x, y = subset(args.n_pgd)
        adv = torch.cat([A.pgd(net, x[i:i + 250], y[i:i + 250], eps, step, 10, random_start=True, generator=g)
                         for i in range(0, len(x), 250)])
        out.update(n_pgd=len(x), pgd10_acc=float((A.predict(net, adv) == y).float().mean()),
                   clean_acc_pgd_subset=float((A.predict(net, x) == y).float().mean()),
                   pgd_max_linf=float((adv - x).abs().max()))
    if "md" in parts:
        x, y = subset(args.n_md)
        pred = A.predict(net, x)
        keep = pred == y  # distortion needed to flip a correct decision
        md, ok = A.minimal_distortion(net, x[keep], y[keep], steps=args.md_steps, search_steps=args.md_search, lr=0.01)
        norms = (md - x[keep]).flatten(1).norm(dim=1)
        out.update(n_md=int(keep.sum()), md_success=float(ok.float().mean()), md_mean_l2=float(norms[ok].mean()),
                   md_median_l2=float(norms[ok].median()), md_mean_linf=float((md - x[keep]).flatten(1).abs().amax(1)[ok].mean()))
    if "fool" in parts:
        imgs, conf, taken = A.fooling_images(net, torch.arange(10), 32, steps=args.fool_steps, lr=0.05, confidence=0.99,
                                             generator=torch.Generator().manual_seed(0))
        out.update(fooling_share_99=float((conf >= 0.99).float().mean()), fooling_steps=args.fool_steps,
                   fooling_mean_steps=float(taken.float().mean()), fooling_min_conf=float(conf.min()))
    out["seconds"] = time.perf_counter() - t
    return out


# --------------------------------------------------------------------------------- speed
def _setup(net, workload: str, seed: int = 0):
    from cnnlab.visualize import objectives as O
    from cnnlab.visualize.param import FourierImage, PixelImage
    from cnnlab.visualize.transforms import RandomTransforms

    if workload == "class_model":  # ten 32-px class models, pixels, no transforms
        return PixelImage(10, 32, init="zeros"), O.class_logit(list(range(10))) + 0.01 * O.l2(), None
    if workload == "fourier128":  # one 128-px Fourier image, a channel at conv3_1, no transforms
        return FourierImage(1, 128, seed=seed), O.channel("conv3_1", 5), None
    if workload == "fourier128_robust":  # pad 12, jitter 12, scale 0.9-1.1, rotate +-10, back to 128 px (lucent's standard set)
        t = RandomTransforms(pad=12, jitter=12, scales=[1 + (i - 5) / 50 for i in range(11)], angles=10.0, out_size=128)
        return FourierImage(1, 128, seed=seed), O.channel("conv3_1", 5), t
    raise ValueError(workload)


def plain_loop(net, workload: str, steps: int) -> float:
    """The same steps without Lightning: resample transforms, closure, Adam step, project, record."""
    from cnnlab.hooks import INPUT, LayerCapture

    image, obj, transforms = _setup(net, workload)
    opt = torch.optim.Adam(image.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    history = []
    with LayerCapture(net, sorted(obj.layers - {INPUT})) as cap:
        t = time.perf_counter()
        for _ in range(steps):
            if transforms is not None:
                transforms.resample(1, gen)

            def closure():
                opt.zero_grad()
                img = image()
                acts = cap.run(transforms(img) if transforms is not None else img)
                acts[INPUT] = img
                loss = obj(acts)
                loss.backward()
                return loss

            loss = opt.step(closure)
            image.project()
            history.append(float(loss.detach()))
        return steps / (time.perf_counter() - t)


def lightning_loop(net, workload: str, steps: int) -> float:
    from cnnlab.visualize.module import ImageOptimization, run_optimization

    image, obj, transforms = _setup(net, workload)
    mod = ImageOptimization(net, image, obj, transforms, "adam", 0.05)
    t = time.perf_counter()
    run_optimization(mod, steps, progress=False)
    return steps / (time.perf_counter() - t)


LUCENT_SNIPPET = r"""
import sys, time, json, warnings
warnings.filterwarnings("ignore")
import torch, kornia
from lucent.optvis import render, param, objectives, transform
from lucent.modelzoo.util import get_model_layers
from cnnlab.subject import load_subject
net = load_subject(checkpoint=sys.argv[1])
steps, robust = int(sys.argv[2]), sys.argv[3] == "1"
torch.set_num_threads(int(sys.argv[4]))  # the same thread count as the cnnlab side
layer = [n for n in get_model_layers(net) if n.endswith("stages_conv3_1")][0]
torch.manual_seed(0)
obj = objectives.channel(layer, 5)
tf = transform.standard_transforms if robust else []
param_f = lambda: param.image(128, fft=True, decorrelate=True)
t = time.perf_counter()
render.render_vis(net, obj, param_f, transforms=tf, thresholds=(steps,), preprocess=False, progress=False,
                  show_image=False, fixed_image_size=128)
print(json.dumps({"steps_per_s": steps / (time.perf_counter() - t), "kornia": kornia.__version__, "layer": layer}))
"""


def lucent_loop(ckpt: str, steps: int, robust: bool, site: str, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": site + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", LUCENT_SNIPPET, str(ckpt), str(steps), "1" if robust else "0", str(threads)],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def speed(args) -> dict:
    torch.set_num_threads(args.threads)
    net = _network(args.ckpt)
    out = {"threads": args.threads, "steps": args.steps, "repeats": args.repeats}
    for workload in args.workloads:
        lightning_loop(net, workload, 3)  # warm-up (imports, allocator)
        plain_loop(net, workload, 3)
        pl_s, plain_s = [], []
        for _ in range(args.repeats):  # interleaved: the shared machine drifts
            plain_s.append(plain_loop(net, workload, args.steps))
            pl_s.append(lightning_loop(net, workload, args.steps))
        out[workload] = {"lightning_steps_per_s": statistics.median(pl_s), "plain_steps_per_s": statistics.median(plain_s),
                         "ratio": statistics.median(p / q for p, q in zip(pl_s, plain_s))}
        print(workload, out[workload], flush=True)
    if args.lucent_site:
        for workload, robust in (("fourier128", False), ("fourier128_robust", True)):
            ours, theirs = [], []
            for _ in range(args.repeats):
                theirs.append(lucent_loop(args.ckpt, args.steps, robust, args.lucent_site, args.threads))
                ours.append(lightning_loop(net, workload, args.steps))
            if any("error" in r for r in theirs):
                out[f"lucent_{workload}"] = theirs[0]
            else:
                lu = statistics.median(r["steps_per_s"] for r in theirs)
                out[f"lucent_{workload}"] = {"lucent_steps_per_s": lu, "cnnlab_steps_per_s": statistics.median(ours),
                                             "ratio": statistics.median(ours) / lu, "lucent_kornia": theirs[0]["kornia"]}
            print(workload, out[f"lucent_{workload}"], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["robustness", "speed"])
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT))
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--parts", nargs="+", default=["clean", "fgsm", "pgd", "md", "fool"])
    p.add_argument("--n-fgsm", type=int, default=10000)
    p.add_argument("--n-pgd", type=int, default=1000)
    p.add_argument("--n-md", type=int, default=100)
    p.add_argument("--md-steps", type=int, default=50)
    p.add_argument("--md-search", type=int, default=4)
    p.add_argument("--fool-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workloads", nargs="*", default=["class_model", "fourier128"])
    p.add_argument("--lucent-site", default="", help="PYTHONPATH entries holding torch-lucent and its kornia (empty: skip)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    result = robustness(args) if args.what == "robustness" else speed(args)
    result["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
