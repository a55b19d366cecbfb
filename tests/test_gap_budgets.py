"""Every budget preset composes, validates and plans the arms it promises (no GPU and no data needed to plan);
the transfer protocol's properties that hold before anything runs: no downstream image or label reaches a
pretraining, and every pretrained init gets the same optimizer steps under the same schedule."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnlab.backbones.trunk import save_trunk
from cnnlab.config import CONF_DIR
from cnnlab.gap.runner import Runner, validate

#: budgets whose report also has the supervised ceiling on RGB input
RGB = {"standard", "full"}
EXPECT = {  # budget: (seeds, label subsets, {task: (label fractions, candidates = lrs x variants, probe subsets)})
    "smoke": (1, 2, {"cls": (1, 4, 2), "seg": (1, 1, 1)}),
    "quick": (2, 1, {"cls": (1, 2, 1), "seg": (1, 2, 1)}),
    "standard": (4, 1, {"cls": (2, 2, 1), "seg": (2, 2, 1)}),
    "gpu_check": (1, 1, {"cls": (1, 2, 1), "seg": (1, 1, 1)}),
    "full": (4, 2, {"cls": (2, 3, 1), "seg": (2, 3, 1)}),
}
#: the full budget reads the ImageNet folder a user names (VOC comes through torchvision)
SOURCES = {"full": ["pool.cfg.source=/imagenet"]}
#: the task kinds of each budget's tasks: full has the claim's own shape, VOC 2007 multi-label classification (mAP)
KINDS = {"full": {"cls": "multilabel", "seg": "segmentation"}}


def _cfg(budget: str, tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("gap", overrides=[f"budget={budget}", f"paths.output_dir={tmp_path}", *SOURCES.get(budget, []), *overrides])
    OmegaConf.set_struct(cfg, False)
    return cfg


@pytest.mark.parametrize("budget", sorted(EXPECT))
def test_budget_composes_and_plans_every_arm_kind_of_both_tasks(budget, tmp_path):
    cfg = _cfg(budget, tmp_path)
    validate(cfg)
    runner = Runner(cfg, tmp_path, {})
    plan = runner.plan()
    seeds, subsets, tasks = EXPECT[budget]
    assert {t: runner.tasks[t].kind for t in tasks} == KINDS.get(budget, {"cls": "classification", "seg": "segmentation"})
    kinds = [(a.kind, a.task) for a in plan.arms]
    inits = 4 if budget in RGB else 3
    assert list(cfg.inits)[:3] == ["random", "colorization", "supervised"] and len(cfg.inits) == inits
    assert kinds.count(("trunk", None)) == inits * seeds
    for t, (fractions, cands, probe_subsets) in tasks.items():
        assert kinds.count(("probe", t)) == inits * seeds * probe_subsets
        assert kinds.count(("finetune", t)) == inits * seeds * subsets * fractions * cands
        assert kinds.count(("finetune_test", t)) == inits * seeds * subsets * fractions
    assert set(plan.status.values()) == {"to run"}, "nothing is done in an empty run dir"
    steps = set()
    for arm in plan.arms:
        if arm.kind == "trunk" and arm.init != "random":
            c = runner.arm_config(arm)
            assert c.data == OmegaConf.create({**runner.configs.pool, "color_space": c.data.color_space, "shuffle_seed": arm.seed,
                                                "label_seed": arm.seed, "label_fraction": 1.0}), "pretraining reads the pool alone"
            rgb = arm.init == "supervised_rgb"
            assert c.seed == arm.seed and c.test is False and c.backbone.in_channels == (3 if rgb else 1)
            assert c.data.color_space == ("lab" if arm.init == "colorization" else "rgb" if rgb else "L")
            steps.add((c.trainer.max_steps, c.data.batch_size, c.model.scheduler.total_steps, c.model.scheduler.pct_start))
    assert steps == {(cfg.pretrain.steps, runner.configs.pool["batch_size"], cfg.pretrain.steps, cfg.pretrain.warmup_fraction)}, \
        "supervised and colorization pretraining: the same optimizer steps of the same batch under the same schedule"
    if budget in ("full", "gpu_check"):
        assert runner.configs.pool["num_workers"] > 0 and cfg.probe.device == "auto"
    if budget == "full":
        assert runner.configs.pool["image_size"] == 224 and runner.arch == "vgg16_bn"
        assert runner.configs.task_data["seg"]["name"] == "voc"
        voc07 = runner.configs.task_data["cls"]
        assert voc07["name"] == "voc2007" and voc07["_target_"].endswith("MultiLabelDataModule") and not voc07.get("source")
        assert voc07["image_size"] == 224, "VOC 2007 through torchvision at 224 px"
        ft = runner.configs.finetune("cls", "colorization", 0, 0, 0.1, 0.01, Path("/x/trunk.pt"), 250, "ft", tmp_path / "ft")
        assert ft.model._target_.endswith("MultiLabelClassifier") and ft.monitor == "val/map" and ft.test is False
        assert ft.data.label_fraction == 0.1 and ft.model.warmup_steps == 200, "the kind's model, the budget's recipe"


def test_no_downstream_image_or_label_reaches_pretraining(tmp_path):
    """Changing everything about the downstream tasks (their data, labels, fractions, subsets) leaves every pretraining
    arm's config, and so its key and its trunk, unchanged; changing the pool does not."""
    def pretrain_keys(*overrides):
        cfg = _cfg("quick", tmp_path, *overrides)
        runner = Runner(cfg, tmp_path, {})
        plan = runner.plan()
        trunks = [a for a in plan.arms if a.kind == "trunk"]
        return {a.name: runner.key(a) for a in trunks}, {a.name: runner.arm_config(a) for a in trunks if a.init != "random"}

    keys, cfgs = pretrain_keys()
    other_keys, other_cfgs = pretrain_keys("tasks.cls.data=stl10", "tasks.cls.label_fractions=[0.5]", "label_subsets=[3]",
                                           "tasks.seg.cfg.image_size=[90,120]", "tasks.seg=null")
    assert keys == other_keys and len(keys) == 6
    assert {n: OmegaConf.to_container(c, resolve=True) for n, c in cfgs.items()} == \
           {n: OmegaConf.to_container(c, resolve=True) for n, c in other_cfgs.items()}
    for c in cfgs.values():
        assert c.data.name == "tinyimagenet" and c.data.train_limit == 20000, "the pool, not CIFAR-10 or CamVid"
    assert pretrain_keys("pool.cfg.train_limit=10000")[0] != keys, "the key does follow the pool"
    # the in-domain preset is the earlier question, by name: pool = the task's own training split outside its val
    cfg = _cfg("quick", tmp_path, "protocol=in_domain")
    runner = Runner(cfg, tmp_path, {})
    assert cfg.protocol_name == "in_domain" and set(runner.tasks) == {"cls"}
    assert runner.configs.pool["name"] == "cifar10" and runner.configs.pool["val_fraction"] == runner.configs.task_data["cls"]["val_fraction"]


def test_rgb_ceiling_is_pretrained_and_evaluated_on_colour(tmp_path):
    cfg = _cfg("smoke", tmp_path, "inits=[random,colorization,supervised,supervised_rgb]")
    validate(cfg)
    runner = Runner(cfg, tmp_path, {})
    arms = {a.name: a for a in runner.plan().arms}
    pre = runner.arm_config(arms["supervised_rgb_seed0"])
    assert pre.data.color_space == "rgb" and pre.backbone.in_channels == 3
    ft = runner.configs.finetune("cls", "supervised_rgb", 0, 0, 0.5, 0.01, Path("/x/trunk.pt"), 150, "ft", tmp_path / "ft")
    assert ft.data.color_space == "rgb" and ft.data.name == "synthetic"
    assert runner.configs.finetune("cls", "supervised", 0, 0, 0.5, 0.01, Path("/x/trunk.pt"), 150, "ft", tmp_path / "ft").data.color_space == "L"


def test_standard_finetune_length_scales_with_the_labelled_pool(tmp_path):
    cfg = _cfg("standard", tmp_path)
    runner = Runner(cfg, tmp_path, {})
    steps = {}
    for f, n in ((0.01, 490), (0.1, 4900)):
        c = runner.configs.finetune("cls", "colorization", 0, 1, f, 0.01, Path("/x/trunk.pt"), n, "ft", tmp_path / "ft")
        steps[f] = c.trainer.max_steps
        assert c.model.scheduler.T_max == c.trainer.max_steps and c.model.scheduler.interval == "step"
        assert c.trainer.max_steps % c.trainer.val_check_interval == 0 and c.trainer.check_val_every_n_epoch is None
        assert c.data.label_fraction == f and c.data.label_seed == 1 and c.test is False, "candidates never read test"
        assert c.callbacks.get("last_checkpoint") is None, "one best-on-val checkpoint per candidate"
        assert c.data.name == "cifar10" and c.data.color_space == "L"
    assert steps == {0.01: 1200, 0.1: 2400}
    seg = runner.configs.finetune("seg", "random", 0, 0, 1.0, 1e-3, Path("/x/trunk.pt"), 367, "ft", tmp_path / "ft")
    assert (seg.trainer.max_steps, seg.trainer.max_steps // seg.trainer.val_check_interval) == (1504, 8)
    assert seg.monitor == "val/miou" and seg.model.trunk_lr_mult == 1.0 and "warmup_steps" not in seg.model
    assert seg.model._target_.endswith("Segmenter") and seg.data.name == "camvid" and seg.backbone._target_.endswith("backbone_from_trunk")


def test_standard_trains_every_arm_of_every_init_in_bf16_with_channels_last(tmp_path):
    """The standard's speed setting is one treatment for all: every pretraining and fine-tune arm, of every init."""
    runner = Runner(_cfg("standard", tmp_path), tmp_path, {})
    plan = runner.plan()
    trained = [a for a in plan.arms if (a.kind == "trunk" and a.init != "random")]
    assert {a.init for a in trained} == {"colorization", "supervised", "supervised_rgb"}
    configs = {a.name: runner.arm_config(a) for a in trained}
    for init in ("random", "colorization", "supervised", "supervised_rgb"):
        for task, fraction, n in (("cls", 0.1, 4900), ("seg", 1.0, 367)):
            configs[f"finetune {task} {init}"] = runner.configs.finetune(task, init, 0, 0, fraction, 0.01, Path("/x/trunk.pt"), n, "ft",
                                                                         tmp_path / "ft")
    for name, c in configs.items():
        assert c.trainer.precision == "bf16-mixed" and c.callbacks.channels_last._target_ == "cnnlab.callbacks.ChannelsLast", name


def test_arm_keys_do_not_depend_on_where_the_run_dir_is(tmp_path, camvid_archive):
    """A moved or copied gap run dir resumes: every arm's key (fine-tunes included, whose model config names the
    trunk file) is the same under another root when the trunks hold the same weights. (Planning the segmentation
    fine-tunes counts CamVid's training frames, hence the archive.)"""
    keys = []
    for root in (tmp_path / "here", tmp_path / "moved" / "elsewhere"):
        cfg = _cfg("smoke", root)
        runner = Runner(cfg, root, {})
        plan = runner.plan()
        for i, arm in enumerate(a for a in plan.arms if a.kind == "trunk"):
            torch.manual_seed(i)  # the same weights under both roots
            save_trunk(root / "arms" / arm.name / "trunk.pt", instantiate(cfg.backbone), "L", arm.init)
        keys.append({a.name: runner.key(a) for a in plan.arms if a.kind in ("finetune", "probe", "trunk")})
    assert keys[0] == keys[1]
    assert sum(a.startswith("finetune") for a in keys[0]) > 0 and None not in keys[0].values()
