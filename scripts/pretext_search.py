"""Which colorization pretext recipe gives the most useful trunk within a gap budget, scored on validation only.

Each recipe is the gap's own configuration (``conf/gap.yaml`` with ``budget=<budget>``) narrowed to one init
and one pretraining seed, no fine-tunes, plus the recipe's overrides. It runs the gap's trunk arm (the
pretraining exactly as the budget runs it, or the seeded BN-calibrated random init) and its probe arms
(linear probes with the weight decay chosen on val, and kNN, per tap, one per probe label subset) through
:class:`cnnlab.gap.runner.Runner`, with ``probe.evaluate_test=false``: no test feature, label or accuracy is
computed, and the script refuses to write a result that holds a test number.

Per recipe and seed it writes ``<out>/<recipe>_seed<s>.json``; a rerun reuses a finished result with the same
overrides (and the Runner reuses finished arms under ``<out>/<recipe>/``), so an interrupted search resumes.

    PYTHONPATH=src CNNLAB_DATA=/work/shared/data OMP_NUM_THREADS=1 nice -n 10 \\
        python scripts/pretext_search.py --out outputs/pretext_search --recipes random hue_chroma_2ep lab_bins_2ep
    python scripts/pretext_search.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    init: str  # the gap init whose trunk arm runs: colorization, random or supervised
    overrides: tuple[str, ...]  # gap-config overrides on top of the budget
    what: str


RECIPES = {
    # every recipe names its length: the standard budget's own changed from 2 to 4 epochs after this search
    "hue_chroma_2ep": Recipe("colorization", ("pretrain.colorization.cfg.trainer.max_epochs=2",),
                             "hue/chroma bins (Larsson et al.), 2 epochs, width 16 (the standard budget's recipe until e0ffb83)"),
    "lab_bins_2ep": Recipe("colorization", ("pretrain.colorization.cfg.trainer.max_epochs=2", "++pretrain.colorization.cfg.model.targets=lab_bins"),
                           "Zhang et al.-style soft-encoded, rebalanced ab bins, 2 epochs, width 16"),
    "hue_chroma_4ep": Recipe("colorization", ("pretrain.colorization.cfg.trainer.max_epochs=4",),
                             "hue/chroma, 4 epochs, width 16 (the standard budget's recipe since e0ffb83)"),
    "hue_chroma_2ep_w32": Recipe("colorization", ("pretrain.colorization.cfg.trainer.max_epochs=2", "backbone.width=32"),
                                 "hue/chroma, 2 epochs, width 32"),
    "random": Recipe("random", (), "the gap's random init (BN statistics calibrated on training images), width 16"),
    "random_w32": Recipe("random", ("backbone.width=32",), "the gap's random init, width 32"),
    "supervised_2ep": Recipe("supervised", (), "the gap's supervised pretraining (labels), 2 epochs, width 16"),
}


def wilson(p: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` observed on ``n`` trials (:func:`cnnlab.stats.wilson_interval`)."""
    from cnnlab.stats import wilson_interval

    return wilson_interval(round(p * n), n)


def compose_overrides(budget: str, recipe: Recipe, seed: int, root: Path, extra: list[str]) -> list[str]:
    return [f"budget={budget}", f"inits=[{recipe.init}]", f"seeds=[{seed}]", "label_fractions=[]",
            "probe.evaluate_test=false", "report.wandb=false", f"paths.output_dir={root}", *recipe.overrides, *extra]


def compose_gap(budget: str, recipe: Recipe, seed: int, root: Path, extra: list[str]):
    """The gap config of one recipe and seed (no fine-tunes, probes on val only) and its config-group choices."""
    from cnnlab.gap.configs import compose_gap as compose

    overrides = compose_overrides(budget, recipe, seed, root, extra)
    cfg, choices = compose(overrides)
    return cfg, choices, overrides


def assert_validation_only(probes: dict) -> None:
    """A result holding any test number is not written."""
    for name, p in probes.items():
        tests = [(fam, t) for fam in ("linear", "knn") for t, e in p[fam].items() if e.get("test") is not None]
        if p.get("n_test") or tests:
            raise AssertionError(f"{name} read the test split ({p.get('n_test')} images; {tests}): this search is validation only")


def summarize(probes: dict, taps: list[str]) -> dict:
    """Per tap the val accuracy of the linear probe (chosen weight decay) and of kNN, averaged over the probe
    label subsets, with the Wilson interval of the 1-in-n validation images; the best tap by linear val."""
    n_val = next(iter(probes.values()))["n_val"]
    per_tap = {}
    for t in taps:
        lin = [p["linear"][t]["val"] for p in probes.values()]
        knn = [p["knn"][t]["val"] for p in probes.values()]
        lm, km = sum(lin) / len(lin), sum(knn) / len(knn)
        per_tap[t] = {"linear_val": lm, "linear_val_ci95": wilson(lm, n_val), "linear_val_per_subset": lin,
                      "weight_decay": [p["linear"][t]["weight_decay"] for p in probes.values()],
                      "at_grid_edge": [bool(p["linear"][t].get("at_grid_edge")) for p in probes.values()],
                      "knn_val": km, "knn_val_ci95": wilson(km, n_val), "knn_val_per_subset": knn}
    best = max(taps, key=lambda t: per_tap[t]["linear_val"])
    return {"n_val": n_val, "n_train_per_subset": [p["n_train"] for p in probes.values()], "per_tap": per_tap,
            "best_tap": {"tap": best, "linear_val": per_tap[best]["linear_val"], "ci95": per_tap[best]["linear_val_ci95"]}}


def run_recipe(name: str, recipe: Recipe, seed: int, args) -> dict:
    from rich.console import Console

    from cnnlab.gap import arms as A
    from cnnlab.gap.runner import Runner, validate

    root = args.out / name
    cfg, choices, overrides = compose_gap(args.budget, recipe, seed, root, args.override)
    validate(cfg)
    runner = Runner(cfg, root, choices)
    plan = runner.plan()
    console = Console()
    runner.show_plan(plan, console)
    load_before, t0 = os.getloadavg(), time.time()
    runner.execute(plan, console)
    trunk_arm = next(a for a in plan.arms if a.kind == "trunk")
    marker = A.read_marker(trunk_arm, root)
    probes = {a.name: json.loads((a.dir(root) / "probe.json").read_text()) for a in plan.arms if a.kind == "probe"}
    assert_validation_only(probes)
    taps = next(iter(probes.values()))["taps"]
    return {"recipe": name, "what": recipe.what, "init": recipe.init, "seed": seed, "budget": args.budget,
            "overrides": overrides, "pretrain_seconds": marker["seconds"], "pretrain_finished": marker["finished"],
            "arms_run_now": sorted(runner.timings), "arm_seconds_now": runner.timings,
            "load_before": load_before, "load_after": os.getloadavg(), "wall_s_now": round(time.time() - t0, 1),
            **summarize(probes, taps), "probe_arms": {n: {k: p[k] for k in ("n_train", "n_val", "n_test", "timing")} for n, p in probes.items()},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
            "command": " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])}


def table(results: list[dict]) -> str:
    taps = results[0]["per_tap"].keys() if results else []
    head = "| recipe | seed | pretrain s | " + " | ".join(f"{t} lin / kNN" for t in taps) + " | best tap (lin val [95% CI]) |"
    rows = [head, "|" + "---|" * (4 + len(taps))]
    for r in results:
        cells = [f"{100 * e['linear_val']:.1f} / {100 * e['knn_val']:.1f}" for e in r["per_tap"].values()]
        b = r["best_tap"]
        rows.append(f"| {r['recipe']} | {r['seed']} | {r['pretrain_seconds']:.0f} | " + " | ".join(cells) +
                    f" | {b['tap']} {100 * b['linear_val']:.1f} [{100 * b['ci95'][0]:.1f}, {100 * b['ci95'][1]:.1f}] |")
    return "\n".join(rows)


def time_widths(widths: list[int], batch: int = 64, steps: int = 10, repeats: int = 3) -> dict:
    """CPU seconds per training step (forward to every tap, backward, SGD) of the gap's backbone at each width,
    alternating widths ``repeats`` times in this process: how width scales every arm's trunk compute."""
    import torch
    from hydra import compose, initialize_config_dir

    from cnnlab.cli import instantiate
    from cnnlab.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("gap", overrides=["budget=standard", "paths.output_dir=."])
    size = int(cfg.data.get("image_size") or 32)
    x = torch.rand(batch, 1, size, size)
    nets = {w: instantiate(cfg.backbone, width=w, in_channels=1) for w in widths}
    per_step: dict[int, list[float]] = {w: [] for w in widths}
    for _ in range(repeats):
        for w, net in nets.items():
            opt = torch.optim.SGD(net.parameters(), lr=0.01)
            taps = net.default_taps
            for i in range(steps + 1):
                if i == 1:  # the first step warms up
                    t0 = time.process_time()
                opt.zero_grad()
                sum(f.mean() for f in net.forward_taps(x, taps).values()).backward()
                opt.step()
            per_step[w].append((time.process_time() - t0) / steps)
    base = widths[0]
    return {"batch": batch, "steps": steps, "threads": torch.get_num_threads(), "cpu_s_per_step": per_step,
            "ratio_to_first": {w: sorted(a / b for a, b in zip(per_step[w], per_step[base]))[repeats // 2] for w in widths},
            "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=["random", "hue_chroma_2ep", "lab_bins_2ep", "hue_chroma_4ep"],
                    help=f"any of {sorted(RECIPES)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--budget", default="standard")
    ap.add_argument("--out", type=Path, default=Path("outputs/pretext_search"))
    ap.add_argument("--override", nargs="*", default=[], help="extra gap-config overrides for every recipe (e.g. paths.data_dir=...)")
    ap.add_argument("--list", action="store_true", help="list the recipes and exit")
    ap.add_argument("--time-widths", type=int, nargs="+", default=None, metavar="W",
                    help="only measure the backbone's training-step CPU time at these widths side by side (e.g. 16 32)")
    args = ap.parse_args(argv)
    if args.time_widths:
        from cnnlab.io.files import write_json

        res = time_widths(args.time_widths)
        print(json.dumps(res, indent=1))
        write_json(args.out / "time_widths.json", res)
        return
    if args.list:
        for n, r in RECIPES.items():
            print(f"{n:20s} {r.init:13s} {' '.join(r.overrides) or '(budget as is)'}: {r.what}")
        return
    from cnnlab.errors import UserError
    from cnnlab.io.files import write_json, write_text

    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"error: unknown recipe(s) {unknown}: choose from {sorted(RECIPES)}")
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    jobs = [(n, s) for s in args.seeds for n in args.recipes]
    for i, (name, seed) in enumerate(jobs, start=1):
        path = args.out / f"{name}_seed{seed}.json"
        recipe = RECIPES[name]
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("overrides") == compose_overrides(args.budget, recipe, seed, args.out / name, args.override):
                print(f"[{i}/{len(jobs)}] {name} seed {seed}: reused {path}", flush=True)
                results.append(old)
                continue
        print(f"[{i}/{len(jobs)}] {name} seed {seed}: {recipe.what}; load {os.getloadavg()[0]:.2f}", flush=True)
        try:
            res = run_recipe(name, recipe, seed, args)
        except UserError as err:
            raise SystemExit(f"error: {err}") from None
        write_json(path, res)
        b = res["best_tap"]
        print(f"  {name} seed {seed}: pretrain {res['pretrain_seconds']:.0f} s, best tap {b['tap']} val {100 * b['linear_val']:.1f}% "
              f"[{100 * b['ci95'][0]:.1f}, {100 * b['ci95'][1]:.1f}], n_val {res['n_val']}", flush=True)
        results.append(res)
    text = table(results)
    write_text(args.out / "table.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
