"""Each ``cnnlab-train`` arm as a composed config: the train config with the arm's groups, merged with nodes.

``conf/gap.yaml`` says per arm kind which config groups to pick (``groups: {model: classifier}``) and which
values to set (``cfg: {test: false}``). An arm's config is ``train.yaml`` composed with those groups, then merged
with its data node (a pretraining arm: the pool's; a probe or fine-tune: its task's), the gap's backbone, the
kind's ``cfg`` and the arm's own values (seed, label subset, learning rate, where it runs). No value passes
through a command-line string. Pretraining arms of every init run the same number of optimizer steps under one
per-step schedule (warm-up, then cosine annealing to near zero): :meth:`ArmConfigs.pretrain`.
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
from cnnlab.gap.arms import KIND_GROUPS, TASK_METRICS

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


def active_tasks(cfg: DictConfig) -> dict[str, DictConfig]:
    """The downstream tasks of ``cfg.tasks`` that are switched on (a task set to null is left out), in order."""
    return {str(k): v for k, v in (cfg.get("tasks") or {}).items() if v is not None}


#: task settings a task replaces whole when it gives them (a recipe names its own model's options)
_REPLACED = ("recipe", "variants")


def task_setting(cfg: DictConfig, task: str, what: str) -> DictConfig:
    """The shared ``probe`` / ``finetune`` settings with the task's own values over them (its ``recipe`` and
    ``variants``, when given, replace the shared ones: a segmentation model has other options than a classifier)."""
    own = cfg.tasks[task].get(what) or OmegaConf.create({})
    merged = OmegaConf.merge(OmegaConf.create(container(cfg[what])), own)  # unstructured: a task may add its own options
    for k in _REPLACED:
        if own.get(k) is not None:
            merged[k] = own[k]
    return merged


def init_space(init: str) -> str:
    """The input colour space an init's arms use: one lightness channel (the only input a colorization trunk can
    take), except the RGB supervised ceiling, which is pretrained and evaluated on colour."""
    return "rgb" if init.endswith("_rgb") else "L"


def finetune_steps(ft: DictConfig, batch_size: int, n_labelled: int) -> tuple[int, int]:
    """``(steps, validate every)`` of a fine-tune on ``n_labelled`` images: ``ft.epochs`` passes over
    them, clamped to [min_steps, max_steps] and rounded up to a whole number of ``ft.evals`` validations."""
    per_epoch = max(1, n_labelled // int(batch_size))
    steps = min(max(int(ft.epochs) * per_epoch, int(ft.min_steps)), int(ft.max_steps))
    every = max(1, math.ceil(steps / int(ft.evals)))
    return every * int(ft.evals), every


def pretrain_schedule(steps: int, lr: float, warmup_fraction: float, final_div: float) -> dict:
    """One per-step schedule for every pretraining: linear warm-up from ``lr / 25`` over ``warmup_fraction`` of
    ``steps``, then cosine annealing to ``lr / final_div`` at the last step (torch's OneCycleLR, momentum not cycled)."""
    return {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "_partial_": True, "max_lr": float(lr), "total_steps": int(steps),
            "pct_start": float(warmup_fraction), "anneal_strategy": "cos", "div_factor": 25.0,
            "final_div_factor": float(final_div) / 25.0, "cycle_momentum": False, "interval": "step"}


class ArmConfigs:
    """Builds the composed config of every ``cnnlab-train`` arm of one gap run, and the data nodes of the pool and
    of each downstream task (the only data any arm reads)."""

    def __init__(self, cfg: DictConfig, choices: dict | None = None):
        self.cfg, self.choices = cfg, choices or {}
        self.backbone = OmegaConf.to_container(cfg.backbone, resolve=False)  # in_channels follows the arm's data
        self._composed: dict[tuple, DictConfig] = {}
        self.tasks = active_tasks(cfg)
        self.pool = self.data_node(cfg.pool.data, {}, cfg.pool.cfg)
        self.task_data = {t: self.data_node(spec.get("data"), container(spec.get("groups")), spec.get("cfg")) for t, spec in self.tasks.items()}

    def compose(self, groups: dict) -> DictConfig:
        """``train.yaml`` with the gap's arm groups and these (cached: a run has many arms of a few kinds)."""
        choice = {**container(self.cfg.arm.groups), **groups}
        key = tuple(sorted(choice.items()))
        if key not in self._composed:
            self._composed[key] = compose_train(choice)
        return copy.deepcopy(self._composed[key])

    def data_node(self, data: str | None, groups: dict, over) -> dict:
        """The resolved data config of a conf/data choice (or of what ``groups`` bring, e.g. an experiment's), with
        ``over`` merged on it, without label/shuffle seeds (each arm sets its own)."""
        composed = self.compose({**groups, **({"data": str(data)} if data else {})})
        merged = OmegaConf.merge(composed, {"paths": {"data_dir": str(self.cfg.paths.data_dir)}, "seed": 0})
        node = container(OmegaConf.merge(merged.data, container(over)))
        for k in ("label_fraction", "label_seed", "shuffle_seed"):
            node.pop(k, None)
        return node

    def _base(self, groups: dict, data: dict, name: str, seed: int, out_dir: Path, in_channels: int | None) -> DictConfig:
        c = self.cfg
        arm = self.compose(groups)
        arm.data = OmegaConf.create({**data, "shuffle_seed": seed, "label_seed": seed, "label_fraction": 1.0})  # replace, not merge
        if in_channels is not None:
            arm.backbone = OmegaConf.create({**self.backbone, "in_channels": in_channels})  # the gap's backbone, whatever the group had
        return OmegaConf.merge(arm, container(c.arm.cfg),
                               {"seed": seed, "task_name": name, "tags": ["gap", str(c.budget_name)],
                                "paths": {"output_dir": str(out_dir), "data_dir": str(c.paths.data_dir), "log_dir": str(c.paths.log_dir)}})

    def pretrain(self, init: str, seed: int, name: str, out_dir: Path) -> DictConfig:
        """A pretraining on the pool: ``pretrain.steps`` optimizer steps and one per-step schedule for every init."""
        p, pre = self.cfg.pretrain[init], self.cfg.pretrain
        space = init_space(init)
        arm = self._base(container(p.groups), {**self.pool, "color_space": space}, name, seed, out_dir, 3 if space == "rgb" else 1)
        arm = OmegaConf.merge(arm, container(p.cfg))
        steps, evals = int(pre.steps), max(1, int(pre.evals))
        arm = OmegaConf.merge(arm, {"trainer": {"max_epochs": -1, "max_steps": steps, "check_val_every_n_epoch": None,
                                                "val_check_interval": max(1, math.ceil(steps / evals)), "num_sanity_val_steps": 0}})
        # replace, not merge: the model's own scheduler (per epoch) leaves no option behind
        arm.model.scheduler = OmegaConf.create(pretrain_schedule(steps, float(arm.model.optimizer.lr), float(pre.warmup_fraction),
                                                                 float(pre.final_div)))
        return arm

    def finetune_length(self, task: str, n_labelled: int) -> tuple[int, int]:
        return finetune_steps(task_setting(self.cfg, task, "finetune"), int(self.task_data[task]["batch_size"]), n_labelled)

    def finetune(self, task: str, init: str, seed: int, subset: int, fraction: float, lr: float, trunk: Path, n_labelled: int,
                 name: str, out_dir: Path, variant: str | None = None) -> DictConfig:
        """A fine-tune candidate on the task: ``finetune.recipe`` with the ``variant``'s values over it (None: the recipe alone)."""
        spec, ft = self.tasks[task], task_setting(self.cfg, task, "finetune")
        recipe = {**container(ft.recipe), **(container(ft.variants[variant]) if variant is not None else {})}
        steps, every = self.finetune_length(task, n_labelled)
        groups = {"backbone": "trunk", **KIND_GROUPS.get(spec.kind, {}), **container(spec.get("groups")),
                  **({"data": str(spec.data)} if spec.get("data") else {}), **container(ft.groups)}
        arm = self._base(groups, {**self.task_data[task], "color_space": init_space(init)}, name, seed, out_dir, None)
        return OmegaConf.merge(arm, container(ft.cfg), {
            "data": {"label_fraction": float(fraction), "label_seed": int(subset)},
            "backbone": {"path": str(trunk)},
            "model": {"optimizer": {"lr": float(lr)}, "scheduler": {"T_max": steps, "interval": "step"}, **recipe},
            "trainer": {"max_epochs": -1, "max_steps": steps, "check_val_every_n_epoch": None, "val_check_interval": every,
                        "num_sanity_val_steps": 0},
            "monitor": f"val/{TASK_METRICS[spec.kind][0]}", "monitor_mode": "max", "train": True, "test": False})

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
    d.pop("tags", None)  # tracking too: they name the budget, and budgets that share an arm share its result
    _drop_trunk_paths(d)
    return replace_in_strings(d, where)


def _drop_trunk_paths(node) -> None:
    """Remove every ``backbone.path`` in a plain config, at any depth (the top-level backbone and the one a model
    node carries): the trunk's weight fingerprint stands for it, so a moved or copied run dir keeps its keys."""
    if isinstance(node, dict):
        if isinstance(node.get("backbone"), dict):
            node["backbone"].pop("path", None)
        for v in node.values():
            _drop_trunk_paths(v)
    elif isinstance(node, list):
        for v in node:
            _drop_trunk_paths(v)


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
