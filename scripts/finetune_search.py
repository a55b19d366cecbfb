"""Which fine-tune grid should a gap budget search? The candidates of a grid, on validation only.

Runs a gap config's trunk arms and fine-tune candidates (each kept at its best-on-val checkpoint) and never its
test arms or probes, then prints every candidate's validation accuracy and chosen step per init. Overrides are
cnnlab-gap's; a run dir that already holds the trunk arms of the same config (copied from a gap run) reuses them.

    PYTHONPATH=src CNNLAB_DATA=../shared/data OMP_NUM_THREADS=1 python scripts/finetune_search.py \\
        --run-dir /tmp/ft_search budget=standard seeds=[0] label_subsets=[0] label_fractions=[0.1] \\
        'finetune.lrs=[0.003,0.01,0.03,0.1,0.2]' finetune.max_steps=600 finetune.evals=6 \\
        '+finetune.variants.lpft={head_only_steps:100}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("overrides", nargs="*", help="cnnlab-gap overrides")
    args = ap.parse_args()

    from rich.console import Console

    from cnnlab.gap.configs import compose_gap
    from cnnlab.gap.runner import Plan, Runner, validate
    from cnnlab.io.files import write_json

    cfg, choices = compose_gap(args.overrides)
    validate(cfg)
    runner = Runner(cfg, args.run_dir, choices)
    full = runner.plan()
    arms = [a for a in full.arms if a.kind in ("trunk", "finetune")]  # no probe, no test arm: the test split is never read
    plan = Plan(arms, {a.name: full.status[a.name] for a in arms})
    console = Console()
    runner.show_plan(plan, console)
    runner.execute(plan, console)

    rows: dict = {}
    for a in arms:
        if a.kind == "finetune":
            c = json.loads((a.dir(args.run_dir) / "candidate.json").read_text())
            rows.setdefault(a.init, {})[f"lr {a.lr:g} {a.variant}"] = {"val": c["val"], "step": c["step"], "max_steps": c.get("max_steps")}
    assert not any(p.name.startswith("probe_") or (p / "choice.json").exists() for p in (args.run_dir / "arms").iterdir()), \
        "the search read the test split"
    cands = list(next(iter(rows.values()), {}))
    lines = ["| init | " + " | ".join(cands) + " |", "|---" * (len(cands) + 1) + "|"]
    for init, r in rows.items():
        best = max(r, key=lambda k: r[k]["val"])
        lines.append(f"| {init} | " + " | ".join(
            ("**" if k == best else "") + f"{100 * r[k]['val']:.1f} @{r[k]['step']}" + ("**" if k == best else "") for k in cands) + " |")
    table = "\n".join(lines)
    console.print(f"validation top-1 (%) @ best step, {len(arms)} arms; the best per init in bold\n" + table, markup=False)
    write_json(args.run_dir / "finetune_search.json", {"overrides": args.overrides, "val": rows, "table": table})


if __name__ == "__main__":
    main()
