"""``cnnlab-eval``: evaluate a cnnlab checkpoint on a data split (``python -m cnnlab.evaluate``).

    cnnlab-eval ckpt_path=outputs/train/runs/<dir>/checkpoints/last.ckpt

The data is the data module the checkpoint was trained with (its class and settings, saved in the checkpoint), so
the split is the run's own: the same frames or images, at the same size, in the same colour space. ``data.<key>=``
on the command line changes one setting of it; ``data=<name>`` chooses another dataset instead.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.cli import hydra_main, instantiate
from cnnlab.errors import UserError

#: data settings that describe this machine rather than the data: from the current config, never the checkpoint
LOCAL_DATA_KEYS = ("data_dir", "num_workers", "download", "progress")


def check(cfg: DictConfig) -> None:
    """What ``cnnlab-eval`` can refuse before any work."""
    if cfg.split not in ("test", "val"):
        raise UserError(f"split must be 'test' or 'val', got {cfg.split!r}")
    if not OmegaConf.is_missing(cfg, "ckpt_path") and Path(str(cfg.ckpt_path)).expanduser().is_dir():
        raise UserError(f"ckpt_path={cfg.ckpt_path} is a directory: pass the checkpoint file in it, "
                        "e.g. ckpt_path=<run dir>/checkpoints/last.ckpt")


def command_line_data() -> tuple[bool, list[str]]:
    """(whether the command line chose a data group, the ``data.<key>`` it set); ``(True, [])`` outside Hydra,
    where ``cfg.data`` is the caller's own choice."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True, []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    chosen = any(o.key_or_group == "data" for o in overrides)
    return chosen, [o.key_or_group[len("data."):] for o in overrides if o.key_or_group.startswith("data.")]


def datamodule_target(info: dict) -> str:
    """The data module class a checkpoint's ``cnnlab_data`` names (checkpoints before it was recorded: by dataset name)."""
    if info.get("datamodule"):
        return info["datamodule"]
    from cnnlab.data.segmentation import DATASETS

    segmentation = info.get("name") in DATASETS
    return "cnnlab.data.segmentation.SegmentationDataModule" if segmentation else "cnnlab.data.datamodule.ImageDataModule"


def data_config(cfg: DictConfig, checkpoint: dict) -> DictConfig:
    """The data node to evaluate on: the checkpoint's own data module (its saved settings, with this machine's
    ``LOCAL_DATA_KEYS``) unless the command line chose a data group; ``data.<key>`` from the command line win."""
    info = checkpoint.get("cnnlab_data") or {}
    saved = checkpoint.get("datamodule_hyper_parameters")
    chosen, keys = command_line_data()
    data = cfg.data.copy()
    if chosen or not saved:
        with open_dict(data):
            for key in ("color_space", "image_size"):
                if key in info and key not in keys:
                    data[key] = info[key]
        return data
    own = OmegaConf.create({"_target_": datamodule_target(info), **OmegaConf.to_container(OmegaConf.create(dict(saved)))})
    for key in LOCAL_DATA_KEYS:
        if key in own and key in data:
            own[key] = data[key]
    absent = object()
    for key in keys:
        value = OmegaConf.select(data, key, default=absent)
        if value is absent:  # ~data.<key>: back to the data module's default
            own.pop(key, None)
        else:
            OmegaConf.update(own, key, value, force_add=True)
    return own


def evaluate(cfg: DictConfig) -> dict[str, float]:
    check(cfg)
    from cnnlab.callbacks import scalar_metrics
    from pytorch_lightning.utilities import rank_zero_only

    from cnnlab.io.checkpoints import CHECKPOINT, read_cnnlab_file
    from cnnlab.io.files import write_json
    from cnnlab.models.loading import module_from_checkpoint

    _, checkpoint = read_cnnlab_file(cfg.ckpt_path, expect=CHECKPOINT, map_location="cpu")
    module = module_from_checkpoint(checkpoint, cfg.ckpt_path)
    info = module.data_info
    datamodule = instantiate(data_config(cfg, checkpoint))
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
