"""Does a longer pretraining close more of the gap? The gap's validation-only probes at several pretraining lengths.

For each length, ``cnnlab-gap validation_only=true pretrain.steps=<length>`` with no fine-tunes (the probes are what
the pretraining alone decides; fine-tunes add their own length and search), into ``<out>/length_<steps>/``; a run
that finished is reused (the gap resumes). Then one table and one plot: per task and probe family, each init's
validation score at the tap chosen on validation, colorization - random, and the gap closed, (colorization - random) /
(supervised - random), against the length; with several pretraining seeds, 95% intervals over seeds (Fieller's for the
gap closed, as the gap's own report). No test split is read: this chooses a budget, it does not report a result.

    CNNLAB_DATA=../shared/data python scripts/gap_length_study.py --lengths 250 500 1000 2000 -- \\
        seeds=[0] threads=1 pool.cfg.train_limit=null
    python scripts/gap_length_study.py --lengths 250 500 1000 2000 --tabulate-only   # the table from finished runs

Arguments after ``--`` go to every ``cnnlab-gap`` run (the budget, seeds, pool, tasks ...).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cnnlab.cli import exit_on_user_error
from cnnlab.errors import UserError
from cnnlab.stats import format_acc, format_gap, gap_interval, paired_difference

INITS = ("random", "colorization", "supervised")


def run_length(steps: int, out: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "cnnlab.gap", "validation_only=true", f"pretrain.steps={steps}",
           "tasks.cls.label_fractions=[]", "tasks.seg.label_fractions=[]", *overrides, f"hydra.run.dir={out}"]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


def val_at_best_tap(task: dict, family: str) -> dict[str, tuple[str, dict]] | None:
    """init -> (tap, validation scores over seeds) at the tap the gap chose on validation for that init (linear), or
    at the linear probe's chosen tap for kNN (kNN is not tuned)."""
    probe = task["probe"]
    if family not in probe.get("families", []):
        return None
    out = {}
    for init in INITS:
        tap = probe["best_tap"][init]["tap"]
        out[init] = (tap, probe[family][init][tap]["val"])
    return out


def gap_closed(scores: dict[str, tuple[str, dict]]) -> dict:
    """The gap closed on validation over pretraining seeds, with Fieller's interval (cnnlab.stats) when n >= 2; the
    seeds are paired by position (every init of a run has the same seeds)."""
    values = [scores[i][1]["values"] for i in ("colorization", "random", "supervised")]
    if len({len(v) for v in values}) != 1:
        raise UserError("the inits of a study run have different numbers of seeds: the gap closed needs paired seeds "
                        "(rerun the length with the same seeds= for every init)")
    return gap_interval(*values)


def tabulate(lengths: list[int], root: Path) -> tuple[str, dict, int]:
    rows, data, seeds = [], {}, 0
    for steps in lengths:
        path = root / f"length_{steps}" / "gap_results.json"
        if not path.is_file():
            rows.append(f"| {steps} | (not run) | | | | | | |")
            continue
        res = json.loads(path.read_text())
        for name, task in res["tasks"].items():
            for family in ("linear", "knn"):
                scores = val_at_best_tap(task, family)
                if scores is None:
                    continue
                g = gap_closed(scores)
                n = g["n"]
                seeds = max(seeds, n)
                data.setdefault(f"{name} {family}", {})[steps] = g
                diff = paired_difference(scores["colorization"][1]["values"], scores["random"][1]["values"])
                rows.append(f"| {steps} | {name} ({task['kind']}), {family} probe | {n} | "
                            + " | ".join(f"{format_acc(scores[i][1])} ({scores[i][0]})" for i in INITS)
                            + f" | {format_acc(diff)} | {format_gap(g)} |")
    head = ["| pretraining steps | task, probe | seeds | random val | colorization val | supervised val "
            "| colorization - random (points) | gap closed (val) |",
            "|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + rows) + "\n", data, seeds


def plot(data: dict, path: Path, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    for k, (label, by_steps) in enumerate(data.items()):
        xs = sorted(s for s, g in by_steps.items() if g["mean"] is not None)
        shift = 1.0 + 0.03 * (k - (len(data) - 1) / 2)  # side by side on the log axis, so the intervals do not overlap
        line, = ax.plot([s * shift for s in xs], [100 * by_steps[s]["mean"] for s in xs], marker="o", label=label)
        for s in xs:  # Fieller's interval where it is bounded (n >= 2 and supervised distinguishable from random)
            if by_steps[s]["low"] is not None:
                ax.plot([s * shift] * 2, [100 * by_steps[s]["low"], 100 * by_steps[s]["high"]], color=line.get_color(), lw=1)
    ax.axhline(70, color="gray", ls=":", lw=1, label="the claim: 70%")
    ax.axhline(0, color="black", lw=0.6)
    steps = sorted({s for by_steps in data.values() for s in by_steps})
    ax.set_xscale("log")
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the lengths run are labelled
    ax.set_xlabel("pretraining optimizer steps (every pretrained init)")
    ax.set_ylabel("gap closed on validation (%)")
    ax.set_title("Gap closed against pretraining length (validation, probes only)\n"
                 + (f"{seeds} seed(s), no interval" if seeds == 1 else f"mean and 95% Fieller interval over {seeds} seeds"), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


@exit_on_user_error
def main() -> None:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--out", default="outputs/gap/length_study", help="one run dir per length under it")
    ap.add_argument("--tabulate-only", action="store_true", help="no runs: the table and plot from finished ones")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    root = Path(args.out)
    if not args.tabulate_only:
        for steps in args.lengths:
            run_length(steps, root / f"length_{steps}", overrides)
    table, data, seeds = tabulate(args.lengths, root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "length_study.md").write_text(table)
    plot(data, root / "length_study.png", seeds)
    print(table)
    print(f"wrote {root / 'length_study.md'} and {root / 'length_study.png'}")


if __name__ == "__main__":
    main()
