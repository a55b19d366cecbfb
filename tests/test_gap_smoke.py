"""cnnlab-gap end to end on the smoke budget (synthetic data): the protocol's properties, resuming, test labels
that change no choice, and one-line errors for bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import run_cli

INITS = ("random", "colorization", "supervised")


def _choices(res: dict) -> dict:
    """Everything the protocol chose on validation, from a gap_results.json."""
    pr = res["probe"]
    return {"best_tap": {i: b["tap"] for i, b in pr["best_tap"].items()},
            "weight_decay": {i: {t: pr["linear"][i][t]["weight_decay_chosen"] for t in res["taps"]} for i in res["inits"]},
            "lr": {f: {i: (e[i]["lr_chosen"], e[i]["variant_chosen"], e[i]["step_chosen"]) for i in res["inits"]}
                   for f, e in res["finetune"].items()}}


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from cnnlab.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("gap", overrides=list(overrides))


@pytest.mark.slow
def test_gap_smoke_end_to_end_resume_and_test_labels_change_no_choice(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "gap"
    args = ("budget=smoke", f"paths.data_dir={data_dir}", f"hydra.run.dir={out}")
    proc = run_cli("cnnlab.gap", *args)
    res = json.loads((out / "gap_results.json").read_text())
    assert res["inits"] == list(INITS) and res["protocol"]["seeds"] == [0] and res["protocol"]["label_subsets"] == [0, 1]
    taps = res["taps"]
    assert taps[0] == "conv1_1" and taps[-1] == "conv4_2"
    arms = out / "arms"
    # probes: fit on the label subset, the weight decay chosen on val is the grid's best, the test split read once
    for init in INITS:
        for k in (0, 1):
            p = json.loads((arms / f"probe_{init}_seed0_sub{k}" / "probe.json").read_text())
            assert 0.45 * 270 <= p["n_train"] <= 0.55 * 270 and (p["n_val"], p["n_test"]) == (30, 100), "half the pool; val; test"
            for t in taps:
                lin = p["linear"][t]
                assert lin["val"] == max(lin["grid"].values()) and lin["grid"][repr(lin["weight_decay"])] == lin["val"]
                assert 0.0 <= lin["test"] <= 1.0 and p["knn"][t]["k"] == 20
        best = res["probe"]["best_tap"][init]
        assert best["chosen_on"] == "validation" and best["test"]["n"] == 2
        assert best["test"]["mean"] > 0.2, "the best linear probe of every init is at least twice chance on 10 classes"
        assert max(res["probe"]["knn"][init][t]["test"]["mean"] for t in taps) > 0.2
    # fine-tunes: each candidate kept its best-on-val checkpoint and never read test; the test arm chose on val
    for init in INITS:
        for k in (0, 1):
            base = arms / f"finetune_{init}_f0.5_seed0_sub{k}"
            choice = json.loads((base / "choice.json").read_text())
            assert choice["val"] == max(choice["grid"].values()) and choice["lr"] in (0.01, 0.05)
            assert len(choice["grid"]) == 4 and choice["variant"] in ("plain", "lpft"), "the grid is lr x recipe variant"
            assert choice["lr_at_grid_edge"], "with two rates every choice is at the grid's edge, and says so"
            assert choice["step"] in (2, 4), "a checkpoint of one of the two validations (every 2 of 4 steps)"
            assert choice["step_is_last"] == (choice["step"] == 4)
            for lr in ("0.01", "0.05"):
                for suffix, head_only in (("", 0), ("_lpft", 2)):
                    cand = arms / f"finetune_{init}_f0.5_seed0_sub{k}_lr{lr}{suffix}"
                    metrics = json.loads((cand / "metrics.json").read_text())
                    assert not any(key.startswith("test/") for key in metrics), "a candidate never reads the test split"
                    c = OmegaConf.load(cand / "config.yaml")
                    assert c.data.label_seed == k and c.data.label_fraction == 0.5 and c.model.optimizer.lr == float(lr)
                    assert c.model.head_only_steps == head_only and c.model.warmup_steps == 1, "the variant over the recipe"
                    assert [p.name for p in (cand / "checkpoints").iterdir()] == [Path(json.loads((cand / "candidate.json").read_text())["path"]).name]
                    clock = json.loads((cand / "clock.json").read_text())
                    assert clock["train_batch_count"] == 4 and 0 < clock["train_batches"] and clock["test"] == 0
            assert "test/acc" in json.loads((base / "metrics.json").read_text())
            assert json.loads((base / "clock.json").read_text())["test"] > 0, "the test run's files are in the test arm's dir"
    gap = res["finetune"]["0.5"]["gap"]
    for block in (gap, res["probe"]["linear_gap"]["best"], *res["probe"]["knn_gap"].values()):
        g = block["gap_closed"]
        assert (g["mean"] is None) == bool(g["note"].startswith("undefined")), "a gap is a number or undefined with its reason"
        d = block["colorization - random"]
        assert d["n"] == 2 and d["low"] <= d["mean"] <= d["high"]
    md = (out / "gap_table.md").read_text()
    assert "| gap closed |" in md and "n = 2" in md and "±" not in md and "chosen on val" in md
    assert "budget smoke" in md.splitlines()[0] and "{" not in md.splitlines()[0], "the setup in words"
    assert "recipe variant chosen on val" in md and "at the grid's edge" in md and "Where the time went" in md
    t = res["timing"]
    assert 0 < t["train_batch_seconds"] < t["arm_seconds"] <= t["wall_seconds"] and 0 < t["train_share_of_arms"] < 1
    assert t["by_kind"]["finetune"]["arms"] == 24 and t["by_kind"]["finetune"]["validation"] > 0
    assert (out / "gap.png").stat().st_size > 10_000
    assert list((out / "wandb").glob("offline-run-*")), "the table and plot go to an offline W&B run"
    assert "39 arms, 0 already done" in proc.stdout
    for name in ("supervised_seed0", "colorization_seed0"):
        assert (arms / name / "trunk.pt").is_file() and (arms / name / "metrics.json").is_file()
        assert OmegaConf.load(arms / name / "config.yaml").trainer.max_epochs == 1, "each pretraining ran from its composed config"
    from cnnlab.backbones import read_trunk

    metas = {i: read_trunk(arms / f"{i}_seed0" / "trunk.pt") for i in INITS}
    assert {m["method"] for m in metas.values()} == set(INITS)
    assert {(m["in_channels"], m["color_space"], m["arch"], m["arch_kwargs"]["width"]) for m in metas.values()} == {(1, "L", "vgg_cifar", 8)}
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in arms.glob("*/gap_arm.json")}

    # resume: delete one probe arm and the random trunk (re-created with the same seed: identical weights)
    shutil.rmtree(arms / "probe_colorization_seed0_sub0")
    shutil.rmtree(arms / "random_seed0")
    proc = run_cli("cnnlab.gap", *args)
    assert "39 arms, 25 already done" in proc.stdout and "arms: ran 2, reused 37" in proc.stdout
    after = {p.parent.name: p.stat().st_mtime_ns for p in arms.glob("*/gap_arm.json")}
    rerun = {k for k in after if after[k] != stamps.get(k)}
    assert rerun == {"probe_colorization_seed0_sub0", "random_seed0"}, f"only the deleted arms run again, not {rerun}"
    res2 = json.loads((out / "gap_results.json").read_text())
    assert res2["probe"]["linear"]["colorization"] == res["probe"]["linear"]["colorization"], "the same trunk and seed give the same probe"
    assert res2["finetune"] == res["finetune"]

    # dropping a recipe variant from the search keeps every plain candidate; only the six test arms choose again
    proc = run_cli("cnnlab.gap", *args, "~finetune.variants.lpft", "report.wandb=false")
    assert "27 arms, 21 already done" in proc.stdout and "arms: ran 6, reused 21" in proc.stdout

    # the same run on the same trunks with the test labels permuted: every choice identical, the test numbers not
    from cnnlab.data.datamodule import ImageDataModule
    from cnnlab.gap import run

    shuffled = tmp_path / "shuffled"
    for name in (f"{i}_seed0" for i in INITS):
        shutil.copytree(arms / name, shuffled / "arms" / name)
    setup = ImageDataModule.setup

    def setup_with_shuffled_test_labels(self, stage=None):
        fresh = not self.splits
        setup(self, stage)
        if fresh:
            test = self.splits["test"]
            test.labels = test.labels[torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(1))]

    monkeypatch.setattr(ImageDataModule, "setup", setup_with_shuffled_test_labels)
    cfg = _compose("budget=smoke", f"paths.data_dir={data_dir}", f"paths.output_dir={shuffled}", "report.wandb=false")
    res3 = run(cfg, out_dir=shuffled, choices={"data": "synthetic", "backbone": "vgg_cifar"})
    assert all(res3["arms"][f"{i}_seed0"]["reused"] for i in INITS), "the copied trunks are reused"
    assert _choices(res3) == _choices(res), "no choice depends on a test label"
    assert res3["probe"]["linear"] != res["probe"]["linear"], "the permuted test labels did reach the test scores"


@pytest.mark.parametrize("override, message", [
    ("label_fractions=[0.1,1.5]", "label fraction 1.5 is outside (0, 1]"),
    ("probe.taps=[conv1_1,conv9_9]", "unknown tap(s) ['conv9_9']"),
    ("inits=[random,imagenet]", "unknown init(s) ['imagenet']"),
    ("data.val_fraction=0", "every choice of the gap is made on the validation split"),
    ("finetune.lrs=[]", "finetune.lrs is empty"),
    ("+finetune.variants.fast={lr:1.0}", "a variant sets fine-tune recipe options only"),
])
def test_gap_bad_input_is_one_line_error(tmp_path, data_dir, override, message):
    if override.startswith("label"):  # one real process for the exit code and the one-line message
        proc = run_cli("cnnlab.gap", "budget=smoke", override, f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}", check=False)
        assert proc.returncode == 2
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert lines == [f"error: {lines[0][len('error: '):]}"] and message in lines[0]
        assert not (tmp_path / "arms").exists(), "nothing runs before the settings are checked"
        return
    from cnnlab.errors import UserError
    from cnnlab.gap import run

    cfg = _compose("budget=smoke", override, f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}")
    with pytest.raises(UserError) as err:
        run(cfg, out_dir=tmp_path, choices={"data": "synthetic", "backbone": "vgg_cifar"})
    assert message in str(err.value) and "\n" not in str(err.value)
