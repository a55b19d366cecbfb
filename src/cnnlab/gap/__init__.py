"""``cnnlab-gap``: how much of the gap between a random init and supervised pretraining does
colorization pretraining close? (``python -m cnnlab.gap``)

    cnnlab-gap                    # the quick budget: real CIFAR-10, 2-core CPU, <= 15 min
    cnnlab-gap budget=standard    # the headline: 3 seeds x 2 label subsets, <= 2 h on a 2-core CPU
    cnnlab-gap budget=smoke       # synthetic data, seconds (what the tests run)
    cnnlab-gap budget=gpu_check   # every arm kind on one GPU in minutes; budget=full: hours
    cnnlab-gap seeds=[0,1,2] label_subsets=[0,1] label_fractions=[0.01,0.1]

Every arm runs into ``outputs/gap/<budget>/arms/<arm>/``; rerunning the same command reuses the
finished arms, so an interrupted reproduction resumes. See :mod:`cnnlab.gap.arms` (what an arm is),
:mod:`cnnlab.gap.runner` (plan / execute / report) and :mod:`cnnlab.gap.configs` (arms as composed configs).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from cnnlab.config import CONF_DIR
from cnnlab.errors import exit_on_user_error


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


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="gap")
def _hydra_entry(cfg: DictConfig) -> None:
    import sys

    from cnnlab.errors import UserError

    try:
        run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)  # one line instead of Hydra's traceback
        raise SystemExit(2) from None


@exit_on_user_error
def main() -> None:
    _hydra_entry()


__all__ = ["main", "run"]
