"""Every budget preset composes, validates and plans the arms it promises (no GPU and no data needed to plan)."""

import pytest
from hydra import compose, initialize_config_dir

from cnnlab.config import CONF_DIR
from cnnlab.gap.runner import Runner, validate

EXPECT = {  # budget: (seeds, label subsets, label fractions, fine-tune candidates = lrs x recipe variants, probe subsets)
    "smoke": (1, 2, 1, 4, 2),
    "quick": (2, 2, 1, 3, 2),
    "standard": (3, 2, 2, 6, 2),
    "gpu_check": (1, 2, 1, 2, 2),
    "full": (3, 3, 3, 4, 1),
}


def _cfg(budget: str, tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("gap", overrides=[f"budget={budget}", f"paths.output_dir={tmp_path}"])


@pytest.mark.parametrize("budget", sorted(EXPECT))
def test_budget_composes_and_plans_every_arm_kind(budget, tmp_path):
    cfg = _cfg(budget, tmp_path)
    validate(cfg)
    runner = Runner(cfg, tmp_path, {"data": "synthetic" if budget == "smoke" else "cifar10", "backbone": "vgg_cifar"})
    plan = runner.plan()
    seeds, subsets, fractions, cands, probe_subsets = EXPECT[budget]
    kinds = [a.kind for a in plan.arms]
    assert kinds.count("trunk") == 3 * seeds and kinds.count("probe") == 3 * seeds * probe_subsets
    assert kinds.count("finetune") == 3 * seeds * subsets * fractions * cands
    assert kinds.count("finetune_test") == 3 * seeds * subsets * fractions
    assert set(plan.status.values()) == {"to run"}, "nothing is done in an empty run dir"
    # the pretraining arms are composed train configs: the gap's data (lightness, val split) and backbone
    for arm in plan.arms:
        if arm.kind == "trunk" and arm.init != "random":
            c = runner.arm_config(arm)
            assert c.data.val_fraction == cfg.data.val_fraction and c.seed == arm.seed and c.test is False
            assert c.backbone.width == cfg.backbone.width and c.backbone.in_channels == 1
            assert c.data.color_space == ("lab" if arm.init == "colorization" else "L")
            assert c.data.label_fraction == 1.0, "pretraining sees every training image outside the validation split"
    if budget in ("full", "gpu_check"):
        assert cfg.data.num_workers > 0 and cfg.probe.device == "auto"


def test_full_budget_scales_finetune_length_with_the_labelled_pool(tmp_path):
    from pathlib import Path

    from cnnlab.gap.configs import ArmConfigs

    cfg = _cfg("full", tmp_path)
    configs = ArmConfigs(cfg, {"data": "cifar10", "backbone": "vgg_cifar"})
    steps = {}
    for f, n in ((0.01, 490), (0.1, 4900), (1.0, 49000)):
        c = configs.finetune("colorization", 0, 1, f, 0.01, Path("/x/trunk.pt"), n, "ft", tmp_path / "ft")
        steps[f] = c.trainer.max_steps
        assert c.trainer.precision == "bf16-mixed" and c.model.scheduler.T_max == c.trainer.max_steps
        assert c.trainer.max_steps % c.trainer.val_check_interval == 0 and c.trainer.check_val_every_n_epoch is None
        assert c.data.label_fraction == f and c.data.label_seed == 1 and c.test is False, "candidates never read test"
        assert c.callbacks.get("last_checkpoint") is None, "one best-on-val checkpoint per candidate"
    assert steps == {0.01: 500, 0.1: 3800, 1.0: 20000}
