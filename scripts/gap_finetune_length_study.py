"""Are the gap's fine-tunes long enough? The same trunks fine-tuned longer, on validation only, beside a finished run.

Copies the trunk arms of ``--seeds`` x ``--inits`` from a finished gap run (``--from``) into ``--out`` (the gap
reuses a trunk whose key matches: same pool, backbone and pretraining), runs ``cnnlab-gap validation_only=true`` there
with the overrides after ``--`` (the longer lengths, the rate grid, the fractions to study), then one table: per task
and label fraction, each init's validation score, the best checkpoint's step and how often it was the last
validation, and the gap closed on validation, for the finished run (its same seeds) and for the longer one. No test
split is read by the new run: this chooses a budget, it does not report a result.

    CNNLAB_DATA=../shared/data python scripts/gap_finetune_length_study.py --from outputs/gap/standard_transfer \\
        --out outputs/gap/finetune_length_x2 --seeds 0 1 -- budget=standard 'seeds=[0,1]' \\
        'inits=[random,colorization,supervised]' 'tasks.cls.label_fractions=[0.1]' '~tasks.seg' \\
        finetune.min_steps=4800 finetune.max_steps=4800
    python scripts/gap_finetune_length_study.py --from outputs/gap/standard_transfer \\
        --out outputs/gap/finetune_length_x2 --tabulate-only   # the table from a finished study

(The first example: the standard's CIFAR-10 10%-label fine-tunes at twice their 2,400 steps, the one row of the
standard whose best checkpoint is still the last validation in most runs. The 2026-12-04 study, 3x the then
standard's fine-tunes, is in docs/results.md with its own command.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import fmean

from cnnlab.cli import exit_on_user_error
from cnnlab.errors import UserError

INITS = ("random", "colorization", "supervised")


def copy_trunks(src: Path, out: Path, inits: list[str], seeds: list[int]) -> None:
    for init in inits:
        for seed in seeds:
            arm = src / "arms" / f"{init}_seed{seed}"
            if not (arm / "trunk.pt").is_file():
                raise UserError(f"{arm} holds no trunk.pt: --from must be a finished gap run with these inits and seeds")
            if not (out / "arms" / arm.name).exists():
                # copy2 keeps the file times, which the gap's recorded trunk fingerprint is stamped with
                shutil.copytree(arm, out / "arms" / arm.name, copy_function=shutil.copy2)


def finetune_rows(res: dict, seeds: list[int]) -> dict[tuple[str, str], dict]:
    """(task, fraction) -> init -> per-seed lists ``val``, ``step`` (chosen) and ``lr`` (chosen) over ``seeds`` of a
    gap_results.json."""
    out = {}
    for name, task in res["tasks"].items():
        for fraction, entry in task.get("finetune", {}).items():
            units = entry.get("seeds") or res["protocol"]["seeds"]
            keep = [i for i, s in enumerate(units) if s in seeds]
            rows = {}
            for init in INITS:
                e = entry.get(init)
                if not e or not e["val"].get("values"):
                    continue
                rows[init] = {"val": [e["val"]["values"][i] for i in keep], "step": [e["step_chosen"][i] for i in keep],
                              "lr": [e["lr_chosen"][i] for i in keep]}
            out[(name, fraction)] = rows
    return out


def steps_of(path: Path) -> dict[tuple[str, float], int]:
    """(task, fraction) -> the fine-tunes' length in steps, from the run's candidate arms."""
    out = {}
    for arm in path.glob("arms/finetune_*_lr*"):
        info = json.loads((arm / "gap_arm.json").read_text()) if (arm / "gap_arm.json").is_file() else None
        cand = arm / "candidate.json"
        if info and cand.is_file():
            out[(info["task"], float(info["fraction"]))] = json.loads(cand.read_text())["max_steps"]
    return out


def tabulate(src: Path, out: Path, seeds: list[int]) -> str:
    results = {path: json.loads((path / "gap_results.json").read_text()) for path in (src, out)}
    if not results[out].get("validation_only"):
        raise UserError(f"{out} is not a validation-only run: the study's fine-tunes choose a budget and read no test split")
    # each run's files read once: its fine-tune rows and lengths
    runs = [(path, finetune_rows(results[path], seeds), steps_of(path)) for path in (src, out)]
    lines = ["| task, labels | run | steps | lrs chosen | " + " | ".join(f"{i} val" for i in INITS)
             + " | supervised - random (points) | best = last validation | gap closed (val) |", "|---" * (7 + len(INITS)) + "|"]
    for key in runs[1][1]:
        for path, by_key, lengths in runs:
            rows = by_key.get(key)
            if not rows or any(i not in rows for i in INITS):
                continue
            steps = lengths.get((key[0], float(key[1])), "?")
            last = sum(s == steps for i in INITS for s in rows[i]["step"])
            total = sum(len(rows[i]["step"]) for i in INITS)
            r, c, s = (fmean(rows[i]["val"]) for i in INITS)
            # a denominator under a point is within the validation noise of 1,000 images: no ratio
            gap = "n/a (< 1 point)" if abs(s - r) < 0.01 else f"{100 * (c - r) / (s - r):.0f}%"
            lrs = "; ".join(f"{i[:3]} " + ",".join(f"{lr:g}" for lr in rows[i]["lr"]) for i in INITS)
            lines.append(f"| {key[0]} {100 * float(key[1]):g}% | {path.name} | {steps} | {lrs} | "
                         + " | ".join(f"{100 * v:.1f}" for v in (r, c, s))
                         + f" | {100 * (s - r):+.1f} | {last} of {total} | {gap} |")
    n = len(seeds)
    return "\n".join(lines) + f"\n\nValidation scores, mean of {n} pretraining seed(s) ({', '.join(map(str, seeds))}); no interval.\n"


@exit_on_user_error
def main() -> None:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", required=True, help="a finished gap run dir (its trunks are reused)")
    ap.add_argument("--out", required=True, help="the new, validation-only run dir")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--inits", nargs="+", default=list(INITS))
    ap.add_argument("--tabulate-only", action="store_true", help="no run: the table from a finished study")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    src, out = Path(args.src), Path(args.out)
    if not (src / "gap_results.json").is_file():
        raise UserError(f"{src} has no gap_results.json: --from must be a finished gap run")
    if args.tabulate_only and not (out / "gap_results.json").is_file():
        raise UserError(f"{out} has no gap_results.json: run the study first (without --tabulate-only)")
    if not args.tabulate_only:
        copy_trunks(src, out, args.inits, args.seeds)
        cmd = [sys.executable, "-m", "cnnlab.gap", "validation_only=true", *overrides, f"hydra.run.dir={out}"]
        print("$", " ".join(cmd[1:]), flush=True)
        rc = subprocess.run(cmd).returncode
        if rc:  # the gap printed its own error line
            sys.exit(rc)
    table = tabulate(src, out, args.seeds)
    (out / "finetune_length_study.md").write_text(table)
    print(table)
    print(f"wrote {out / 'finetune_length_study.md'}")


if __name__ == "__main__":
    main()
