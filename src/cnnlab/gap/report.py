"""Collecting the arms' numbers into the gap results: JSON, markdown tables, a plot, and W&B."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from cnnlab.gap.arithmetic import format_acc, format_gap, gap_summary, mean_std

log = logging.getLogger(__name__)

ROW_ORDER = ("supervised", "random", "colorization")  # the published tables' order


def summarize(probe: dict, finetune: dict, inits: Sequence[str], seeds: Sequence[int], taps: Sequence[str],
              fractions: Sequence[float]) -> dict:
    """Mean/spread per init and the gap closed, from raw per-seed accuracies.

    ``probe[init][seed][tap]`` and ``finetune[init][seed][fraction]`` are top-1 accuracies in [0, 1]
    (missing entries are allowed: they count as undefined).
    """
    def acc(table, init, seed, k):
        return table.get(init, {}).get(seed, {}).get(k)

    out: dict = {"inits": list(inits), "seeds": list(seeds), "taps": list(taps), "label_fractions": list(fractions)}
    out["probe"] = {i: {t: mean_std(acc(probe, i, s, t) for s in seeds) for t in taps} for i in inits}
    # each init at its own best tap (by mean over seeds), as "the best layer" in the published tables
    best = {}
    for i in inits:
        scored = [(out["probe"][i][t]["mean"], t) for t in taps if out["probe"][i][t]["mean"] is not None]
        if scored:
            tap = max(scored)[1]
            best[i] = {"tap": tap, **out["probe"][i][tap]}
    out["probe_best"] = best
    out["finetune"] = {i: {str(f): mean_std(acc(finetune, i, s, f) for s in seeds) for f in fractions} for i in inits}
    if all(i in inits for i in ("random", "colorization", "supervised")):
        def per_seed(table, init, k):
            return [acc(table, init, s, k) for s in seeds]

        out["probe_gap"] = {t: gap_summary(per_seed(probe, "colorization", t), per_seed(probe, "random", t),
                                           per_seed(probe, "supervised", t)) for t in taps}
        if len(best) == 3:
            out["probe_gap"]["best"] = gap_summary(*[[acc(probe, i, s, best[i]["tap"]) for s in seeds]
                                                     for i in ("colorization", "random", "supervised")])
        out["finetune_gap"] = {str(f): gap_summary(per_seed(finetune, "colorization", f), per_seed(finetune, "random", f),
                                                   per_seed(finetune, "supervised", f)) for f in fractions}
    return out


def _rows(inits: Sequence[str]) -> list[str]:
    return [i for i in ROW_ORDER if i in inits] + [i for i in inits if i not in ROW_ORDER]


def markdown_tables(res: dict) -> str:
    """The per-tap probe table (shaped like the published per-layer tables) and the label-fraction table."""
    taps, n = res["taps"], len(res["seeds"])
    spread = f"mean ± std over {n} seeds" if n > 1 else "1 seed"
    lines = [f"Linear probes, top-1 % on the test split ({spread}); gap closed = (colorization - random) / (supervised - random)", "",
             "| init | " + " | ".join(taps) + " | best tap |", "|---" * (len(taps) + 2) + "|"]
    for i in _rows(res["inits"]):
        b = res["probe_best"].get(i)
        best = f"{format_acc(b)} ({b['tap']})" if b else "–"
        lines.append(f"| {i} | " + " | ".join(format_acc(res["probe"][i][t]) for t in taps) + f" | {best} |")
    if "probe_gap" in res:
        g = res["probe_gap"]
        lines.append("| gap closed | " + " | ".join(format_gap(g[t]) for t in taps) + f" | {format_gap(g['best']) if 'best' in g else '–'} |")
    fr = res["label_fractions"]
    if fr:
        lines += ["", f"Fine-tuning the whole network on a fraction of the labels, top-1 % on the full test split ({spread})", "",
                  "| init | " + " | ".join(f"{100 * f:g}% labels" for f in fr) + " |", "|---" * (len(fr) + 1) + "|"]
        for i in _rows(res["inits"]):
            lines.append(f"| {i} | " + " | ".join(format_acc(res["finetune"][i][str(f)]) for f in fr) + " |")
        if "finetune_gap" in res:
            lines.append("| gap closed | " + " | ".join(format_gap(res["finetune_gap"][str(f)]) for f in fr) + " |")
    return "\n".join(lines) + "\n"


COLORS = {"supervised": "tab:blue", "random": "tab:gray", "colorization": "tab:orange"}


def _accuracy_panel(ax, series: dict, gaps: list, ylabel: str, title: str):
    """One plot panel: per init, (x, mean, std) points as error bars in %; gap-closed labels above the highest bar."""
    top = 0.0
    for init, rows in series.items():
        pts = [(x, 100 * m, 100 * (sd or 0.0)) for x, m, sd in rows if m is not None]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        label=init, color=COLORS.get(init))
            top = max(top, max(p[1] + p[2] for p in pts))
    for x, gap in gaps:
        ax.annotate(format_gap(gap).split(" (")[0], (x, top), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=7, color="tab:orange")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, max(10.0, top * 1.15))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def plot(res: dict, path: str | Path, title: str = "") -> Path:
    """Accuracy per tap for each init (mean ± std), gap closed written above each tap; fine-tuning beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taps, fr = res["taps"], res["label_fractions"]
    ncols = 2 if fr else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.2), squeeze=False)
    xs = list(range(len(taps)))
    probe = {i: [(x, res["probe"][i][t]["mean"], res["probe"][i][t]["std"]) for x, t in zip(xs, taps)] for i in _rows(res["inits"])}
    probe_gaps = [(x, res["probe_gap"][t]) for x, t in zip(xs, taps)] if "probe_gap" in res else []
    ax = _accuracy_panel(axes[0][0], probe, probe_gaps, "linear probe top-1 (%)", "Linear probes per tap (orange: gap closed)")
    ax.set_xticks(xs, taps, rotation=30, fontsize=8)
    if fr:
        tune = {i: [(f, res["finetune"][i][str(f)]["mean"], res["finetune"][i][str(f)]["std"]) for f in fr] for i in _rows(res["inits"])}
        tune_gaps = [(f, res["finetune_gap"][str(f)]) for f in fr] if "finetune_gap" in res else []
        ax = _accuracy_panel(axes[0][1], tune, tune_gaps, "fine-tuned top-1 (%)", "Fine-tuning on a fraction of the labels")
        if len(fr) > 1:
            ax.set_xscale("log")
        ax.set_xticks(fr, [f"{100 * f:g}%" for f in fr])
        ax.set_xlabel("labels used")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(res: dict, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """``gap_results.json``, ``gap_table.md`` and ``gap.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "gap_results.json", "markdown": out_dir / "gap_table.md", "plot": out_dir / "gap.png"}
    paths["json"].write_text(json.dumps(res, indent=2, sort_keys=False, default=str))
    paths["markdown"].write_text((f"## {title}\n\n" if title else "") + markdown_tables(res))
    plot(res, paths["plot"], title)
    return paths


def log_to_wandb(res: dict, paths: dict[str, Path], out_dir: str | Path, name: str, mode: str = "auto",
                 config: dict | None = None, tags: Sequence[str] = ()) -> str | None:
    """The same tables and plot as one W&B run (offline without credentials); returns the run's directory."""
    import wandb

    from cnnlab.tracking import resolve_wandb_mode

    mode = resolve_wandb_mode(mode)
    if mode == "disabled":
        return None
    try:
        run = wandb.init(project="cnnlab", name=name, job_type="gap", dir=str(out_dir), mode=mode, config=config or {},
                         tags=list(tags), reinit="finish_previous")
    except Exception as err:  # noqa: BLE001 - network/auth errors: the files on disk are the result
        log.warning("W&B failed (%s): the report files are on disk anyway", err)
        return None
    taps = res["taps"]
    table = wandb.Table(columns=["init", *taps, "best_tap", "best_acc"])
    for i in _rows(res["inits"]):
        b = res["probe_best"].get(i, {})
        table.add_data(i, *[res["probe"][i][t]["mean"] for t in taps], b.get("tap"), b.get("mean"))
    if "probe_gap" in res:
        table.add_data("gap_closed", *[res["probe_gap"][t]["mean"] for t in taps], "best", res["probe_gap"].get("best", {}).get("mean"))
    fr = res["label_fractions"]
    ft = wandb.Table(columns=["init", *[f"labels_{f:g}" for f in fr]])
    for i in _rows(res["inits"]):
        ft.add_data(i, *[res["finetune"][i][str(f)]["mean"] for f in fr])
    if "finetune_gap" in res:
        ft.add_data("gap_closed", *[res["finetune_gap"][str(f)]["mean"] for f in fr])
    run.log({"gap/probe_table": table, "gap/finetune_table": ft, "gap/plot": wandb.Image(str(paths["plot"])),
             "gap/markdown": wandb.Html("<pre>" + paths["markdown"].read_text() + "</pre>")})
    for k, v in (res.get("probe_gap") or {}).items():
        run.summary[f"gap_closed/probe/{k}"] = v["mean"]
    for k, v in (res.get("finetune_gap") or {}).items():
        run.summary[f"gap_closed/finetune/{k}"] = v["mean"]
    run_dir = run.dir
    run.finish()
    return str(Path(run_dir).parent)
