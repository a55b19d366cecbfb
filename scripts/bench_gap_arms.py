"""Per-arm overhead of cnnlab-gap: what a fine-tune arm costs besides its training steps.

On real CIFAR-10 with the quick budget's settings, one fine-tune candidate (random init, 10% labels) is run
side by side in one process:

- in-process, ``S`` and ``2S`` steps: per-step compute ``T(2S) - T(S)``, fixed overhead ``2 T(S) - T(2S)``
  (data module set-up, trainer construction, validations, the best checkpoint);
- as a ``cnnlab-train`` subprocess from the arm's written config (what every arm paid before): + process start-up;
- in-process with an offline W&B logger and the default callbacks (last.ckpt, trunk export, lr monitor);
- the test arm: the chosen checkpoint scored once on the 10,000 test images.

    PYTHONPATH=src CNNLAB_DATA=../shared/data OMP_NUM_THREADS=1 python scripts/bench_gap_arms.py --steps 50 --out bench.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch
    from hydra import compose, initialize_config_dir

    from cnnlab.config import CONF_DIR
    from cnnlab.gap.configs import ArmConfigs, write_config
    from cnnlab.gap.runner import Runner, _arm_output
    from cnnlab.io.files import write_json
    from cnnlab.train import run

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    root = Path(tempfile.mkdtemp(prefix="bench_gap_"))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("gap", overrides=["budget=quick", f"paths.output_dir={root}"])
    runner = Runner(cfg, root, {"data": "cifar10", "backbone": "vgg_cifar"})
    plan = runner.plan()
    trunk_arm = runner.by_name["random_seed0"]
    runner.run_arm(trunk_arm, runner.key(trunk_arm))
    trunk = root / "arms" / "random_seed0" / "trunk.pt"
    configs = ArmConfigs(cfg, runner.choices)
    n = runner.n_labelled(0.1)
    timings: dict[str, float] = {}

    def candidate(name: str, steps: int, **extra):
        d = root / name
        d.mkdir()
        c = configs.finetune("random", 0, 0, 0.1, 0.05, trunk, n, name, d)
        every = max(1, steps // 2)
        c = OmegaConf.merge(c, {"trainer": {"max_steps": every * 2, "val_check_interval": every}, "model": {"scheduler": {"T_max": every * 2}}}, extra)
        write_config(c, d)
        return c, d

    def in_process(name: str, steps: int, **extra) -> Path:
        c, d = candidate(name, steps, **extra)
        t0 = time.perf_counter()
        with _arm_output(d / "arm.log"):
            run(c)
        timings[name] = time.perf_counter() - t0
        return d

    s = args.steps
    d1 = in_process("in_process_S", s)
    in_process("in_process_2S", 2 * s)
    _, d = candidate("subprocess_S", s)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnlab.train", "--config-path", str(d), "--config-name", "config", f"hydra.run.dir={d}"],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    timings["subprocess_S"] = time.perf_counter() - t0
    os.environ["WANDB_MODE"] = "offline"
    defaults = OmegaConf.load(Path(CONF_DIR) / "callbacks" / "default.yaml")
    defaults.progress_bar = None
    defaults.model_summary = None
    in_process("in_process_S_wandb_default_callbacks", s, logger=OmegaConf.load(Path(CONF_DIR) / "logger" / "wandb.yaml"),
               callbacks=defaults)
    best = sorted((d1 / "checkpoints").glob("best_*.ckpt"))[-1]
    test_dir = root / "test_arm"
    test_dir.mkdir()
    t0 = time.perf_counter()
    with _arm_output(test_dir / "arm.log"):
        run(ArmConfigs.test_of(OmegaConf.load(d1 / "config.yaml"), best, "test_arm", test_dir))
    timings["test_arm"] = time.perf_counter() - t0
    per_step = (timings["in_process_2S"] - timings["in_process_S"]) / s
    summary = {
        "steps_S": s, "batch_size": int(cfg.data.batch_size), "threads": torch.get_num_threads(), "seconds": timings,
        "per_step_s": per_step, "img_per_s": cfg.data.batch_size / per_step if per_step > 0 else None,
        "in_process_overhead_s": 2 * timings["in_process_S"] - timings["in_process_2S"],
        "subprocess_extra_s": timings["subprocess_S"] - timings["in_process_S"],
        "wandb_and_default_callbacks_extra_s": timings["in_process_S_wandb_default_callbacks"] - timings["in_process_S"],
        "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "planned_arms": len(plan.arms),
    }
    for k, v in summary.items():
        print(f"{k}: {v}")
    if args.out:
        write_json(args.out, summary)


if __name__ == "__main__":
    main()
