"""Collecting the arms' numbers into the gap results: JSON, markdown tables, a plot, and W&B.

One table per downstream task. Every score in the tables was read on the task's test split once, with choices made
on its validation split (the best tap per init, the probe weight decay per tap, the fine-tune learning rate,
recipe variant and checkpoint); the validation numbers behind those choices are in ``gap_results.json``.
Intervals: the pretraining seed is the unit (label subsets are averaged within a seed first), 95% t-intervals over
seeds for scores and paired differences, Fieller's interval for the gap closed (see :mod:`cnnlab.stats`).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from statistics import fmean
from typing import Sequence

from cnnlab.stats import format_acc, format_gap, gap_interval, mean_ci, paired_difference, seed_means
from cnnlab.gap.select import best_tap
from cnnlab.io.files import write_json, write_text

log = logging.getLogger(__name__)

ROW_ORDER = ("supervised_rgb", "supervised", "random", "colorization")
DATASET_NAMES = {"cifar10": "CIFAR-10", "stl10": "STL-10", "tinyimagenet": "Tiny-ImageNet-200", "camvid": "CamVid",
                 "synthetic": "synthetic shapes", "imagefolder": "an ImageFolder", "voc2007": "PASCAL VOC 2007",
                 "voc": "PASCAL VOC 2012"}  # the published tables' order
TRIO = ("colorization", "random", "supervised")
#: the supervised ceiling on RGB input (the published supervised rows are RGB networks)
RGB = "supervised_rgb"


def unit_key(unit) -> str:
    """``(0, 1)`` -> ``seed0_sub1`` (a paired run's name in the results)."""
    seed, subset = unit
    return f"seed{seed}" + ("" if subset is None else f"_sub{subset}")


#: the banner of a report on synthetic data
SMOKE_BANNER = "PLUMBING CHECK ON SYNTHETIC DATA: these numbers test that the pipeline runs, they measure nothing"


def dataset_name(data: dict) -> str:
    """``{"name": "camvid"}`` -> ``CamVid``; a data set read from ``source`` is named by its folder or archive."""
    if data.get("source"):
        return f"{data.get('name', '?')} data read from {Path(str(data['source'])).name}"
    return DATASET_NAMES.get(data.get("name"), str(data.get("name", "?")))


def over_seeds(by_unit: dict) -> dict:
    """Mean [95% CI] over pretraining seeds of ``{(seed, subset): score}`` (subsets averaged within a seed)."""
    return mean_ci(list(seed_means(by_unit).values()))


def paired_block(acc: dict[str, dict], units: list) -> dict:
    """Differences and gap closed over pretraining seeds, from ``acc[init][unit]`` scores on ``units`` (the paired
    runs every init has): each init's scores are averaged over label subsets within a seed, then paired by seed.
    With an RGB supervised ceiling in ``acc``, the gap closed against it too."""
    per_seed = {i: seed_means({u: acc.get(i, {}).get(u) for u in units}) for i in acc}
    seeds = sorted({u[0] for u in units})
    col = {i: [per_seed[i].get(s) for s in seeds] for i in per_seed}
    out = {"colorization - random": paired_difference(col["colorization"], col["random"]),
           "supervised - colorization": paired_difference(col["supervised"], col["colorization"]),
           "gap_closed": gap_interval(col["colorization"], col["random"], col["supervised"])}
    if RGB in col:
        out["gap_closed_rgb"] = gap_interval(col["colorization"], col["random"], col[RGB])
    return out


def _shared_units(table: dict, inits: Sequence[str]) -> list:
    sets = [set(table.get(i, {})) for i in inits]
    return sorted(set.intersection(*sets), key=lambda u: (u[0], -1 if u[1] is None else u[1])) if sets else []


def _per_tap(probe: dict, inits, taps, family: str, units_of: dict) -> dict:
    out = {}
    for i in inits:
        runs = probe.get(i, {})
        out[i] = {}
        for t in taps:
            have = [u for u in units_of[i] if t in runs[u].get(family, {})]
            entry = {"test": over_seeds({u: runs[u][family][t]["test"] for u in have}),
                     "val": over_seeds({u: runs[u][family][t]["val"] for u in have})}
            if family == "linear":
                fits = [runs[u][family][t] for u in units_of[i] if t in runs[u][family]]
                entry["weight_decay_chosen"] = [f["weight_decay"] for f in fits]
                # a choice at the end of the grid may be short of the optimum (the L-BFGS probe flags it)
                entry["at_grid_edge"] = sum(bool(f.get("at_grid_edge")) for f in fits)
            out[i][t] = entry
    return out


def summarize(collected: dict, inits: Sequence[str], fractions: Sequence[float], taps: Sequence[str] = (),
              score: str = "test") -> dict:
    """Accuracies, paired differences and the gap closed from the finished arms (see :meth:`Runner.collect`).

    ``collected["probe"][init][unit]`` is a probe result (``cnnlab.probes.cached.probe_trunk_cached``), ``collected["finetune"][init]
    [fraction][unit]`` a fine-tune choice (``{"lr", "step", "val", "test", "grid"}``); ``unit = (seed, subset)``. Every
    interval runs over pretraining seeds (``n`` = seeds), the subsets of a seed averaged first. ``score``: the split the
    differences and gaps are computed on, ``"test"`` (a result) or ``"val"`` (a validation-only run, which reads no
    test split: its tables and gaps are validation numbers, optimistic since every choice was made on them).
    """
    if score not in ("test", "val"):
        raise ValueError(f"score must be 'test' or 'val', got {score!r}")
    probe, finetune = collected["probe"], collected["finetune"]
    inits = list(inits)
    trio = all(i in inits for i in TRIO)
    gap_inits = TRIO + ((RGB,) if RGB in inits else ())
    if not taps:
        taps = next((r["taps"] for runs in probe.values() for r in runs.values()), [])
    out: dict = {"inits": inits, "taps": list(taps), "label_fractions": [float(f) for f in fractions], "score": score}
    units_of = {i: sorted(probe.get(i, {}), key=lambda u: (u[0], -1 if u[1] is None else u[1])) for i in inits}
    shared = _shared_units(probe, inits)
    families = [f for f in ("linear", "knn") if any(f in r for runs in probe.values() for r in runs.values())] or ["linear"]
    pr: dict = {"units": [unit_key(u) for u in shared], "seeds": sorted({u[0] for u in shared}), "families": families}
    for family in families:
        pr[family] = _per_tap(probe, inits, taps, family, units_of)
    # the "best" tap of each init, chosen on its mean validation accuracy over paired runs (linear probes)
    best = {}
    for i in inits:
        tap = best_tap({t: [probe[i][u]["linear"][t]["val"] for u in units_of[i]] for t in taps}, taps)
        if tap is not None:
            best[i] = {"tap": tap, "chosen_on": "validation", "val": pr["linear"][i][tap]["val"]["mean"],
                       "test": pr["linear"][i][tap]["test"]}
    pr["best_tap"] = best
    if trio:
        for family in families:
            pr[f"{family}_gap"] = {t: paired_block({i: {u: probe[i][u][family][t][score] for u in shared} for i in gap_inits}, shared)
                                   for t in taps}
        if len(best) == len(inits):
            pr["linear_gap"]["best"] = paired_block({i: {u: probe[i][u]["linear"][best[i]["tap"]][score] for u in shared}
                                                     for i in gap_inits}, shared)
    out["probe"] = pr
    ft: dict = {}
    for f in fractions:
        runs = {i: finetune.get(i, {}).get(float(f), {}) for i in inits}
        units = _shared_units(runs, inits)
        entry = {"units": [unit_key(u) for u in units], "seeds": sorted({u[0] for u in units})}
        for i in inits:
            rs = list(runs[i].values())
            entry[i] = {"test": over_seeds({u: r["test"] for u, r in runs[i].items()}),
                        "val": over_seeds({u: r["val"] for u, r in runs[i].items()}),
                        "lr_chosen": [r["lr"] for r in rs], "step_chosen": [r["step"] for r in rs],
                        "variant_chosen": [r.get("variant") for r in rs],
                        "lr_at_grid_edge": sum(bool(r.get("lr_at_grid_edge")) for r in rs),
                        "step_is_last": sum(bool(r.get("step_is_last")) for r in rs),
                        "last_gain": _mean([r["last_gain"] for r in rs if r.get("last_gain") is not None])}
        if trio:
            entry["gap"] = paired_block({i: {u: runs[i][u][score] for u in units} for i in gap_inits}, units)
        ft[str(float(f))] = entry
    out["finetune"] = ft
    return out


# --------------------------------------------------------------------------------- text
def _rows(inits: Sequence[str]) -> list[str]:
    return [i for i in ROW_ORDER if i in inits] + [i for i in inits if i not in ROW_ORDER]


def _mean(values: list) -> float | None:
    return fmean(values) if values else None


def _gain(gain: float | None) -> str:
    """A row's mean gain of the chosen fine-tunes' last validation over the one before, in points ('' if unknown)."""
    return "" if gain is None else f" ({100 * gain:+.1f})"


def _counts(values: list) -> str:
    c = Counter(values)
    return ", ".join(f"{v:g} ×{n}" if n > 1 else f"{v:g}" for v, n in sorted(c.items())) if c else "–"


_DIFF_ROWS = (("colorization - random", "colorization − random (points)"),
              ("supervised - colorization", "supervised − colorization (points)"))


def _gap_rows(blocks: list[dict | None]) -> list[str]:
    rows = []
    for key, label in _DIFF_ROWS:
        rows.append(f"| {label} | " + " | ".join(format_acc(b[key]) if b else "–" for b in blocks) + " |")
    rows.append("| gap closed | " + " | ".join(format_gap(b["gap_closed"]) if b else "–" for b in blocks) + " |")
    if any(b and "gap_closed_rgb" in b for b in blocks):
        rows.append("| gap closed, RGB supervised ceiling | " + " | ".join(
            format_gap(b["gap_closed_rgb"]) if b and "gap_closed_rgb" in b else "–" for b in blocks) + " |")
    return rows


def markdown_tables(res: dict) -> str:
    """Per downstream task its tables (probes per tap like the published per-layer tables, fine-tunes per label
    fraction), then where the time went; a report on synthetic data says so first."""
    lines = [f"**{SMOKE_BANNER}**", ""] if res.get("synthetic") else []
    if res.get("validation_only"):
        lines += ["**Validation only: no test split was read; every number below is a validation score.**", ""]
    for name, r in res.get("tasks", {}).items():
        lines += [f"## Task {name}: {r.get('kind', 'classification')} on {dataset_name(r.get('data', {}))}", "", task_markdown(r)]
    if res.get("timing"):
        lines += ["### Where the time went", "", timing_text(res["timing"])]
    return "\n".join(lines) + "\n"


def task_markdown(res: dict) -> str:
    """One task's tables: probes per tap (and kNN for classification), fine-tunes per label fraction, the
    validation numbers behind the choices."""
    taps, pr = res["taps"], res["probe"]
    rows = _rows(res["inits"])
    metric = res.get("metric", "top-1")
    n_seeds = len(pr.get("seeds", []))
    sc = res.get("score", "test")
    split = ("the task's validation split, the one every choice below was made on (optimistic: a validation-only run "
             "chooses, it does not report)") if sc == "val" else "the task's test split, read once per final arm"
    lines = [f"Every number: {metric} % on {split}; mean [95% CI] over n = "
             f"{n_seeds or '?'} pretraining seed(s) (the label subsets of a seed share its trunks and are averaged within it first). "
             "Choices (best tap, weight decay, learning rate, recipe variant, checkpoint) were made on the validation split; "
             "differences use a paired t-interval over seeds, the gap closed = (colorization − random) / (supervised − random) "
             "Fieller's interval for a ratio of paired means on the same unit.", ""]
    best = pr.get("best_tap", {})
    seg = res.get("kind") == "segmentation"
    lines += ["### " + ("Dense linear probe on the hypercolumn of every tap (weight decay chosen on val)" if seg else
                        "Linear probes per tap (weight decay chosen on val per tap)"), "",
              "| init | " + " | ".join(taps) + " | best tap (chosen on val) |", "|---" * (len(taps) + 2) + "|"]
    for i in rows:
        b = best.get(i)
        lines.append(f"| {i} | " + " | ".join(format_acc(pr["linear"][i][t][sc]) for t in taps)
                     + f" | {format_acc(pr['linear'][i][b['tap']][sc]) + ' (' + b['tap'] + ')' if b else '–'} |")
    if "linear_gap" in pr:
        lines += _gap_rows([pr["linear_gap"].get(t) for t in taps] + [pr["linear_gap"].get("best")])
    lines += ["", "Weight decay chosen on val (per paired run):", "", "| init | " + " | ".join(taps) + " |", "|---" * (len(taps) + 1) + "|"]
    for i in rows:
        cells = [_counts(pr["linear"][i][t]["weight_decay_chosen"])
                 + (f" (at the grid's edge ×{pr['linear'][i][t]['at_grid_edge']})" if pr["linear"][i][t].get("at_grid_edge") else "")
                 for t in taps]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    k = res.get("grids", {}).get("knn", {})
    if "knn" in pr.get("families", ["linear", "knn"]):
        lines += ["", f"### kNN per tap (cosine, weighted, k = {k.get('k', '?')}, T = {k.get('temperature', '?')}; nothing tuned)", "",
                  "| init | " + " | ".join(taps) + " |", "|---" * (len(taps) + 1) + "|"]
        for i in rows:
            lines.append(f"| {i} | " + " | ".join(format_acc(pr["knn"][i][t][sc]) for t in taps) + " |")
        if "knn_gap" in pr:
            lines += _gap_rows([pr["knn_gap"].get(t) for t in taps])
    fr = [str(float(f)) for f in res["label_fractions"]]
    if fr:
        ft = res["finetune"]
        grid = res.get("grids", {}).get("finetune_lr")
        # with two rates every choice is an edge: a flag on every row would say nothing
        edges_uninformative = grid is not None and len(grid) == 2
        subsets = {"segmentation": "seeded subsets of the training frames", "multilabel": "seeded subsets of the training images"}
        lines += ["", "### Fine-tuning the whole network on " + subsets.get(res.get("kind"), "class-balanced label subsets")
                  + (f" (learning rate from {grid} and checkpoint chosen on val per run)" if grid else "")
                  + ("; with two rates every choice is an edge, so none is flagged" if edges_uninformative else ""), "",
                  "| init | " + " | ".join(f"{100 * float(f):g}% labels" for f in fr) + " |", "|---" * (len(fr) + 1) + "|"]
        for i in rows:
            lines.append(f"| {i} | " + " | ".join(format_acc(ft[f][i][sc]) for f in fr) + " |")
        lines += _gap_rows([ft[f].get("gap") for f in fr])
        for i in rows:
            lines.append(f"| lr chosen on val, {i} | " + " | ".join(
                _counts(ft[f][i]["lr_chosen"])
                + (f" (at the grid's edge ×{ft[f][i]['lr_at_grid_edge']})" if ft[f][i].get("lr_at_grid_edge") and not edges_uninformative else "")
                for f in fr) + " |")
        if len(res.get("grids", {}).get("finetune_variants") or {}) > 1:
            for i in rows:
                lines.append(f"| recipe variant chosen on val, {i} | " + " | ".join(
                    ", ".join(f"{v} ×{n}" for v, n in sorted(Counter(ft[f][i].get("variant_chosen", [])).items())) or "–" for f in fr) + " |")
        for i in rows:
            lines.append(f"| best checkpoint = last step (mean gain of the last validation), {i} | " + " | ".join(
                f"{ft[f][i].get('step_is_last', 0)} of {len(ft[f][i]['step_chosen'])}" + _gain(ft[f][i].get("last_gain")) for f in fr) + " |")
        lines += published_beside(res, fr[-1], rows)
    lines += ["", "### Validation accuracies behind the choices (%, mean over paired runs)", "",
              "| " + " | ".join(["init", "best tap val", *(f"fine-tune {100 * float(f):g}% val" for f in fr)]) + " |",
              "|---" * (len(fr) + 2) + "|"]
    for i in rows:
        b = best.get(i)
        tap_val = f"{100 * b['val']:.1f} ({b['tap']})" if b and b["val"] is not None else "–"
        lines.append("| " + " | ".join([i, tap_val, *(format_acc(res["finetune"][f][i]["val"]) for f in fr)]) + " |")
    lines += ["", "### Reading", "", *reading(res)]
    return "\n".join(lines) + "\n"


#: the published gap closed each task kind is compared with (../shared/reference.md), as a fraction
PUBLISHED = {
    "classification": ("Larsson et al., AlexNet fine-tuned ImageNet -> VOC 2007 classification: 53.3 / 65.9 / 79.9 mAP "
                       "(random / colorization / supervised), 47% of the gap; Zhang et al.'s ImageNet linear probes 19 / 40 / 52 / "
                       "51 / 49% at conv1-5", 0.47),
    "segmentation": ("Larsson et al., AlexNet fine-tuned ImageNet -> VOC 2012 segmentation: 19.8 / 38.4 / 48.0 mIoU, 66% of the gap",
                     0.66),
    "multilabel": ("Larsson et al., AlexNet fine-tuned ImageNet -> VOC 2007 classification: 53.3 / 65.9 / 79.9 mAP "
                   "(random / colorization / supervised), 47% of the gap", 0.47),
}


#: published fine-tune scores of the same task, shown beside the run's own (%; the gap closed as a fraction)
PUBLISHED_FINETUNE = {
    "multilabel": {"what": "AlexNet pretrained on ImageNet, all layers fine-tuned on VOC 2007 trainval, mAP on its test split "
                           "(Zhang et al., Split-Brain Autoencoders, Table 4; colorization = Larsson et al.)",
                   "random": 53.3, "colorization": 65.9, "supervised": 79.9, "gap": 0.47},
}


def published_beside(res: dict, fraction: str, rows: Sequence[str]) -> list[str]:
    """The published scores of the task's kind beside this run's fine-tunes on ``fraction`` of the labels (none for a
    kind without published numbers of its own)."""
    pub = PUBLISHED_FINETUNE.get(res.get("kind"))
    if not pub:
        return []
    entry, sc = res["finetune"][fraction], res.get("score", "test")
    lines = ["", f"Published beside: {pub['what']}. Their supervised network is an RGB one (here: supervised_rgb).", "",
             f"| init | here: fine-tuned on {100 * float(fraction):g}% labels ({sc}) | published |", "|---|---|---|"]
    for i in rows:
        lines.append(f"| {i} | {format_acc(entry[i][sc])} | {pub.get('supervised' if i == RGB else i, '–')} |")
    gap = entry.get("gap", {})
    ours = format_gap(gap["gap_closed_rgb" if "gap_closed_rgb" in gap else "gap_closed"]) if gap else "–"
    return lines + [f"| gap closed{' (RGB supervised ceiling)' if 'gap_closed_rgb' in gap else ''} | {ours} | {100 * pub['gap']:.0f}% |"]


def _read_gap(what: str, g: dict, published: float) -> str:
    """One sentence on what a gap-closed interval supports."""
    if g.get("mean") is None:
        return f"- {what}: no gap closed ({_note(g)})."
    text = f"- {what}: {format_gap(g)}"
    if g.get("low") is None:  # format_gap has already said why there is no interval
        return text + ", so it supports no conclusion."
    zero = "excludes 0 (colorization beats random)" if g["low"] > 0 else "includes 0 (no evidence that colorization beats random)" \
        if g["high"] > 0 else "lies below 0 (colorization worse than random)"
    pub = "includes" if g["low"] <= published <= g["high"] else "excludes"
    return text + f"; the interval {zero} and {pub} the published {100 * published:.0f}%."


def _note(g: dict) -> str:
    return str(g.get("note", "")).split(": ", 1)[-1]


def reading(res: dict) -> list[str]:
    """What the intervals of one task support, beside the published numbers, in sentences."""
    kind = res.get("kind", "classification")
    text, published = PUBLISHED.get(kind, PUBLISHED["classification"])
    out = [f"Published: {text}. The numbers here come from far smaller nets, images and pretraining; compare directions, not magnitudes."]
    best = res["probe"].get("linear_gap", {}).get("best")
    if best:
        out.append(_read_gap("linear probe at each init's tap chosen on val", best["gap_closed"], published))
    for f, entry in res.get("finetune", {}).items():
        if "gap" in entry:
            out.append(_read_gap(f"fine-tuned on {100 * float(f):g}% of the labels", entry["gap"]["gap_closed"], published))
            last = sum(entry[i].get("step_is_last", 0) for i in res["inits"] if i in entry)
            runs = sum(len(entry[i].get("step_chosen", [])) for i in res["inits"] if i in entry)
            gain = _mean([entry[i]["last_gain"] for i in res["inits"] if entry.get(i, {}).get("last_gain") is not None])
            if runs and last > runs / 2:
                out.append(f"  Its best checkpoint was the last validation in {last} of {runs} runs"
                           + (f" (the last validation added {100 * gain:+.1f} points over the one before, mean over inits)" if gain is not None else "")
                           + ": longer fine-tunes might move it.")
    return out


def timing(markers: list[dict], wall_seconds: float | None) -> dict:
    """Seconds per arm kind from the finished arms' markers (``seconds``, and ``clock``: time inside training
    batches, validation and test, see :class:`cnnlab.callbacks.StageClock`), and training compute's share."""
    from cnnlab.callbacks import StageClock

    kinds: dict = {}
    for m in markers:
        k = kinds.setdefault(m["kind"] + ("" if m["kind"] != "trunk" else f" {m['init']}"),
                             {"arms": 0, "seconds": 0.0, **dict.fromkeys(StageClock.STAGES, 0.0)})
        k["arms"] += 1
        k["seconds"] += float(m.get("seconds") or 0.0)
        for stage in StageClock.STAGES:
            k[stage] += float((m.get("clock") or {}).get(stage, 0.0))
    total = sum(k["seconds"] for k in kinds.values())
    train = sum(k["train_batches"] for k in kinds.values())
    return {"by_kind": {n: {key: round(v, 1) if isinstance(v, float) else v for key, v in k.items()} for n, k in sorted(kinds.items())},
            "arm_seconds": round(total, 1), "train_batch_seconds": round(train, 1),
            "train_share_of_arms": round(train / total, 3) if total else None,
            "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1),
            "train_share_of_wall": round(train / wall_seconds, 3) if wall_seconds else None}


def timing_text(t: dict) -> str:
    """The timing block as a markdown table and one sentence."""
    rows = ["| arm kind | arms | seconds | in training batches | in validation | in test |", "|---|---|---|---|---|---|"]
    for name, k in t["by_kind"].items():
        rows.append(f"| {name} | {k['arms']} | {k['seconds']:.0f} | {k['train_batches']:.0f} | {k['validation']:.0f} | {k['test']:.0f} |")
    share = t.get("train_share_of_arms")
    rows += ["", f"Arms took {t['arm_seconds'] / 60:.1f} min in all; {t['train_batch_seconds'] / 60:.1f} min of it inside training "
             f"batches (forward, backward, optimizer step){'' if share is None else f', {100 * share:.0f}%'}"
             + (f"; this invocation's wall time {t['wall_seconds'] / 60:.1f} min (arms reused from an earlier invocation count above "
                "with their own times)" if t.get("wall_seconds") else "") + "."]
    return "\n".join(rows)


def setup_title(res: dict) -> str:
    """The setup in words, for the plot and the table: pool, tasks, network, inits, runs, budget (and a smoke banner)."""
    bb = res.get("backbone", {})
    plan = str(bb.get("plan", ""))
    name = f"{plan.rstrip('0123456789').upper()}-{plan[len(plan.rstrip('0123456789')):]}" if plan[-1:].isdigit() else bb.get("arch", "?")
    net = name + (f" width {bb['width']}" if "width" in bb else "")
    proto = res.get("protocol", {})
    seeds, subsets = len(proto.get("seeds", [])), len(proto.get("label_subsets", []))
    tasks = ", ".join(f"{r.get('kind', '?')} on {dataset_name(r.get('data', {}))}" for r in res.get("tasks", {}).values())
    title = (f"Pretraining gap ({res.get('protocol_name', '?')}): pretrained on {dataset_name(res.get('pool', {}))}, evaluated on {tasks}; "
             f"{net}, lightness input: random vs colorization vs supervised; {seeds} pretraining seed(s) × {subsets} label subset(s); "
             f"budget {res.get('budget', '?')}")
    numerics = res.get("arm_numerics") or {}
    if numerics.get("precision", "32-true") not in ("32-true", "32"):  # float32 is the default and goes unsaid
        title += f"; every training arm in {numerics['precision']}" + (" with channels-last weights" if numerics.get("channels_last") else "")
    return (SMOKE_BANNER + " · " + title) if res.get("synthetic") else title


# --------------------------------------------------------------------------------- plot
COLORS = {"supervised": "tab:blue", "supervised_rgb": "tab:purple", "random": "tab:gray", "colorization": "tab:orange"}
#: the RGB ceiling is drawn dashed beside the one-channel one, so the two supervised rows read apart in gray print too
LINES = {"supervised_rgb": "--"}


def _accuracy_panel(ax, series: dict, gaps: list, ylabel: str, title: str):
    """Per init, (x, stats) points with their 95% CI as error bars in %; the gap closed above the highest bar."""
    top = 0.0
    for init, rows in series.items():
        pts = [(x, s) for x, s in rows if s.get("mean") is not None]
        if not pts:
            continue
        xs, ms = [p[0] for p in pts], [100 * p[1]["mean"] for p in pts]
        lo = [100 * (s["mean"] - s["low"]) if s.get("low") is not None else 0.0 for _, s in pts]
        hi = [100 * (s["high"] - s["mean"]) if s.get("high") is not None else 0.0 for _, s in pts]
        ax.errorbar(xs, ms, yerr=[lo, hi], marker="o", capsize=3, label=init, color=COLORS.get(init), linestyle=LINES.get(init, "-"))
        top = max(top, max(m + h for m, h in zip(ms, hi)))
    for x, gap in gaps:
        ax.annotate(format_gap(gap).split(", n")[0], (x, top), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=6, color="tab:orange", rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, min(105.0, max(10.0, top * 1.2)))  # an interval past 100% (n = 2) is clipped, not the axis stretched
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return ax


def plot(res: dict, path: str | Path, title: str = "") -> Path:
    """One row per task: probes (and kNN) per tap, fine-tuning per label fraction; test scores (validation scores for a
    validation-only run) with 95% CIs over pretraining seeds, the gap closed above each point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = res.get("tasks", {})
    fig, axes = plt.subplots(max(1, len(tasks)), 3, figsize=(16.5, 4.4 * max(1, len(tasks))), squeeze=False)
    for row, (name, r) in enumerate(tasks.items()):
        taps, fr, pr = r["taps"], [str(float(f)) for f in r["label_fractions"]], r["probe"]
        metric = r.get("metric", "top-1")
        sc = r.get("score", "test")
        ylabel = f"{name}: {sc} {metric} (%)"
        xs = list(range(len(taps)))
        families = pr.get("families", ["linear", "knn"])
        probe_label = ("Dense linear probe (weight decay chosen on val)" if r.get("kind") == "segmentation" else
                       "Linear probes per tap (weight decay chosen on val)")
        for col, family, label in ((0, "linear", probe_label), (1, "knn", "kNN per tap")):
            ax = axes[row][col]
            if family not in families:
                ax.axis("off")
                continue
            series = {i: [(x, pr[family][i][t][sc]) for x, t in zip(xs, taps)] for i in _rows(r["inits"])}
            gaps = [(x, pr[f"{family}_gap"][t]["gap_closed"]) for x, t in zip(xs, taps)] if f"{family}_gap" in pr else []
            _accuracy_panel(ax, series, gaps, ylabel, f"{name} · {label}")
            ax.set_xticks(xs, taps, rotation=30, fontsize=8)
        ax = axes[row][2]
        if not fr:
            ax.axis("off")
            continue
        fx = [float(f) for f in fr]
        series = {i: [(x, r["finetune"][f][i][sc]) for x, f in zip(fx, fr)] for i in _rows(r["inits"])}
        gaps = [(x, r["finetune"][f]["gap"]["gap_closed"]) for x, f in zip(fx, fr) if "gap" in r["finetune"][f]]
        _accuracy_panel(ax, series, gaps, ylabel, f"{name} · fine-tuning (lr, variant, checkpoint chosen on val)")
        if len(fx) > 1:
            ax.set_xscale("log")
        ax.set_xticks(fx, [f"{100 * f:g}%" for f in fx])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the fractions run are labelled
        ax.set_xlabel("labels used")
    if title:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(title, 190)) + "\nerror bars: 95% CI over pretraining seeds; orange: gap closed [95% Fieller CI]", fontsize=9,
                     color="tab:red" if res.get("synthetic") else "black")
    fig.tight_layout()
    from cnnlab.io.images import write_figure

    return write_figure(path, fig)


def write_report(res: dict, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """``gap_results.json``, ``gap_table.md`` and ``gap.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "gap_results.json", "markdown": out_dir / "gap_table.md", "plot": out_dir / "gap.png"}
    write_json(paths["json"], res)
    write_text(paths["markdown"], (f"## {title}\n\n" if title else "") + markdown_tables(res))
    plot(res, paths["plot"], title)
    return paths


def wandb_summary(res: dict) -> dict[str, float | None]:
    """The gap closed of every task, probe tap and label fraction, keyed for a W&B run summary. A validation-only
    run's gaps are validation numbers: they get their own key (``gap_closed_val/...``), never compared as results."""
    out = {}
    for name, r in res.get("tasks", {}).items():
        key = "gap_closed_val" if r.get("score") == "val" else "gap_closed"
        for family in ("linear", "knn"):
            for t, block in (r["probe"].get(f"{family}_gap") or {}).items():
                out[f"{key}/{name}/{family}/{t}"] = block["gap_closed"]["mean"]
        for f, entry in r["finetune"].items():
            if "gap" in entry:
                out[f"{key}/{name}/finetune/{f}"] = entry["gap"]["gap_closed"]["mean"]
    return out


def log_to_wandb(res: dict, paths: dict[str, Path], out_dir: str | Path, name: str, mode: str = "auto",
                 config: dict | None = None, tags: Sequence[str] = (), group: str | None = None) -> str | None:
    """The same tables and plot as one W&B run (offline without credentials) in ``group`` (the arms' group, passed
    here rather than through ``$WANDB_RUN_GROUP``, which would outlive the run in the caller's process); returns the
    run's directory."""
    import wandb

    from cnnlab.tracking import resolve_wandb_mode

    mode = resolve_wandb_mode(mode)
    if mode == "disabled":
        return None
    try:
        # the package list once for the whole run (its arms skip theirs, launch.tracking_env); said here, because
        # W&B keeps the settings it read from the environment at its first run in a process, an arm's in-process
        run = wandb.init(project="cnnlab", name=name, job_type="gap", dir=str(out_dir), mode=mode, config=config or {},
                         tags=list(tags), group=group, reinit="finish_previous",
                         settings=wandb.Settings(x_save_requirements=True))
    except Exception as err:  # noqa: BLE001 - network/auth errors: the files on disk are the result
        log.warning("W&B failed (%s): the report files are on disk anyway", err)
        return None
    run.log({"gap/plot": wandb.Image(str(paths["plot"])), "gap/markdown": wandb.Html("<pre>" + paths["markdown"].read_text() + "</pre>")})
    run.summary.update(wandb_summary(res))
    run_dir = run.dir
    run.finish()
    return str(Path(run_dir).parent)
