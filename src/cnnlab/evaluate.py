"""``cnnlab-eval``: evaluate a cnnlab checkpoint on a data split (``python -m cnnlab.evaluate``).

    cnnlab-eval ckpt_path=outputs/train/runs/<dir>/checkpoints/last.ckpt
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from cnnlab.config import CONF_DIR, check_complete, hydra_task
from cnnlab.errors import UserError, exit_on_user_error


def evaluate(cfg: DictConfig) -> dict[str, float]:
    check_complete(cfg)
    from cnnlab.callbacks import scalar_metrics
    from pytorch_lightning.utilities import rank_zero_only

    from cnnlab.io.files import write_json
    from cnnlab.models import load_module

    if cfg.split not in ("test", "val"):
        raise UserError(f"split must be 'test' or 'val', got {cfg.split!r}")
    module = load_module(cfg.ckpt_path)
    info = module.data_info
    with open_dict(cfg):
        for key in ("color_space", "image_size"):
            if key in info:
                cfg.data[key] = info[key]
    datamodule = hydra.utils.instantiate(cfg.data)
    if "classes" in info and list(datamodule.classes) != list(info["classes"]):
        raise UserError(f"{cfg.ckpt_path} was trained on classes {info['classes'][:4]}... but the data has "
                        f"{datamodule.classes[:4]}...: evaluate on the dataset it was trained on")
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=cfg.paths.output_dir)
    run = trainer.test if cfg.split == "test" else trainer.validate
    run(module, datamodule=datamodule)
    metrics = scalar_metrics(trainer)
    rank_zero_only(write_json)(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@hydra_task
def _hydra_entry(cfg: DictConfig) -> None:
    evaluate(cfg)


@exit_on_user_error
def main() -> None:
    _hydra_entry()


if __name__ == "__main__":
    main()
