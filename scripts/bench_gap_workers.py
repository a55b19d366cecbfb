"""How cnnlab-gap's arms should run on a CPU shared with other work: launchers and torch threads side by side.

One gap plan (by default a slice of the quick budget: a random and a colorization trunk on 2,000 CIFAR-10
images, their probes, one fine-tune search: 8 arms) is run back to back, each time in a fresh run dir, as

- ``local``: every arm in one process with torch's default threads (one per core), the former default;
- ``local threads=1``: the same with one thread;
- ``local passive``: torch's default threads, idle ones sleeping instead of spinning (``OMP_WAIT_POLICY=PASSIVE``);
- ``pool``: two worker processes with one thread each (``launcher=pool launcher.workers=2 threads=1``);

first with no neighbour of ours, then with ``--neighbours`` CPU-bound processes (busy loops) running beside it.
Each row: wall seconds, the ratio to the same launcher without neighbours, the share of the arms' time spent
inside training batches (``cnnlab.callbacks.StageClock``), and ``uptime``'s load before the run.

Then the per-arm overhead of a worker process against the in-process run: interpreter start and imports
(torch, Lightning, Hydra, cnnlab), rebuilding the Runner from the run's config and planning it, loading the
data cache, loading a trunk; a pool worker pays the first three once, a submitit job once per arm.

    PYTHONPATH=src CNNLAB_DATA=../shared/data python scripts/bench_gap_workers.py --out bench_workers.json
    PYTHONPATH=src python scripts/bench_gap_workers.py --budget smoke --plan "" --out bench_smoke.json
    PYTHONPATH=src python scripts/bench_gap_workers.py --steps 20 --out bench_steps.json   # thread settings only
    CNNLAB_DATA=../shared/data python scripts/bench_gap_workers.py --plan "" --overhead-of outputs/gap/quick_transfer
        # only the per-arm overhead, against a finished run of that budget (its trunks and data cache)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: launcher name -> (overrides, environment)
LAUNCHERS = {"local": (["launcher=local"], {}), "local threads=1": (["launcher=local", "threads=1"], {}),
             "local passive": (["launcher=local"], {"OMP_WAIT_POLICY": "PASSIVE"}),
             "pool 2x1": (["launcher=pool", "launcher.workers=2", "threads=1"], {})}
PLAN = ("inits=[random,colorization] seeds=[0] label_subsets=[0] data.train_limit=2000 random_init.calibrate_batches=4 "
        "finetune.lrs=[0.03] report.wandb=false")

CHILD = r"""
import json, sys, time
t0 = time.time()
import torch, pytorch_lightning, hydra  # noqa: F401
from cnnlab.gap.runner import Runner
import cnnlab.train  # noqa: F401
t1 = time.time()
cfg_yaml, root, choices, trunk = json.loads(sys.argv[1])
runner = Runner.for_worker(cfg_yaml, root, choices)
t2 = time.time()
dm = runner.datamodule(None); dm.setup()  # the pretraining pool
t3 = time.time()
from cnnlab.backbones import load_trunk
load_trunk(trunk)
t4 = time.time()
print(json.dumps({"imports": t1 - t0, "runner_and_plan": t2 - t1, "data_cache": t3 - t2, "trunk_load": t4 - t3}))
"""


STEPS = r"""
import json, os, sys, time
import torch
from cnnlab.backbones.cifar import VGGCifar
threads, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
net = VGGCifar(in_channels=1, width=16)
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x = torch.rand(64, 1, 32, 32)
def step():
    opt.zero_grad()
    out = net(x)
    (out if torch.is_tensor(out) else next(iter(out.values()))).float().square().mean().backward()
    opt.step()
for _ in range(2):
    step()
t0 = time.perf_counter(); c0 = time.process_time()
for _ in range(steps):
    step()
print(json.dumps({"s_per_step": (time.perf_counter() - t0) / steps, "cpu_s_per_step": (time.process_time() - c0) / steps}))
"""


def steps_side_by_side(steps: int, neighbours: int) -> dict:
    """Training steps of the quick budget's network (width-16 VGG-8, batch 64, 32 px, one channel), back to back:
    one process with 2 threads (torch's default here), the same with idle threads sleeping (OMP_WAIT_POLICY=PASSIVE),
    one process with 1 thread, and two 1-thread processes at once (a pool of two): throughput in steps/s."""
    def child(threads: int, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", STEPS, str(threads), str(steps)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})})

    def result(p: subprocess.Popen) -> dict:
        return json.loads(p.communicate()[0].strip().splitlines()[-1])

    out = {"load_before": load(), "neighbours": neighbours}
    procs = [busy() for _ in range(neighbours)]
    try:
        for name, threads, env in (("2 threads", 2, None), ("2 threads passive", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
                                   ("1 thread", 1, None)):
            r = result(child(threads, env))
            out[name] = {**r, "steps_per_s": 1 / r["s_per_step"]}
        pair = [child(1), child(1)]
        rs = [result(p) for p in pair]
        out["two 1-thread processes"] = {"s_per_step": [r["s_per_step"] for r in rs], "steps_per_s": sum(1 / r["s_per_step"] for r in rs)}
    finally:
        for p in procs:
            p.kill()
    out["load_after"] = load()
    return out


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_gap(args, extra: list[str], out: Path, env_extra: dict) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env_extra}
    cmd = [sys.executable, "-m", "cnnlab.gap", f"budget={args.budget}", *args.plan.split(), *extra, f"hydra.run.dir={out}"]
    if args.data_dir:
        cmd.append(f"paths.data_dir={args.data_dir}")
    before = load()
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    t = json.loads((out / "gap_results.json").read_text())["timing"]
    return {"wall_s": round(wall, 1), "load_before": before, "load_after": load(),
            "train_share_of_arms": t.get("train_share_of_arms"), "arm_seconds": t.get("arm_seconds")}


def overhead(args, run_dir: Path) -> dict:
    """A worker's start-up against the same steps in a process that has done them already."""
    from cnnlab.gap.configs import compose_gap
    from cnnlab.gap.launch import portable_config
    from cnnlab.gap.runner import Runner

    overrides = [f"budget={args.budget}", *args.plan.split(), f"paths.output_dir={run_dir}"]
    if args.data_dir:
        overrides.append(f"paths.data_dir={args.data_dir}")
    cfg, choices = compose_gap(overrides)
    trunk = next(run_dir.glob("arms/*/trunk.pt"))
    payload = json.dumps([portable_config(cfg), str(run_dir), choices, str(trunk)])
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True, text=True, env=os.environ)
    total = time.time() - t0
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    child = json.loads(out.stdout.strip().splitlines()[-1])
    child["process_total"] = total
    # in a warm process (what the local launcher and a pool worker's later arms pay): the same steps again
    from cnnlab.backbones import load_trunk

    Runner.for_worker(portable_config(cfg), str(run_dir), choices)  # first build: warms the caches
    t1 = time.time()
    runner = Runner.for_worker(portable_config(cfg), str(run_dir), choices)
    runner.plan()
    t2 = time.time()
    dm = runner.datamodule(None)
    dm.setup()
    t3 = time.time()
    load_trunk(trunk)
    t4 = time.time()
    warm = {"runner_and_plan": t2 - t1, "data_cache": t3 - t2, "trunk_load": t4 - t3}
    return {"new_process": {k: round(v, 2) for k, v in child.items()}, "warm_process": {k: round(v, 2) for k, v in warm.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="quick")
    ap.add_argument("--plan", default=PLAN, help="overrides that pick the slice of the budget to run")
    ap.add_argument("--data-dir", default=None, help="paths.data_dir (the data cache)")
    ap.add_argument("--neighbours", type=int, default=2)
    ap.add_argument("--launchers", default=",".join(LAUNCHERS))
    ap.add_argument("--out", default="bench_gap_workers.json")
    ap.add_argument("--steps", type=int, default=0,
                    help="only time this many training steps per thread setting (side by side), no gap runs")
    ap.add_argument("--overhead-of", default=None, metavar="RUN_DIR",
                    help="only the per-arm overhead of a worker, against this finished gap run of --budget/--plan")
    args = ap.parse_args()
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
                 "command": " ".join(sys.argv), "load_before": os.getloadavg()}
    if args.overhead_of or args.steps:  # one measurement alone, no gap runs
        if args.overhead_of:
            res["overhead"] = overhead(args, Path(args.overhead_of).resolve())
        else:
            res["steps"] = [steps_side_by_side(args.steps, n) for n in (0, args.neighbours)]
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return
    root = Path(tempfile.mkdtemp(prefix="bench_gap_workers_"))
    res["runs"] = {}
    try:
        for n in (0, args.neighbours):
            procs = [busy() for _ in range(n)]
            try:
                for name in args.launchers.split(","):
                    out = root / f"{name.replace(' ', '_').replace('=', '')}_{n}"
                    r = run_gap(args, LAUNCHERS[name][0], out, LAUNCHERS[name][1])
                    res["runs"].setdefault(name, {})[f"neighbours={n}"] = r
                    print(name, n, r, flush=True)
                    Path(args.out).write_text(json.dumps(res, indent=1))
            finally:
                for p in procs:
                    p.kill()
        for by in res["runs"].values():
            idle, busy_ = by.get("neighbours=0"), by.get(f"neighbours={args.neighbours}")
            if idle and busy_:
                by["slowdown_with_neighbours"] = round(busy_["wall_s"] / idle["wall_s"], 2)
        res["overhead"] = overhead(args, next(root.glob("local_0")))
        print(json.dumps(res["overhead"]), flush=True)
    finally:
        Path(args.out).write_text(json.dumps(res, indent=1))
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
