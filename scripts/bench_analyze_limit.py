"""Per-section wall and CPU time of ``cnnlab-analyze limit=100``: the real command, as a newcomer runs it.

    CNNLAB_DATA=../shared/data OMP_NUM_THREADS=1 python scripts/bench_analyze_limit.py
    python scripts/bench_analyze_limit.py --limit 8 network.arch=resnet18 network.image_size=32 data=synthetic ...  # smoke

With no overrides the command analyses what ``cnnlab-analyze`` with no arguments does: every analysis of the reference
CIFAR-10 classifier (``cnnlab-train experiment=reference_cifar`` builds it; see cnnlab/reference.py), on a
class-balanced ``--limit``-image part of the test split. Further arguments are passed to the command as overrides.
Each section's seconds are the ones the run writes to ``analysis.json`` (wall clock and the process's CPU time, all
threads); the machine load (``uptime``) is read before and after. Prints a markdown table and writes it with the JSON
(``--out``, default ``outputs/bench/analyze_limit/``; the run itself goes to ``<out>/run``, replaced each time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cnnlab.analysis.runners import ORDER
from cnnlab.io.files import write_json, write_text


def uptime() -> str:
    """``uptime``'s line (load averages over 1, 5, 15 minutes), or /proc/loadavg where there is no ``uptime``."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(Path("/proc/loadavg").read_text().split()[:3])


def table(result: dict) -> str:
    rows = ["| section | wall clock | CPU time (all threads) |", "|---|---|---|"]
    for name, s in result["sections"].items():
        rows.append(f"| {name} | {s['seconds']:,.1f} s | {s.get('cpu_seconds', float('nan')):,.1f} s |")
    rows.append(f"| **whole command** (start-up, data, report included) | **{result['wall_seconds']:,.1f} s** | "
                f"{result['cpu_seconds']:,.1f} s |")
    return "\n".join([
        f"`cnnlab-analyze limit={result['limit']}{' ' + ' '.join(result['overrides']) if result['overrides'] else ''}`, "
        f"{result['date']}, {result['cpus']} CPUs, OMP_NUM_THREADS={result['omp_num_threads']}",
        f"load before: {result['uptime_before']}", f"load after: {result['uptime_after']}", "", *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=100, help="images of the split every section reads (default 100)")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/analyze_limit"))
    args, overrides = ap.parse_known_args()
    run_dir = args.out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the benchmark's own previous run: a run dir belongs to one run
    args.out.mkdir(parents=True, exist_ok=True)
    before = uptime()
    t0, cpu0 = time.perf_counter(), os.times()
    proc = subprocess.run([sys.executable, "-m", "cnnlab.analyze", f"limit={args.limit}", f"hydra.run.dir={run_dir}", *overrides])
    wall, cpu1 = time.perf_counter() - t0, os.times()
    if proc.returncode != 0:
        raise SystemExit(f"error: cnnlab-analyze exited {proc.returncode}: see its output above")
    sections = json.loads((run_dir / "analysis.json").read_text())["analyses"]
    result = {
        "limit": args.limit, "overrides": overrides, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"), "uptime_before": before, "uptime_after": uptime(),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round((cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system), 1),
        "sections": {name: {k: sections[name][k] for k in ("seconds", "cpu_seconds") if k in sections[name]}
                     for name in ORDER if name in sections},  # the report's order (the JSON's keys are sorted)
        "run_dir": str(run_dir),
    }
    write_json(args.out / "bench_analyze_limit.json", result)
    text = table(result)
    write_text(args.out / "bench_analyze_limit.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
