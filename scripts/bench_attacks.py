"""cnnlab's attacks against torchattacks on the same model, images, eps and steps (docs/benchmarks.md, "Attacks vs torchattacks").

    PYTHONPATH=src:/work/peers/robust python scripts/bench_attacks.py --ckpt /work/ref/supervised_cifar/checkpoints/best_epoch005.ckpt --n 500

torchattacks (and its AutoAttack) is a peer for this check only, never a dependency of the package: install it
into its own place (``pip install --target <dir> --no-deps torchattacks``, the ``bench`` extra lists it) and put
that on PYTHONPATH. Per eps (L-inf, /255): robust accuracy under cnnlab FGSM, cnnlab PGD (one start, and
``--restarts`` starts), torchattacks PGD (same steps, step eps/4, random start); each with its 95% Wilson interval.
cnnlab's one-start PGD passes when its robust accuracy is not above the upper end of the peer's interval.
Then the median minimal L-inf perturbation (cnnlab's PGD bisection) and torchattacks' AutoAttack (standard
version) at ``--aa-eps``. The network normalizes its own input (cnnlab backbones carry their normalization),
so both libraries see the same [0, 1] images.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from cnnlab.io.files import write_json

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")


def _subset(data_dir: str, n: int, seed: int = 1):
    """``n`` test images chosen at random (fixed seed), in index order."""
    from cnnlab.data import ImageDataModule

    dm = ImageDataModule(name="cifar10", data_dir=data_dir, progress=False, val_fraction=0.0)
    dm.setup()
    test = dm.splits["test"]
    idx = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return test.images[idx].float() / 255, test.labels[idx].long()


def _batched(fn, x, y, batch: int):
    return torch.cat([fn(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)])


def _row(name: str, correct: torch.Tensor, seconds: float) -> dict:
    from cnnlab.stats import wilson_interval

    k, n = int(correct.sum()), correct.numel()
    lo, hi = wilson_interval(k, n)
    return {"attack": name, "accuracy": k / n, "ci_low": lo, "ci_high": hi, "n": n, "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="/work/ref/supervised_cifar/checkpoints/best_epoch005.ckpt")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--eps", type=float, nargs="+", default=[1, 2, 4, 8, 16], help="L-inf radii in /255 units")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--minimal-search", type=int, default=6)
    p.add_argument("--aa-eps", type=float, nargs="*", default=[8], help="/255 radii for AutoAttack (empty: skip)")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="")
    args = p.parse_args()

    import torchattacks

    from cnnlab.visualize import attacks as A
    from cnnlab.subject import load_subject

    torch.set_num_threads(args.threads)
    net = load_subject(checkpoint=args.ckpt)
    x, y = _subset(args.data_dir, args.n)
    clean = A.predict(net, x) == y
    out = {"checkpoint": args.ckpt, "n": len(y), "steps": args.steps, "restarts": args.restarts, "threads": args.threads,
           "torchattacks": torchattacks.__version__, "clean": _row("clean", clean, 0.0), "eps": {}}
    print(json.dumps(out["clean"]), flush=True)
    for e255 in sorted(args.eps):
        eps = e255 / 255
        rows = {}
        g = torch.Generator().manual_seed(0)
        runs = {
            "cnnlab FGSM": lambda a, b: A.fgsm(net, a, b, eps),
            f"cnnlab PGD-{args.steps}": lambda a, b: A.pgd(net, a, b, eps, None, args.steps, generator=g),
            f"cnnlab PGD-{args.steps} x{args.restarts} restarts": lambda a, b: A.pgd(net, a, b, eps, None, args.steps, generator=g,
                                                                                   restarts=args.restarts),
            f"torchattacks PGD-{args.steps}": torchattacks.PGD(net, eps=eps, alpha=eps / 4, steps=args.steps, random_start=True),
        }
        for name, attack in runs.items():
            torch.manual_seed(0)  # torchattacks draws its random start from the global generator
            t = time.perf_counter()
            adv = _batched(attack, x, y, args.batch)
            seconds = time.perf_counter() - t
            assert float((adv - x).abs().max()) <= eps + 1e-5 and 0 <= float(adv.min()) and float(adv.max()) <= 1
            rows[name] = _row(name, clean & (A.predict(net, adv) == y), seconds)
        ours, peer = rows[f"cnnlab PGD-{args.steps}"], rows[f"torchattacks PGD-{args.steps}"]
        rows["pgd_at_least_as_strong"] = ours["accuracy"] <= peer["ci_high"]
        out["eps"][f"{e255:g}"] = rows
        print(f"eps {e255:g}/255", json.dumps(rows), flush=True)
    t = time.perf_counter()
    radius = _batched(lambda a, b: A.minimal_linf(net, a, b, max(args.eps) / 255, args.minimal_search, args.steps,
                                                  generator=torch.Generator().manual_seed(0)), x, y, args.batch)
    ok = radius > 0
    out["minimal_linf"] = {"median_255": float(radius[ok].median()) * 255, "n": int(ok.sum()), "seconds": time.perf_counter() - t,
                           "unbroken_at_max": int((radius == float("inf")).sum()), "search_steps": args.minimal_search}
    print(json.dumps(out["minimal_linf"]), flush=True)
    out["autoattack"] = {}
    for e255 in args.aa_eps:
        aa = torchattacks.AutoAttack(net, norm="Linf", eps=e255 / 255, version="standard", n_classes=10, seed=0)
        t = time.perf_counter()
        adv = _batched(aa, x, y, args.batch)
        out["autoattack"][f"{e255:g}"] = _row("torchattacks AutoAttack (standard)", clean & (A.predict(net, adv) == y), time.perf_counter() - t)
        print(f"AutoAttack eps {e255:g}/255", json.dumps(out["autoattack"][f"{e255:g}"]), flush=True)
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(out, indent=2))
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    main()
