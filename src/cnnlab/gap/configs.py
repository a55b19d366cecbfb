"""Each ``cnnlab-train`` arm as a composed config: the train config with the arm's groups, merged with nodes.

``conf/gap.yaml`` says per arm kind which config groups to pick (``groups: {model: classifier}``) and which
values to set (``cfg: {trainer: {max_epochs: 3}}``). An arm's config is ``train.yaml`` composed with those
groups, then merged with the gap's shared data and backbone nodes, the kind's ``cfg`` and the arm's own values
(seed, label subset, learning rate, where it runs). No value passes through a command-line string.
The composed config is written to ``<arm dir>/config.yaml`` and run in-process by :func:`cnnlab.train.run`;
``cnnlab-train --config-path <arm dir> --config-name config hydra.run.dir=<arm dir>`` reruns it by hand.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab.config import CONF_DIR

log = logging.getLogger("cnnlab.gap")

#: arm-config keys that say where an arm runs, not what it computes (left out of its key)
_LOCATION_KEYS = ("paths", "ckpt_path", "resume")


def compose_train(groups: dict) -> DictConfig:
    """``train.yaml`` with these config-group choices (``{"model": "classifier"}``), without Hydra's own node."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"{k}={v}" for k, v in groups.items()]
    ctx = contextlib.nullcontext() if GlobalHydra.instance().is_initialized() else initialize_config_dir(CONF_DIR, version_base="1.3")
    with ctx:
        cfg = compose("train", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    return cfg


def compose_gap(overrides: list[str]) -> tuple[DictConfig, dict]:
    """``conf/gap.yaml`` with these overrides, outside a Hydra run, and its config-group choices (which the arms
    compose from): what a script needs to drive :class:`cnnlab.gap.runner.Runner` itself."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("gap", overrides=list(overrides), return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    return cfg, choices


def container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def finetune_steps(cfg: DictConfig, n_labelled: int) -> tuple[int, int]:
    """``(steps, validate every)`` of a fine-tune on ``n_labelled`` images: ``finetune.epochs`` passes over
    them, clamped to [min_steps, max_steps] and rounded up to a whole number of ``finetune.evals`` validations."""
    ft = cfg.finetune
    per_epoch = max(1, n_labelled // int(cfg.data.batch_size))
    steps = min(max(int(ft.epochs) * per_epoch, int(ft.min_steps)), int(ft.max_steps))
    every = max(1, math.ceil(steps / int(ft.evals)))
    return every * int(ft.evals), every


class ArmConfigs:
    """Builds the composed config of every ``cnnlab-train`` arm of one gap run."""

    def __init__(self, cfg: DictConfig, choices: dict):
        self.cfg, self.choices = cfg, choices
        self.data = container(cfg.data)
        for k in ("label_fraction", "label_seed", "shuffle_seed"):
            self.data.pop(k, None)
        self.backbone = OmegaConf.to_container(cfg.backbone, resolve=False)  # in_channels follows the arm's data
        self.recipe = container(cfg.finetune.recipe)
        self.variants = {str(k): container(v) for k, v in container(cfg.finetune.get("variants")).items()}
        self._composed: dict[tuple, DictConfig] = {}

    def _base(self, groups: dict, name: str, seed: int, out_dir: Path, with_backbone: bool) -> DictConfig:
        c = self.cfg
        choice = {"data": self.choices.get("data", "cifar10"), **container(c.arm.groups), **groups}
        key = tuple(sorted(choice.items()))
        if key not in self._composed:  # composing takes a fraction of a second; a run has many arms of a few kinds
            self._composed[key] = compose_train(choice)
        arm = copy.deepcopy(self._composed[key])
        nodes = [{"data": {**self.data, "shuffle_seed": seed, "label_seed": seed, "label_fraction": 1.0}},
                 container(c.arm.cfg),
                 {"seed": seed, "task_name": name, "tags": ["gap", str(c.budget_name)],
                  "paths": {"output_dir": str(out_dir), "data_dir": str(c.paths.data_dir), "log_dir": str(c.paths.log_dir)}}]
        if with_backbone:
            arm.backbone = OmegaConf.create(self.backbone)  # replace, not merge: the gap's backbone, whatever the group had
        return OmegaConf.merge(arm, *nodes)

    def pretrain(self, init: str, seed: int, name: str, out_dir: Path) -> DictConfig:
        p = self.cfg.pretrain[init]
        arm = self._base(container(p.groups), name, seed, out_dir, with_backbone=True)
        return OmegaConf.merge(arm, container(p.cfg))

    def finetune(self, init: str, seed: int, subset: int, fraction: float, lr: float, trunk: Path, n_labelled: int,
                 name: str, out_dir: Path, variant: str | None = None) -> DictConfig:
        """A fine-tune candidate: ``finetune.recipe`` with the ``variant``'s values over it (None: the recipe alone)."""
        ft = self.cfg.finetune
        recipe = {**self.recipe, **(self.variants[variant] if variant is not None else {})}
        steps, every = finetune_steps(self.cfg, n_labelled)
        arm = self._base({"backbone": "trunk", **container(ft.groups)}, name, seed, out_dir, with_backbone=False)
        return OmegaConf.merge(arm, container(ft.cfg), {
            "data": {"label_fraction": float(fraction), "label_seed": int(subset)},
            "backbone": {"path": str(trunk)},
            "model": {"optimizer": {"lr": float(lr)}, "scheduler": {"T_max": steps, "interval": "step"}, **recipe},
            "trainer": {"max_epochs": -1, "max_steps": steps, "check_val_every_n_epoch": None, "val_check_interval": every,
                        "num_sanity_val_steps": 0},
            "monitor": "val/acc", "monitor_mode": "max", "train": True, "test": False})

    @staticmethod
    def test_of(candidate: DictConfig, ckpt: Path, name: str, out_dir: Path) -> DictConfig:
        """The chosen candidate's config, evaluated once on the test split from its best-on-val checkpoint.

        The candidate's config was written resolved, so every path inside its run dir (the trainer's root,
        checkpoint dirs) is moved to ``out_dir``: the test run writes nothing into the candidate's directory."""
        moved = replace_in_strings(OmegaConf.to_container(candidate, resolve=True), {str(candidate.paths.output_dir): str(out_dir)})
        return OmegaConf.merge(OmegaConf.create(moved),
                               {"train": False, "test": True, "ckpt_path": str(ckpt), "task_name": name,
                                "paths": {"output_dir": str(out_dir)}, "logger": None})


def location_free(arm_cfg: DictConfig) -> dict:
    """The arm config without where it runs (the part its key hashes): a moved or copied run dir keeps its keys."""
    d = OmegaConf.to_container(arm_cfg, resolve=True)
    where = {str(d["paths"]["output_dir"]): "<arm dir>", str(d["paths"]["data_dir"]): "<data dir>"}
    for k in _LOCATION_KEYS:
        d.pop(k, None)
    if "logger" in d:  # tracking changes nothing an arm computes (None: as every arm's key had it before arms logged)
        d["logger"] = None
    if isinstance(d.get("backbone"), dict):
        d["backbone"].pop("path", None)  # the trunk's weight fingerprint stands for it
    return replace_in_strings(d, where)


def replace_in_strings(d: dict, mapping: dict[str, str]) -> dict:
    """``d`` (a plain config dict) with every occurrence of each ``mapping`` key inside its strings replaced,
    e.g. a run dir wherever a resolved config spelled it out (trainer root, checkpoint dirs, logger dirs)."""
    text = json.dumps(d, sort_keys=True, default=str)
    for old, new in mapping.items():
        text = text.replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])  # as JSON spells them: escapes included
    return json.loads(text)


def write_config(arm_cfg: DictConfig, out_dir: Path) -> Path:
    from cnnlab.io.files import write_text

    return write_text(Path(out_dir) / "config.yaml", OmegaConf.to_yaml(arm_cfg, resolve=True))
