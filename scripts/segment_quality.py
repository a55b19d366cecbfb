"""CamVid quality at a CPU working size: random-init hypercolumn segmenters over seeds, a dense linear probe of a
random trunk, and the majority-class baseline, all scored on the full-resolution test label maps.

    python scripts/segment_quality.py --seeds 0 1 2 --size 60 80 --epochs 6 --out outputs/bench/segment_quality.json

Every run is ``cnnlab-train experiment=segment_camvid`` (a real process; the checkpoint tested is the one with the best
``val/miou``, CamVid's own val frames); the settings (``--lr``, size, width, epochs) are fixed beforehand, not searched.
The probe's trunk is the random init of seed 0 with its BatchNorm statistics calibrated on the training frames (as the
gap's random trunks are); its weight decay is chosen on validation mIoU. Test mIoU: mean and 95% t-interval over the
training seeds (n = number of seeds; each seed its own init, augmentation and order).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from segbench import add_common_args, backbone_config, camvid, finish, record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p, size=(60, 80), width=32, hidden=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--work", default="outputs/bench/segment_quality")
    p.add_argument("--skip-probe", action="store_true")
    p.add_argument("--skip-runs", action="store_true", help="only the baseline and the probe")
    args = p.parse_args()
    import torch

    from cnnlab.backbones import save_trunk
    from cnnlab.cli import instantiate
    from cnnlab.stats import mean_ci
    from cnnlab.labelmaps import majority_class_scores
    from cnnlab.probes import calibrate_batchnorm
    from cnnlab.probes.dense import probe_trunk_dense

    work = Path(args.work)
    size = f"[{args.size[0]},{args.size[1]}]"
    common = ["experiment=segment_camvid", f"data.image_size={size}", f"backbone.width={args.width}",
              f"model.hidden={args.hidden}", f"model.optimizer.lr={args.lr}", f"trainer.max_epochs={args.epochs}",
              f"paths.data_dir={args.data_dir}", "logger=csv", "callbacks.progress_bar=null", "callbacks.model_summary=null"]
    out = record(args=vars(args), runs={})
    dm = camvid(args.data_dir, args.size)
    majority = majority_class_scores(dm.splits["train"].masks, dm.splits["test"].masks, dm.num_classes)
    out["majority"] = {"class": dm.classes[int(majority["class"])], "test_miou": float(majority["miou"]),
                       "test_pixel_acc": float(majority["pixel_acc"])}
    for seed in [] if args.skip_runs else args.seeds:
        run_dir = work / f"random_seed{seed}"
        if not (run_dir / "metrics.json").exists():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cnnlab.train", *common, f"seed={seed}", f"hydra.run.dir={run_dir}"],
                           check=True, env={**os.environ, "WANDB_MODE": "offline"})
            print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
        m = json.loads((run_dir / "metrics.json").read_text())
        out["runs"][seed] = {k: m[k] for k in m if k.startswith(("test/", "val/miou"))}
    if out["runs"]:  # --skip-runs: no trained runs to summarize
        out["random_init_test_miou"] = mean_ci([r["test/miou"] for r in out["runs"].values()])
        out["random_init_val_miou"] = mean_ci([r["val/miou"] for r in out["runs"].values()])
    if not args.skip_probe:
        torch.manual_seed(args.seeds[0])
        backbone = instantiate(backbone_config(args.width))
        n = calibrate_batchnorm(backbone, dm.loader("train"), dm.preprocess_images)
        trunk = save_trunk(work / "random_trunk.pt", backbone, "rgb", "random", {"bn_calibration_images": n})
        t = time.perf_counter()
        out["dense_probe_random"] = probe_trunk_dense(trunk, dm, cache_dir=work / "features", seed=0)
        out["dense_probe_random"]["seconds"] = time.perf_counter() - t
    finish(out, args.out)


if __name__ == "__main__":
    main()
