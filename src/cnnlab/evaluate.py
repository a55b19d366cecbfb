"""``cnnlab-eval``: evaluate a cnnlab checkpoint on a data split (``python -m cnnlab.evaluate``).

    cnnlab-eval ckpt_path=outputs/train/runs/<dir>/checkpoints/last.ckpt
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.cli import hydra_main, instantiate
from cnnlab.errors import UserError


def check(cfg: DictConfig) -> None:
    """What ``cnnlab-eval`` can refuse before any work."""
    if cfg.split not in ("test", "val"):
        raise UserError(f"split must be 'test' or 'val', got {cfg.split!r}")
    if not OmegaConf.is_missing(cfg, "ckpt_path") and Path(str(cfg.ckpt_path)).expanduser().is_dir():
        raise UserError(f"ckpt_path={cfg.ckpt_path} is a directory: pass the checkpoint file in it, "
                        "e.g. ckpt_path=<run dir>/checkpoints/last.ckpt")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    check(cfg)
    from cnnlab.callbacks import scalar_metrics
    from pytorch_lightning.utilities import rank_zero_only

    from cnnlab.io.files import write_json
    from cnnlab.models import load_module

    module = load_module(cfg.ckpt_path)
    info = module.data_info
    with open_dict(cfg):
        for key in ("color_space", "image_size"):
            if key in info:
                cfg.data[key] = info[key]
    datamodule = instantiate(cfg.data)
    if "classes" in info and list(datamodule.classes) != list(info["classes"]):
        raise UserError(f"{cfg.ckpt_path} was trained on classes {info['classes'][:4]}... but the data has "
                        f"{datamodule.classes[:4]}...: evaluate on the dataset it was trained on")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=cfg.paths.output_dir)
    run = trainer.test if cfg.split == "test" else trainer.validate
    run(module, datamodule=datamodule)
    metrics = scalar_metrics(trainer)
    rank_zero_only(write_json)(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    return metrics


@hydra_main("eval", check=check)
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
