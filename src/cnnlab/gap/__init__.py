"""``cnnlab-gap``: how much of the gap between a random init and supervised pretraining does
colorization pretraining close? (``python -m cnnlab.gap``)

    cnnlab-gap                    # quick: Tiny-ImageNet -> CIFAR-10 and CamVid, <= 15 min on a 2-core CPU
    cnnlab-gap budget=standard    # the headline: 4 pretraining seeds, <= 3 h on a 2-core CPU
    cnnlab-gap budget=smoke       # a plumbing check on synthetic data (what the tests run)
    cnnlab-gap budget=gpu_check   # every arm kind on one GPU in minutes; budget=full: ImageNet -> VOC, hours
    cnnlab-gap seeds=[0,1,2] label_subsets=[0,1] tasks.cls.label_fractions=[0.01,0.1]

Every arm runs into ``outputs/gap/<budget>/arms/<arm>/``; rerunning the same command reuses the
finished arms, so an interrupted reproduction resumes. See :mod:`cnnlab.gap.arms` (what an arm is),
:mod:`cnnlab.gap.runner` (plan / execute / report) and :mod:`cnnlab.gap.configs` (arms as composed configs).
"""

from __future__ import annotations

import os
from pathlib import Path

# every arm is a W&B run: W&B's per-run banner and "wandb sync" hint would bury the arm progress lines (the README's one
# sync command covers every arm; each run keeps its W&B logs under its own wandb/ folder)
os.environ.setdefault("WANDB_SILENT", "true")

from omegaconf import DictConfig

from cnnlab.cli import hydra_main


def run(cfg: DictConfig, out_dir: str | Path | None = None, choices: dict | None = None) -> dict:
    """Run (or resume) the gap experiment of ``cfg``; returns the results dict (also written to disk)."""
    from hydra.core.hydra_config import HydraConfig

    from cnnlab.config import check_complete
    from cnnlab.gap.runner import Runner, validate

    check_complete(cfg)
    validate(cfg)
    if out_dir is None or choices is None:
        hc = HydraConfig.get()
        out_dir = out_dir or hc.runtime.output_dir
        choices = choices or dict(hc.runtime.choices)
    return Runner(cfg, Path(out_dir), choices).run()


@hydra_main("gap")
def main(cfg: DictConfig) -> None:
    run(cfg)


__all__ = ["main", "run"]
