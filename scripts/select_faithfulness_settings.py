"""The validation-split choices behind ``conf/analysis/faithfulness.yaml`` and ``sanity.yaml``, from cnnlab-analyze runs.

    python scripts/select_faithfulness_settings.py --ig <run dir>... --sanity <run dir>... [--tol 0.05]

``--ig``: ``split=val 'analysis=[faithfulness]'`` runs that differ only in ``ig_baseline``; the baseline chosen is
the one with the largest mean over images of (insertion AUC - deletion AUC), paired per image.
``--sanity``: ``split=val 'analysis=[sanity]' draws=1`` runs with seeds 0, 1000, 2000, ... (draw r of a
``draws=N`` run uses seed + 1000 r, so these are its draws one by one); per method, depth and score the spread of
the image-mean over the draws gives the 95% half-width of an N-draw mean, t(0.975, R-1) * sd / sqrt(N); N chosen =
the smallest of ``--draws`` whose largest half-width is at most ``--tol``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cnnlab.stats import mean_halfwidth, t_critical


def _json(run: str, name: str) -> dict:
    path = Path(run) / name
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist: pass the run dir of a cnnlab-analyze run")
    return json.loads(path.read_text())


def select_ig(runs: list[str]) -> tuple[list[list], object]:
    rows, best = [], None
    for run in runs:
        d = _json(run, "faithfulness.json")
        if d.get("split") != "val":
            raise SystemExit(f"error: {run} read the {d.get('split')} split: choices are made on split=val")
        per = d["per_image"]["integrated_gradients"]
        diff = np.asarray(per["insertion"]) - np.asarray(per["deletion"])
        n = len(diff)
        half = mean_halfwidth(diff)[1]
        auc, rnd = d["auc"]["integrated_gradients"], d["auc"]["random"]
        rows.append([d["ig_baseline"], n, auc["deletion_auc"], auc["deletion_ci"], auc["insertion_auc"], auc["insertion_ci"],
                     float(diff.mean()), float(half), rnd["deletion_auc"], rnd["insertion_auc"]])
        if best is None or diff.mean() > best[1]:
            best = (d["ig_baseline"], float(diff.mean()))
    return rows, best[0]


def select_draws(runs: list[str], candidates: list[int], tol: float) -> tuple[dict, int, dict]:
    per_draw = [_json(run, "sanity.json") for run in runs]
    seeds = [d["seed"] for d in per_draw]
    if any(d["draws"] != 1 for d in per_draw) or len(set(seeds)) != len(seeds):
        raise SystemExit("error: pass draws=1 runs with different seeds (0, 1000, 2000, ...)")
    r = len(per_draw)
    t = t_critical(r)
    worst, where = 0.0, None
    for score in ("spearman_abs", "spearman", "ssim"):
        for method in per_draw[0]["scores"][score]:
            values = np.asarray([d["scores"][score][method][1:] for d in per_draw])  # (draws, depths), depth 0 is the trained model
            sd = values.std(axis=0, ddof=1)
            j = int(sd.argmax())
            if sd[j] > worst:
                worst, where = float(sd[j]), {"score": score, "method": method, "depth": per_draw[0]["layers"][j + 1],
                                              "values": values[:, j].round(3).tolist()}
    halves = {n: t * worst / np.sqrt(n) for n in candidates}
    chosen = next((n for n in sorted(candidates) if halves[n] <= tol), max(candidates))
    return {"draws": r, "seeds": seeds, "images": per_draw[0]["images"], "largest_sd": worst, "at": where,
            "half_width": {str(n): float(h) for n, h in halves.items()}}, chosen, {d["seed"]: d for d in per_draw}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ig", nargs="*", default=[])
    ap.add_argument("--sanity", nargs="*", default=[])
    ap.add_argument("--draws", nargs="+", type=int, default=[1, 3, 5])
    ap.add_argument("--tol", type=float, default=0.05)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = {}
    if args.ig:
        rows, chosen = select_ig(args.ig)
        print("| IG baseline | n | deletion AUC | insertion AUC | insertion - deletion | random del / ins |\n|---|---|---|---|---|---|")
        for b, n, d, dh, i, ih, diff, half, rd, ri in rows:
            print(f"| {b} | {n} | {d:.3f} ± {dh:.3f} | {i:.3f} ± {ih:.3f} | {diff:.3f} ± {half:.3f} | {rd:.3f} / {ri:.3f} |")
        print(f"chosen ig_baseline: {chosen}")
        result["ig"] = {"rows": rows, "chosen": chosen}
    if args.sanity:
        info, chosen, _ = select_draws(args.sanity, args.draws, args.tol)
        print(json.dumps(info, indent=1))
        print(f"chosen draws: {chosen} (tolerance {args.tol})")
        result["sanity"] = {**info, "chosen": chosen, "tol": args.tol}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
