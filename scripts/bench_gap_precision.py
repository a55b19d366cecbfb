"""Training speed of the gap's arms under float32 and under bf16 mixed precision with channels-last weights.

Every training arm kind of the standard budget (colorization and supervised pretraining on Tiny-ImageNet-200,
fine-tunes on CIFAR-10 and on CamVid) is composed by the gap's own ``ArmConfigs`` and run in this process for
``--steps`` steps under each mode in turn (A B C A B C ... so machine noise hits every mode alike). The rate is the
time inside training batches (``cnnlab.callbacks.StageClock``) per step, at one thread, as each gap worker runs.

Then the numbers: one fine-tune per mode and task at the standard budget's length (random init, 10% of the CIFAR-10
labels at rate 0.03 / all CamVid frames at 1e-3) and one colorization pretraining of ``--quality-steps``, each mode
from the same trunk and seed, with the validation score each reached.

    CNNLAB_DATA=../shared/data OMP_NUM_THREADS=1 python scripts/bench_gap_precision.py --steps 60 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

NHWC = {"_target_": "cnnlab.callbacks.ChannelsLast"}
#: each mode sets both switches, whatever the budget chose
MODES = {
    "fp32": {"trainer": {"precision": "32-true"}, "callbacks": {"channels_last": None}},
    "channels_last": {"trainer": {"precision": "32-true"}, "callbacks": {"channels_last": NHWC}},
    "bf16": {"trainer": {"precision": "bf16-mixed"}, "callbacks": {"channels_last": None}},
    "bf16_channels_last": {"trainer": {"precision": "bf16-mixed"}, "callbacks": {"channels_last": NHWC}},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quality", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--quality-modes", nargs="+", default=["fp32", "bf16_channels_last"])
    ap.add_argument("--quality-steps", type=int, default=1000, help="colorization pretraining steps of the quality check")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch
    from hydra import compose, initialize_config_dir

    from cnnlab.config import CONF_DIR
    from cnnlab.gap.configs import write_config
    from cnnlab.gap.runner import Runner, _arm_output
    from cnnlab.io.files import write_json
    from cnnlab.train import run

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    root = Path(tempfile.mkdtemp(prefix="bench_gap_precision_"))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("gap", overrides=["budget=standard", f"paths.output_dir={root}", "arm.groups.logger=none"])
    runner = Runner(cfg, root, {})
    runner.plan()
    trunk_arm = runner.by_name["random_seed0"]
    runner.run_arm(trunk_arm, runner.key(trunk_arm))
    trunk = root / "arms" / "random_seed0" / "trunk.pt"
    conf = runner.configs

    def candidate(kind: str, name: str, d: Path):
        if kind in ("colorization", "supervised"):
            return conf.pretrain(kind, 0, name, d)
        task, fraction, lr = {"finetune_cls": ("cls", 0.1, 0.03), "finetune_seg": ("seg", 1.0, 1e-3)}[kind]
        return conf.finetune(task, "random", 0, 0, fraction, lr, trunk, runner.n_labelled(task, fraction), name, d)

    def arm(kind: str, mode: str, tag: str, steps: int | None) -> dict:
        d = root / f"{kind}_{mode}_{tag}"
        d.mkdir()
        c = OmegaConf.merge(candidate(kind, d.name, d), MODES[mode])
        if steps is not None:  # speed: no validation inside the timed steps, one at the end
            c = OmegaConf.merge(c, {"trainer": {"max_steps": steps, "val_check_interval": steps}})
        write_config(c, d)
        t0 = time.perf_counter()
        with _arm_output(d / "arm.log"):
            run(c)
        clock = json.loads((d / "clock.json").read_text())
        hist = json.loads((d / "val_history.json").read_text()) if (d / "val_history.json").is_file() else []
        return {"seconds": time.perf_counter() - t0, "ms_per_step": 1000 * clock["train_batches"] / max(1, clock["train_batch_count"]),
                "steps": clock["train_batch_count"], "last_val": hist[-1] if hist else None}

    kinds = ["colorization", "supervised", "finetune_cls", "finetune_seg"]
    for kind in kinds:  # warm caches (datasets, kernels) outside the timed repeats
        arm(kind, "fp32", "warm", 5)
    speed: dict[str, dict[str, list[float]]] = {k: {m: [] for m in MODES} for k in kinds}
    for r in range(args.repeats):
        for kind in kinds:
            for mode in MODES:
                speed[kind][mode].append(arm(kind, mode, f"r{r}", args.steps)["ms_per_step"])
                print(f"repeat {r} {kind:13s} {mode:19s} {speed[kind][mode][-1]:7.1f} ms/step", flush=True)
    table = {k: {m: statistics.median(v) for m, v in by.items()} for k, by in speed.items()}
    quality: dict[str, dict] = {}
    if args.quality:
        for kind in ("finetune_cls", "finetune_seg", "colorization"):
            for mode in args.quality_modes:
                steps = args.quality_steps if kind == "colorization" else None
                quality.setdefault(kind, {})[mode] = arm(kind, mode, "quality", steps)
                print(f"quality {kind:13s} {mode:19s} {quality[kind][mode]}", flush=True)
    summary = {"steps": args.steps, "repeats": args.repeats, "threads": torch.get_num_threads(), "ms_per_step": table,
               "speedup_vs_fp32": {k: {m: row["fp32"] / v for m, v in row.items()} for k, row in table.items()},
               "quality": quality, "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps({k: summary[k] for k in ("ms_per_step", "speedup_vs_fp32", "load")}, indent=1))
    if args.out:
        write_json(args.out, summary)


if __name__ == "__main__":
    main()
