"""Robustness of the gap experiment's three inits: robust accuracy vs L-inf eps of the fine-tuned classifiers (docs/results.md).

    PYTHONPATH=src python scripts/bench_robustness_inits.py --run outputs/gap/standard_transfer --task cls --fraction 0.1 \\
        --n 500 --eps 1 2 4 8 --steps 10 --restarts 3 --out outputs/robustness_inits/f0.1

For every paired run (pretraining seed, label subset) of a finished ``cnnlab-gap`` run and every init (random,
colorization, supervised) the classifier fine-tuned on ``--fraction`` of the CIFAR-10 task's labels is the one its arm
chose on validation (``arms/finetune_<task>_<init>_f<f>_seed<s>_sub<k>/choice.json`` names the candidate, whose
``candidate.json`` names its best-on-val checkpoint; runs from before the gap had several tasks name their arms
without ``<task>_``, and are read too). Each is attacked with cnnlab's own attacks
(``cnnlab.visualize.attacks.robustness_curve``: FGSM, and PGD of ``--steps`` steps of eps/4 with ``--restarts``
random starts; ``minimal_linf``: the smallest PGD radius by bisection) on the same fixed test images: the first
``--n / 10`` test images of every class (class-balanced, in the test split's order).

Threat model: the perturbation lives in the input the classifier sees before its own normalization, i.e. the
data module's output in [0, 1] (for the gap's lightness classifiers ``data.color_space=L``: Lab L / 100, one
channel), and eps is in those units (1/255 of the lightness range is 0.39 L units).

Reported per init: the mean over pretraining seeds with a 95% t-interval (n = seeds: the label subsets of a seed
share its trunk, so they are averaged within it first, ``cnnlab.stats.seed_means``), and the paired differences
colorization - random and supervised - colorization with their 95% paired t-interval over seeds (``cnnlab.stats``).
The intervals are over training runs on this fixed image set; they do not include the sampling error of the images
themselves (a Wilson interval of about +-4 points at n = 500). Because clean accuracy differs between inits, robust
accuracy is also given relative to clean accuracy (robust / clean = the share of the points a model classifies
correctly that survive the attack) and on the points every compared model classifies correctly (a common
denominator: the same images for every model, so harder images that only a stronger model gets right cannot make it
look less robust).

Each model's per-image results are cached in ``<out>/models/`` (keyed by the attack settings), so a long
evaluation can be split into several invocations (``--max-models``); the report is written once every model is in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from cnnlab.cli import exit_on_user_error
from cnnlab.errors import UserError
from cnnlab.io.files import atomic_path, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
INITS = ("random", "colorization", "supervised")
ATTACKS = ("fgsm", "pgd")
#: the paired differences reported (a - b)
DIFFERENCES = (("colorization", "random"), ("supervised", "colorization"), ("supervised", "random"))
warnings.filterwarnings("ignore")


# --------------------------------------------------------------------------------- which checkpoints
def chosen_checkpoints(run: Path, fraction: float, task: str = "cls") -> dict[tuple[int, int], dict[str, Path]]:
    """``{(seed, subset): {init: checkpoint}}`` of the fine-tuned classifiers of ``task`` the gap run chose on validation.

    Paths are resolved inside ``run`` (a copied run dir works): the candidate's checkpoint file name is taken
    from its ``candidate.json`` and looked up under ``run/arms/<candidate>/checkpoints/``.
    """
    arms = run / "arms"
    if not arms.is_dir():
        raise UserError(f"{run} has no arms/ folder: pass the run dir of a finished cnnlab-gap run")
    # finetune_<task>_<init>_f<f>_seed<s>_sub<k>; runs from before the gap had tasks: finetune_<init>_f<f>_seed<s>_sub<k>
    pattern = re.compile(rf"finetune_(?:{re.escape(task)}_)?({'|'.join(INITS)})_f{re.escape(f'{fraction:g}')}_seed(\d+)_sub(\d+)$")
    found: dict[tuple[int, int], dict[str, Path]] = {}
    for arm in sorted(arms.iterdir()):
        m = pattern.match(arm.name)
        if not m:
            continue
        choice = arm / "choice.json"
        if not choice.is_file():
            raise UserError(f"{arm} has no choice.json: the gap run did not finish this arm (rerun cnnlab-gap to complete it)")
        cand = json.loads(choice.read_text())["candidate"]
        info = arms / cand / "candidate.json"
        if not info.is_file():
            raise UserError(f"{info} is missing: the chosen candidate of {arm.name} has no checkpoint record")
        ckpt = arms / cand / "checkpoints" / Path(json.loads(info.read_text())["path"]).name
        if not ckpt.is_file():
            raise UserError(f"{ckpt} is missing: copy the candidate's checkpoints/ along with the run dir")
        found.setdefault((int(m.group(2)), int(m.group(3))), {})[m.group(1)] = ckpt
    if not found:
        raise UserError(f"no fine-tuning arms of task {task} with fraction {fraction:g} in {arms}: pick one of the run's tasks "
                        "(--task) and of its label fractions")
    incomplete = {u: sorted(set(INITS) - set(c)) for u, c in found.items() if set(c) != set(INITS)}
    if incomplete:
        raise UserError(f"paired runs without all three inits in {arms}: {incomplete}")
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------------- images and models
def test_images(data_dir: str, color_space: str, n: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The first ``n / 10`` test images of every class, as the gap's data module feeds them to the classifier."""
    from cnnlab.data import ImageDataModule
    from cnnlab.data.datamodule import round_robin_by_class

    dm = ImageDataModule(name="cifar10", data_dir=data_dir, progress=False, val_fraction=0.0, color_space=color_space)
    dm.setup()
    test = dm.splits["test"]
    labels = torch.as_tensor(test.labels).long()
    idx = round_robin_by_class(labels, n).sort().values
    return dm.preprocess(torch.as_tensor(test.images[idx])), labels[idx], idx.tolist()


def load_classifier(path: Path):
    from cnnlab.models import Classifier
    from cnnlab.models.loading import load_module

    model = load_module(path, expect=Classifier).eval()
    model.requires_grad_(False)  # gradients are taken with respect to the images only
    return model


def attack_model(model, x, y, args) -> dict[str, np.ndarray]:
    """Per image: ``fgsm``/``pgd`` ``(N, 1 + len(eps))`` correct (column 0 clean), ``radius`` the minimal PGD L-inf radius."""
    from cnnlab.visualize import attacks as A

    eps = [e / 255 for e in args.eps]
    curves = A.robustness_curve(model, x, y, eps, ATTACKS, steps=args.steps, restarts=args.restarts, batch_size=args.batch,
                                generator=torch.Generator().manual_seed(0))
    out = {a: c.numpy() for a, c in curves.items()}
    if args.minimal_search > 0:
        g = torch.Generator().manual_seed(0)
        out["radius"] = torch.cat([A.minimal_linf(model, x[i:i + args.batch], y[i:i + args.batch], max(eps), args.minimal_search,
                                                  args.steps, restarts=1, generator=g) for i in range(0, len(y), args.batch)]).numpy()
    return out


def settings_key(args, image_ids: list[int]) -> str:
    what = {"eps": sorted(args.eps), "steps": args.steps, "restarts": args.restarts, "minimal_search": args.minimal_search,
            "images": image_ids}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def cached(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


# --------------------------------------------------------------------------------- summaries
def per_model(res: dict[str, np.ndarray], common: np.ndarray) -> dict:
    """Accuracies of one model: absolute, relative to its clean accuracy, and on the common correct points."""
    clean = res["pgd"][:, 0]
    row = {"clean": float(clean.mean()), "n": int(len(clean)), "n_common": int(common.sum())}
    for a in ATTACKS:
        acc = res[a].mean(0)
        row[a] = acc.tolist()
        row[f"{a}_rel"] = (acc / acc[0]).tolist() if acc[0] > 0 else [None] * len(acc)
        row[f"{a}_common"] = res[a][common].mean(0).tolist() if common.any() else [None] * len(acc)
    if "radius" in res:
        r = res["radius"][clean]
        row["median_radius_255"] = float(np.median(r)) * 255 if len(r) else None
        row["unbroken_at_max"] = int(np.isinf(r).sum())
    return row


def summarize(models: dict[tuple[int, int], dict[str, dict]], eps255: list[float]) -> dict:
    """Per init mean over pretraining seeds with its t-interval, and the paired differences over seeds, for every
    measure (each seed's label subsets averaged first: they share its trunk)."""
    from cnnlab.stats import mean_ci, paired_difference, seed_means

    measures = [f"{a}{s}" for s in ("", "_rel", "_common") for a in ATTACKS]
    radius = "median_radius_255" in next(iter(models.values()))["random"]

    def over_seeds(init: str, measure: str, j: int | None = None) -> list[float | None]:
        return list(seed_means({u: by[init][measure] if j is None else by[init][measure][j] for u, by in models.items()}).values())

    def per_measure(stat, *inits) -> dict:
        d = {"clean": stat(*(over_seeds(i, "clean") for i in inits))}
        for m in measures:
            d[m] = [stat(*(over_seeds(i, m, j) for i in inits)) for j in range(len(eps255) + 1)]
        if radius:
            d["median_radius_255"] = stat(*(over_seeds(i, "median_radius_255") for i in inits))
        return d

    return {"per_init": {init: per_measure(mean_ci, init) for init in INITS},
            "differences": {f"{a} - {b}": per_measure(paired_difference, a, b) for a, b in DIFFERENCES}}


def _ci(c: dict, scale: float = 100, digits: int = 1) -> str:
    from cnnlab.stats import format_interval

    return format_interval(c, scale, digits, with_n=False)


def markdown(summary: dict, eps255: list[float], n_units: int, n_images: int, n_common: int, restarts: int, steps: int) -> str:
    cols = ["0 (clean)"] + [f"{e:g}/255" for e in eps255]
    head = "| | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    blocks = []
    titles = {"pgd": f"PGD-{steps} x{restarts} restarts, robust accuracy %", "fgsm": "FGSM, robust accuracy %",
              "pgd_rel": "PGD, robust / clean %", "fgsm_rel": "FGSM, robust / clean %",
              "pgd_common": f"PGD, accuracy % on the {n_common} images every model classifies correctly",
              "fgsm_common": f"FGSM, accuracy % on the {n_common} images every model classifies correctly"}
    for m in ("pgd", "fgsm", "pgd_rel", "fgsm_rel", "pgd_common", "fgsm_common"):
        lines = [f"**{titles[m]}** (mean [95% t-interval], n = {n_units} pretraining seeds, label subsets averaged within a seed; "
                 f"{n_images} test images)\n\n", head]
        for init in INITS:
            lines.append(f"| {init} | " + " | ".join(_ci(c) for c in summary["per_init"][init][m]) + " |\n")
        for name, d in summary["differences"].items():
            lines.append(f"| {name} (paired) | " + " | ".join(_ci(c) for c in d[m]) + " |\n")
        blocks.append("".join(lines))
    if "median_radius_255" in summary["per_init"]["random"]:
        lines = ["**Median minimal PGD L-inf radius** over each model's correctly classified images, in /255 (mean [95% t-interval] over "
                 f"{n_units} pretraining seeds)\n\n", "| | /255 |\n|---|---|\n"]
        for init in INITS:
            lines.append(f"| {init} | {_ci(summary['per_init'][init]['median_radius_255'], 1, 2)} |\n")
        for name, d in summary["differences"].items():
            lines.append(f"| {name} (paired) | {_ci(d['median_radius_255'], 1, 2)} |\n")
        blocks.append("".join(lines))
    return "\n".join(blocks)


def figure(path: Path, summary: dict, eps255: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [0.0, *eps255]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colours = {"random": "tab:gray", "colorization": "tab:orange", "supervised": "tab:blue"}
    for ax, (suffix, label) in zip(axes, [("", "robust accuracy %"), ("_rel", "robust / clean %"),
                                          ("_common", "accuracy % on commonly correct images")]):
        for init in INITS:
            for a, style in (("pgd", "-"), ("fgsm", "--")):
                cis = summary["per_init"][init][a + suffix]
                m = np.array([c["mean"] for c in cis], dtype=float) * 100
                lo = np.array([c["low"] for c in cis], dtype=float) * 100
                hi = np.array([c["high"] for c in cis], dtype=float) * 100
                ax.plot(xs, m, style, marker="o", ms=3, color=colours[init], label=f"{init} {a.upper()}")
                if a == "pgd":
                    ax.fill_between(xs, lo, hi, color=colours[init], alpha=0.2)
        ax.set_xlabel("L-inf eps (/255 of the L/100 input)")
        ax.set_ylabel(label)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------- main
@exit_on_user_error
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=str(ROOT / "outputs/gap/standard"), help="a finished cnnlab-gap run dir")
    p.add_argument("--task", default="cls", help="the gap run's CIFAR-10 classification task (a key of its tasks)")
    p.add_argument("--fraction", type=float, default=0.1, help="the label fraction of the fine-tuning arms")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--n", type=int, default=500, help="test images (class-balanced: the first n/10 of every class)")
    p.add_argument("--eps", type=float, nargs="+", default=[1, 2, 4, 8], help="L-inf radii in /255 units")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--minimal-search", type=int, default=4, help="bisection rounds of the minimal radius (0: skip it)")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-models", type=int, default=0, help="attack at most this many uncached models, then stop (0: all)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if any(not 0 < e <= 255 for e in args.eps):
        raise UserError(f"--eps {args.eps}: give radii in /255 units in (0, 255]")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    run = Path(args.run)

    ckpts = chosen_checkpoints(run, args.fraction, args.task)
    first = load_classifier(next(iter(ckpts.values()))["random"])
    color_space = first.data_info.get("color_space", "rgb")
    if first.data_info.get("name") not in (None, "cifar10"):
        raise UserError(f"task {args.task} of {run} fine-tuned on {first.data_info.get('name')}: this script attacks CIFAR-10 "
                        "classifiers (pass the task whose data is cifar10, --task)")
    x, y, ids = test_images(args.data_dir, color_space, args.n)
    key = settings_key(args, ids)
    print(f"{len(ckpts)} paired runs x {len(INITS)} inits; {len(y)} images {tuple(x.shape[1:])} in {color_space}; key {key}", flush=True)

    results: dict[tuple[int, int], dict[str, dict[str, np.ndarray]]] = {}
    new = 0
    for unit, by_init in ckpts.items():
        for init, ckpt in by_init.items():
            path = out / "models" / f"{init}_f{args.fraction:g}_seed{unit[0]}_sub{unit[1]}_{key}.npz"
            res = cached(path)
            if res is None:
                if args.max_models and new >= args.max_models:
                    continue
                model = load_classifier(ckpt)
                if model.data_info.get("color_space", "rgb") != color_space:
                    raise UserError(f"{ckpt} takes {model.data_info.get('color_space')} input, the others {color_space}: "
                                    "compare classifiers of one gap run")
                t = time.perf_counter()
                res = attack_model(model, x, y, args)
                res["seconds"] = np.array(time.perf_counter() - t)
                save_npz(path, res)
                new += 1
                print(f"{init} seed{unit[0]} sub{unit[1]}: clean {res['pgd'][:, 0].mean():.3f}, PGD {np.round(res['pgd'].mean(0), 3).tolist()} "
                      f"({float(res['seconds']):.0f} s)", flush=True)
            results.setdefault(unit, {})[init] = res
    timings = [float(r["seconds"]) for by in results.values() for r in by.values() if "seconds" in r]
    missing = sum(len(INITS) - len(results.get(u, {})) for u in ckpts)
    if missing:
        print(f"{missing} models still to attack (cached under {out / 'models'}): rerun the same command to continue", flush=True)
        return

    every = np.stack([r["pgd"][:, 0] for u in results for r in results[u].values()])
    common = every.all(0)
    models = {u: {i: per_model(r, common) for i, r in by.items()} for u, by in results.items()}
    eps255 = sorted(args.eps)
    summary = summarize(models, eps255)
    n_units = len({u[0] for u in models})  # pretraining seeds: the independent unit
    table = markdown(summary, eps255, n_units, len(y), int(common.sum()), args.restarts, args.steps)
    report = {
        "run": str(run.resolve()), "fraction": args.fraction, "color_space": color_space, "n_images": len(y),
        "images": "the first n/10 CIFAR-10 test images of every class (test-split order)", "image_ids": ids,
        "eps_255": eps255, "steps": args.steps, "step_size": "eps/4", "restarts": args.restarts,
        "minimal_search": args.minimal_search, "n_common": int(common.sum()), "threads": args.threads,
        "checkpoints": {f"seed{u[0]}_sub{u[1]}": {i: str(c) for i, c in by.items()} for u, by in ckpts.items()},
        "models": {f"seed{u[0]}_sub{u[1]}": by for u, by in models.items()}, "summary": summary,
        "seconds_per_model": float(np.mean(timings)) if timings else None,  # None: timed before timings were cached
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    write_json(out / "robustness_inits.json", report)
    write_text(out / "robustness_inits.md", table)
    figure(out / "robustness_inits.png", summary, eps255,
           f"Gap inits fine-tuned on {args.fraction:g} of the labels: mean and 95% t-interval over {n_units} pretraining seeds, "
           f"{len(y)} test images (PGD solid, FGSM dashed)")
    print(table)
    print(f"wrote {out}/robustness_inits.json, .md, .png")


if __name__ == "__main__":
    main()
